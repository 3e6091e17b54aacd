"""Names that changed so that each quantity has one name across the package (issue 17), kept for one release.

The old spelling still works and warns with a ``FutureWarning`` naming the new one, as the moved module paths do
(``selftok_hf.utils.moved``):

- keyword arguments: :func:`renamed_kwargs`, a decorator;
- the fields of a config or a dataclass, as keywords of ``__init__`` and as attributes: :func:`renamed_fields`;
- other attributes (properties): :class:`RenamedAttribute`;
- module-level names (classes, functions): :func:`renamed_names_getattr`, a module ``__getattr__``;
- command-line options: :func:`add_renamed_option`.

What a saved file holds is not the caller's code to fix: configs saved before a rename load as they are, their old
keys read as the new ones without a warning (:func:`with_new_keys`), as transformers reads a saved ``torch_dtype``.

The configs and models that travel with the weights use this module, so it imports nothing from selftok_hf.
"""

from __future__ import annotations

import argparse
import functools
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = [
    "RenamedAttribute",
    "RenamedKeysMixin",
    "add_renamed_option",
    "renamed_fields",
    "renamed_kwargs",
    "renamed_names_getattr",
    "warn_renamed",
    "with_new_keys",
]


def warn_renamed(old: str, new: str, stacklevel: int = 2) -> None:
    """The ``FutureWarning`` for a use of ``old``, now ``new``; ``stacklevel`` as ``warnings.warn``'s, counted from
    the caller of this function."""
    warnings.warn(f"{old} was renamed {new}; use {new} instead (the old name goes in the next release)", FutureWarning, stacklevel=stacklevel + 1)


def _stacklevel() -> int:
    """:func:`warn_renamed`'s ``stacklevel`` for the function calling this one: the line that used the old name,
    past the plumbing between them (torch's ``Module.__call__`` and ``no_grad`` wrappers; attribute hooks such as
    transformers' configs' ``__getattribute__`` / ``__setattr__`` and huggingface_hub's ``__strict_setattr__``)."""
    frame, level = sys._getframe(2), 2
    while frame is not None and (
        frame.f_globals.get("__name__", "").startswith("torch.") or frame.f_code.co_name.endswith(("__getattribute__", "__getattr__", "setattr__"))
    ):
        frame, level = frame.f_back, level + 1
    return level


def with_new_keys(mapping: Mapping[str, Any], renames: Mapping[str, str], warn_as: str | None = None) -> dict[str, Any]:
    """``mapping`` with each old key of ``renames`` (old -> new) under its new name; where both are there, the new
    one's value is kept. Silent for a saved file; ``warn_as`` (e.g. ``"config file run.yaml"``) warns for each old key,
    for a file the caller wrote."""
    if warn_as:
        for old in sorted(renames.keys() & mapping.keys()):
            warn_renamed(f"{warn_as}: {old}", renames[old], stacklevel=2)
    return {renames.get(key, key): value for key, value in mapping.items() if not (key in renames and renames[key] in mapping)}


def renamed_kwargs(**renames: str) -> Callable[[Callable], Callable]:
    """Decorator: the function also takes the old names of its keyword arguments (``old="new"``), with a
    ``FutureWarning``; passing both spellings is a ``TypeError``."""

    def decorate(function: Callable) -> Callable:
        name = function.__qualname__.removesuffix(".__init__")

        @functools.wraps(function)  # inspect.signature (diffusers' config keys, HfArgumentParser) sees the new names
        def wrapper(*args, **kwargs):
            # The hot callers (the decoder's blocks, every step) pass positionally: no set work for them.
            for old in (renames.keys() & kwargs.keys()) if kwargs else ():
                new = renames[old]
                if new in kwargs:
                    raise TypeError(f"{name}() got both {old}= and {new}= ({old} is the old name of {new})")
                warn_renamed(f"{name}({old}=...)", f"{name}({new}=...)", stacklevel=_stacklevel())
                kwargs[new] = kwargs.pop(old)
            return function(*args, **kwargs)

        return wrapper

    return decorate


class RenamedAttribute:
    """In a class body, ``old = RenamedAttribute("new")``: the attribute ``old`` reads and writes ``new``, with a
    ``FutureWarning``."""

    def __init__(self, new: str) -> None:
        self.new = new

    def __set_name__(self, owner: type, name: str) -> None:
        self.owner, self.old = owner.__name__, name

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        warn_renamed(f"{self.owner}.{self.old}", f"{self.owner}.{self.new}", stacklevel=_stacklevel())
        return getattr(instance, self.new)

    def __set__(self, instance, value) -> None:
        warn_renamed(f"{self.owner}.{self.old}", f"{self.owner}.{self.new}", stacklevel=_stacklevel())
        setattr(instance, self.new, value)


def renamed_fields(**renames: str) -> Callable[[type], type]:
    """Class decorator (above ``@dataclass``): the class's ``__init__`` also takes the old field names
    (``old="new"``, :func:`renamed_kwargs`) and its instances answer to them as attributes, with a ``FutureWarning``.
    ``cls._renamed_fields`` holds the renames (with its bases'), for the loaders of saved files and the CLIs."""

    def decorate(cls: type) -> type:
        cls.__init__ = renamed_kwargs(**renames)(cls.__init__)
        for old, new in renames.items():
            attribute = RenamedAttribute(new)
            setattr(cls, old, attribute)
            attribute.__set_name__(cls, old)
        cls._renamed_fields = {**getattr(cls, "_renamed_fields", {}), **renames}
        return cls

    return decorate


class RenamedKeysMixin:
    """For a dict class (diffusers' ``FrozenDict`` of a model's config): the old keys of ``_renamed_keys`` (old ->
    new), read as items or attributes, give the new keys' values, with a ``FutureWarning``."""

    _renamed_keys: Mapping[str, str] = {}
    _owner: str = "config"

    def __missing__(self, key):
        if key not in self._renamed_keys:
            raise KeyError(key)
        warn_renamed(f"{self._owner}[{key!r}]", f"{self._owner}[{self._renamed_keys[key]!r}]")
        return self[self._renamed_keys[key]]

    def __getattr__(self, name: str):
        # Only reached for names that are not attributes (the keys are: diffusers' FrozenDict sets them).
        if name not in type(self)._renamed_keys:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        new = type(self)._renamed_keys[name]
        warn_renamed(f"{self._owner}.{name}", f"{self._owner}.{new}")
        return self[new]


def renamed_names_getattr(module_name: str, renames: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``module_name`` that serves each old name of ``renames`` (old -> new) as the
    module's object under the new name, with a ``FutureWarning``; any other name raises ``AttributeError``."""

    def __getattr__(name: str) -> Any:
        if name not in renames:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        warn_renamed(f"{module_name}.{name}", f"{module_name}.{renames[name]}")
        return getattr(sys.modules[module_name], renames[name])

    return __getattr__


class _RenamedOption(argparse.Action):
    """An option's old spelling: stores to the new option's destination, with a ``FutureWarning``."""

    def __init__(self, option_strings, dest, new_option: str, **kwargs) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new_option = new_option

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        warn_renamed(f"the option {option_string}", self.new_option)
        setattr(namespace, self.dest, values)


def add_renamed_option(parser: argparse.ArgumentParser, old_option: str, new_option: str) -> None:
    """Let ``parser`` also take ``old_option``, the old spelling of its option ``new_option``: the same destination,
    type and number of values, hidden from ``--help``, with a ``FutureWarning`` when given."""
    new = next(action for action in parser._actions if new_option in action.option_strings)
    parser.add_argument(
        old_option,
        action=_RenamedOption,
        new_option=new_option,
        dest=new.dest,
        type=new.type,
        nargs=new.nargs,
        choices=new.choices,
        metavar=new.metavar,
        default=argparse.SUPPRESS,  # the new option's default stands
        help=argparse.SUPPRESS,
    )
