"""pytest fixtures of tiny random Selftok checkpoints, for selftok-hf's tests and users' own. Load them with

    pytest_plugins = ["selftok_hf.testing.pytest_fixtures"]

in a top-level ``conftest.py`` (selftok-hf's own ``tests/conftest.py`` does).
"""

import warnings

import pytest

__all__ = ["tiny_pipeline", "tiny_pipeline_dir"]


# Module-scoped: every test module gets its own instance (a module's tests may change its per-call state).
@pytest.fixture(scope="module")
def tiny_pipeline():
    """The seeded random tiny decoder pipeline (``random_tiny_pipeline(seed=0)``), progress bars off."""
    from selftok_hf.testing import random_tiny_pipeline

    pipe = random_tiny_pipeline(seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def tiny_pipeline_dir(tmp_path_factory):
    """``random_tiny_pipeline(seed=0)`` saved with ``save_pretrained`` (for the CLI and loading tests)."""
    from selftok_hf.testing import random_tiny_pipeline
    from selftok_hf.vae import RandomWeightsWarning

    path = tmp_path_factory.mktemp("tiny_pipeline")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        random_tiny_pipeline(seed=0).save_pretrained(path)
    return path
