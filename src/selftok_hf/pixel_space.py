"""Pixel-space "VAE": patchified pixels stand in for SD3 latents.

Selftok reads SD3-VAE latents. For small images (32-64 px) and for tests, training a tokenizer on the pixels
themselves is cheaper and needs no pretrained weights: :class:`PixelSpaceAutoencoder` folds every
``patch_size x patch_size`` block of RGB pixels into channels (``(B, 3, H, W) -> (B, 3 p², H/p, W/p)``), an
exact, parameter-free, invertible map. It exposes the ``AutoencoderKL`` interface that the rest of the library
uses (``encode(x).latent_dist.mode()``, ``decode(z).sample``, ``config.latent_channels``), so the tokenizer,
the decoder pipeline, the trainers and the evaluator run unchanged on either latent space.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKLOutput
from diffusers.models.autoencoders.vae import (
    DecoderOutput,
    DiagonalGaussianDistribution,
)
from diffusers.models.modeling_utils import ModelMixin

from .loading import StrictFromPretrainedMixin
from .portable_config import PortableConfigMixin

__all__ = ["PixelSpaceAutoencoder"]


class PixelSpaceAutoencoder(StrictFromPretrainedMixin, PortableConfigMixin, ModelMixin, ConfigMixin):
    """Space-to-depth "autoencoder": images in [-1, 1] ``(B, C, H, W)`` <-> ``(B, C p², H/p, W/p)``, losslessly.

    ``from_pretrained`` is strict (:class:`~selftok_hf.loading.StrictFromPretrainedMixin`): weights other than its
    one anchor buffer (e.g. a real VAE's under a ``pixel_space`` config) raise instead of loading with a warning.

    Args:
        patch_size: side ``p`` of the pixel block folded into one latent cell (the "downsampling factor").
        in_channels: image channels (3 for RGB).
        latent_channels: ``in_channels * patch_size**2`` (derived; accepted so saved configs round-trip).
        scaling_factor / shift_factor: recorded for parity with ``AutoencoderKL``; the Selftok config holds the
            normalisation actually applied (``SelftokConfig.vae_scaling_factor`` / ``vae_shift_factor``).
    """

    @register_to_config
    def __init__(
        self,
        patch_size: int = 2,
        in_channels: int = 3,
        latent_channels: int | None = None,
        scaling_factor: float = 1.0,
        shift_factor: float = 0.0,
    ):
        super().__init__()
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        folded = in_channels * patch_size * patch_size
        if latent_channels not in (None, folded):
            raise ValueError(f"latent_channels must be in_channels * patch_size**2 = {folded}, got {latent_channels}")
        self.register_to_config(latent_channels=folded)
        # This module has no weights, but diffusers reports a model's device/dtype from its first parameter or
        # buffer and `from_pretrained` requires a weights file: one empty, saved buffer serves both.
        self.register_buffer("device_dtype_anchor", torch.empty(0))

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        """Images ``(B, C, H, W)`` (H, W multiples of ``patch_size``) -> a deterministic "posterior" over
        ``(B, C p², H/p, W/p)`` whose ``mode()`` and ``sample()`` both return the folded pixels."""
        p = self.config.patch_size
        if x.ndim != 4 or x.shape[1] != self.config.in_channels or x.shape[-1] % p or x.shape[-2] % p:
            raise ValueError(
                f"expected images (batch, {self.config.in_channels}, H, W) with H and W multiples of {p}, got {tuple(x.shape)}"
            )
        z = F.pixel_unshuffle(x, p)
        posterior = DiagonalGaussianDistribution(torch.cat([z, torch.zeros_like(z)], dim=1), deterministic=True)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        """Latents ``(B, C p², h, w)`` -> images ``(B, C, h p, w p)``."""
        if z.ndim != 4 or z.shape[1] != self.config.latent_channels:
            raise ValueError(f"expected latents (batch, {self.config.latent_channels}, h, w), got {tuple(z.shape)}")
        images = F.pixel_shuffle(z, self.config.patch_size)
        return DecoderOutput(sample=images) if return_dict else (images,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Round trip (the identity up to float rounding)."""
        return self.decode(self.encode(x).latent_dist.mode()).sample
