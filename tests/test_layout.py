"""The package layout (issue 17): the top level of selftok_hf is exactly the code that travels with the weights as
remote code, computed from the imports (hub.remote_code_files), plus the LM glue; everything else is in a subpackage."""

from pathlib import Path

from transformers.dynamic_module_utils import get_relative_import_files

import selftok_hf
from selftok_hf.hub import remote_code_files

PACKAGE = Path(selftok_hf.__file__).parent

#: The modules whose saved folders carry code: the pipelines copy remote_code_files of themselves and of their
#: components' modules; SelftokModel, its config and the processors go through transformers' auto_map.
SHIPPED = (
    "pipeline_selftok.py",
    "pipeline_selftok_decoder.py",
    "modeling_selftok_decoder.py",
    "pixel_space.py",
    "modeling_selftok.py",
    "configuration_selftok.py",
    "image_processing_selftok.py",
    "processing_selftok.py",
)
#: Model API that stays on top without shipping: the LM glue (the LM of a VLM is a stock transformers class).
LM_GLUE = {"modeling_selftok_lm.py"}
SUBPACKAGES = {"apps", "assets", "conversion", "evaluation", "rl", "testing", "training", "utils"}


def test_the_top_level_is_the_remote_code_closure():
    closure = set().union(*(remote_code_files(PACKAGE / name) for name in SHIPPED))
    assert {path.name for path in PACKAGE.glob("*.py")} == closure | LM_GLUE | {"__init__.py"}


def test_remote_code_imports_only_top_level_files():
    # A shipped file importing from a subpackage would ship under a flat name and fail to load as remote code.
    for name in SHIPPED:
        assert {Path(path).parent for path in get_relative_import_files(str(PACKAGE / name))} <= {PACKAGE}, name


def test_everything_else_is_in_a_known_subpackage():
    folders = {path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__"}
    assert folders == SUBPACKAGES
    for folder in SUBPACKAGES:
        assert (PACKAGE / folder / "__init__.py").is_file(), folder
