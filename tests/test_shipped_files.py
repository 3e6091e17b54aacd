"""Shipped files carry no machine paths, and re-saving a loaded artifact does not write the folder it came from."""

import json
import re
import warnings
from pathlib import Path

import pytest

from selftok_hf import SelftokDecoderTransformer
from selftok_hf.assets import embedded_pipeline
from selftok_hf.pixel_space import PixelSpaceAutoencoder
from selftok_hf.testing import random_tiny_pipeline
from selftok_hf.vae import RandomWeightsWarning

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "selftok_hf"
# An absolute path into a machine's folders (not "org/data" or a URL path).
MACHINE_PATH = re.compile(r"(?<![\w.~/-])/(?:root|home|tmp|work|Users|mnt)(?=/|\b)")
SHIPPED = sorted(
    path
    for path in [*PACKAGE.rglob("*"), *(REPO / "model_cards").glob("*.md")]
    if path.suffix in (".py", ".json", ".md") and "__pycache__" not in path.parts
)
@pytest.mark.parametrize(
    "path",
    SHIPPED,
    ids=lambda path: path.relative_to(REPO).as_posix(),
)
def test_no_machine_paths_in_shipped_files(path):
    lines = [f"{n}: {line.strip()}" for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if MACHINE_PATH.search(line)]
    assert not lines, f"{path.relative_to(REPO)} names machine paths:\n" + "\n".join(lines)


def test_machine_path_pattern():
    for text in ("/work/runs/x", '"/tmp/abc"', "see /root/.cache", "/home/user", "C /Users/me"):
        assert MACHINE_PATH.search(text), text
    for text in ("org/data", "https://huggingface.co/work/x", "a/tmp/b", "~/work/x", "/workspace", "./tmp/x"):
        assert not MACHINE_PATH.search(text), text


def _configs(folder: Path) -> dict[str, dict]:
    return {path.relative_to(folder).as_posix(): json.loads(path.read_text()) for path in folder.rglob("*.json")}


def test_resaving_a_loaded_pipeline_writes_no_local_name_or_path(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        random_tiny_pipeline(seed=0).save_pretrained(tmp_path / "first")
    from selftok_hf import SelftokDecoderPipeline

    SelftokDecoderPipeline.from_pretrained(tmp_path / "first").save_pretrained(tmp_path / "second")
    configs = _configs(tmp_path / "second")
    assert "model_index.json" in configs and "vae/config.json" in configs and "transformer/config.json" in configs
    assert {name for name, config in configs.items() if "_name_or_path" in config} == set()
    for path in (tmp_path / "second").rglob("*"):
        if path.is_file() and path.suffix in (".json", ".md"):
            assert str(tmp_path) not in path.read_text(), path
    # the embedded pipeline too (loaded from the package folder)
    embedded_pipeline().save_pretrained(tmp_path / "embedded")
    assert not [name for name, config in _configs(tmp_path / "embedded").items() if "_name_or_path" in config]


def test_resaving_loaded_models_writes_no_local_name_or_path(tmp_path):
    transformer = random_tiny_pipeline(seed=0).transformer
    transformer.save_pretrained(tmp_path / "a")
    SelftokDecoderTransformer.from_pretrained(tmp_path / "a").save_pretrained(tmp_path / "b")
    assert "_name_or_path" not in json.loads((tmp_path / "b" / "config.json").read_text())
    PixelSpaceAutoencoder(patch_size=2).save_pretrained(tmp_path / "c")
    loaded = PixelSpaceAutoencoder.from_pretrained(tmp_path / "c")
    assert str(loaded.config._name_or_path) == str(tmp_path / "c")  # still known in memory, as in diffusers
    loaded.save_pretrained(tmp_path / "d")
    assert "_name_or_path" not in json.loads((tmp_path / "d" / "config.json").read_text())
    # a Hub id is not a machine path: kept
    loaded.register_to_config(_name_or_path="org/pixels")
    loaded.save_pretrained(tmp_path / "e")
    assert json.loads((tmp_path / "e" / "config.json").read_text())["_name_or_path"] == "org/pixels"
