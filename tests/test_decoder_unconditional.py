"""The decoder's ``unconditional_rows``: classifier-free guidance's unconditional half without a token stream.

A row that sees no token (every token masked) computes image-only attention: masked keys get exactly zero weight,
and nothing else of the token stream reaches the image (no pooled vector; the time embedding is the image's own).
So skipping the token stream for such rows must give the fully masked result, and the decode loop (guided, or from a
``prefix_length``) must make no host syncs per step.
"""

import collections
import copy
from unittest import mock

import pytest
import torch

pytestmark = pytest.mark.usefixtures("single_thread")

CONDITIONAL, UNCONDITIONAL = 3, 2


@pytest.fixture(scope="module")
def model(steering_pipeline):
    """The tiny random decoder with random (non-zero) adaLN modulations, so that every block does something."""
    return steering_pipeline.transformer


@pytest.fixture(scope="module")
def model64(model):
    return copy.deepcopy(model).double()


@pytest.fixture(scope="module")
def batch(model):
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    rows = CONDITIONAL + UNCONDITIONAL
    x = torch.randn(rows, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g)
    tau = torch.rand(rows, generator=g)
    codes = torch.randn(rows, cfg.num_image_tokens - 5, cfg.token_dim, generator=g)
    return x, tau, codes


def _masks(n, prefix_mask):
    """Conditional rows: all visible, or a non-prefix pattern (a prefix_length decode); unconditional rows: none."""
    cond = torch.ones(CONDITIONAL, n, dtype=torch.bool)
    if not prefix_mask:
        return torch.cat([cond, torch.zeros(UNCONDITIONAL, n, dtype=torch.bool)])
    cond[:, :7] = False
    cond[1, -3:] = False  # different counts per row: masked attention
    return torch.cat([cond, torch.zeros(UNCONDITIONAL, n, dtype=torch.bool)])


@pytest.mark.parametrize("prefix_mask", [False, True], ids=["all-visible", "masked-conditional-rows"])
def test_skipped_token_stream_equals_fully_masked_rows(model, model64, batch, parity, prefix_mask):
    x, tau, codes = batch
    mask = _masks(codes.shape[1], prefix_mask)
    # The unconditional rows' codes and mask are not read: garbage there must change nothing.
    garbage = codes.clone()
    garbage[CONDITIONAL:] = 1e6
    skip_mask = mask.clone()
    skip_mask[CONDITIONAL:] = True
    # All-visible conditional rows take no mask, as the pipeline calls it (the tokens are sliced instead).
    skip_kwargs = dict(token_mask=skip_mask) if prefix_mask else {}

    def skip(m, dtype):
        return m(x.to(dtype), tau, garbage.to(dtype), unconditional_rows=UNCONDITIONAL, **skip_kwargs).sample

    def masked(m, dtype):
        return m(x.to(dtype), tau, codes.to(dtype), token_mask=mask).sample

    with torch.no_grad():
        skip32, masked32 = skip(model, torch.float32), masked(model, torch.float32)
    with parity.float64():
        skip64, masked64 = skip(model64, torch.float64), masked(model64, torch.float64)
    assert masked64.abs().max() > 0.1
    # Exact in float64 (the same arithmetic up to summation order).
    assert (skip64 - masked64).abs().max() <= 1e-12 * masked64.abs().max()
    # In float32 the skip path must be as close to the exact value as the masked path is (conftest fp32_parity, with
    # the skip output in the place of the official one): a tolerance measured on this data, not a constant.
    check = parity.check("skip vs fully masked", skip32, masked32, masked64)
    assert check.ok, check


def test_unconditional_rows_run_no_token_stream(model, batch):
    x, tau, codes = batch
    seen = []
    hook = model.context_embedder.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            mixed = model(x, tau, codes, unconditional_rows=UNCONDITIONAL).sample
            everything = model(x, tau, codes, unconditional_rows=x.shape[0]).sample
            zeros = model(x, tau, torch.zeros_like(codes), unconditional_rows=x.shape[0]).sample
    finally:
        hook.remove()
    assert seen == [CONDITIONAL]  # the token stream embedded the conditional rows only, and nothing for an all-unconditional batch
    assert torch.equal(everything, zeros)  # no code value reaches an unconditional row
    # A row's output does not depend on which other rows are unconditional.
    assert (everything[CONDITIONAL:] - mixed[CONDITIONAL:]).abs().max() <= 1e-5
    assert (everything[:CONDITIONAL] - mixed[:CONDITIONAL]).abs().max() > 1e-3  # the tokens do steer the conditional rows


@pytest.mark.parametrize("value", [-1, CONDITIONAL + UNCONDITIONAL + 1, 1.0, True])
def test_bad_unconditional_rows(model, batch, value):
    x, tau, codes = batch
    with pytest.raises(ValueError, match="unconditional_rows must be an integer"):
        model(x, tau, codes, unconditional_rows=value)


_SYNCS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero")


def _count_host_syncs(fn):
    """Python-level tensor -> host conversions made while ``fn`` runs, by method."""
    counts = collections.Counter()

    def counting(name, original):
        def method(self, *args, **kwargs):
            counts[name] += 1
            return original(self, *args, **kwargs)

        return method

    with mock.patch.multiple(torch.Tensor, **{name: counting(name, getattr(torch.Tensor, name)) for name in _SYNCS}):
        fn()
    return counts


@pytest.mark.parametrize(
    "guidance_scale, official_guidance, prefix_length",
    [(1.0, False, None), (2.0, False, None), (2.0, True, None), (1.0, False, 12), (2.0, False, 12)],
)
def test_decode_loop_makes_no_per_step_host_syncs(steering_pipeline, guidance_scale, official_guidance, prefix_length):
    pipe = steering_pipeline
    ids = torch.randint(0, pipe.image_tokenizer.config.codebook_size, (2, pipe.image_tokenizer.config.num_image_tokens), generator=torch.Generator().manual_seed(0))

    def decode(steps):
        return lambda: pipe(ids, num_inference_steps=steps, guidance_scale=guidance_scale, official_guidance=official_guidance,
                            prefix_length=prefix_length, generator=torch.Generator().manual_seed(0), output_type="latent")

    few, many = _count_host_syncs(decode(2)), _count_host_syncs(decode(7))
    assert sum(few.values()) > 0  # the counter works: the call's one-off checks are seen
    assert few == many, (few, many)  # nothing more per step
