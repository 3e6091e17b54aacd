"""The import paths that changed when the tools left the top level (issue 17), kept for one release.

The top level of ``selftok_hf`` is the code that travels with the weights; the apps, evaluation, conversion,
testing helpers and the file utilities moved into subpackages. ``import selftok_hf.quickstart`` (every old path in
:data:`MOVED_MODULES`) still works: a ``sys.meta_path`` finder answers the old name with the moved module itself (the
same object, so ``mock.patch("selftok_hf.quickstart.x")`` patches the module the code uses) and a ``FutureWarning``
naming the new path; ``python -m <old path>`` runs the new module, with the warning. No file remains at the old
path. A name that left its module for another one (:data:`MOVED_NAMES`) resolves through the module's
``__getattr__`` (:func:`moved_names_getattr`), with the same warning.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

__all__ = ["MOVED_MODULES", "MOVED_NAMES", "install", "moved_names_getattr"]

#: Old module path -> its new path. Removed in the release after 0.1.
MOVED_MODULES = {
    "selftok_hf.atomic": "selftok_hf.utils.atomic",
    "selftok_hf.baselines": "selftok_hf.evaluation.baselines",
    "selftok_hf.cli": "selftok_hf.apps.cli",
    "selftok_hf.convert_selftok_checkpoint": "selftok_hf.conversion.convert_selftok_checkpoint",
    "selftok_hf.dataset_tokenization": "selftok_hf.training.dataset_tokenization",
    "selftok_hf.demo": "selftok_hf.apps.demo",
    "selftok_hf.metrics": "selftok_hf.evaluation.metrics",
    "selftok_hf.quickstart": "selftok_hf.apps.quickstart",
    "selftok_hf.raster_vq": "selftok_hf.evaluation.raster_vq",
    "selftok_hf.tiny_vlm": "selftok_hf.testing.tiny_vlm",
}

#: New module -> {name that was importable from its old path -> the module that holds it now}.
MOVED_NAMES = {
    # The bundled-asset accessors live beside the files (selftok_hf.assets), the test helper in selftok_hf.testing.
    "selftok_hf.apps.quickstart": {
        **dict.fromkeys(
            ("EMBEDDED_PIPELINE", "EMBEDDED_VLM", "SAMPLE_FASHION", "SAMPLE_PHOTOS", "embedded_vlm"), "selftok_hf.assets"
        ),
        "random_tiny_pipeline": "selftok_hf.testing",
    },
}


def _old_path(new_module: str) -> str:
    return next(old for old, new in MOVED_MODULES.items() if new == new_module)


def _caller_stacklevel() -> int:
    """The ``stacklevel`` that attributes a warning issued in ``exec_module`` to the line doing the import.

    ``warnings`` itself skips importlib's bootstrap frames when it counts levels; ``importlib.import_module`` is a
    frame of its own to step over."""
    frame, level = sys._getframe(2), 2
    while frame is not None and (_is_bootstrap(frame) or frame.f_code.co_filename == importlib.__file__):
        level += not _is_bootstrap(frame)
        frame = frame.f_back
    return level


def _is_bootstrap(frame) -> bool:
    return "importlib" in frame.f_code.co_filename and "_bootstrap" in frame.f_code.co_filename


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the old paths only; loading one imports the new module and puts it in ``sys.modules`` under the old
    name (the import system returns whatever ``sys.modules`` holds after ``exec_module``)."""

    def find_spec(self, fullname: str, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED_MODULES else None

    def create_module(self, spec):
        return None  # a throwaway module: exec_module swaps in the real one

    def exec_module(self, module: ModuleType) -> None:
        new = MOVED_MODULES[module.__name__]
        warnings.warn(
            f"{module.__name__} moved to {new}; import {new} instead (the old path goes in the next release)",
            FutureWarning,
            stacklevel=_caller_stacklevel(),
        )
        sys.modules[module.__name__] = importlib.import_module(new)

    def get_code(self, fullname: str):
        """``python -m <old path>`` (runpy asks the loader for the code to run as ``__main__``): code that runs the
        new module as ``__main__`` instead, after the warning."""
        new = MOVED_MODULES[fullname]
        warnings.warn(f"python -m {fullname}: the module moved to {new}; run python -m {new} instead", FutureWarning, stacklevel=2)
        return compile(f"import runpy\nrunpy.run_module({new!r}, run_name='__main__', alter_sys=True)\n", f"<{fullname}: {new}>", "exec")


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (``selftok_hf/__init__.py`` calls it)."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModuleFinder())


def moved_names_getattr(module_name: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``module_name`` (a new module of :data:`MOVED_MODULES`) that serves the names of
    :data:`MOVED_NAMES` from their new module, with a ``FutureWarning``; any other name raises ``AttributeError``."""
    moved = MOVED_NAMES[module_name]

    def __getattr__(name: str) -> Any:
        if name not in moved:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        warnings.warn(
            f"{_old_path(module_name)}.{name} moved to {moved[name]}.{name}; import it from {moved[name]} instead "
            "(the old path goes in the next release)",
            FutureWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(moved[name]), name)

    return __getattr__
