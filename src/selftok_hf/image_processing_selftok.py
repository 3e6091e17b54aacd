"""Image processors for Selftok: PIL/array images -> pixel values in [-1, 1], and back.

Preprocessing is the official inference transform: resize the shortest edge to the tokenizer's
image size (bilinear, as torchvision's ``Resize`` on PIL images), centre crop to a square, scale
to ``x / 127.5 - 1``. Every PIL mode is converted to RGB first; 16-bit and float greyscale images
are rescaled to 8 bits by their value range rather than clipped, and transparency is composited
on white.

Two backends, named as transformers 5 expects: [`SelftokImageProcessorPil`] (PIL + NumPy, always
available) and [`SelftokImageProcessor`] (torchvision). Without torchvision, ``SelftokImageProcessor(...)``,
``SelftokImageProcessor.from_pretrained`` and ``AutoImageProcessor.from_pretrained(..., backend="torchvision")`` (or
the deprecated ``use_fast=True``) fall back to the PIL backend with a warning, as transformers' own processors do.
"""

from __future__ import annotations

import warnings
from typing import Literal, Union

import numpy as np
import PIL.Image
import torch
from transformers.image_processing_backends import PilBackend, TorchvisionBackend
from transformers.image_utils import PILImageResampling
from transformers.utils import is_torchvision_available

__all__ = ["SelftokImageProcessor", "SelftokImageProcessorPil", "to_rgb", "postprocess_images"]

_HIGH_DEPTH_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Convert any PIL image to 8-bit RGB (L, LA, P, PA, RGBA, CMYK, YCbCr, I;16, I, F, 1 ...)."""
    if image.mode in _HIGH_DEPTH_MODES:
        # PIL's own conversion clips >255 to white; scale by the type's range instead.
        array = np.asarray(image).astype(np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        if image.mode == "F":
            lo = float(array.min())
            array, top = array - lo, max(float(array.max()) - lo, 1e-12)
        image = PIL.Image.fromarray(np.clip(np.round(array / top * 255.0), 0, 255).astype(np.uint8), mode="L")
    has_alpha = "A" in image.getbands() or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        background = PIL.Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def postprocess_images(
    images: torch.Tensor, output_type: Literal["pil", "np", "pt"] = "pil", value_range: tuple[float, float] = (0.0, 1.0)
) -> Union[list[PIL.Image.Image], np.ndarray, torch.Tensor]:
    """Images ``(B, 3, H, W)`` in ``value_range`` -> PIL list, NumPy ``(B, H, W, 3)`` float in [0, 1], or a tensor in [0, 1]."""
    if output_type not in ("pil", "np", "pt"):
        raise ValueError(f"output_type must be 'pil', 'np' or 'pt', got {output_type!r}")
    lo, hi = value_range
    images = ((images.detach().float() - lo) / (hi - lo)).clamp(0, 1)
    if output_type == "pt":
        return images
    array = images.permute(0, 2, 3, 1).cpu().numpy()
    if output_type == "np":
        return array
    return [PIL.Image.fromarray((a * 255).round().astype(np.uint8)) for a in array]


class _SelftokImageProcessorMixin:
    """Defaults shared by both backends (256 px, official transform) plus RGB handling and postprocess."""

    resample = PILImageResampling.BILINEAR
    size = {"shortest_edge": 256}
    crop_size = {"height": 256, "width": 256}
    default_to_square = False
    do_resize = True
    do_center_crop = True
    do_rescale = True
    rescale_factor = 1 / 255
    do_normalize = True
    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.5, 0.5, 0.5]
    do_convert_rgb = True
    model_input_names = ["pixel_values"]

    def process_image(self, image, do_convert_rgb=None, **kwargs):
        if isinstance(image, PIL.Image.Image) and (do_convert_rgb if do_convert_rgb is not None else self.do_convert_rgb):
            image = to_rgb(image)
        return super().process_image(image, do_convert_rgb=do_convert_rgb, **kwargs)

    def postprocess(
        self, images: torch.Tensor, output_type: Literal["pil", "np", "pt"] = "pil", value_range: tuple[float, float] = (0.0, 1.0)
    ):
        """Decoder outputs ``(B, 3, H, W)`` (in [0, 1] by default; pass ``value_range=(-1, 1)`` for
        normalised pixels) -> PIL images, a NumPy array or a tensor in [0, 1]."""
        return postprocess_images(images, output_type, value_range)


class SelftokImageProcessorPil(_SelftokImageProcessorMixin, PilBackend):
    """Selftok preprocessing with the PIL/NumPy backend (no torchvision needed)."""

    def center_crop(self, image: np.ndarray, size, **kwargs) -> np.ndarray:
        """Centre crop of a ``(C, H, W)`` array with torchvision's rounding of the offsets (the official transform)."""
        height, width = image.shape[-2:]
        if size.height > height or size.width > width:
            return super().center_crop(image, size, **kwargs)
        top = int(round((height - size.height) / 2.0))
        left = int(round((width - size.width) / 2.0))
        return image[..., top : top + size.height, left : left + size.width]


class SelftokImageProcessor(_SelftokImageProcessorMixin, TorchvisionBackend):
    """Selftok preprocessing with the torchvision backend (outputs match the PIL backend to within 1/255). Without
    torchvision, constructing it returns a [`SelftokImageProcessorPil`] with a warning."""

    def __new__(cls, *args, **kwargs):
        if is_torchvision_available():
            return super().__new__(cls)
        if cls is not SelftokImageProcessor:  # a subclass: falling back would drop its changes
            raise ImportError(f"{cls.__name__} uses the torchvision backend, but torchvision is not installed")
        warnings.warn(
            "`SelftokImageProcessor` requires torchvision (not installed); falling back to `SelftokImageProcessorPil`. "
            "Install torchvision to use the torchvision backend, or use `SelftokImageProcessorPil` (backend=\"pil\") "
            "to silence this warning.",
            UserWarning,
            stacklevel=2,
        )
        return SelftokImageProcessorPil(*args, **kwargs)  # not an instance of cls, so __init__ is not run twice
