"""Strict weight loading for selftok_hf's models: a config and weights that disagree are an error, not a warning table.

transformers and diffusers report what did not fit through ``from_pretrained(..., output_loading_info=True)``;
our classes' ``from_pretrained`` always asks for it and passes it to :func:`check_loading_info` (``strict=False``
keeps the libraries' lenient behaviour).
"""

from __future__ import annotations

__all__ = ["StrictFromPretrainedMixin", "check_loading_info", "loaded_from"]


def loaded_from(pretrained_model_name_or_path, subfolder: str | None = None) -> str:
    """``folder/subfolder`` (or a repo id's), as named in loading errors: ``"pipe/" + "/transformer/"`` ->
    ``"pipe/transformer"``."""
    parts = (str(pretrained_model_name_or_path), subfolder or "")
    return "/".join(part.strip("/") if i else part.rstrip("/") for i, part in enumerate(parts) if part)


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


class StrictFromPretrainedMixin:
    """Put before diffusers' ``ModelMixin`` in a model's bases: its ``from_pretrained`` then raises
    (:func:`check_loading_info`, naming the keys and ``ClassName from folder/subfolder``) when the weights and the
    config disagree, instead of diffusers' warning; ``strict=False`` keeps diffusers' lenient load,
    ``output_loading_info=True`` still returns the info. Used by the decoder, the renderer and ``PixelSpaceAutoencoder``."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, strict: bool = True, **kwargs):
        """diffusers' ``from_pretrained``, strict by default: weights missing from the file or left over (a config
        that does not belong to them) raise a ``ValueError`` naming the keys; ``strict=False`` only warns, as diffusers."""
        output_loading_info = kwargs.pop("output_loading_info", False)
        model, loading_info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        if strict:
            where = loaded_from(pretrained_model_name_or_path, kwargs.get("subfolder"))
            check_loading_info(loading_info, f"{cls.__name__} from {where}")
        return (model, loading_info) if output_loading_info else model
