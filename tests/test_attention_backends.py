"""Attention implementations and layerwise casting.

The tokenizer's attention goes through transformers' attention interface (``config._attn_implementation``), the
decoder's and renderer's through diffusers' attention dispatch (``set_attention_backend``). Another kernel must give
the default's result to fp32 rounding, with the tolerance the parity tests use (conftest ``fp32_parity``): measured
against the same model in float64 (the exact value), it may land at most ``PARITY_C`` times farther from it than the
default fp32 output does, plus a few ulps. Settings that cannot work are refused with an error that names them.
"""

import copy
from unittest import mock

import pytest
import torch
from diffusers.models import attention_dispatch
from diffusers.models.attention_dispatch import AttentionBackendName, attention_backend
from transformers import AutoModel
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from selftok_hf import SelftokDecoderPipeline, modeling_selftok, modeling_selftok_decoder
from selftok_hf.configuration_selftok import SELFTOK_TINY_CONFIG, SelftokConfig
from selftok_hf.modeling_selftok import SelftokModel
from selftok_hf.modeling_selftok_decoder import SelftokJointAttention

pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------------------------------------------- tokenizer
def _tiny_tokenizer(causal_queries: bool) -> SelftokModel:
    """The tiny tokenizer with a random query adaLN (zero by default, which makes every image give the same ids)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = SelftokModel(SelftokConfig(**SELFTOK_TINY_CONFIG, causal_queries=causal_queries)).eval()
        for block in model.encoder.blocks:
            torch.nn.init.normal_(block.query_modulation.weight, std=0.5)
    return model


@pytest.fixture(scope="module", params=[False, True], ids=["bidirectional", "causal_queries"])
def tokenizer(request):
    return _tiny_tokenizer(request.param)


@pytest.fixture(scope="module")
def latents(tokenizer):
    cfg = tokenizer.config
    return torch.randn(4, cfg.latent_channels, cfg.latent_size, cfg.latent_size, generator=torch.Generator().manual_seed(1))


def _attention_calls(model, latents):
    """Run ``encode`` with spies on the sdpa and eager functions -> (ids, number of sdpa calls, number of eager calls)."""
    sdpa = mock.Mock(wraps=ALL_ATTENTION_FUNCTIONS["sdpa"])
    eager = mock.Mock(wraps=modeling_selftok.eager_attention_forward)
    with mock.patch.dict(ALL_ATTENTION_FUNCTIONS._local_mapping, {"sdpa": sdpa}), mock.patch.object(
        modeling_selftok, "eager_attention_forward", eager
    ), torch.no_grad():
        ids = model.encode(latents=latents).token_ids
    return ids, sdpa.call_count, eager.call_count


def test_tokenizer_eager_matches_sdpa(tokenizer, latents, parity):
    assert tokenizer.config._attn_implementation == "sdpa"  # the default
    eager = copy.deepcopy(tokenizer)
    eager.set_attn_implementation("eager")
    assert eager.config._attn_implementation == "eager" and tokenizer.config._attn_implementation == "sdpa"
    with torch.no_grad():
        sdpa_out, eager_out = tokenizer.encode(latents=latents), eager.encode(latents=latents)
    assert torch.equal(sdpa_out.token_ids, eager_out.token_ids)
    with torch.no_grad():
        sdpa_features, eager_features = tokenizer.encoder(latents), eager.encoder(latents)
    with parity.float64() as calls:
        exact = copy.deepcopy(tokenizer).double().encoder(latents.double())
    assert calls
    check = parity.check("eager vs sdpa encoder features", eager_features, sdpa_features, exact)
    assert check.ok, check


def test_attn_implementation_is_honoured(tmp_path, latents):
    tokenizer = _tiny_tokenizer(causal_queries=True)  # with the query mask
    # Each block runs the query attention; all but the last also the image self-attention.
    expected_calls = 2 * tokenizer.config.encoder_depth - 1
    ids, sdpa_calls, eager_calls = _attention_calls(tokenizer, latents)
    assert (sdpa_calls, eager_calls) == (expected_calls, 0)

    tokenizer.save_pretrained(tmp_path)
    loaded = SelftokModel.from_pretrained(tmp_path, attn_implementation="eager")
    from_config = AutoModel.from_config(tokenizer.config, attn_implementation="eager")
    from_config.load_state_dict(tokenizer.state_dict())
    for model in (loaded.eval(), from_config.eval()):
        assert model.config._attn_implementation == "eager"
        eager_ids, sdpa_calls, eager_calls = _attention_calls(model, latents)
        assert (sdpa_calls, eager_calls) == (0, expected_calls)
        assert torch.equal(eager_ids, ids)

    # and back, at run time
    loaded.set_attn_implementation("sdpa")
    assert _attention_calls(loaded, latents)[1:] == (expected_calls, 0)


def test_registered_attention_function_is_used(latents):
    """A function registered in transformers' interface runs the tokenizer's attention (with SDPA's boolean mask)."""
    calls = []

    def custom(module, query, key, value, attention_mask, **kwargs):
        calls.append(attention_mask)
        return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)

    tokenizer = _tiny_tokenizer(causal_queries=True)
    with torch.no_grad():
        expected = tokenizer.encode(latents=latents).token_ids
    with mock.patch.dict(ALL_ATTENTION_FUNCTIONS._local_mapping, {"selftok_test_attention": custom}):
        tokenizer.set_attn_implementation("selftok_test_attention")
        with torch.no_grad():
            ids = tokenizer.encode(latents=latents).token_ids
    assert torch.equal(ids, expected)
    assert len(calls) == 2 * tokenizer.config.encoder_depth - 1
    assert any(mask is not None and mask.dtype == torch.bool for mask in calls)


@pytest.mark.parametrize(
    "implementation, message",
    [
        ("flash_attention_2", "does not support Flash Attention"),
        ("flex_attention", "does not support an attention implementation through torch's flex_attention"),
        ("paged|eager", r"attn_implementation=\"paged\|eager\" is not supported by SelftokModel"),
        ("no_such_attention", "is not supported"),
    ],
)
def test_unsupported_attn_implementation_is_refused(implementation, message):
    with pytest.raises(ValueError, match=message):
        AutoModel.from_config(SelftokConfig(**SELFTOK_TINY_CONFIG), attn_implementation=implementation)
    model = SelftokModel(SelftokConfig(**SELFTOK_TINY_CONFIG))
    with pytest.raises(ValueError, match=message):
        model.set_attn_implementation(implementation)
    assert model.config._attn_implementation == "sdpa"


# ------------------------------------------------------------------------------------------ decoder and renderer
@pytest.fixture(scope="module")
def pipe(steering_pipeline):
    """A private copy of conftest's ``steering_pipeline`` (random adaLN modulations, so that tokens steer the image and
    every attention matters); its transformer and renderer are changed here."""
    components = {name: copy.deepcopy(module) for name, module in steering_pipeline.components.items()}
    pipe = SelftokDecoderPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def restore_attention_backend():
    """``ModelMixin.set_attention_backend`` also sets diffusers' process-wide active backend: restore it."""
    active = attention_dispatch._AttentionBackendRegistry._active_backend
    yield
    attention_dispatch._AttentionBackendRegistry.set_active_backend(active)


def _decoder_inputs(pipe):
    """Noisy latents, times and code vectors for 3 samples, with a mask that hides different tokens per sample (so
    the masked attention runs, not the sliced prefix)."""
    cfg = pipe.transformer.config
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(3, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=generator)
    tau = torch.rand(3, generator=generator)
    codes = torch.randn(3, cfg.num_image_tokens, cfg.token_dim, generator=generator)
    mask = torch.ones(3, cfg.num_image_tokens, dtype=torch.bool)
    mask[1, cfg.num_image_tokens // 2 :] = False
    mask[2, :3] = False
    return x, tau, codes, mask


def _outputs(transformer, renderer, x, tau, codes, mask):
    """Decoder velocities (all tokens / masked) and the renderer's latent: every attention code path (token queries
    that see the image or not, the pre-only block, a key mask or none)."""
    with torch.no_grad():
        return {
            "decoder": transformer(x, tau, codes).sample,
            "decoder masked": transformer(x, tau, codes, token_mask=mask).sample,
            "renderer": renderer(codes).sample,
        }


def _dispatch_calls(transformer, renderer):
    """How many attention calls :func:`_outputs` makes: one per decoder block (token and image queries together), two
    per renderer block but the pre-only last one (its token queries do not see the image)."""
    return 2 * transformer.config.num_layers + 2 * renderer.config.num_layers - 1


# Without torch.compile, flex attention runs unfused (and says so): fine for a check of its results.
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("backend", ["_native_math", "flex"])
def test_decoder_backends_match_native(pipe, parity, backend):
    if backend == "flex" and not attention_dispatch._CAN_USE_FLEX_ATTN:
        pytest.skip("flex attention needs torch >= 2.5")
    models = (pipe.transformer, pipe.renderer)
    inputs = _decoder_inputs(pipe)
    native = _outputs(*models, *inputs)
    with attention_backend(backend):
        other = _outputs(*models, *inputs)
    models64 = [copy.deepcopy(model).double() for model in models]
    with parity.float64() as calls:
        exact = _outputs(*models64, *(t.double() if t.is_floating_point() else t for t in inputs))
    assert calls
    for name in native:
        check = parity.check(f"{backend} vs native {name}", other[name], native[name], exact[name])
        assert check.ok, check


def test_set_attention_backend_routes_every_attention(pipe, restore_attention_backend):
    models = (pipe.transformer, pipe.renderer)
    inputs = _decoder_inputs(pipe)
    default = _outputs(*models, *inputs)
    attentions = [m for model in models for m in model.modules() if isinstance(m, SelftokJointAttention)]
    assert attentions and all(m.processor._attention_backend is None for m in attentions)
    try:
        for model in models:
            model.set_attention_backend("_native_math")
        assert all(m.processor._attention_backend == AttentionBackendName._NATIVE_MATH for m in attentions)
        spy = mock.Mock(wraps=attention_dispatch.dispatch_attention_fn)
        with mock.patch.object(modeling_selftok_decoder, "dispatch_attention_fn", spy):
            math = _outputs(*models, *inputs)
        assert spy.call_count == _dispatch_calls(*models)
        assert {call.kwargs["backend"] for call in spy.call_args_list} == {AttentionBackendName._NATIVE_MATH}
        assert any(not torch.equal(math[name], default[name]) for name in default), "the backend setting changed nothing"

        # "native" is the default: the same function, bitwise the same outputs.
        for model in models:
            model.set_attention_backend("native")
        native = _outputs(*models, *inputs)
        assert all(torch.equal(native[name], default[name]) for name in default)
    finally:
        for model in models:
            model.reset_attention_backend()
    assert all(m.processor._attention_backend is None for m in attentions)


@pytest.mark.parametrize(
    "backend, available",
    [("flash", "_CAN_USE_FLASH_ATTN"), ("sage", "_CAN_USE_SAGE_ATTN"), ("xformers", "_CAN_USE_XFORMERS_ATTN")],
)
def test_unavailable_backend_fails_clearly(pipe, restore_attention_backend, backend, available):
    if getattr(attention_dispatch, available):
        pytest.skip(f"{backend} is installed here")
    active = attention_dispatch._AttentionBackendRegistry._active_backend
    with pytest.raises(RuntimeError, match=f"'{backend}' is not usable"):
        pipe.transformer.set_attention_backend(backend)
    attentions = [m for m in pipe.transformer.modules() if isinstance(m, SelftokJointAttention)]
    assert all(m.processor._attention_backend is None for m in attentions)
    assert attention_dispatch._AttentionBackendRegistry._active_backend == active


def test_unknown_backend_is_refused(pipe, restore_attention_backend):
    with pytest.raises(ValueError, match="must be one of the following"):
        pipe.renderer.set_attention_backend("no_such_backend")


# ------------------------------------------------------------------------------------------- layerwise casting
@pytest.mark.parametrize("storage_dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_layerwise_casting(pipe, storage_dtype):
    """diffusers' layerwise casting (weights stored in ``storage_dtype``, each layer run in float32) runs the decoder
    and the renderer, and computes exactly what the float32 model computes with the stored (rounded) weights; the
    rounding moves the result by about the storage dtype's precision."""
    generator = torch.Generator().manual_seed(3)
    cfg = pipe.image_tokenizer.config
    ids = torch.randint(0, cfg.codebook_size, (2, cfg.num_image_tokens), generator=generator)

    def decode(pipeline):
        pipeline.set_progress_bar_config(disable=True)
        return {
            "decoder": pipeline(ids, num_inference_steps=4, output_type="latent", generator=torch.Generator().manual_seed(0)).images,
            "renderer": pipeline(ids, use_renderer=True, output_type="latent").images,
        }

    float32 = decode(pipe)
    transformer, renderer = copy.deepcopy(pipe.transformer), copy.deepcopy(pipe.renderer)
    for model in (transformer, renderer):
        model.enable_layerwise_casting(storage_dtype=storage_dtype, compute_dtype=torch.float32)
    # Stored in the storage dtype, except what diffusers and the model's `_skip_layerwise_casting_patterns` keep.
    assert transformer.time_embedder.mlp[0].weight.dtype == storage_dtype
    assert transformer.transformer_blocks[0].attn.to_q.weight.dtype == storage_dtype
    assert transformer.pos_embed.proj.weight.dtype == torch.float32
    assert renderer.canvas_token.dtype == torch.float32
    assert transformer.dtype == renderer.dtype == torch.float32  # the compute dtype, which the pipeline casts inputs to
    cast = decode(SelftokDecoderPipeline(**{**pipe.components, "transformer": transformer, "renderer": renderer}))

    rounded = {}
    for name, model in (("transformer", pipe.transformer), ("renderer", pipe.renderer)):
        rounded[name] = copy.deepcopy(model)
        stored = (transformer if name == "transformer" else renderer).state_dict()
        rounded[name].load_state_dict({key: value.float() for key, value in stored.items()})
    same_weights = decode(SelftokDecoderPipeline(**{**pipe.components, **rounded}))

    eps = torch.finfo(storage_dtype).eps
    for name in float32:
        # The float32 compute on the stored weights, exactly: no layer runs in the storage dtype.
        assert torch.equal(cast[name], same_weights[name]), name
        # Each stored weight is off by at most eps / 2 of itself. Here the outputs moved by 0.03 (decoder) and 0.08-0.13
        # (renderer) eps of their scale, as independent rounding errors partly cancel; eps leaves 8x room (PARITY_C's
        # margin). This bound only says "close to float32": the tiny model is insensitive to single weights (zeroing a
        # row of one value projection moves the renderer by 0.3 bfloat16 eps), so the exact equality above is the check
        # that the casting computes the right thing.
        deviation = (cast[name] - float32[name]).abs().max().item() / float32[name].abs().max().item()
        print(f"{storage_dtype} {name}: max|cast - float32| / max|float32| = {deviation / eps:.2f} eps")
        assert deviation <= eps, name
