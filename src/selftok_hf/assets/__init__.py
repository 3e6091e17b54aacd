"""The files bundled with selftok-hf, and their accessors: the sample images (held out of the embedded models'
training), the embedded default pipeline (``selftok-small32``: 32 x 32 images, 32 tokens from 1024 codes) and the
embedded shapes-world VLM (``selftok-shapes-vlm``), read from this folder with no download. The tools default to
them (``selftok-quickstart``, ``selftok encode/generate/describe``, the demo, ``tokenize_dataset``); like
``skimage.data``, the data and the functions that open it live in one place.
"""

from __future__ import annotations

from importlib import resources

import PIL.Image
import torch

from ..pipeline_selftok_decoder import SelftokDecoderPipeline

__all__ = ["bundled_fashion_images", "bundled_images", "embedded_pipeline", "embedded_vlm"]

SAMPLE_PHOTOS = ("astronaut.jpg", "coffee.jpg", "chelsea.jpg")
SAMPLE_FASHION = ("fashion_mnist_ankle_boot.png", "fashion_mnist_pullover.png", "fashion_mnist_trouser.png")
EMBEDDED_PIPELINE = "selftok-small32"
#: The bundled shapes-world VLM (``examples/train_shapes_vlm.py``): ``selftok generate`` / ``describe`` use it by default.
EMBEDDED_VLM = "selftok-shapes-vlm"


def bundled_images() -> dict[str, PIL.Image.Image]:
    """The sample photos shipped in ``selftok_hf/assets`` (public domain / CC0, from scikit-image)."""
    return _assets(SAMPLE_PHOTOS)


def bundled_fashion_images() -> dict[str, PIL.Image.Image]:
    """Three Fashion-MNIST test images shipped in ``selftok_hf/assets`` (MIT), held out of the embedded model's training."""
    return _assets(SAMPLE_FASHION)


def _assets(names: tuple[str, ...]) -> dict[str, PIL.Image.Image]:
    assets = resources.files(__name__)
    return {name: PIL.Image.open(assets / name).convert("RGB") for name in names}


def embedded_pipeline(dtype: torch.dtype = torch.float32) -> SelftokDecoderPipeline:
    """The bundled trained pipeline (VAE, tokenizer, decoder, renderer; weights stored in float16 to stay small, upcast
    on load)."""
    return SelftokDecoderPipeline.from_pretrained(str(resources.files(__name__) / EMBEDDED_PIPELINE), dtype=dtype)


def embedded_vlm(dtype: torch.dtype = torch.float32):
    """The bundled shapes-world :class:`~selftok_hf.SelftokPipeline`: a small Llama trained here by SFT then GRPO on the
    ids of its own shapes codec (weights stored in float16, upcast on load). It draws and describes 1-3 coloured
    circles, squares and triangles (``selftok_hf.rl.shapes_world``'s grammar), nothing else."""
    from ..pipeline_selftok import SelftokPipeline

    return SelftokPipeline.from_pretrained(str(resources.files(__name__) / EMBEDDED_VLM), dtype=dtype)
