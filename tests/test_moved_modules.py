"""The old import paths of the modules that left the top level (selftok_hf.utils.moved): each gives the moved module
itself with a FutureWarning naming the new path, attributed to the importing line; no file is left at an old path."""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import selftok_hf
from selftok_hf.utils.moved import MOVED_MODULES, MOVED_NAMES

PACKAGE = Path(selftok_hf.__file__).parent


def _forget(old: str) -> None:
    """Drop an old path that an earlier import in this process cached, so that importing it runs the finder again."""
    sys.modules.pop(old, None)
    parent, _, child = old.rpartition(".")
    vars(sys.modules[parent]).pop(child, None)


@pytest.mark.parametrize("old", sorted(MOVED_MODULES))
def test_old_path_is_the_moved_module_with_a_future_warning(old):
    new = importlib.import_module(MOVED_MODULES[old])
    _forget(old)
    with pytest.warns(FutureWarning, match=rf"{old} moved to {MOVED_MODULES[old]}; import {MOVED_MODULES[old]} instead") as record:
        module = importlib.import_module(old)
    assert module is new
    assert module.__name__ == MOVED_MODULES[old] and module.__spec__.name == MOVED_MODULES[old]  # the real module, untouched
    assert [w.filename for w in record] == [__file__]
    assert not (PACKAGE / f"{old.removeprefix('selftok_hf.').replace('.', '/')}.py").exists()


@pytest.mark.parametrize("old", sorted(MOVED_MODULES))
def test_from_package_import_old_name(old):
    _forget(old)
    parent, _, child = old.rpartition(".")
    with pytest.warns(FutureWarning, match=MOVED_MODULES[old]):
        module = getattr(__import__(parent, fromlist=[child]), child)
    assert module is importlib.import_module(MOVED_MODULES[old])


@pytest.mark.parametrize(("new", "name"), [(new, name) for new, names in sorted(MOVED_NAMES.items()) for name in sorted(names)])
def test_a_name_that_left_its_module_still_resolves_with_a_future_warning(new, name):
    home = MOVED_NAMES[new][name]
    with pytest.warns(FutureWarning, match=rf"\.{name} moved to {home}\.{name}") as record:
        value = getattr(importlib.import_module(new), name)
    assert value is getattr(importlib.import_module(home), name)
    assert [w.filename for w in record] == [__file__]


def test_unknown_names_still_raise():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("selftok_hf.no_such_module")
    for new in MOVED_NAMES:
        with pytest.raises(AttributeError, match="no_such_name"):
            getattr(importlib.import_module(new), "no_such_name")


def test_python_m_old_path_runs_the_moved_module():
    result = subprocess.run([sys.executable, "-m", "selftok_hf.quickstart", "--help"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: selftok-quickstart")
    assert "FutureWarning: python -m selftok_hf.quickstart: the module moved to selftok_hf.apps.quickstart" in result.stderr
