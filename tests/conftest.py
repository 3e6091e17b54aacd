import importlib.util
import os
import sys
import warnings
from pathlib import Path

import pytest
import torch

REFERENCE_DIR = Path(os.environ.get("SELFTOK_REFERENCE_DIR", Path(__file__).parent / "fixtures" / "official_reference"))


# Deprecations that selftok_hf code causes fail the tests (pytest.ini: error::FutureWarning:selftok_hf, same for
# DeprecationWarning). Those filters match the module a warning is attributed to, and a library warning caused by our
# call (e.g. transformers' FutureWarning for a deprecated keyword) is attributed to the library or to torch's
# Module.__call__, so warnings.warn is wrapped: a FutureWarning or DeprecationWarning whose call stack passes through
# selftok_hf is attributed to the innermost selftok_hf frame. The filters then decide as usual (pytest.warns and
# warnings.catch_warnings still work).
_SELFTOK_DIR = os.path.dirname(importlib.util.find_spec("selftok_hf").origin) + os.sep
_original_warn = warnings.warn


def _warn_attributed_to_selftok(message, category=None, stacklevel=1, source=None, **kwargs):
    if isinstance(message, Warning):
        category = type(message)
    if category is not None and issubclass(category, (DeprecationWarning, FutureWarning)):
        frame, depth = sys._getframe(1), 1
        while frame is not None:
            if frame.f_code.co_filename.startswith(_SELFTOK_DIR):
                stacklevel = depth
                break
            frame, depth = frame.f_back, depth + 1
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
    from selftok_hf.quickstart import random_tiny_pipeline

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
