"""Saved configs that travel: no ``_name_or_path`` naming a folder of the machine that saved them.

diffusers writes the folder a model or pipeline was loaded from into every saved config as ``_name_or_path``. For a
local folder that is a machine path (of no use anywhere else, and it leaks the saver's file layout); a Hub model id
is kept. One rule, used by the models' ``to_json_string`` and by the pipeline's ``save_pretrained``.
"""

from __future__ import annotations

import json
import os
from typing import Any

__all__ = ["PortableConfigMixin", "is_local_name", "without_local_name_or_path"]


def is_local_name(name: Any) -> bool:
    """True for a ``_name_or_path`` that names a local folder (absolute, or an existing directory)."""
    return isinstance(name, str) and (os.path.isabs(name) or os.path.isdir(name))


def without_local_name_or_path(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without ``_name_or_path`` when :func:`is_local_name` says it is a machine path."""
    return {k: v for k, v in config.items() if not (k == "_name_or_path" and is_local_name(v))}


class PortableConfigMixin:
    """For diffusers ``ConfigMixin`` models: their config JSON leaves out a local ``_name_or_path``."""

    def to_json_string(self) -> str:
        config = without_local_name_or_path(json.loads(super().to_json_string()))
        return json.dumps(config, indent=2, sort_keys=True) + "\n"
