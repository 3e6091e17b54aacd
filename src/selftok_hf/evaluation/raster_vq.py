"""A plain raster-order spatial VQ autoencoder: the baseline Selftok is compared with at equal bits per image.

Conventional image tokenizers (VQGAN, LlamaGen, Emu3) quantise a 2-D grid of features and hand an LM the grid in
raster order. :class:`RasterVQAutoencoder` is the small, honest version of that: a convolutional encoder to an
``s x s`` grid, the same cosine EMA quantizer Selftok uses (``quantizer.py``), and a convolutional decoder, trained
by pixel MSE + the quantizer's losses (:func:`train_raster_vq`). Its ids ``(B, s*s)`` are in raster order, so it
can replace Selftok's tokenizer in every experiment that needs "the same pipeline with spatial tokens".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..quantizer import CosineVectorQuantizer, QuantizerSettings
from ..renamed import RenamedAttribute

__all__ = ["RasterVQAutoencoder", "train_raster_vq"]


class _ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class RasterVQAutoencoder(ModelMixin, ConfigMixin):
    """Images ``(B, 3, H, W)`` in [-1, 1] <-> ids ``(B, (H/f)·(W/f))`` in raster order.

    Args:
        image_size: side of the (square) training images.
        downsample: ``f``, a power of two: the grid is ``image_size / f`` on a side.
        channels: width of the first convolution (doubled once).
        codebook_size / code_dim: the cosine EMA codebook.
    """

    @register_to_config
    def __init__(self, image_size: int = 32, downsample: int = 4, channels: int = 64, codebook_size: int = 32, code_dim: int = 16):
        super().__init__()
        levels = int(math.log2(downsample))
        if 2**levels != downsample or image_size % downsample:
            raise ValueError(f"downsample must be a power of two dividing image_size, got {downsample} for {image_size}")
        width = channels * 2
        encoder: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1), _ResBlock(channels)]
        c = channels
        for _ in range(levels):
            encoder += [nn.Conv2d(c, width, 4, stride=2, padding=1), _ResBlock(width)]
            c = width
        encoder += [nn.GroupNorm(8, width), nn.SiLU(), nn.Conv2d(width, width, 1)]
        self.encoder = nn.Sequential(*encoder)
        self.grid = image_size // downsample
        settings = QuantizerSettings(codebook_size=codebook_size, code_dim=code_dim, token_dim=width)
        self.quantizer = CosineVectorQuantizer(width, num_positions=self.grid * self.grid, settings=settings)
        decoder: list[nn.Module] = [nn.Conv2d(width, width, 3, padding=1), _ResBlock(width)]
        c = width
        for level in range(levels):
            out = channels if level == levels - 1 else width
            decoder += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, out, 3, padding=1), _ResBlock(out)]
            c = out
        decoder += [nn.GroupNorm(8, channels), nn.SiLU(), nn.Conv2d(channels, 3, 3, padding=1)]
        self.decoder = nn.Sequential(*decoder)

    @property
    def num_image_tokens(self) -> int:
        """Tokens per image: the cells of the grid (formerly ``num_tokens``)."""
        return self.grid * self.grid

    num_tokens = RenamedAttribute("num_image_tokens")

    def _features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` -> grid features in raster order ``(B, s*s, width)``."""
        return self.encoder(pixels).flatten(2).transpose(1, 2)

    def _decode_vectors(self, vectors: torch.Tensor) -> torch.Tensor:
        B, _, C = vectors.shape
        return self.decoder(vectors.transpose(1, 2).reshape(B, C, self.grid, self.grid))

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor) -> torch.LongTensor:
        """Images in [-1, 1] -> ids ``(B, s*s)``, raster order (row by row)."""
        ids, _ = self.quantizer.quantize(self._features(pixels))
        return ids

    @torch.no_grad()
    def decode(self, ids: torch.LongTensor) -> torch.Tensor:
        """Ids ``(B, s*s)`` -> images in [-1, 1] ``(B, 3, H, W)``."""
        return self._decode_vectors(self.quantizer.embed_ids(ids)).clamp(-1, 1)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Training pass: ``(reconstruction, loss = pixel MSE + quantizer loss, stats)``."""
        q = self.quantizer(self._features(pixels))
        reconstruction = self._decode_vectors(q.quantized)
        mse = F.mse_loss(reconstruction, pixels)
        return reconstruction, mse + q.loss, {"mse": mse.item(), **q.stats}


def train_raster_vq(
    model: RasterVQAutoencoder,
    batches,
    steps: int,
    learning_rate: float = 3e-4,
    seed: int = 0,
    log_every: int = 0,
    history: list | None = None,
) -> RasterVQAutoencoder:
    """Train with AdamW(0.9, 0.99) on ``batches.batch(step)`` (a :class:`~selftok_hf.training.data.StepBatches`),
    seeding every step like the Selftok trainers so budgets and randomness are comparable."""
    from ..training.data import step_seed

    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, betas=(0.9, 0.99), weight_decay=0.0)
    model.train()
    for step in range(steps):
        torch.manual_seed(step_seed(seed, step))
        _, loss, stats = model(batches.batch(step))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if history is not None and log_every and (step + 1) % log_every == 0:
            history.append({"step": step + 1, "loss": loss.item(), **stats})
    return model.eval()
