"""Strict weight loading for selftok_hf's models: a config and weights that disagree are an error, not a warning table.

transformers and diffusers report what did not fit through ``from_pretrained(..., output_loading_info=True)``;
our classes' ``from_pretrained`` always asks for it and passes it to :func:`check_loading_info` (``strict=False``
keeps the libraries' lenient behaviour).
"""

from __future__ import annotations

__all__ = ["check_loading_info"]


def check_loading_info(loading_info: dict, what: str) -> None:
    """Raise a ``ValueError`` naming the keys when ``from_pretrained``'s loading info (transformers' or diffusers')
    reports parameters the weights do not provide, weights the config has no place for, or shape mismatches."""
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(str(k) for k in (loading_info.get(kind) or ()))
        if keys:
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
            problems.append(f"{kind.replace('_', ' ')}: {shown}")
    if problems:
        raise ValueError(
            f"{what}: the weights do not match the config ({'; '.join(problems)}). Check that config.json belongs to "
            "these weights (e.g. encoder_depth, num_layers); pass strict=False to load anyway"
        )
