"""TokenVisibility: the one definition of which tokens each decoder row sees, and its exact cuts.

The token schedule builds it for training (per-row times, CFG dropout: a mask) and for sampling (one time per step,
``prefix_length``, the unconditional CFG half: windows); the decoder runs a window's tokens alone and masks only what
the mask says. These tests spell each visibility out as a full ``(B, K)`` mask, check it against the rule written
here independently, and check that the decoder's cuts (window slicing, rows without a token stream) compute what the
full mask computes.
"""

import copy

import pytest
import torch

from selftok_hf import SelftokConfig
from selftok_hf.configuration_selftok import SELFTOK_TINY_CONFIG
from selftok_hf.token_schedule import TokenVisibility

pytestmark = pytest.mark.usefixtures("single_thread")

SCHEDULE = SelftokConfig(**SELFTOK_TINY_CONFIG).token_schedule
K = SCHEDULE.num_image_tokens
SIGMAS = torch.linspace(1, 0, 9)[:-1]


def test_training_visibility_is_the_schedule_and_the_dropout():
    g = torch.Generator().manual_seed(0)
    tau = torch.rand(16, generator=g)
    dropped = torch.rand(16, generator=g) < 0.3
    assert dropped.any() and not dropped.all()
    visibility = SCHEDULE.training_visibility(tau, dropped)
    assert (visibility.start, visibility.stop, visibility.unconditional_rows) == (0, K, 0)
    k = SCHEDULE.token_index(tau * 1000.0).tolist()
    expected = torch.tensor([[not dropped[b] and j <= k[b] for j in range(K)] for b in range(16)])
    assert torch.equal(visibility.as_mask(16, K), expected)
    assert torch.equal(SCHEDULE.training_visibility(tau).as_mask(16, K), SCHEDULE.visible_mask(SCHEDULE.token_index(tau * 1000.0)))


@pytest.mark.parametrize("prefix_length", [None, 0, 5, 20, K])
@pytest.mark.parametrize("unconditional_rows", [0, 2])
def test_sampling_visibility_is_the_schedule_the_prefix_and_guidance(prefix_length, unconditional_rows):
    rows = 3 + unconditional_rows
    visibilities = SCHEDULE.sampling_visibility(SIGMAS, prefix_length=prefix_length, unconditional_rows=unconditional_rows)
    counts = SCHEDULE.visible_count(SIGMAS).tolist()
    assert len(visibilities) == len(counts)
    first = K - (K if prefix_length is None else prefix_length)  # AR position < p is code index >= K - p
    for visibility, count in zip(visibilities, counts):
        assert visibility.mask is None  # windows only: nothing for the decoder to mask
        expected = torch.tensor([[b < 3 and first <= j < count for j in range(K)] for b in range(rows)])
        assert torch.equal(visibility.as_mask(rows, K), expected)


def test_from_mask_cuts_only_a_shared_prefix():
    prefix = torch.arange(K) < 9
    # Every conditional row sees its first 9 tokens: the window [0, 9); the unconditional rows are not read.
    shared = torch.stack([prefix, prefix, torch.ones(K, dtype=torch.bool)])
    assert TokenVisibility.from_mask(shared, unconditional_rows=1) == TokenVisibility(0, 9, None, 1)
    for mask in (
        torch.stack([prefix, torch.arange(K) < 10]),  # different counts
        torch.stack([prefix, prefix]) & (torch.arange(K) > 0),  # not a prefix
        torch.zeros(2, K, dtype=torch.bool),  # nothing visible
    ):
        visibility = TokenVisibility.from_mask(mask)
        assert (visibility.start, visibility.stop) == (0, K) and torch.equal(visibility.mask, mask)
        assert torch.equal(visibility.as_mask(2, K), mask)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(start=3, stop=2), "start=3 > stop=2"),
        (dict(start=-1, stop=2), "start must be an integer"),
        (dict(start=0, stop=4, mask=torch.ones(2, 3, dtype=torch.bool)), "boolean \\(rows, 4\\)"),
        (dict(start=0, stop=4, mask=torch.ones(2, 4)), "boolean"),
    ],
)
def test_bad_visibility(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TokenVisibility(**kwargs)


@pytest.fixture(scope="module")
def models(steering_pipeline):
    """The tiny decoder with random adaLN modulations (every block, and every token position, matters), fp32 and fp64."""
    model = steering_pipeline.transformer
    return model, copy.deepcopy(model).double()


@pytest.fixture(scope="module")
def batch(models):
    cfg = models[0].config
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g)
    tau = torch.rand(5, generator=g)
    codes = torch.randn(5, cfg.num_image_tokens, cfg.token_dim, generator=g)
    return x, tau, codes


CUTS = {
    "window from 0": TokenVisibility(0, 20),
    "window from 12 (prefix_length)": TokenVisibility(12, 27),
    "window and unconditional rows": TokenVisibility(12, 27, None, 2),
    "mask within a window": TokenVisibility(4, 20, torch.arange(16).remainder(3).ne(0).expand(3, -1), 2),
    "empty window": TokenVisibility(20, 20, None, 2),
    "unconditional batch": TokenVisibility(0, K, None, 5),
}


@pytest.mark.parametrize("name", list(CUTS))
def test_cuts_compute_what_the_full_mask_computes(models, batch, parity, name):
    """The decoder's cuts against the same visibility as a mask over all K tokens of every row (no window, every
    row through the token stream; a row that sees nothing is all False): exact in float64 (1e-12 relative, a pure
    self-consistency check); in float32 only the order of the attention sums changes, so the cut output must be as
    close to the exact value as the full-mask output is (conftest ``fp32_parity``: a tolerance measured on this data)."""
    cut = CUTS[name]
    x, tau, codes = batch
    full = TokenVisibility(0, K, cut.as_mask(x.shape[0], K))

    def run(model, visibility, dtype):
        return model(x.to(dtype), tau, codes.to(dtype), visibility=visibility).sample

    model32, model64 = models
    with torch.no_grad():
        cut32, full32 = run(model32, cut, torch.float32), run(model32, full, torch.float32)
    with parity.float64():
        cut64, full64 = run(model64, cut, torch.float64), run(model64, full, torch.float64)
    assert full64.abs().max() > 0.1
    assert (cut64 - full64).abs().max() <= 1e-12 * full64.abs().max()
    check = parity.check(f"cut vs full mask: {name}", cut32, full32, full64)
    assert check.ok, check


def test_window_positions_matter(models, batch):
    """A window's tokens keep their own positions: the same code vectors at positions 12..26 or at 0..14 decode
    differently (so the test above would see a window embedded at the wrong positions)."""
    x, tau, codes = batch
    model = models[0]
    shifted = torch.zeros_like(codes)
    shifted[:, :15] = codes[:, 12:27]
    with torch.no_grad():
        window = model(x, tau, codes, visibility=TokenVisibility(12, 27)).sample
        at_start = model(x, tau, shifted, visibility=TokenVisibility(0, 15)).sample
    assert (window - at_start).abs().max() > 1e-3


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(visibility=TokenVisibility(0, 4), token_mask=torch.ones(5, K, dtype=torch.bool)), "either visibility or token_mask"),
        (dict(visibility=TokenVisibility(0, 4), unconditional_rows=1), "either visibility or token_mask"),
        (dict(visibility=TokenVisibility(0, K + 1)), "does not fit 5 rows of 32 tokens"),
        (dict(visibility=TokenVisibility(0, 4, None, 6)), "does not fit 5 rows"),
        (dict(visibility=TokenVisibility(0, 4, torch.ones(5, 4, dtype=torch.bool), 1)), "must have 4 rows"),
        (dict(visibility=torch.ones(5, K, dtype=torch.bool)), "must be a TokenVisibility"),
    ],
)
def test_bad_visibility_arguments(models, batch, kwargs, match):
    x, tau, codes = batch
    with pytest.raises(ValueError, match=match):
        models[0](x, tau, codes, **kwargs)
