"""The SD3 VAE that Selftok reads latents from: its config, normalisation, and a seeded random stand-in.

The VAE is a stock diffusers ``AutoencoderKL`` (SD3-medium's ``vae/`` folder). Selftok works on
SD3-normalised latents ``(z - shift) * scale``. Real weights cannot be downloaded in tests or in the
offline default, so :func:`random_sd3_vae` builds an SD3-*shaped* VAE with seeded random weights:
it exercises every code path but its images are meaningless, and it says so.
"""

from __future__ import annotations

import logging
import warnings

import torch
from diffusers import AutoencoderKL

__all__ = [
    "SD3_VAE_CONFIG",
    "TINY_VAE_CONFIG",
    "random_sd3_vae",
    "RandomWeightsWarning",
    "pixels_to_latents",
    "latents_to_pixels",
    "latents_to_images",
    "to_unit_range",
]

logger = logging.getLogger(__name__)

#: `vae/config.json` of stable-diffusion-3-medium (16 latent channels, 8x downsampling, no quant convs).
SD3_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512],
    layers_per_block=2,
    latent_channels=16,
    norm_num_groups=32,
    sample_size=1024,
    scaling_factor=1.5305,
    shift_factor=0.0609,
    use_quant_conv=False,
    use_post_quant_conv=False,
    force_upcast=True,
)

#: Same structure (16 channels, 8x) at a width that runs in milliseconds on a CPU.
TINY_VAE_CONFIG = dict(SD3_VAE_CONFIG, block_out_channels=[8, 8, 16, 16], layers_per_block=1, norm_num_groups=4, sample_size=64)


class RandomWeightsWarning(UserWarning):
    """Emitted whenever a model with random (untrained) weights stands in for a trained one."""


def random_sd3_vae(seed: int = 0, tiny: bool = True) -> AutoencoderKL:
    """An SD3-shaped ``AutoencoderKL`` with seeded random weights (tiny width by default).

    Warns with :class:`RandomWeightsWarning`: images decoded through it are noise-like.
    """
    warnings.warn(
        "Using an SD3-shaped VAE with RANDOM weights (no SD3 VAE was given): latents and images are not meaningful. "
        "Pass a real SD3 VAE folder (e.g. stable-diffusion-3-medium/vae) for real results.",
        RandomWeightsWarning,
        stacklevel=2,
    )
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        vae = AutoencoderKL(**(TINY_VAE_CONFIG if tiny else SD3_VAE_CONFIG))
    finally:
        torch.random.set_rng_state(generator_state)
    return vae.eval()


@torch.no_grad()
def pixels_to_latents(vae: AutoencoderKL, pixel_values: torch.Tensor, scaling_factor: float, shift_factor: float) -> torch.Tensor:
    """Images in [-1, 1] ``(B, 3, H, W)`` -> SD3-normalised float32 latents ``(z - shift) * scale``.

    Uses the posterior's mode, as the official inference does.
    """
    z = vae.encode(pixel_values.to(device=vae.device, dtype=vae.dtype)).latent_dist.mode()
    return (z.float() - shift_factor) * scaling_factor


def latents_to_pixels(vae: AutoencoderKL, latents: torch.Tensor, scaling_factor: float, shift_factor: float) -> torch.Tensor:
    """SD3-normalised latents ``(B, C, h, w)`` -> the VAE's float32 images ``(B, 3, H, W)``, about [-1, 1] and not
    clamped (the inverse of :func:`pixels_to_latents`: ``z = latents / scale + shift``, decoded in the VAE's dtype).
    Runs under the caller's grad mode, as the pipeline's decode does."""
    z = latents / scaling_factor + shift_factor
    return vae.decode(z.to(vae.dtype), return_dict=False)[0].float()


def to_unit_range(pixel_values: torch.Tensor) -> torch.Tensor:
    """Images about [-1, 1] ``(B, 3, H, W)`` -> [0, 1]: clamped to [-1, 1], then rescaled (the official post-processing)."""
    return (pixel_values.clamp(-1, 1) + 1) / 2


def latents_to_images(vae: AutoencoderKL, latents: torch.Tensor, scaling_factor: float, shift_factor: float) -> torch.Tensor:
    """SD3-normalised latents ``(B, C, h, w)`` -> float32 images in [0, 1] ``(B, 3, H, W)``: :func:`latents_to_pixels`,
    then :func:`to_unit_range` (what ``SelftokDecoderPipeline`` does to its latents)."""
    return to_unit_range(latents_to_pixels(vae, latents, scaling_factor, shift_factor))
