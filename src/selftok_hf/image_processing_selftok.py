"""Image processors for Selftok: PIL/array images -> pixel values in [-1, 1], and back.

Preprocessing is the official inference transform: resize the shortest edge to the tokenizer's
image size (bilinear, as torchvision's ``Resize`` on PIL images), centre crop to a square, scale
to ``x / 127.5 - 1``. Every PIL mode is converted to RGB first; 16-bit and 32-bit integer greyscale images
are rescaled to 8 bits by their type's range rather than clipped, float images (mode ``F`` and float arrays)
are read as [0, 1] when all their values lie there and as [0, 255] otherwise, and transparency is composited
on white. Bool arrays are black and white. A file path is opened with PIL and goes through the same
conversion (no ``convert("RGB")``, no EXIF rotation), so a path and ``PIL.Image.open(path)`` give the same
pixels; :func:`load_image_file` is that loader (the ``selftok`` command uses it too).

Refused with a clear ``ValueError``: an empty list of images, a zero-size image, NaN or infinite float
pixels, float values outside [0, 255]; a missing file raises ``FileNotFoundError`` naming it, and an image
over PIL's decompression-bomb limit a ``ValueError`` naming the file.

Two backends, named as transformers 5 expects: [`SelftokImageProcessorPil`] (PIL + NumPy, always
available) and [`SelftokImageProcessor`] (torchvision). Without torchvision, ``SelftokImageProcessor(...)``,
``SelftokImageProcessor.from_pretrained`` and ``AutoImageProcessor.from_pretrained(..., backend="torchvision")`` (or
the deprecated ``use_fast=True``) fall back to the PIL backend with a warning, as transformers' own processors do.
"""

from __future__ import annotations

import os
import warnings
from typing import Literal, Union

import numpy as np
import PIL.Image
import torch
from transformers.image_processing_backends import PilBackend, TorchvisionBackend
from transformers.image_utils import PILImageResampling
from transformers.utils import is_torchvision_available

__all__ = ["SelftokImageProcessor", "SelftokImageProcessorPil", "load_image_file", "to_rgb", "postprocess_images"]

_HIGH_DEPTH_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


def load_image_file(path: Union[str, os.PathLike]) -> PIL.Image.Image:
    """Open an image file with PIL, fully read, in its own mode (the processor converts it to RGB).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the file for anything PIL cannot
    read, including an image over PIL's decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``)."""
    name = os.fspath(path)
    if not os.path.isfile(name):
        what = "it is a folder" if os.path.isdir(name) else "no such file"
        raise FileNotFoundError(f"cannot read image {name!r}: {what}")
    try:
        image = PIL.Image.open(name)
        image.load()
    except PIL.Image.DecompressionBombError as error:
        raise ValueError(
            f"cannot read image {name!r}: refused as a possible decompression bomb ({error}); raise "
            "PIL.Image.MAX_IMAGE_PIXELS if the file is trusted"
        ) from error
    except (OSError, SyntaxError, ValueError) as error:  # PIL's errors for truncated or unknown files
        raise ValueError(f"cannot read image {name!r}: {error}") from error
    return image


def _eight_bit_from_float(array: np.ndarray, what: str) -> np.ndarray:
    """Float pixels -> uint8: [0, 1] when every value lies there, else [0, 255]; NaN/inf and other ranges refused."""
    if not np.isfinite(array).all():
        raise ValueError(f"{what} has NaN or infinite pixel values")
    lo, hi = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if lo < 0 or hi > 255:
        raise ValueError(
            f"{what} has values in [{lo:g}, {hi:g}]; float images must lie in [0, 1] (or [0, 255]). Rescale it, or pass "
            "uint8 pixels in [0, 255]"
        )
    scale = 255.0 if hi <= 1.0 else 1.0  # already rescaled to [0, 1] (as transformers' do_rescale warning detects)
    return np.clip(np.round(array.astype(np.float64) * scale), 0, 255).astype(np.uint8)


def _check_image_size(width: int, height: int) -> None:
    if width == 0 or height == 0:
        raise ValueError(f"cannot process a zero-size image ({width}x{height} pixels)")


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """Convert any PIL image to 8-bit RGB (L, LA, P, PA, RGBA, CMYK, YCbCr, I;16, I, F, 1 ...)."""
    if image.mode in _HIGH_DEPTH_MODES:
        # PIL's own conversion clips >255 to white; scale by the type's range instead (never by the image's own
        # range, which would turn a constant image black).
        array = np.asarray(image)
        if image.mode == "F":
            eight_bit = _eight_bit_from_float(array, "mode F image")
        else:
            array = array.astype(np.float64)
            hi = float(array.max()) if array.size else 0.0
            # I;16: 16 bits. I (32-bit): 8-bit values as they are, 16-bit ones (a 16-bit PNG opened as I) by 65535.
            top = 65535.0 if image.mode.startswith("I;16") or hi > 255 else 255.0
            top = max(top, hi)
            eight_bit = np.clip(np.round(array / top * 255.0), 0, 255).astype(np.uint8)
        image = PIL.Image.fromarray(eight_bit, mode="L")
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

    def fetch_images(self, image_url_or_urls):
        """File paths are opened by :func:`load_image_file` (the image's own mode; a missing file is named);
        URLs and base64 strings go to transformers' loader."""
        if isinstance(image_url_or_urls, (list, tuple)):
            return [self.fetch_images(x) for x in image_url_or_urls]
        if isinstance(image_url_or_urls, os.PathLike) or (
            isinstance(image_url_or_urls, str)
            and not image_url_or_urls.startswith(("http://", "https://", "data:image/"))
            # Base64 has no '.': a string with an extension, or an existing file, is a path.
            and (os.path.exists(image_url_or_urls) or os.path.splitext(image_url_or_urls)[1])
        ):
            return load_image_file(image_url_or_urls)
        return super().fetch_images(image_url_or_urls)

    def _prepare_images_structure(self, images, expected_ndims: int = 3):
        images = self.fetch_images(images)
        if isinstance(images, (list, tuple)) and len(images) == 0:
            raise ValueError("no images given (an empty list)")
        # A 2-D array or tensor is one greyscale image (H, W), as transformers' channel inference reads it.
        if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 2:
            return [images]
        if isinstance(images, (list, tuple)) and all(isinstance(x, (np.ndarray, torch.Tensor)) and x.ndim == 2 for x in images):
            return list(images)
        flat = super()._prepare_images_structure(images, expected_ndims=expected_ndims)
        if len(flat) == 0:
            raise ValueError("no images given (an empty batch)")
        return flat

    def process_image(self, image, do_convert_rgb=None, **kwargs):
        convert = do_convert_rgb if do_convert_rgb is not None else self.do_convert_rgb
        if isinstance(image, PIL.Image.Image):
            _check_image_size(*image.size)
            if convert:
                image = to_rgb(image)
        elif isinstance(image, (np.ndarray, torch.Tensor)):
            image = self._standardize_array(image, kwargs.get("do_rescale"), kwargs.get("rescale_factor"))
        return super().process_image(image, do_convert_rgb=do_convert_rgb, **kwargs)

    def _standardize_array(self, image, do_rescale, rescale_factor) -> np.ndarray:
        """Arrays/tensors: zero sizes refused, (H, W) greyscale -> (H, W, 3), and with the default rescale (1/255)
        bool -> black/white uint8 and float -> uint8 (see :func:`_eight_bit_from_float`: float pixels already in
        [0, 1] are not divided by 255 a second time)."""
        if isinstance(image, torch.Tensor):
            image = image.detach().cpu().numpy()
        if image.size == 0:
            raise ValueError(f"cannot process a zero-size image (array of shape {tuple(image.shape)})")
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        do_rescale = self.do_rescale if do_rescale is None else do_rescale
        rescale_factor = self.rescale_factor if rescale_factor is None else rescale_factor
        if do_rescale and np.isclose(rescale_factor, 1 / 255):
            if image.dtype == np.bool_:
                image = image.astype(np.uint8) * 255
            elif np.issubdtype(image.dtype, np.floating):
                image = _eight_bit_from_float(image, "float image")
        elif np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
            raise ValueError("float image has NaN or infinite pixel values")
        return image

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
