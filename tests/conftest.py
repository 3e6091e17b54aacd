import os
from pathlib import Path

import pytest
import torch

REFERENCE_DIR = Path(os.environ.get("SELFTOK_REFERENCE_DIR", Path(__file__).parent / "fixtures" / "official_reference"))


def pytest_configure(config):
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not (REFERENCE_DIR / "cases.safetensors").is_file():
        pytest.fail(f"reference fixtures not found in {REFERENCE_DIR} (set SELFTOK_REFERENCE_DIR)")
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def cases(reference_dir):
    from safetensors.torch import load_file

    return load_file(str(reference_dir / "cases.safetensors"))
