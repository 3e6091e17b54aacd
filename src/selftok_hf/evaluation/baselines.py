"""The equal-bits baseline every Selftok reconstruction is held against: a bicubic thumbnail.

An image stored as an ``s x s`` thumbnail with ``b`` bits per channel costs ``3 b s²`` bits; upsampled back with
bicubic interpolation it is the simplest codec a tokenizer of ``K log2(C)`` bits must beat.
:func:`best_bicubic_thumbnail` tries every ``(s, b)`` that fits the budget (and would not fit with one more bit
per channel) and keeps the best on the images themselves, so the baseline is optimistic.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch

from .metrics import psnr

__all__ = ["best_bicubic_thumbnail", "bicubic_thumbnail", "thumbnail_options"]


def bicubic_thumbnail(images: torch.Tensor, side: int, bits_per_channel: int) -> torch.Tensor:
    """Images in [0, 1] ``(B, 3, H, W)`` -> the same images through a ``side x side`` thumbnail quantised to
    ``bits_per_channel`` bits (8-bit pixels, bicubic down and up), in [0, 1]."""
    levels = 2**bits_per_channel - 1
    out = []
    for image in images:
        array = (image.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        small = np.asarray(PIL.Image.fromarray(array).resize((side, side), PIL.Image.BICUBIC), dtype=np.float32)
        small = (np.round(small / 255 * levels) / levels * 255).round().astype(np.uint8)
        up = PIL.Image.fromarray(small).resize((array.shape[1], array.shape[0]), PIL.Image.BICUBIC)
        out.append(torch.from_numpy(np.asarray(up, dtype=np.float32) / 255).permute(2, 0, 1))
    return torch.stack(out)


def thumbnail_options(bits: float, image_size: int) -> list[tuple[int, int]]:
    """Every ``(side, bits_per_channel)`` with ``3 b s² <= bits < 3 (b + 1) s²``, ``2 <= s < image_size``."""
    return [(s, b) for s in range(2, image_size) for b in range(1, 9) if 3 * b * s * s <= bits < 3 * (b + 1) * s * s]


def best_bicubic_thumbnail(images: torch.Tensor, bits: float) -> tuple[torch.Tensor, dict]:
    """The best thumbnail within ``bits`` per image, chosen by mean PSNR on ``images`` (``(B, 3, H, W)`` in [0, 1]).

    Returns:
        the reconstructions and ``{"side", "bits_per_channel", "bits", "psnr"}``.
    """
    best = None
    for side, bpc in thumbnail_options(bits, images.shape[-1]):
        reconstruction = bicubic_thumbnail(images, side, bpc)
        score = psnr(reconstruction, images).mean().item()
        if best is None or score > best[1]["psnr"]:
            best = reconstruction, {"side": side, "bits_per_channel": bpc, "bits": 3 * bpc * side * side, "psnr": score}
    if best is None:
        raise ValueError(f"no thumbnail of at least 2 x 2 pixels fits in {bits} bits")
    return best
