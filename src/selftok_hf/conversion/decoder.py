"""Weight mappings into [`SelftokDecoderTransformer`] and [`SelftokRenderer`].

- official checkpoints (github ``selftok-team/SelftokTokenizer``, ``MMDiT`` / ``MMDiT_Renderer`` keys without
  ``model.``): [`convert_official_decoder_state_dict`], [`convert_official_renderer_state_dict`], and the configs
  read from their shapes, [`decoder_config_from_official_state_dict`], [`renderer_config_from_official_state_dict`];
- a diffusers ``SD3Transformer2DModel`` (the image-stream initialisation Selftok trains from):
  [`decoder_state_dict_from_sd3`].

Kept apart from ``modeling_selftok_decoder.py`` (as diffusers keeps its converters out of ``transformer_sd3.py``):
the model file is what a saved folder ships as remote code, and this module never needs to.
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping

import torch

from ..embeddings import sincos_1d
from ..modeling_selftok_decoder import SelftokDecoderTransformer, SelftokRenderer
from ..token_schedule import token_positions

_OFFICIAL_HEAD_DIM = 64  # official MMDiT: width = 64 * depth and heads = depth


def _init_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """A model config (dict or diffusers FrozenDict) without diffusers' private ``_*`` entries."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def _expected_shapes(model_cls: type, config: Mapping[str, Any]) -> dict[str, torch.Size]:
    """Key -> shape of ``model_cls(**config).state_dict()``, built on the meta device (no memory)."""
    with torch.device("meta"):
        model = model_cls(**_init_kwargs(config))
    return {k: v.shape for k, v in model.state_dict().items()}


def _check_against(state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Size], what: str) -> None:
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = [
        f"{k}: {tuple(v.shape)} vs model {tuple(expected[k])}"
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != tuple(expected[k])
    ]
    if missing or unexpected or wrong:
        raise ValueError(f"{what} does not match the model config. missing: {missing}; unexpected: {unexpected}; shapes: {wrong}")


def _swap_halves(t: torch.Tensor) -> torch.Tensor:
    """Official (shift, scale) rows -> diffusers' AdaLayerNormContinuous (scale, shift) rows."""
    shift, scale = t.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)


def _split3(t: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Rows of a fused qkv projection -> separate q, k, v, each on its own storage so that safetensors saves them
    as independent tensors (it refuses tensors that share one)."""
    return tuple(_on_own_storage(x) for x in t.chunk(3, dim=0))


def _on_own_storage(t: torch.Tensor) -> torch.Tensor:
    """``t`` on a storage of its own: a slice of its storage (the same memory, no copy) when ``t`` is contiguous,
    so a memory-mapped checkpoint is not read into memory to be split; a clone otherwise."""
    if t.is_meta or not t.is_contiguous():
        return t.clone()
    start = t.storage_offset() * t.element_size()
    storage = t.untyped_storage()[start : start + t.numel() * t.element_size()]
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(storage, 0, t.shape)


# Official suffixes inside `joint_blocks.{i}.` -> ours inside `transformer_blocks.{i}.`; qkv handled separately.
_BLOCK_RENAMES = {
    "x_block.adaLN_modulation.1": "norm1.linear",
    "x_block.attn.proj": "attn.to_out.0",
    "x_block.mlp.fc1": "ff.net.0.proj",
    "x_block.mlp.fc2": "ff.net.2",
    "context_block.attn.proj": "attn.to_add_out",
    "context_block.mlp.fc1": "ff_context.net.0.proj",
    "context_block.mlp.fc2": "ff_context.net.2",
    "context_block.t_embedder.mlp.0": "norm1_context.token_embedder.mlp.0",
    "context_block.t_embedder.mlp.2": "norm1_context.token_embedder.mlp.2",
}
_TOP_RENAMES = {
    "t_embedder.mlp.0": "time_embedder.mlp.0",
    "t_embedder.mlp.2": "time_embedder.mlp.2",
    "context_embedder": "context_embedder",
    "final_layer.linear": "proj_out",
    "x_embedder.proj": "pos_embed.proj",
}


def _convert_official(
    official: Mapping[str, torch.Tensor],
    model_cls: type,
    config: Mapping[str, Any],
    tensor_renames: Mapping[str, str],
    dropped_patterns: Mapping[str, str],
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Shared strict mapping of official ``MMDiT`` / ``MMDiT_Renderer`` keys (without ``model.``)."""
    last = int(config["num_layers"]) - 1
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    unknown: list[str] = []
    for key, value in official.items():
        block = re.fullmatch(r"joint_blocks\.(\d+)\.(.+)\.(weight|bias)", key)
        top = re.fullmatch(r"(.+)\.(weight|bias)", key)
        if key in tensor_renames:
            out[tensor_renames[key]] = value
        elif any(re.fullmatch(p, key) for p in dropped_patterns):
            dropped.append(key)
        elif block:
            index, name, kind = int(block.group(1)), block.group(2), block.group(3)
            prefix = f"transformer_blocks.{index}."
            is_last = index == last
            if name == "x_block.attn.qkv":
                for proj, part in zip(("to_q", "to_k", "to_v"), _split3(value)):
                    out[f"{prefix}attn.{proj}.{kind}"] = part
            elif name == "context_block.attn.qkv":
                q, k, v = _split3(value)
                out[f"{prefix}attn.add_k_proj.{kind}"], out[f"{prefix}attn.add_v_proj.{kind}"] = k, v
                if is_last:
                    dropped.append(f"{key}[query rows]")  # pre-only block: token queries are never used
                else:
                    out[f"{prefix}attn.add_q_proj.{kind}"] = q
            elif name == "context_block.adaLN_modulation.1":
                out[f"{prefix}norm1_context.linear.{kind}"] = _swap_halves(value) if is_last else value
            elif name.startswith("context_block.t_embedder.") and is_last:
                dropped.append(key)  # the pre-only block is modulated by the diffusion time instead
            elif name in _BLOCK_RENAMES:
                out[f"{prefix}{_BLOCK_RENAMES[name]}.{kind}"] = value
            else:
                unknown.append(key)
        elif top and top.group(1) == "final_layer.adaLN_modulation.1":
            out[f"norm_out.linear.{top.group(2)}"] = _swap_halves(value)
        elif top and top.group(1) in _TOP_RENAMES:
            out[f"{_TOP_RENAMES[top.group(1)]}.{top.group(2)}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unexpected keys in the official {model_cls.__name__} checkpoint: {sorted(unknown)}")

    if "context_pos_embed" in official and official["context_pos_embed"].device.type != "meta":
        table = official["context_pos_embed"].reshape(-1, official["context_pos_embed"].shape[-1]).float()
        expected_table = sincos_1d(table.shape[-1], token_positions(table.shape[0]))
        if table.shape != expected_table.shape or (table - expected_table).abs().max() > 1e-5:
            raise ValueError("context_pos_embed is not the sin-cos table at positions 1000 + 8j that this model recomputes")
    _check_against(out, _expected_shapes(model_cls, config), f"converted official {model_cls.__name__} state dict")
    return out, dropped


_DROPPED_COMMON = {
    r"y_embedder\..*": "pooled-vector embedder; the decoder is never given a pooled vector (sd3_cond_pooling None)",
    r"context_pos_embed": "fixed sin-cos table at positions 1000 + 8j, recomputed (checked equal)",
}


def convert_official_decoder_state_dict(
    official: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official ``MMDiT`` state dict (keys without the ``model.`` prefix) -> [`SelftokDecoderTransformer`] state dict.

    Fused ``qkv`` projections are split, and the (shift, scale) halves of the final and pre-only
    modulations are swapped into diffusers' (scale, shift) order. Strict: anything neither mapped nor
    known to be unused, and any key or shape the model for ``config`` lacks, raises ``ValueError``. No weight is
    copied: the returned tensors share memory with ``official`` (split ``qkv`` rows are slices of its storage),
    so a memory-mapped checkpoint converts without being read into memory.

    Returns:
        ``(state_dict, dropped)``: ``dropped`` lists the official keys (or ``key[query rows]`` slices)
        that were intentionally left out: ``y_embedder.*``, ``context_pos_embed`` (recomputed),
        the last block's unused ``context_block.t_embedder.*`` and token-query projection.
    """
    return _convert_official(
        official, SelftokDecoderTransformer, config, {"pos_embed": "pos_embed.pos_embed"}, _DROPPED_COMMON
    )


def convert_official_renderer_state_dict(
    official: Mapping[str, torch.Tensor], config: Mapping[str, Any]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Official ``MMDiT_Renderer`` state dict (without ``model.``) -> [`SelftokRenderer`] state dict.

    As [`convert_official_decoder_state_dict`]; the unused SD3 ``pos_embed`` buffer is dropped too.
    """
    renames = {"mask_token": "canvas_token", "positional_embedding": "canvas_pos_embed"}
    dropped = {**_DROPPED_COMMON, r"pos_embed": "SD3 position table; the renderer has no patch input"}
    return _convert_official(official, SelftokRenderer, config, renames, dropped)


def _official_backbone_sizes(official: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Sizes shared by the official decoder and renderer, read from tensor shapes."""
    required = ("context_embedder.weight", "context_pos_embed", "joint_blocks.0.x_block.mlp.fc1.weight", "final_layer.linear.weight")
    missing = [k for k in required if k not in official]
    if missing:
        raise ValueError(f"not an official Selftok MMDiT state dict (keys must not carry 'model.'); missing {missing}")
    width, token_dim = official["context_embedder.weight"].shape
    if width % _OFFICIAL_HEAD_DIM:
        raise ValueError(f"official width {width} is not a multiple of the head size {_OFFICIAL_HEAD_DIM}")
    blocks = {int(m.group(1)) for k in official for m in [re.match(r"joint_blocks\.(\d+)\.", k)] if m}
    return dict(
        num_layers=max(blocks) + 1,
        attention_head_dim=_OFFICIAL_HEAD_DIM,
        num_attention_heads=width // _OFFICIAL_HEAD_DIM,
        num_image_tokens=int(official["context_pos_embed"].shape[-2]),
        token_dim=int(token_dim),
        mlp_ratio=official["joint_blocks.0.x_block.mlp.fc1.weight"].shape[0] / width,
        qkv_bias="joint_blocks.0.x_block.attn.qkv.bias" in official,
    )


def _square_side(rows: int, what: str) -> int:
    side = math.isqrt(rows)
    if side * side != rows:
        raise ValueError(f"{what} has {rows} rows, not a square grid")
    return side


def decoder_config_from_official_state_dict(
    official: Mapping[str, torch.Tensor], *, sample_size: int, context_see_xt: bool = True
) -> dict[str, Any]:
    """[`SelftokDecoderTransformer`] config from an official ``MMDiT`` state dict (keys without ``model.``).

    Every size comes from tensor shapes, except ``sample_size`` (the latent side, ``image_size // 8``,
    which the weights do not fix) and ``context_see_xt`` (a forward flag in the official YAML).
    """
    config = _official_backbone_sizes(official)
    width, in_channels, patch_size, _ = official["x_embedder.proj.weight"].shape
    config.update(
        sample_size=int(sample_size),
        patch_size=int(patch_size),
        in_channels=int(in_channels),
        out_channels=official["final_layer.linear.weight"].shape[0] // patch_size**2,
        pos_embed_max_size=_square_side(official["pos_embed"].shape[-2], "pos_embed"),
        context_see_xt=bool(context_see_xt),
    )
    return config


def renderer_config_from_official_state_dict(official: Mapping[str, torch.Tensor], *, patch_size: int = 2) -> dict[str, Any]:
    """[`SelftokRenderer`] config from an official ``MMDiT_Renderer`` state dict (keys without ``model.``).

    The renderer has no patch-embedding weights, so ``patch_size`` is given (the official renderer
    hard-codes 2); the latent side follows from the learned position table.
    """
    config = _official_backbone_sizes(official)
    grid = _square_side(official["positional_embedding"].shape[0], "positional_embedding")
    config.update(
        sample_size=grid * patch_size,
        patch_size=patch_size,
        out_channels=official["final_layer.linear.weight"].shape[0] // patch_size**2,
        shared_canvas_token=official["mask_token"].shape[1] == 1,
    )
    return config


# SD3 (diffusers) keys that belong to the text stream or to SD3 features Selftok does not use.
_SD3_SKIPPED = (
    r"time_text_embed\.text_embedder\..*",  # pooled CLIP projection
    r"context_embedder\..*",  # text embedder; Selftok's is trained from scratch
    r"transformer_blocks\.\d+\.(norm1_context|attn\.add_[qkv]_proj|attn\.to_add_out|ff_context)\..*",
)
_SD3_IMAGE_STREAM = (
    r"pos_embed\.(proj\.weight|proj\.bias|pos_embed)",
    r"transformer_blocks\.\d+\.(norm1\.linear|attn\.to_[qkv]|attn\.to_out\.0|ff\.net\.0\.proj|ff\.net\.2)\.(weight|bias)",
    r"norm_out\.linear\.(weight|bias)",
    r"proj_out\.(weight|bias)",
)


def decoder_state_dict_from_sd3(sd3_state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Image-stream initialisation of a [`SelftokDecoderTransformer`] from a diffusers `SD3Transformer2DModel`.

    Selftok trains from SD3-medium with everything but the token stream loaded. The image stream
    here uses diffusers' own SD3 modules, so the mapping is the identity on those keys, except the
    timestep MLP (``time_text_embed.timestep_embedder.linear_{1,2}`` -> ``time_embedder.mlp.{0,2}``).
    The text stream (``context_embedder``, pooled ``text_embedder`` and the blocks' ``*_context`` /
    ``add_*`` parts) is skipped. Load the result with ``load_state_dict(..., strict=False)``: the
    missing keys are exactly the token stream.

    Raises:
        ValueError: for SD3 variants this architecture cannot take (qk-norm or dual-attention SD3.5
            blocks), a different depth, or any shape that does not fit ``config``.
    """
    out: dict[str, torch.Tensor] = {}
    unsupported = []
    for key, value in sd3_state_dict.items():
        t = re.fullmatch(r"time_text_embed\.timestep_embedder\.linear_([12])\.(weight|bias)", key)
        if t:
            out[f"time_embedder.mlp.{0 if t.group(1) == '1' else 2}.{t.group(2)}"] = value
        elif any(re.fullmatch(p, key) for p in _SD3_IMAGE_STREAM):
            out[key] = value
        elif not any(re.fullmatch(p, key) for p in _SD3_SKIPPED):
            unsupported.append(key)
    if unsupported:
        raise ValueError(f"SD3 keys with no counterpart in the Selftok decoder (qk-norm / dual attention?): {sorted(unsupported)}")
    sd3_layers = {int(m.group(1)) for k in sd3_state_dict for m in [re.match(r"transformer_blocks\.(\d+)\.", k)] if m}
    if len(sd3_layers) != config["num_layers"]:
        raise ValueError(f"SD3 has {len(sd3_layers)} blocks but the decoder config has num_layers={config['num_layers']}")

    expected = _expected_shapes(SelftokDecoderTransformer, config)
    wrong = [f"{k}: SD3 {tuple(v.shape)} vs decoder {tuple(expected[k])}" for k, v in out.items() if tuple(v.shape) != tuple(expected[k])]
    if wrong:
        raise ValueError(f"SD3 weights do not fit the decoder config: {wrong}")
    return out
