"""Parity of SelftokDecoderTransformer / SelftokRenderer with the official Selftok MMDiT, plus API checks.

The fixtures (official code, fp32 CPU, reduced sizes) live in ``$SELFTOK_REFERENCE_DIR``
(default ``tests/fixtures/official_reference``); see their README for the conventions. Every size
is read from the fixtures, never hard-coded here.
"""

import copy
import json
import math
import os
import threading
from pathlib import Path

import pytest
import torch

from selftok_hf.conversion import (
    convert_official_decoder_state_dict,
    convert_official_renderer_state_dict,
    decoder_config_from_official_state_dict,
    decoder_state_dict_from_sd3,
    renderer_config_from_official_state_dict,
)
from selftok_hf.modeling_selftok_decoder import (
    SELFTOK_DECODER_RELEASE_CONFIG,
    SELFTOK_DECODER_TINY_CONFIG,
    SELFTOK_RENDERER_RELEASE_CONFIG,
    SELFTOK_RENDERER_TINY_CONFIG,
    SelftokDecoderTransformer,
    SelftokRenderer,
)

REFERENCE_DIR = Path(os.environ.get("SELFTOK_REFERENCE_DIR", Path(__file__).parent / "fixtures" / "official_reference"))
# Float comparisons with the fixture use tolerances measured on the fixture itself: multiples of our own fp32 error
# against the same computation in float64 (conftest `fp32_parity`), so they hold on any faithful fixture.


def _official_model_dict(filename):
    from safetensors.torch import load_file

    return {k[len("model.") :]: v for k, v in load_file(REFERENCE_DIR / filename).items() if k.startswith("model.")}


@pytest.fixture(scope="module")
def reference():
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"official reference fixtures not found in {REFERENCE_DIR} (set SELFTOK_REFERENCE_DIR)")
    import yaml
    from safetensors.torch import load_file

    params = yaml.safe_load((REFERENCE_DIR / "config.yaml").read_text())["tokenizer"]["params"]
    return dict(cases=load_file(REFERENCE_DIR / "cases.safetensors"), params=params)


@pytest.fixture(scope="module")
def decoder(reference):
    official = _official_model_dict("official_tokenizer_state_dict.safetensors")
    params = reference["params"]
    config = decoder_config_from_official_state_dict(
        official, sample_size=params["image_size"] // 8, context_see_xt=params["context_see_xt"]
    )
    model = SelftokDecoderTransformer(**config).eval()
    state_dict, _ = convert_official_decoder_state_dict(official, config)
    model.load_state_dict(state_dict, strict=True)
    return model


@pytest.fixture(scope="module")
def decoder64(decoder):
    return copy.deepcopy(decoder).double()


@pytest.fixture(scope="module")
def renderer(reference):
    official = _official_model_dict("official_renderer_state_dict.safetensors")
    config = renderer_config_from_official_state_dict(official)
    model = SelftokRenderer(**config).eval()
    state_dict, _ = convert_official_renderer_state_dict(official, config)
    model.load_state_dict(state_dict, strict=True)
    return model


@pytest.fixture(scope="module")
def renderer64(renderer):
    return copy.deepcopy(renderer).double()


def _max_diff(a, b):
    return (a.float() - b.float()).abs().max().item()


# ------------------------------------------------------------------------------------ fixture parity
def test_config_inferred_from_official_weights(decoder, reference):
    params, cases = reference["params"], reference["cases"]
    cfg = decoder.config
    assert cfg.num_image_tokens == params["k"] == cases["dec.codes"].shape[1]
    assert cfg.token_dim == params["quantizer_config"]["code_dim"] == cases["dec.codes"].shape[2]
    assert cfg.num_layers == params["decoder_config"]["depth"]
    assert cfg.pos_embed_max_size == params["decoder_config"]["pos_embed_max_size"]
    assert cfg.in_channels == params["in_channels"] == cases["dec.x_t"].shape[2]
    assert cfg.sample_size == cases["dec.x_t"].shape[-1]


def _velocity(model, cases, m, codes=None):
    dtype = next(model.parameters()).dtype
    codes = cases["dec.codes"] if codes is None else codes
    x_t = cases["dec.x_t"][m].to(dtype)
    return model(x_t, cases["dec.tau"][m], codes.to(dtype), token_mask=cases["dec.mask"][m]).sample


def _max_linear_input(model):
    return max(m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_decoder_velocity_matches_official(decoder, decoder64, reference, parity):
    cases = reference["cases"]
    cfg = decoder.config
    num_patches = (cases["dec.x_t"].shape[-1] // cfg.patch_size) ** 2
    reduction = max(_max_linear_input(decoder), num_patches + cfg.num_image_tokens)
    angle = 1000.0 + 8 * (cfg.num_image_tokens - 1)  # the token positions' timestep angles
    for m in range(cases["dec.tau"].shape[0]):
        # Zeroing invisible code vectors changes nothing (they are masked everywhere).
        zeroed = cases["dec.codes"] * cases["dec.mask"][m, :, :, None]
        with torch.no_grad():
            ours32, ours32_zeroed = _velocity(decoder, cases, m), _velocity(decoder, cases, m, zeroed)
        with parity.float64() as calls:
            ours64, ours64_zeroed = _velocity(decoder64, cases, m), _velocity(decoder64, cases, m, zeroed)
        assert calls
        velocity = parity.check(f"dec.velocity[{m}]", cases["dec.velocity"][m], ours32, ours64)
        assert velocity.ok, velocity
        check = parity.check(
            f"dec.velocity_zeroed_context[{m}]", cases["dec.velocity_zeroed_context"][m], ours32_zeroed, ours64_zeroed
        )
        assert check.ok, check
        # Guard for the tolerances above, which are multiples of our fp32 error: that error stays within the
        # a-priori fp32 forward-error bound (conftest `fp32_forward_error_bound`; loose here, ~300x, as the
        # timestep-angle term dominates), so an fp16/bf16 step cannot loosen them unseen.
        bound = parity.forward_error_bound(ours64.abs().max().item(), cfg.num_layers, reduction, angle)
        print(f"decoder fp32 vs fp64, case {m}: {velocity.e:.2e} <= {bound:.2e}")
        assert velocity.e <= bound, f"case {m}"


def _block_outputs(model, cases, m):
    outputs = []
    hooks = [block.register_forward_hook(lambda mod, args, out: outputs.append(out)) for block in model.transformer_blocks]
    try:
        _velocity(model, cases, m)
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


def test_decoder_block_outputs_match_official_debug_tensors(decoder, decoder64, reference, parity):
    cases, m = reference["cases"], 2
    with torch.no_grad():
        ours32 = _block_outputs(decoder, cases, m)
    with parity.float64():
        ours64 = _block_outputs(decoder64, cases, m)
    for i, ((context, hidden), (context64, hidden64)) in enumerate(zip(ours32, ours64)):
        check = parity.check(f"debug.dec.case{m}.block{i}.x", cases[f"debug.dec.case{m}.block{i}.x"], hidden, hidden64)
        assert check.ok, check
        key = f"debug.dec.case{m}.block{i}.context"
        if key in cases:
            # Case 2 mixes token counts, so no slicing: every token's output exists and is compared.
            assert context.shape == cases[key].shape
            check = parity.check(key, cases[key], context, context64)
            assert check.ok, check
        else:
            assert context is None  # the pre-only last block


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_slicing_equals_masking(decoder, decoder64, reference, parity, dtype):
    """Slicing off invisible tokens is exact: equal in float64 (1e-12: a pure fp64 self-consistency check); in
    float32 only the summation order in attention changes, so the sliced fp32 output must be as close to the exact
    (float64 masked) value as the masked fp32 output is: conftest ``fp32_parity`` with the sliced output in the
    place of the official one."""
    model = decoder if dtype == torch.float32 else decoder64
    cases = reference["cases"]
    mask = cases["dec.mask"]
    mixed = [m for m in range(mask.shape[0]) if mask[m, 0].sum() != mask[m, 1].sum()]
    assert mixed, "fixture has no case with different token counts per sample"
    for m in mixed:
        x_t, tau, codes = cases["dec.x_t"][m].to(dtype), cases["dec.tau"][m], cases["dec.codes"].to(dtype)
        with torch.no_grad():
            masked = model(x_t, tau, codes, token_mask=mask[m]).sample  # mixed counts -> masked attention
        if dtype == torch.float32:
            with parity.float64():
                exact = decoder64(x_t.double(), tau, codes.double(), token_mask=mask[m]).sample
        for b in range(x_t.shape[0]):
            n = int(mask[m, b].sum())
            with torch.no_grad():
                sliced = model(x_t[b : b + 1], tau[b : b + 1], codes[b : b + 1], token_mask=mask[m, b : b + 1]).sample
                prefix = model(x_t[b : b + 1], tau[b : b + 1], codes[b : b + 1, :n]).sample
            if dtype == torch.float64:
                assert _max_diff(sliced, masked[b : b + 1]) <= 1e-12
            else:
                check = parity.check(f"sliced vs masked[{m}, {b}]", sliced, masked[b : b + 1], exact[b : b + 1])
                assert check.ok, check
            assert _max_diff(prefix, sliced) == 0.0


def test_renderer_matches_official(renderer, renderer64, reference, parity):
    cases = reference["cases"]
    with torch.no_grad():
        ours32 = renderer(cases["render.codes"]).sample
    with parity.float64() as calls:
        ours64 = renderer64(cases["render.codes"].double()).sample
    assert calls
    check = parity.check("render.pred_latent", cases["render.pred_latent"], ours32, ours64)
    assert check.ok, check


def _scale_query_weight(model):
    with torch.no_grad():
        model.transformer_blocks[0].attn.to_q.weight.mul_(1 + 1e-3)


def _swap_two_heads(model):
    """Swap the image-query projections of heads 0 and 1 in the first block."""
    attn = model.transformer_blocks[0].attn
    head = attn.to_q.weight.shape[0] // attn.num_heads
    with torch.no_grad():
        rows = attn.to_q.weight[: 2 * head].clone()
        attn.to_q.weight[:head], attn.to_q.weight[head : 2 * head] = rows[head:], rows[:head]


@pytest.mark.parametrize("corrupt", [_scale_query_weight, _swap_two_heads], ids=["weight*(1+1e-3)", "swap heads"])
def test_a_wrong_port_fails_parity(decoder, reference, parity, corrupt):
    """The fixture-derived tolerance is not vacuous: a slightly wrong port is rejected."""
    cases, m = reference["cases"], 2
    wrong = copy.deepcopy(decoder)
    corrupt(wrong)
    wrong64 = copy.deepcopy(wrong).double()
    with torch.no_grad():
        ours32 = _velocity(wrong, cases, m)
    with parity.float64():
        ours64 = _velocity(wrong64, cases, m)
    check = parity.check(f"dec.velocity[{m}] ({corrupt.__name__})", cases["dec.velocity"][m], ours32, ours64)
    assert not check.ok, check


def test_tolerances_hold_on_a_wider_emulated_fixture(decoder, reference, parity):
    """An emulated second fixture: the shared fixture's decoder at 4x the heads (width) and 2x the depth, seeded
    random weights of unit gain, and in the official code's place another faithful fp32 implementation (conftest
    ``another_fp32_implementation``: MATH attention, differently rounded timestep frequencies)."""
    cfg = decoder.config
    wide = SelftokDecoderTransformer.from_config(
        {**cfg, "num_attention_heads": 4 * cfg.num_attention_heads, "num_layers": 2 * cfg.num_layers}
    ).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in wide.parameters():
            scale = param[0].numel() ** -0.5 if param.ndim >= 2 else 0.1
            param.copy_(scale * torch.randn(param.shape, generator=generator))
    wide64 = copy.deepcopy(wide).double()
    cases, m = reference["cases"], 2
    with parity.other_fp32():
        other = _velocity(wide, cases, m)
    with torch.no_grad():
        ours32 = _velocity(wide, cases, m)
    with parity.float64():
        ours64 = _velocity(wide64, cases, m)
    check = parity.check(f"wide emulated dec.velocity[{m}]", other, ours32, ours64)
    assert check.ok, check


# --------------------------------------------------------------------------------- conversion
def _manifest_model_dict(kind):
    manifest = json.loads((REFERENCE_DIR / "release_state_dict_manifest.json").read_text())["checkpoints"][kind]
    meta = {
        k[len("model.") :]: torch.empty(v["shape"], dtype=getattr(torch, v["dtype"]), device="meta")
        for k, v in manifest["keys"].items()
        if k.startswith("model.")
    }
    params = {k[len("model.") :] for k in manifest["parameter_keys"] if k.startswith("model.")}
    return meta, params, manifest["counts"]


def _dropped_param_elements(dropped, official, official_params):
    total = 0
    for key in dropped:
        base = key.removesuffix("[query rows]")
        if base in official_params:
            total += official[base].numel() // (3 if key.endswith("[query rows]") else 1)
    return total


@pytest.mark.parametrize(
    "kind, model_cls, convert, count_key",
    [
        ("tokenizer", SelftokDecoderTransformer, convert_official_decoder_state_dict, "decoder_params"),
        ("renderer", SelftokRenderer, convert_official_renderer_state_dict, "renderer_params"),
    ],
)
def test_release_manifest_converts(reference, kind, model_cls, convert, count_key):
    official, official_params, counts = _manifest_model_dict(kind)
    renderer_official = official if kind == "renderer" else _manifest_model_dict("renderer")[0]
    renderer_config = renderer_config_from_official_state_dict(renderer_official)
    if model_cls is SelftokRenderer:
        config = renderer_config
        assert config == SELFTOK_RENDERER_RELEASE_CONFIG
    else:
        # The decoder weights do not fix the latent side; the release renderer's position table does.
        config = decoder_config_from_official_state_dict(official, sample_size=renderer_config["sample_size"])
        assert config == SELFTOK_DECODER_RELEASE_CONFIG

    state_dict, dropped = convert(official, config)  # strict: raises on any unmapped key or shape mismatch
    with torch.device("meta"):
        model = model_cls(**config)
    model.load_state_dict(state_dict, strict=True, assign=True)
    ours = sum(p.numel() for p in model.parameters())
    assert ours == counts[count_key] - _dropped_param_elements(dropped, official, official_params)


def test_converter_is_strict(reference):
    official = _official_model_dict("official_tokenizer_state_dict.safetensors")
    config = decoder_config_from_official_state_dict(official, sample_size=reference["params"]["image_size"] // 8)
    with pytest.raises(ValueError, match="register"):
        convert_official_decoder_state_dict({**official, "register": torch.zeros(1, 4, 8)}, config)
    incomplete = {k: v for k, v in official.items() if k != "final_layer.linear.bias"}
    with pytest.raises(ValueError, match="proj_out.bias"):
        convert_official_decoder_state_dict(incomplete, config)
    with pytest.raises(ValueError, match="context_pos_embed"):
        convert_official_decoder_state_dict({**official, "context_pos_embed": official["context_pos_embed"] + 1}, config)
    with pytest.raises(ValueError, match="does not match"):
        convert_official_decoder_state_dict(official, {**config, "num_layers": config["num_layers"] + 1})


# ------------------------------------------------------------------------------- SD3 initialisation
@torch.no_grad()
def test_sd3_image_stream_mapping():
    """A decoder initialised from a tiny SD3Transformer2DModel reproduces SD3's output.

    The image stream comes from `decoder_state_dict_from_sd3`. To make the full forward passes
    comparable, the token stream is made equal by construction: SD3's context modulations are made
    constant (zero weights, so only biases remain, copied to ours), its pooled-text path is zeroed, its
    context embedder is the identity and receives our embedded tokens, and its context-side attention
    and MLP weights are copied over (they share diffusers' names).
    """
    from diffusers import SD3Transformer2DModel

    cfg = SELFTOK_DECODER_TINY_CONFIG
    width = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    torch.manual_seed(0)
    sd3 = SD3Transformer2DModel(
        sample_size=cfg["sample_size"],
        patch_size=cfg["patch_size"],
        in_channels=cfg["in_channels"],
        out_channels=cfg["out_channels"],
        num_layers=cfg["num_layers"],
        attention_head_dim=cfg["attention_head_dim"],
        num_attention_heads=cfg["num_attention_heads"],
        joint_attention_dim=width,
        caption_projection_dim=width,
        pooled_projection_dim=8,
        pos_embed_max_size=cfg["pos_embed_max_size"],
    ).eval()
    for p in sd3.parameters():
        p.normal_(0, 0.3)
    sd3.context_embedder.weight.copy_(torch.eye(width))
    sd3.context_embedder.bias.zero_()
    sd3.time_text_embed.text_embedder.linear_2.weight.zero_()
    sd3.time_text_embed.text_embedder.linear_2.bias.zero_()
    for block in sd3.transformer_blocks:
        block.norm1_context.linear.weight.zero_()

    decoder = SelftokDecoderTransformer(**cfg).eval()
    missing, unexpected = decoder.load_state_dict(decoder_state_dict_from_sd3(sd3.state_dict(), cfg), strict=False)
    assert not unexpected
    token_stream = ("context_embedder.", "norm1_context.", "attn.add_", "attn.to_add_out.", "ff_context.")
    assert missing and all(any(part in k for part in token_stream) for k in missing)

    ours = decoder.state_dict()
    shared = {k: v for k, v in sd3.state_dict().items() if k in missing and k in ours and "context_embedder" not in k}
    decoder.load_state_dict(shared, strict=False)
    for block in decoder.transformer_blocks:
        if not block.context_pre_only:  # make the per-token modulation constant, like SD3's
            block.norm1_context.linear.weight.zero_()

    batch = 2
    x = torch.randn(batch, cfg["in_channels"], cfg["sample_size"], cfg["sample_size"])
    tau = torch.tensor([0.3, 0.9])
    codes = torch.randn(batch, cfg["num_image_tokens"], cfg["token_dim"])
    context = decoder.context_embedder(codes) + decoder.context_pos_embed
    expected = sd3(x, encoder_hidden_states=context, pooled_projections=torch.randn(batch, 8), timestep=tau * 1000).sample
    assert _max_diff(decoder(x, tau, codes).sample, expected) <= 1e-5


def test_sd3_mapping_rejects_unsupported_variants():
    cfg = SELFTOK_DECODER_TINY_CONFIG
    with pytest.raises(ValueError, match="norm_q"):
        decoder_state_dict_from_sd3({"transformer_blocks.0.attn.norm_q.weight": torch.ones(8)}, cfg)


# ----------------------------------------------------------------------------------- tiny models
def _random_tiny_decoder(**overrides):
    torch.manual_seed(0)
    model = SelftokDecoderTransformer(**{**SELFTOK_DECODER_TINY_CONFIG, **overrides})
    with torch.no_grad():
        for p in model.parameters():  # the default init zeroes the adaLN modulations
            p.normal_(0, 0.3)
    return model.eval()


def _tiny_inputs(model, batch=2):
    cfg = model.config
    x = torch.randn(batch, cfg.in_channels, cfg.sample_size, cfg.sample_size)
    codes = torch.randn(batch, cfg.num_image_tokens, cfg.token_dim)
    mask = torch.arange(cfg.num_image_tokens) <= torch.tensor([cfg.num_image_tokens // 2, 1])[:batch, None]
    return x, torch.tensor([0.7, 0.1])[:batch], codes, mask


def test_bad_inputs_raise():
    model = _random_tiny_decoder()
    cfg = model.config
    x, tau, codes, mask = _tiny_inputs(model)
    bad_calls = {
        "channels": lambda: model(x[:, :-1], tau, codes),
        "patch multiple": lambda: model(x[..., :-1], tau, codes),
        "too large": lambda: model(torch.randn(2, cfg.in_channels, 2 * cfg.pos_embed_max_size + 2, 2), tau, codes),
        "token_dim": lambda: model(x, tau, codes[..., :-1]),
        "batch": lambda: model(x, tau, codes[:1]),
        "too many tokens": lambda: model(x, tau, torch.cat([codes, codes], 1)),
        "mask shape": lambda: model(x, tau, codes, token_mask=mask[:, :-1]),
        "timestep shape": lambda: model(x, tau[:1], codes),
    }
    for name, call in bad_calls.items():
        with pytest.raises(ValueError):
            call()
            pytest.fail(name)
    renderer = SelftokRenderer(**SELFTOK_RENDERER_TINY_CONFIG)
    with pytest.raises(ValueError, match="token_codes"):
        renderer(codes[:, :-1])


@torch.no_grad()
def test_cached_token_modulations_and_scalar_timestep():
    model = _random_tiny_decoder()
    x, tau, codes, mask = _tiny_inputs(model)
    reference = model(x, tau, codes, token_mask=mask).sample
    with model.cached_token_modulations():
        for _ in range(2):  # second call reads the cache
            assert _max_diff(model(x, tau, codes, token_mask=mask).sample, reference) <= 1e-6
        assert model._token_modulation_caches[threading.get_ident()]  # one cache per thread (ab81fe0)
    assert threading.get_ident() not in model._token_modulation_caches
    same_tau = model(x, 0.5, codes).sample
    assert _max_diff(same_tau, model(x, torch.full((2,), 0.5), codes).sample) == 0.0


def test_gradient_checkpointing_matches():
    model = _random_tiny_decoder()
    model.train()
    x, tau, codes, mask = _tiny_inputs(model)

    def grads():
        model.zero_grad()
        model(x, tau, codes, token_mask=mask).sample.square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    plain = grads()
    model.enable_gradient_checkpointing()
    checkpointed = grads()
    model.disable_gradient_checkpointing()
    assert all(_max_diff(a, b) <= 1e-6 for a, b in zip(plain, checkpointed))


@torch.no_grad()
def test_bf16():
    model = _random_tiny_decoder()
    x, tau, codes, mask = _tiny_inputs(model)
    reference = model(x, tau, codes, token_mask=mask).sample
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = model(x, tau, codes, token_mask=mask).sample
    bf16 = model.to(torch.bfloat16)(x.bfloat16(), tau, codes.bfloat16(), token_mask=mask).sample
    assert bf16.dtype == torch.bfloat16
    # bf16 keeps ~3 significant digits: compare by relative L2 error (a few percent through random layers).
    def relative_error(out):
        return ((out.float() - reference).norm() / reference.norm()).item()

    assert relative_error(autocast) <= 0.03
    assert relative_error(bf16) <= 0.03


@torch.no_grad()
def test_save_load_roundtrip_and_renderer_shapes(tmp_path):
    model = _random_tiny_decoder()
    x, tau, codes, mask = _tiny_inputs(model)
    model.save_pretrained(tmp_path / "decoder")
    loaded = SelftokDecoderTransformer.from_pretrained(tmp_path / "decoder").eval()
    assert _max_diff(loaded(x, tau, codes, token_mask=mask).sample, model(x, tau, codes, token_mask=mask).sample) == 0.0

    renderer = SelftokRenderer(**SELFTOK_RENDERER_TINY_CONFIG).eval()
    cfg = renderer.config
    out = renderer(codes, return_dict=False)[0]
    assert out.shape == (2, cfg.out_channels, cfg.sample_size, cfg.sample_size)
    renderer.save_pretrained(tmp_path / "renderer")
    reloaded = SelftokRenderer.from_pretrained(tmp_path / "renderer").eval()
    assert _max_diff(reloaded(codes).sample, out) == 0.0


def test_context_blind_decoder_and_lora():
    """`context_see_xt=False` uses separate token/image attention; LoRA attaches to the image stream."""
    pytest.importorskip("peft")
    from peft import LoraConfig

    model = _random_tiny_decoder(context_see_xt=False)
    x, tau, codes, mask = _tiny_inputs(model)
    with torch.no_grad():
        double = copy.deepcopy(model).double()
        masked = double(x.double(), tau, codes.double(), token_mask=mask).sample
        for b in range(2):
            sliced = double(x[b : b + 1].double(), tau[b : b + 1], codes[b : b + 1].double(), token_mask=mask[b : b + 1])
            assert _max_diff(sliced.sample, masked[b : b + 1]) <= 1e-12
        masked = model(x, tau, codes, token_mask=mask).sample
    model.add_adapter(LoraConfig(r=2, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():
        assert _max_diff(model(x, tau, codes, token_mask=mask).sample, masked) <= 1e-6  # LoRA B starts at zero
    assert any("lora" in n for n, p in model.named_parameters() if p.requires_grad)
    assert math.isfinite(model(x, tau, codes, token_mask=mask).sample.sum().item())
