"""The wheel ships every file the package reads at run time (selftok-quickstart from a wheel needs the assets)."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "selftok_hf"


def _shipped(folder: Path, prefix: str) -> set[str]:
    return {
        f"{prefix}/{path.relative_to(folder).as_posix()}"
        for path in folder.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


@pytest.mark.slow
def test_wheel_contains_every_asset_and_model_card(tmp_path):
    # Build from a copy, so that the build (build/, egg-info) does not touch the working tree.
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(PACKAGE, source / "src" / "selftok_hf", ignore=ignore)
    shutil.copytree(REPO / "model_cards", source / "model_cards", ignore=ignore)
    for name in ("setup.py", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), "."],
        cwd=source, check=True,
    )
    (wheel,) = (tmp_path / "dist").glob("selftok_hf-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = _shipped(PACKAGE / "assets", "selftok_hf/assets") | _shipped(REPO / "model_cards", "selftok_hf/model_cards")
    assert any(name.endswith(".png") for name in expected)  # the Fashion-MNIST samples selftok-quickstart reads
    assert not expected - names, f"missing from the wheel: {sorted(expected - names)}"
    assert "selftok_hf/apps/quickstart.py" in names
