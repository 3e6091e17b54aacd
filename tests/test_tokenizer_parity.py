"""Parity of the converted official tokenizer (encoder + quantizer) with the official code's outputs.

Every size comes from the fixture's config and state dict; nothing about the fixture is hard-coded.
"""

import copy
import json

import pytest
import torch

from selftok_hf.conversion.convert_selftok_checkpoint import (
    build_tokenizer_from_official,
    convert_official_tokenizer_state_dict,
    load_official_config,
    load_official_state_dict,
    selftok_config_from_official,
)
from selftok_hf.modeling_selftok import SelftokModel


@pytest.fixture(scope="module")
def official(reference_dir):
    return load_official_config(str(reference_dir / "config.yaml")), load_official_state_dict(
        str(reference_dir / "official_tokenizer_state_dict.safetensors")
    )


@pytest.fixture(scope="module")
def tokenizer(official):
    return build_tokenizer_from_official(*official)


@pytest.fixture(scope="module")
def tokenizer64(tokenizer):
    """The same converted weights in float64: the exact reference of every float comparison (see conftest
    ``fp32_parity``)."""
    return copy.deepcopy(tokenizer).double()


@pytest.fixture(scope="module")
def encoded(tokenizer, cases):
    with torch.no_grad():
        return tokenizer.encode(latents=cases["enc.latents"])


@pytest.fixture(scope="module")
def encoded64(tokenizer64, cases, parity):
    with parity.float64() as calls:
        out = tokenizer64.encode(latents=cases["enc.latents"].double())
    assert calls, "the float64 reference did not reach the timestep features"
    return out


def code_order(t):
    return t.flip(1)


def test_token_ids_equal_exactly(encoded, encoded64, cases):
    assert encoded.token_ids.dtype == torch.int64
    assert torch.equal(code_order(encoded.token_ids), cases["enc.ids"])
    assert torch.equal(encoded64.token_ids, encoded.token_ids)


def test_code_vectors(encoded, tokenizer, tokenizer64, cases, parity):
    ours64 = tokenizer64.embed_tokens(encoded.token_ids)
    check = parity.check("enc.codes", cases["enc.codes"], code_order(encoded.token_embeddings), code_order(ours64))
    assert check.ok, check
    rebuilt = tokenizer.embed_tokens(encoded.token_ids)
    check = parity.check("enc.codes_from_ids", cases["enc.codes_from_ids"], code_order(rebuilt), code_order(ours64))
    assert check.ok, check


def test_quantizer_alone_on_official_inputs(tokenizer, tokenizer64, cases, parity):
    """The quantizer fed the official encoder outputs reproduces projections, cosines and ids."""
    features = cases["enc.quantizer_input"]
    q32, q64 = tokenizer.quantizer, tokenizer64.quantizer
    with torch.no_grad():
        projected64 = q64.project_in(features.double())
        check = parity.check("enc.project_in", cases["enc.project_in"], q32.project_in(features), projected64)
        assert check.ok, check
        # `cosine_similarity` normalises and compares in float32 whatever the weights' dtype, so its exact value
        # is written out here: the same formula in float64.
        cos64 = torch.nn.functional.normalize(projected64, dim=-1) @ q64.embed.t()
        check = parity.check("enc.cos_sim", cases["enc.cos_sim"], q32.cosine_similarity(features), cos64)
        assert check.ok, check
        ids, _ = q32.quantize(features)
        assert torch.equal(ids, cases["enc.ids"])
        check = parity.check("enc.codes (official inputs)", cases["enc.codes"], q32.embed_ids(ids), q64.embed_ids(ids))
        assert check.ok, check


def test_quantizer_inputs(encoded, encoded64, cases, parity):
    # On the shared fixture our fp32 output is 1.5e-5 from the fixture, but the official code run on our CI machine
    # equals ours bitwise: the fixture was made on a machine that rounds the query stream's timestep angles
    # differently. Both are within 1x of our own fp32 error against the exact (float64) value, ~4e-5.
    check = parity.check(
        "enc.quantizer_input",
        cases["enc.quantizer_input"],
        code_order(encoded.query_features),
        code_order(encoded64.query_features),
    )
    assert check.ok, check


def _encoder_reduction_and_angle(encoder, num_patches):
    """Longest reduction of one encoder block (widest Linear input, or the query attention's key count) and the
    largest sinusoid angle (token positions 1000 + 8 (K - 1), frequency 1), read from the model."""
    widest = max(m.in_features for m in encoder.modules() if isinstance(m, torch.nn.Linear))
    return max(widest, num_patches + encoder.config.num_image_tokens), float(encoder.positions.abs().max())


def test_encoder_is_fp64_accurate(tokenizer, tokenizer64, cases, parity):
    """Our fp32 encoder is as accurate as fp32 allows: no lower-precision step, no lost accumulation.

    This is what keeps the fixture-derived tolerances meaningful (they are multiples of this fp32 error), so it
    cannot use them: the bound is an a-priori forward-error bound (conftest ``fp32_forward_error_bound``) in the
    fixture's own output scale, depth, widest reduction and timestep range, not a number measured on one fixture.
    """
    latents = cases["enc.latents"]
    with torch.no_grad():
        f32 = tokenizer.encoder(latents).double()
    with parity.float64():
        f64 = tokenizer64.encoder(latents.double())
    num_patches = (latents.shape[-2] // tokenizer.config.patch_size) * (latents.shape[-1] // tokenizer.config.patch_size)
    reduction, angle = _encoder_reduction_and_angle(tokenizer.encoder, num_patches)
    bound = parity.forward_error_bound(f64.abs().max().item(), tokenizer.config.encoder_depth, reduction, angle)
    error = (f32 - f64).abs().max().item()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_error = (tokenizer.encoder(latents).double() - f64).abs().max().item()
    print(f"encoder fp32 vs fp64: {error:.2e} <= {bound:.2e} (depth {tokenizer.config.encoder_depth}, "
          f"reduction {reduction}, angle {angle:g}); under bf16 autocast: {bf16_error:.2e}")
    assert error <= bound
    assert bf16_error > bound  # the bound is not vacuous: a bf16 step breaks it


def _encoder_block_outputs(encoder, latents):
    image = encoder.patch_embed(latents)
    grid_h, grid_w = image.shape[-2:]
    image = image.flatten(2).transpose(1, 2) + encoder.cropped_pos_embed(grid_h, grid_w).to(image.dtype)
    queries = encoder.queries.expand(latents.shape[0], -1, -1)
    outputs = []
    for block in encoder.blocks:
        image, queries = block(image, queries, encoder.positions, True)
        outputs.append((image, queries))
    return outputs


def test_debug_block_outputs(tokenizer, tokenizer64, cases, parity):
    latents = cases["enc.latents"]
    with torch.no_grad():
        ours32 = _encoder_block_outputs(tokenizer.encoder, latents)
    with parity.float64():
        ours64 = _encoder_block_outputs(tokenizer64.encoder, latents.double())
    for i, ((image, queries), (image64, queries64)) in enumerate(zip(ours32, ours64)):
        check = parity.check(f"enc.debug.block{i}.x", cases[f"enc.debug.block{i}.x"], image, image64)
        assert check.ok, check
        check = parity.check(f"enc.debug.block{i}.q", cases[f"enc.debug.block{i}.q"], queries, queries64)
        assert check.ok, check


def _scale_query_mlp_weight(tokenizer):
    with torch.no_grad():
        tokenizer.encoder.blocks[0].query_mlp.fc1.weight.mul_(1 + 1e-3)


def _swap_two_query_heads(tokenizer):
    """Swap the query projections of heads 0 and 1 in the first block's query stream."""
    attn = tokenizer.encoder.blocks[0].attn
    head = tokenizer.config.query_dim // attn.query_heads
    with torch.no_grad():
        rows = attn.query_qkv.weight[: 2 * head].clone()
        attn.query_qkv.weight[:head], attn.query_qkv.weight[head : 2 * head] = rows[head:], rows[:head]


@pytest.mark.parametrize("corrupt", [_scale_query_mlp_weight, _swap_two_query_heads], ids=["weight*(1+1e-3)", "swap heads"])
def test_a_wrong_port_fails_parity(tokenizer, cases, parity, corrupt):
    """The fixture-derived tolerance is not vacuous: a slightly wrong port is rejected."""
    wrong = copy.deepcopy(tokenizer)
    corrupt(wrong)
    wrong64 = copy.deepcopy(wrong).double()
    latents = cases["enc.latents"]
    with torch.no_grad():
        ours32 = wrong.encoder(latents)
    with parity.float64():
        ours64 = wrong64.encoder(latents.double())
    check = parity.check(f"enc.quantizer_input ({corrupt.__name__})", cases["enc.quantizer_input"], ours32, ours64)
    assert not check.ok, check


def test_converted_folder_round_trip(tmp_path, tokenizer, cases, encoded):
    tokenizer.save_pretrained(tmp_path / "image_tokenizer")
    reloaded = SelftokModel.from_pretrained(tmp_path, subfolder="image_tokenizer").eval()
    with torch.no_grad():
        assert torch.equal(reloaded.encode(latents=cases["enc.latents"]).token_ids, encoded.token_ids)
    for name, buf in tokenizer.quantizer.named_buffers():
        assert torch.equal(buf, dict(reloaded.quantizer.named_buffers())[name]), name


# ------------------------------------------------------------------------------- strict converter
def test_unknown_key_is_an_error(official):
    params, sd = official
    sd = dict(sd, **{"encoder.surprise.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="encoder.surprise.weight"):
        build_tokenizer_from_official(params, sd)


def test_missing_key_is_an_error(official):
    params, sd = official
    sd = {k: v for k, v in sd.items() if k != "encoder.blocks.0.attn.qkv.weight"}
    with pytest.raises(ValueError, match=r"encoder\.blocks\.0\.attn\.image_qkv\.weight"):
        build_tokenizer_from_official(params, sd)


def test_shape_mismatch_is_an_error(official):
    params, sd = official
    sd = dict(sd)
    sd["encoder.quantizer.project_in.weight"] = sd["encoder.quantizer.project_in.weight"][:, :-1]
    with pytest.raises(ValueError, match="project_in"):
        build_tokenizer_from_official(params, sd)


def test_config_checkpoint_mismatch_is_an_error(official):
    params, sd = official
    params = copy.deepcopy(params)
    params["encoder_config"]["depth"] = params["encoder_config"]["depth"] + 1
    with pytest.raises(ValueError, match="depth"):
        build_tokenizer_from_official(params, sd)


def test_corrupt_checkpoint_is_an_error(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="could not read"):
        load_official_state_dict(str(bad))
    with pytest.raises(ValueError, match="does not exist"):
        load_official_state_dict(str(tmp_path / "missing.pth"))


def test_pth_checkpoint_is_read(tmp_path, official):
    params, sd = official
    path = tmp_path / "ckpt.pth"
    torch.save({f"module.{k}": v for k, v in sd.items()}, path)
    assert set(load_official_state_dict(str(path))) == set(sd)


def test_release_manifest_fully_mapped_on_meta_device(reference_dir):
    manifest = json.load(open(reference_dir / "release_state_dict_manifest.json"))
    entries = manifest["checkpoints"]["tokenizer"]
    shapes = {k: tuple(v["shape"]) for k, v in entries["keys"].items()}
    assert len(shapes) == entries["num_keys"]
    official = {k: torch.empty(s, device="meta") for k, s in shapes.items() if not k.startswith("model.")}
    # The release config (`256-eval.yml`, which the manifest was built from), as the official YAML states it.
    params = {
        "image_size": 256, "k": 512, "stages": "200,400,600,800,1000", "k_per_stage": "192,184,72,48,16",
        "in_channels": 16, "encoder_hidden_size": 16, "enc": "Enc-Qformer-Uni-XL/2", "enable_enc_variable_size": True,
        "encoder_config": {"time_adaln": True, "qformer_mode": "dual", "pre_norm": False, "post_norm": True, "attn_mask": False},
        "quantizer_config": {"codebook_size": 32768, "code_dim": 16, "w_diversity": 1.0, "w_commit": 1.0, "decay": 0.99,
                             "dead_code_threshold": 0.2, "reset_cluster_size": 0.2, "smart_react": True, "reg": [0.1, 0.3]},
    }
    config = selftok_config_from_official(params, official)
    converted, dropped = convert_official_tokenizer_state_dict(official, config)
    with torch.device("meta"):
        model = SelftokModel(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert set(converted) == set(expected)
    assert all(tuple(converted[k].shape) == expected[k] for k in expected)
    assert len(converted) + len(dropped) == len(official)


def _randomize(model, seed=0):
    """Seeded random weights of unit gain (matrices N(0, 1/fan_in), vectors N(0, 0.1^2)); no adaLN stays zero."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) / param[0].numel() ** 0.5)
            else:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
    return model.eval()


def test_tolerances_hold_on_a_wider_emulated_fixture(tokenizer, cases, parity):
    """An emulated second fixture: the shared fixture's config at 4x the width and 2x the depth, random weights,
    and in the official code's place another faithful fp32 implementation (conftest ``another_fp32_implementation``:
    MATH attention, differently rounded timestep frequencies). The fixture-derived bounds hold there, while the
    former hard-coded ones (2e-5, 5e-6) were measured on the shared fixture only."""
    cfg = tokenizer.config
    wide_cfg = type(cfg).from_dict({
        **cfg.to_dict(),
        "encoder_hidden_size": 4 * cfg.encoder_hidden_size, "encoder_num_heads": 4 * cfg.encoder_num_heads,
        "query_dim": 4 * cfg.query_dim, "query_heads": 4 * cfg.query_heads, "encoder_depth": 2 * cfg.encoder_depth,
    })
    wide = _randomize(SelftokModel(wide_cfg))
    wide64 = copy.deepcopy(wide).double()
    latents = cases["enc.latents"]
    with parity.other_fp32():
        other = wide.encoder(latents)
    with torch.no_grad():
        ours32 = wide.encoder(latents)
    with parity.float64():
        ours64 = wide64.encoder(latents.double())
    check = parity.check("wide emulated enc.quantizer_input", other, ours32, ours64)
    assert check.ok, check
    num_patches = (latents.shape[-2] // wide_cfg.patch_size) * (latents.shape[-1] // wide_cfg.patch_size)
    reduction, angle = _encoder_reduction_and_angle(wide.encoder, num_patches)
    bound = parity.forward_error_bound(ours64.abs().max().item(), wide_cfg.encoder_depth, reduction, angle)
    print(f"wide encoder fp32 vs fp64: {check.e:.2e} <= {bound:.2e}")
    assert check.e <= bound
