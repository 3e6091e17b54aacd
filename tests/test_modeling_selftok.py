import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from transformers import AutoConfig, AutoImageProcessor, AutoModel

from selftok_hf import SELFTOK_TINY_CONFIG, SelftokConfig, SelftokImageProcessorPil, SelftokModel
from selftok_hf.vae import RandomWeightsWarning, random_sd3_vae


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = SelftokModel(SelftokConfig(**SELFTOK_TINY_CONFIG)).eval()
    for block in model.encoder.blocks:  # non-zero adaLN so outputs depend on the image
        torch.nn.init.normal_(block.query_modulation.weight, std=0.5)
    return model


def latents_for(config, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, config.latent_channels, config.latent_size, config.latent_size, generator=g)


def test_encode_shapes_and_dtypes(tiny):
    cfg = tiny.config
    out = tiny.encode(latents=latents_for(cfg))
    assert out.token_ids.shape == (2, cfg.num_image_tokens) and out.token_ids.dtype == torch.int64
    assert out.token_embeddings.shape == (2, cfg.num_image_tokens, cfg.token_dim)
    assert out.query_features.shape == (2, cfg.num_image_tokens, cfg.query_dim)
    assert torch.allclose(tiny.embed_tokens(out.token_ids), out.token_embeddings)
    assert int(out.token_ids.min()) >= 0 and int(out.token_ids.max()) < cfg.codebook_size


def test_ar_order_is_reverse_of_encoder_order(tiny):
    latents = latents_for(tiny.config)
    with torch.no_grad():
        ids_code_order, _ = tiny.quantizer.quantize(tiny.encoder(latents))
    assert torch.equal(tiny.encode(latents=latents).token_ids, ids_code_order.flip(1))


def test_init_is_official(tiny):
    fresh = SelftokModel(SelftokConfig(**SELFTOK_TINY_CONFIG))
    block = fresh.encoder.blocks[0]
    assert block.query_modulation.weight.abs().max() == 0 and block.query_modulation.bias.abs().max() == 0
    assert 0.01 < fresh.encoder.queries.std() < 0.03
    assert torch.allclose(fresh.quantizer.embed.norm(dim=-1), torch.ones(fresh.config.codebook_size))


def test_save_load_and_auto_classes(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    SelftokImageProcessorPil().save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), SelftokConfig)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(reloaded, SelftokModel)
    latents = latents_for(tiny.config)
    assert torch.equal(reloaded.encode(latents=latents).token_ids, tiny.encode(latents=latents).token_ids)
    for name, tensor in tiny.state_dict().items():
        assert torch.equal(tensor, reloaded.state_dict()[name]), name
    assert isinstance(AutoImageProcessor.from_pretrained(tmp_path), SelftokImageProcessorPil)


def test_trust_remote_code_without_package(tiny, tmp_path):
    tiny.save_pretrained(tmp_path)
    SelftokImageProcessorPil().save_pretrained(tmp_path)
    latents = latents_for(tiny.config)
    torch.save({"latents": latents, "ids": tiny.encode(latents=latents).token_ids}, tmp_path / "expected.pt")
    assert "auto_map" in json.loads((tmp_path / "config.json").read_text())
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.modules["selftok_hf"] = None  # importing the package would fail: prove it is not needed
        from transformers import AutoModel, AutoImageProcessor
        model = AutoModel.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
        processor = AutoImageProcessor.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        assert torch.equal(model.encode(latents=expected["latents"]).token_ids, expected["ids"])
        assert type(processor).__name__.startswith("SelftokImageProcessor")
        print("OK", type(model).__module__)
        """
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH="")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK transformers_modules" in result.stdout


def test_pixel_path_with_attached_vae(tiny):
    with pytest.warns(RandomWeightsWarning):
        vae = random_sd3_vae(seed=0)
    tiny.attach_vae(vae)
    try:
        pixels = torch.rand(2, 3, tiny.config.image_size, tiny.config.image_size) * 2 - 1
        with torch.no_grad():
            latents = tiny.latents_from_pixels(pixels)
            assert latents.shape == (2, tiny.config.latent_channels, tiny.config.latent_size, tiny.config.latent_size)
            assert torch.equal(tiny.encode(pixel_values=pixels).token_ids, tiny.encode(latents=latents).token_ids)
    finally:
        tiny.attach_vae(None)


def test_vae_never_saved_with_tokenizer(tiny, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        tiny.attach_vae(random_sd3_vae(seed=0))
    try:
        tiny.save_pretrained(tmp_path)
    finally:
        tiny.attach_vae(None)
    from safetensors.torch import load_file

    assert not any("vae" in k for k in load_file(str(tmp_path / "model.safetensors")))


# ------------------------------------------------------------------------------------ bad input
def test_missing_vae_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match="No VAE attached"):
        tiny.encode(pixel_values=torch.zeros(1, 3, 64, 64))


def test_wrong_vae_channels(tiny):
    class FakeVAE:
        config = type("C", (), {"latent_channels": 4})()

    with pytest.raises(ValueError, match="4 latent channels"):
        tiny.attach_vae(FakeVAE())


@pytest.mark.parametrize(
    "shape, match",
    [((2, 3, 8, 8), "channels"), ((2, 16, 7, 8), "divisible"), ((2, 16, 80, 80), "at most"), ((0, 16, 8, 8), "empty"), ((16, 8, 8), "shape")],
)
def test_bad_latents(tiny, shape, match):
    with pytest.raises(ValueError, match=match):
        tiny.encode(latents=torch.zeros(shape))


def test_integer_latents_rejected(tiny):
    with pytest.raises(TypeError, match="floating-point"):
        tiny.encode(latents=torch.zeros(1, 16, 8, 8, dtype=torch.long))


def test_exactly_one_input(tiny):
    with pytest.raises(ValueError, match="exactly one"):
        tiny.encode()


@pytest.mark.parametrize(
    "ids, error, match",
    [
        (lambda K, C: torch.full((1, K), C), ValueError, r"\[0, "),
        (lambda K, C: torch.full((1, K), -1), ValueError, r"\[0, "),
        (lambda K, C: torch.zeros(1, K + 1, dtype=torch.long), ValueError, "shape"),
        (lambda K, C: torch.zeros(1, K), TypeError, "integer"),
        (lambda K, C: torch.zeros(0, K, dtype=torch.long), ValueError, "empty"),
        (lambda K, C: [[0] * K], TypeError, "torch.Tensor"),
    ],
)
def test_bad_token_ids(tiny, ids, error, match):
    with pytest.raises(error, match=match):
        tiny.embed_tokens(ids(tiny.config.num_image_tokens, tiny.config.codebook_size))


def test_config_validation():
    with pytest.raises(Exception, match="divisible"):
        SelftokConfig(**dict(SELFTOK_TINY_CONFIG, query_heads=5))
    with pytest.raises(Exception, match="sums to"):
        SelftokConfig(**dict(SELFTOK_TINY_CONFIG, num_image_tokens=40))


def test_release_preset_sizes():
    with torch.device("meta"):
        model = SelftokModel(SelftokConfig())
    n_params = sum(p.numel() for p in model.parameters())
    # Official count (reference README) less what we do not keep: the fixed pos_embed table (recomputed)
    # and the two unused LayerNorms final_layer_norm (query_dim) and final_layer_norm2 (code_dim).
    cfg = model.config
    assert n_params == 84_326_544 - cfg.pos_embed_max_size**2 * cfg.encoder_hidden_size - 2 * cfg.query_dim - 2 * cfg.code_dim
