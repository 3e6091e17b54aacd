import contextlib
import dataclasses
import importlib.util
import math
import os
import sys
import warnings
from pathlib import Path
from unittest import mock

import datasets
import numpy as np
import PIL.Image
import pytest
import torch

# The tiny random pipeline fixtures (tiny_pipeline, tiny_pipeline_dir) are the ones users get for their own tests.
pytest_plugins = ["selftok_hf.testing.pytest_fixtures"]

REFERENCE_DIR = Path(os.environ.get("SELFTOK_REFERENCE_DIR", Path(__file__).parent / "fixtures" / "official_reference"))


# Deprecations that selftok_hf code causes fail the tests (pytest.ini: error::FutureWarning:selftok_hf, same for
# DeprecationWarning). Those filters match the module a warning is attributed to, and a library warning caused by our
# call (e.g. transformers' FutureWarning for a deprecated keyword) is attributed to the library or to torch's
# Module.__call__, so warnings.warn is wrapped: a FutureWarning or DeprecationWarning is attributed to the first frame
# outside the issuing library (and outside torch's module-call plumbing) when that frame is selftok_hf code, i.e.
# when our call is the one using the deprecated API. A deprecation one library hits inside another (peft calling a
# deprecated transformers property while we call peft) stays the libraries' own. The filters then decide as usual
# (pytest.warns and warnings.catch_warnings still work).
_SELFTOK_DIR = os.path.dirname(importlib.util.find_spec("selftok_hf").origin) + os.sep
_TORCH_DIR = os.path.dirname(importlib.util.find_spec("torch").origin) + os.sep
_original_warn = warnings.warn


def _library_root(filename: str) -> str:
    """``.../site-packages/<package>/`` for a file of an installed package, else the file itself."""
    marker = os.sep + "site-packages" + os.sep
    if marker not in filename:
        return filename
    head, tail = filename.split(marker, 1)
    return head + marker + tail.split(os.sep, 1)[0] + os.sep


def _warn_attributed_to_selftok(message, category=None, stacklevel=1, source=None, **kwargs):
    if isinstance(message, Warning):
        category = type(message)
    if category is not None and issubclass(category, (DeprecationWarning, FutureWarning)):
        frame, depth = sys._getframe(1), 1
        issuer = _library_root(frame.f_code.co_filename)
        while frame is not None and (frame.f_code.co_filename.startswith(issuer) or frame.f_code.co_filename.startswith(_TORCH_DIR)):
            frame, depth = frame.f_back, depth + 1
        if frame is not None and frame.f_code.co_filename.startswith(_SELFTOK_DIR) and not issuer.startswith(_SELFTOK_DIR):
            stacklevel = depth
    return _original_warn(message, category, stacklevel + 1, source, **kwargs)


def pytest_configure(config):
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    warnings.warn = _warn_attributed_to_selftok


def pytest_unconfigure(config):
    warnings.warn = _original_warn


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not (REFERENCE_DIR / "cases.safetensors").is_file():
        pytest.fail(f"reference fixtures not found in {REFERENCE_DIR} (set SELFTOK_REFERENCE_DIR)")
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def cases(reference_dir):
    from safetensors.torch import load_file

    return load_file(str(reference_dir / "cases.safetensors"))


@pytest.fixture(scope="session")
def steering_pipeline():
    """The seeded random tiny default pipeline, with its zero-initialised adaLN modulations (the official init, which
    makes every MMDiT block the identity, so that tokens cannot steer the image) set to seeded random values.
    Session-scoped: tests must not modify it."""
    from selftok_hf.testing import random_tiny_pipeline

    pipe = random_tiny_pipeline(seed=0)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in (pipe.transformer, pipe.renderer):
            for param in module.parameters():
                if not param.any():
                    param.copy_(0.3 * torch.randn(param.shape, generator=generator))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def single_thread():
    """Tiny models: one intra-op thread beats thread start-up costs and pool stalls on a busy 2-core CI box.
    Opt in per module with ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------ fixture-derived fp32 tolerances
EPS32 = torch.finfo(torch.float32).eps
# How much farther from the exact value another faithful fp32 implementation (the official code, another SDPA
# kernel, another GEMM blocking or accumulation order, another libm's exp/sin/cos) may land than ours does. Two
# fp32 runs of the same algorithm make rounding errors of the same size; 8 leaves room for a worse summation order.
# Measured on the shared fixture: max|official - exact| / max|ours32 - exact| <= 2.0 over every compared tensor.
PARITY_C = 8.0
# Floor: a few fp32 ulps of the tensor's scale, so that cases where fp32 is exact (e = 0) do not demand bitwise
# equality.
PARITY_FLOOR_ULPS = 4.0


@dataclasses.dataclass
class Fp32Parity:
    """Outcome of :func:`fp32_parity`; ``ok`` is the verdict, ``str()`` the numbers."""

    name: str
    e: float  # max|ours32 - ours64|: our fp32 rounding error on this fixture
    exact_diff: float  # max|official - ours64|
    exact_bound: float  # C * e + floor
    direct_diff: float  # max|ours32 - official|
    direct_bound: float  # (C + 1) * e + floor

    @property
    def ok(self) -> bool:
        return self.exact_diff <= self.exact_bound and self.direct_diff <= self.direct_bound

    def __str__(self) -> str:
        return (
            f"{self.name}: e={self.e:.2e}  |official-ours64|={self.exact_diff:.2e} <= {self.exact_bound:.2e}  "
            f"|ours32-official|={self.direct_diff:.2e} <= {self.direct_bound:.2e}  {'ok' if self.ok else 'FAIL'}"
        )


def fp32_parity(name, official, ours32, ours64, c=PARITY_C) -> Fp32Parity:
    """Compare an official fp32 tensor with ours, with a tolerance measured on this fixture, not hard-coded.

    ``ours64`` is the same computation of our model in float64 on the same weights and inputs (``deepcopy(model)
    .double()`` under :func:`float64_reference`): the exact value, up to fp64 rounding. ``e = max|ours32 -
    ours64|`` is then a measurement of how far an fp32 implementation of this computation lands from the exact
    value *on this fixture*: it grows with width, depth, sequence length and the size of the timestep arguments
    of whatever fixture is loaded, so no tolerance is tied to the shared fixture's sizes. A faithful official fp32
    output is another fp32 rounding of the same exact value, with a different kernel or accumulation order:

        max|official - ours64| <= C * e + floor,    floor = PARITY_FLOOR_ULPS * eps32 * max|official|

    (C = PARITY_C: official rounding up to C times ours; the floor keeps e = 0 cases, e.g. a LayerNorm of a
    codebook row, from demanding bitwise equality.) The direct comparison ``max|ours32 - official| <= (C + 1) * e +
    floor`` is reported (it is the number one reads) and checked; by the triangle inequality it follows from the
    first. A wrong port (a weight, a head order, a mask, a formula) moves ours32 and ours64 together, so it shows
    as ``max|official - ours64|`` far above ``C * e``; float64 does not hide it. Returns a :class:`Fp32Parity`
    (also printed, see ``pytest -s``); assert its ``.ok``.
    """
    official, ours32, ours64 = (t.detach().to(torch.float64) for t in (official, ours32, ours64))
    assert official.shape == ours32.shape == ours64.shape, (name, official.shape, ours32.shape, ours64.shape)
    e = (ours32 - ours64).abs().max().item()
    floor = PARITY_FLOOR_ULPS * EPS32 * official.abs().max().item()
    result = Fp32Parity(
        name,
        e,
        (official - ours64).abs().max().item(),
        c * e + floor,
        (ours32 - official).abs().max().item(),
        (c + 1) * e + floor,
    )
    print(result)
    return result


def _sinusoid(t, freqs, dim):
    args = t[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def _frequencies_float64(dim, max_period, device):
    return torch.exp(-math.log(max_period) * torch.arange(dim // 2, dtype=torch.float64, device=device) / (dim // 2))


@contextlib.contextmanager
def float64_reference():
    """Run a ``.double()`` model as an exact reference: the sinusoidal timestep features in float64 too.

    ``timestep_frequencies`` computes in float32 by design (bf16 cannot resolve the angles), so ``.double()``
    alone leaves it in fp32. Its arguments ``t * f`` reach 1000 + 8 (K - 1) (token positions), where one fp32 ulp is
    ~1e-4 rad; this is the worst-conditioned operation of both models, and a reference that shares its fp32
    rounding underestimates e (on the shared fixture by 10x in the encoder query stream, where the fixture differs
    from our fp32 output, and from the official code run here, by 1e-5: presumably its machine's exp/sin/cos round
    these angles differently). Yields a list with one entry per call
    of the patched function, so callers can check that it was reached.
    """
    from selftok_hf import embeddings

    calls = []

    def patched(t, dim=256, max_period=10000.0):
        calls.append(None)
        return _sinusoid(t.to(torch.float64), _frequencies_float64(dim, max_period, t.device), dim)

    with mock.patch.object(embeddings, "timestep_frequencies", patched), torch.no_grad():
        yield calls


def fp32_forward_error_bound(out_scale, depth, reduction, max_angle, c=1.0):
    """A-priori bound on max|fp32 - exact| of a ``depth``-block transformer with outputs of size ``out_scale``.

    Standard forward-error model with random rounding: a dot product of length n carries ~sqrt(n) eps32 relative
    error, errors of successive blocks add (depth), and each block reads sinusoidal timestep features whose fp32
    angle (up to ``max_angle`` rad) is rounded to ~max_angle * eps32 absolute. Hence

        c * eps32 * depth * (sqrt(reduction) + max_angle) * out_scale.

    It scales with the fixture's width (through the longest reduction, e.g. the MLP hidden width), depth and
    timestep range, so it holds on wider fixtures, while an fp16/bf16/TF32 step (relative error >= 5e-4) or a
    lost fp32 accumulation exceeds it.
    """
    return c * EPS32 * depth * (math.sqrt(reduction) + max_angle) * out_scale


@contextlib.contextmanager
def another_fp32_implementation():
    """Run our fp32 model as a *different* faithful fp32 implementation would: PyTorch's MATH attention kernel
    and correctly rounded timestep frequencies. Stands in for the official code on an emulated fixture."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from selftok_hf import embeddings

    def patched(t, dim=256, max_period=10000.0):
        return _sinusoid(t.to(torch.float32), _frequencies_float64(dim, max_period, t.device).float(), dim)

    with mock.patch.object(embeddings, "timestep_frequencies", patched), sdpa_kernel(SDPBackend.MATH), torch.no_grad():
        yield


@pytest.fixture(scope="session")
def parity():
    """The helpers above for the parity tests (which import nothing from conftest): ``parity.check`` is
    :func:`fp32_parity`, ``parity.float64`` :func:`float64_reference`, ``parity.forward_error_bound``
    :func:`fp32_forward_error_bound`, ``parity.other_fp32`` :func:`another_fp32_implementation`."""
    import types

    return types.SimpleNamespace(
        check=fp32_parity,
        float64=float64_reference,
        forward_error_bound=fp32_forward_error_bound,
        other_fp32=another_fp32_implementation,
    )


#: Side of the trainers' test images: SELFTOK_TINY_CONFIG's latent side 8 x pixel patch 2.
TRAINING_IMAGE_SIZE = 16


@pytest.fixture(scope="session")
def image_dir(tmp_path_factory):
    """Four 16-px images saved with `save_to_disk`: a crop of the training size is the image itself."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:TRAINING_IMAGE_SIZE, 0:TRAINING_IMAGE_SIZE] / TRAINING_IMAGE_SIZE
    images = []
    for i in range(4):
        base = np.stack([x, y, (x + y) / 2], -1) * rng.uniform(0.3, 1.0, 3) + 0.1 * rng.standard_normal((TRAINING_IMAGE_SIZE, TRAINING_IMAGE_SIZE, 3))
        images.append(PIL.Image.fromarray((np.clip(base, 0, 1) * 255).astype(np.uint8)))
    path = tmp_path_factory.mktemp("data") / "images"
    datasets.Dataset.from_dict({"image": images}).save_to_disk(str(path))
    return str(path)
