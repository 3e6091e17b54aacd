"""A saved SelftokDecoderPipeline folder answers transformers' Auto classes at its root and in ``image_tokenizer/``
(weights stored once; the tokenizer attaches the folder's VAE), and diffusers still loads it as a pipeline."""

import json
import warnings

import pytest
import torch
from diffusers import DiffusionPipeline
from transformers import AutoImageProcessor, AutoModel

from selftok_hf import SelftokDecoderPipeline, SelftokModel
from selftok_hf.assets import bundled_images
from selftok_hf.modeling_selftok import VAE_SUBFOLDER_KEY, WEIGHTS_SUBFOLDER_KEY
from selftok_hf.testing import random_tiny_pipeline

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = random_tiny_pipeline(seed=0)
    folder = tmp_path_factory.mktemp("repo") / "dec"
    pipe.save_pretrained(folder)
    images = [bundled_images()["coffee.jpg"]]
    return folder, images, pipe.encode(images)


def test_root_config_points_to_the_weights_stored_once(saved):
    folder, _, _ = saved
    root, sub = (json.loads((folder / p / "config.json").read_text()) for p in (".", "image_tokenizer"))
    assert root["model_type"] == "selftok" and root[WEIGHTS_SUBFOLDER_KEY] == "image_tokenizer" and root[VAE_SUBFOLDER_KEY] == "vae"
    assert sub[VAE_SUBFOLDER_KEY] == "../vae" and WEIGHTS_SUBFOLDER_KEY not in sub
    assert {k: v for k, v in root.items() if k not in (WEIGHTS_SUBFOLDER_KEY, VAE_SUBFOLDER_KEY)} == {
        k: v for k, v in sub.items() if k != VAE_SUBFOLDER_KEY
    }
    assert not list(folder.glob("*.safetensors"))  # no weights at the root
    assert (folder / "preprocessor_config.json").is_file() and (folder / "image_tokenizer" / "preprocessor_config.json").is_file()


@pytest.mark.parametrize("subfolder", [None, "image_tokenizer"])
def test_auto_classes_load_the_tokenizer_and_it_takes_pixels(saved, subfolder, tmp_path):
    folder, images, expected = saved
    kwargs = {"subfolder": subfolder} if subfolder else {}
    tokenizer = AutoModel.from_pretrained(folder, **kwargs).eval()
    processor = AutoImageProcessor.from_pretrained(folder, **kwargs)
    assert isinstance(tokenizer, SelftokModel) and tokenizer.has_vae
    assert torch.equal(tokenizer.encode(pixel_values=processor(images, return_tensors="pt").pixel_values).token_ids, expected)
    assert type(tokenizer.vae).__name__ == "AutoencoderKL"
    # The pointers describe the repo, not the model: a re-saved tokenizer holds none.
    assert not hasattr(tokenizer.config, WEIGHTS_SUBFOLDER_KEY) and not hasattr(tokenizer.config, VAE_SUBFOLDER_KEY)
    tokenizer.save_pretrained(tmp_path / "alone")
    alone = json.loads((tmp_path / "alone" / "config.json").read_text())
    assert WEIGHTS_SUBFOLDER_KEY not in alone and VAE_SUBFOLDER_KEY not in alone
    assert not SelftokModel.from_pretrained(tmp_path / "alone").has_vae
    assert isinstance(AutoImageProcessor.from_pretrained(tmp_path / "alone"), type(processor))


def test_load_vae_false_and_latents_only(saved):
    folder, images, _ = saved
    tokenizer = SelftokModel.from_pretrained(folder, load_vae=False)
    assert not tokenizer.has_vae and tokenizer.vae is None
    with pytest.raises(ValueError, match="No VAE attached"):
        tokenizer.encode(pixel_values=torch.zeros(1, 3, 64, 64))


def test_diffusers_loads_the_folder_as_before(saved):
    folder, images, expected = saved
    for pipe in (SelftokDecoderPipeline.from_pretrained(folder), DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)):
        assert torch.equal(pipe.encode(images), expected)
        assert pipe.image_tokenizer.vae is pipe.vae  # the pipeline's own VAE, not a second copy


def test_pixel_space_pipeline_root(tmp_path, image_dir):
    from selftok_hf.training.tokenizer import (
        TokenizerTrainingArguments,
        train_tokenizer,
    )

    args = TokenizerTrainingArguments(output_dir=str(tmp_path / "run"), dataset=image_dir, max_steps=1, batch_size=2, checkpoint_every=0)
    pipe = train_tokenizer(args, export_dir=str(tmp_path / "pixel")).pipeline()  # a 1-step pixel-space pipeline
    images = [bundled_images()["coffee.jpg"]]
    tokenizer = AutoModel.from_pretrained(tmp_path / "pixel").eval()
    processor = AutoImageProcessor.from_pretrained(tmp_path / "pixel")
    assert type(tokenizer.vae).__name__ == "PixelSpaceAutoencoder"
    assert torch.equal(tokenizer.encode(pixel_values=processor(images, return_tensors="pt").pixel_values).token_ids, pipe.encode(images))
