"""The test suite's warning policy (pytest.ini + tests/conftest.py): a FutureWarning or DeprecationWarning that
selftok_hf code causes, even one a library issues and attributes to itself, fails the test."""

import os
import warnings

import pytest

import selftok_hf

SELFTOK_DIR = os.path.dirname(selftok_hf.__file__)


def _selftok_function(source: str, name: str):
    """A function whose frames count as selftok_hf code (its file is in the package folder, its module selftok_hf.*)."""
    namespace = {"__name__": "selftok_hf._warnings_probe"}
    exec(compile(source, os.path.join(SELFTOK_DIR, "_warnings_probe.py"), "exec"), namespace)
    return namespace[name]


def _library_deprecation(category=FutureWarning):
    """Like transformers' deprecate_kwarg: attributed to the library's own frames (stacklevel 2 from an inner helper)."""

    def inner():
        warnings.warn("`old_name` is deprecated", category, stacklevel=2)

    inner()


@pytest.mark.parametrize("category", [FutureWarning, DeprecationWarning])
def test_library_deprecation_caused_by_selftok_code_is_an_error(category):
    call = _selftok_function("def call(f, *args):\n    return f(*args)\n", "call")
    with pytest.raises(category, match="old_name"):
        call(_library_deprecation, category)


def test_own_deprecation_is_an_error_and_pytest_warns_still_works():
    deprecated = _selftok_function("import warnings\ndef f():\n    warnings.warn('use g', FutureWarning)\n", "f")
    with pytest.raises(FutureWarning, match="use g"):
        deprecated()
    with pytest.warns(FutureWarning, match="use g"):  # a test that means to check a deprecation
        deprecated()


def test_other_warnings_are_left_alone():
    with pytest.warns(FutureWarning):  # no selftok_hf frame: recorded, not an error
        _library_deprecation()
    call = _selftok_function("def call(f, *args):\n    return f(*args)\n", "call")
    with pytest.warns(UserWarning):  # not a deprecation
        call(warnings.warn, "just a warning", UserWarning)


def test_a_deprecation_one_library_hits_inside_another_is_not_ours():
    """peft calling a deprecated transformers property while selftok_hf calls peft: the first frame outside the issuing
    library is the other library's, so the warning stays theirs (recorded, not an error)."""
    other_library = {"__name__": "other_library"}
    exec(compile("def uses_deprecated(f):\n    return f()\n", "/nonexistent/other_library/api.py", "exec"), other_library)
    call = _selftok_function("def call(f, *args):\n    return f(*args)\n", "call")
    with pytest.warns(FutureWarning, match="old_name"):
        call(other_library["uses_deprecated"], _library_deprecation)
