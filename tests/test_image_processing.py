import numpy as np
import PIL.Image
import pytest
import torch

from selftok_hf import SelftokImageProcessorPil
from selftok_hf.assets import bundled_images
from selftok_hf.image_processing_selftok import postprocess_images, to_rgb


def official_transform(image: PIL.Image.Image, size: int) -> np.ndarray:
    """The official inference transform, written out with PIL: Resize(size) (bilinear, shortest edge,
    int-truncated long edge), CenterCrop(size) (rounded offsets), then x / 127.5 - 1, CHW."""
    w, h = image.size
    if w <= h:
        new = (size, int(size * h / w))
    else:
        new = (int(size * w / h), size)
    image = image.resize(new, PIL.Image.BILINEAR)
    top, left = int(round((new[1] - size) / 2.0)), int(round((new[0] - size) / 2.0))
    image = image.crop((left, top, left + size, top + size))
    return (np.asarray(image, dtype=np.float32) / 127.5 - 1.0).transpose(2, 0, 1)


@pytest.mark.parametrize("name", ["astronaut.jpg", "coffee.jpg", "chelsea.jpg"])
@pytest.mark.parametrize("size", [256, 64, 37])
def test_matches_official_transform(name, size):
    image = bundled_images()[name]
    processor = SelftokImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    ours = processor(image, return_tensors="np").pixel_values[0]
    ref = official_transform(image, size)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1 / 127.5 + 1e-6  # at most one 8-bit level (resize rounding)
    assert np.abs(ours - ref).mean() < 1e-3


def test_all_pil_modes_become_rgb():
    base = bundled_images()["coffee.jpg"]
    grey16 = PIL.Image.fromarray((np.asarray(base.convert("L")).astype(np.uint16) * 257))
    modes = [base.convert(m) for m in ("L", "LA", "RGBA", "P", "CMYK", "1", "YCbCr", "F")] + [grey16]
    processor = SelftokImageProcessorPil()
    reference = processor(base.convert("L").convert("RGB"), return_tensors="pt").pixel_values
    for image in modes:
        out = processor(image, return_tensors="pt").pixel_values
        assert out.shape == (1, 3, 256, 256), image.mode
        assert out.min() >= -1 and out.max() <= 1
    # 16-bit greyscale is rescaled, not clipped to white.
    out16 = processor(grey16, return_tensors="pt").pixel_values
    assert (out16 - reference).abs().max() <= 2 / 127.5


def test_transparency_composited_on_white():
    image = PIL.Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    assert np.asarray(to_rgb(image)).min() == 255


def test_batch_and_postprocess_round_trip():
    processor = SelftokImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    pixels = processor(list(bundled_images().values()), return_tensors="pt").pixel_values
    assert pixels.shape == (3, 3, 64, 64)
    pil = processor.postprocess(pixels, "pil", value_range=(-1, 1))
    again = processor(pil, return_tensors="pt").pixel_values
    assert (again - pixels).abs().max() <= 1 / 127.5 + 1e-6
    assert postprocess_images((pixels + 1) / 2, "np").shape == (3, 64, 64, 3)
    assert torch.equal(postprocess_images(torch.full((1, 3, 2, 2), 2.0), "pt"), torch.ones(1, 3, 2, 2))
    with pytest.raises(ValueError, match="output_type"):
        postprocess_images(pixels, "jpeg")


@pytest.mark.parametrize("kwargs", [{"backend": "torchvision"}, {"use_fast": True}, {"backend": "pil"}, {}])
def test_auto_image_processor_any_backend_request_works(tmp_path, kwargs):
    """backend="torchvision" (or the deprecated use_fast=True) without torchvision falls back to the PIL backend, as
    transformers' built-in processors do, instead of failing on the first image."""
    from transformers import AutoImageProcessor
    from transformers.utils import is_torchvision_available

    SelftokImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}).save_pretrained(tmp_path)
    images = list(bundled_images().values())[:2]
    reference = SelftokImageProcessorPil.from_pretrained(tmp_path)(images, return_tensors="pt").pixel_values
    processor = AutoImageProcessor.from_pretrained(tmp_path, **kwargs)
    pixel_values = processor(images, return_tensors="pt").pixel_values
    if is_torchvision_available():
        assert torch.allclose(pixel_values, reference, atol=2.5 / 255)  # the two backends agree to ~1/255 (in [-1, 1])
    else:
        assert type(processor) is SelftokImageProcessorPil
        assert torch.equal(pixel_values, reference)


def test_torchvision_class_without_torchvision_falls_back_with_a_warning(monkeypatch, tmp_path):
    from selftok_hf import SelftokImageProcessor, image_processing_selftok

    monkeypatch.setattr(image_processing_selftok, "is_torchvision_available", lambda: False)
    with pytest.warns(UserWarning, match="requires torchvision"):
        processor = SelftokImageProcessor(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 48})
    assert type(processor) is SelftokImageProcessorPil
    assert processor(bundled_images()["coffee.jpg"], return_tensors="pt").pixel_values.shape == (1, 3, 48, 48)
    processor.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="requires torchvision"):
        loaded = SelftokImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is SelftokImageProcessorPil and loaded.crop_size.height == 48

    class Custom(SelftokImageProcessor):
        pass

    with pytest.raises(ImportError, match="torchvision is not installed"):
        Custom()
