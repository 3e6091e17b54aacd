"""SelftokDecoderPipeline(prefix_length=...): decoding from the coarsest tokens only (coarse-to-fine decodes)."""

import pytest
import torch

from selftok_hf.assets import bundled_images
from selftok_hf.token_schedule import to_code_order

STEPS = 4


@pytest.fixture(scope="module")
def pipe(steering_pipeline):
    return steering_pipeline


@pytest.fixture(scope="module")
def ids(pipe):
    return pipe.encode(list(bundled_images().values())[:2])


@pytest.fixture(scope="module")
def noise(pipe, ids):
    return torch.randn(pipe._latent_shape(ids.shape[0]), generator=torch.Generator().manual_seed(3))


def decode(pipe, ids, noise, **kwargs):
    return pipe(ids, num_inference_steps=STEPS, latents=noise, output_type="latent", **kwargs).images


def record_transformer_inputs(pipe):
    """Forward hook collecting the (token_codes, visibility) of every transformer call."""
    seen = []
    hook = pipe.transformer.register_forward_hook(
        lambda module, args, kwargs, out: seen.append((kwargs["token_codes"].clone(), kwargs["visibility"])), with_kwargs=True
    )
    return seen, hook


@pytest.mark.parametrize("guidance_scale", [1.0, 2.5])
def test_full_prefix_is_the_default_decode(pipe, ids, noise, guidance_scale):
    num_tokens = pipe.image_tokenizer.config.num_image_tokens
    default = decode(pipe, ids, noise, guidance_scale=guidance_scale)
    assert torch.equal(decode(pipe, ids, noise, guidance_scale=guidance_scale, prefix_length=num_tokens), default)


def test_empty_prefix_is_the_unconditional_decode(pipe, ids, noise):
    # The reference: the official sampler with every token dropped at every step (the CFG-dropout branch).
    codes = to_code_order(pipe.image_tokenizer.embed_tokens(ids))
    x = noise.clone()
    pipe.scheduler.set_timesteps(sigmas=torch.linspace(1, 0, STEPS + 1)[:-1].numpy())
    with torch.no_grad():
        for i, t in enumerate(pipe.scheduler.timesteps):
            tau = pipe.scheduler.sigmas[i].expand(x.shape[0])
            velocity = pipe.transformer(x, tau, codes, token_mask=torch.zeros(codes.shape[:2], dtype=torch.bool)).sample
            x = pipe.scheduler.step(velocity, t, x, return_dict=False)[0]
    out = decode(pipe, ids, noise, prefix_length=0)
    assert (out - x).abs().max() <= 1e-6
    # With no visible token both CFG branches are the same model call, so guidance changes nothing.
    assert (decode(pipe, ids, noise, prefix_length=0, guidance_scale=3.0) - x).abs().max() <= 1e-5
    assert (decode(pipe, ids, noise) - x).abs().max() > 1e-3  # and the tokens do matter otherwise


@pytest.mark.parametrize("guidance_scale", [1.0, 2.0])
def test_decoder_sees_exactly_the_prefix(pipe, ids, noise, guidance_scale):
    num_tokens, prefix = pipe.image_tokenizer.config.num_image_tokens, 10
    batch = ids.shape[0]
    seen, hook = record_transformer_inputs(pipe)
    try:
        decode(pipe, ids, noise, prefix_length=prefix, guidance_scale=guidance_scale)
    finally:
        hook.remove()
    counts = pipe.token_schedule.visible_count(torch.linspace(1, 0, STEPS + 1)[:-1]).tolist()
    assert len(seen) == STEPS
    assert counts[-1] <= num_tokens - prefix < counts[0]  # steps with and without visible tokens
    codes = to_code_order(pipe.image_tokenizer.embed_tokens(ids))
    rows = batch * (2 if guidance_scale > 1 else 1)
    for (token_codes, visibility), count in zip(seen, counts):
        # Code index j is visible iff j <= k(τ_i) (the schedule) and j >= K - prefix (AR position < prefix); the
        # unconditional half sees nothing.
        expected = torch.tensor([[b < batch and num_tokens - prefix <= j < count for j in range(num_tokens)] for b in range(rows)])
        assert torch.equal(visibility.as_mask(rows, num_tokens), expected)
        assert visibility.mask is None  # a window: no masked attention, decided without a host sync
        assert torch.equal(token_codes[:batch], codes)


def test_tokens_outside_the_prefix_are_ignored(pipe, ids, noise):
    prefix = 12
    changed = ids.clone()
    changed[:, prefix:] = (ids[:, prefix:] + 1) % pipe.image_tokenizer.config.codebook_size
    assert torch.equal(decode(pipe, changed, noise, prefix_length=prefix), decode(pipe, ids, noise, prefix_length=prefix))
    assert (decode(pipe, changed, noise) - decode(pipe, ids, noise)).abs().max() > 1e-4


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"prefix_length": -1}, "prefix_length must be an integer in"),
        ({"prefix_length": 33}, "prefix_length must be an integer in"),
        ({"prefix_length": 2.0}, "prefix_length must be an integer in"),
        ({"prefix_length": 4, "use_renderer": True}, "renderer decodes from all K tokens"),
    ],
)
def test_bad_prefix_length(pipe, ids, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pipe(ids, num_inference_steps=1, **kwargs)
