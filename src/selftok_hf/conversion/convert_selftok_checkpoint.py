"""Convert the official Selftok checkpoints (github selftok-team/SelftokTokenizer) to selftok-hf folders.

Input: the official YAML config (e.g. ``configs/res256/256-eval.yml``) and the official checkpoint,
a flat ``ImageTokenizer.state_dict()`` (``.pth`` as ``SelftokPipeline`` loads it, or ``.safetensors``).

Output: a diffusers-style multi-folder layout (a saved [`SelftokDecoderPipeline`])::

    OUT/model_index.json
    OUT/image_tokenizer/   SelftokModel      (encoder + quantizer; loads with SelftokModel.from_pretrained(OUT, subfolder="image_tokenizer"))
    OUT/transformer/       SelftokDecoderTransformer  (50-step decoder)
    OUT/renderer/          SelftokRenderer   (one-step renderer, optional)
    OUT/vae/, OUT/scheduler/

``OUT`` is written under a hidden name beside it and renamed into place when complete, so a failed conversion
never leaves a folder that mixes two conversions; a non-empty ``OUT`` is refused before any work unless
``--overwrite``, which replaces it whole once the new one is complete. Config errors (YAML syntax, a missing ``k``,
a bad ``k_per_stage``) and unreadable checkpoints exit with code 2 and a message naming the file and the key.

Memory: the checkpoint is memory-mapped (``torch.load(..., mmap=True)``; safetensors files are mapped by
safetensors), the decoder and renderer are built without weights (meta device) and take the mapped tensors
themselves, and the folder is written as sharded safetensors (``--max-shard-size``, default 5GB) straight from the
mapping: no second copy of the 2B-parameter decoder is made. Peak RSS is about the checkpoint's size
(``benchmarks/convert_memory.py`` measures it); loading the folder maps its shards the same way.

Conversion is strict: every official key is either mapped or listed in a documented "dropped" set;
anything else, and anything our model expects but the checkpoint lacks, raises ``ValueError`` naming
the keys. Official token order (index 0 = finest) is kept inside the weights; the public API flips
to AR order at its edges, so no weight needs reordering.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import zipfile
from typing import Any, Mapping, Optional, Union

import torch

from ..configuration_selftok import SelftokConfig
from ..embeddings import sincos_2d
from ..token_schedule import TokenSchedule
from ..utils.atomic import atomic_folder, is_non_empty_folder

__all__ = [
    "load_official_config",
    "load_official_state_dict",
    "selftok_config_from_official",
    "convert_official_tokenizer_state_dict",
    "build_tokenizer_from_official",
    "build_decoder_from_official",
    "build_renderer_from_official",
    "build_pipeline_from_official",
    "convert_official_checkpoint",
    "main",
]

# Sizes of the official `Enc-Qformer-Uni-*` encoders (model_zoo.py): patch, width, heads, depth, query width, query heads.
OFFICIAL_ENCODER_PRESETS: dict[str, dict[str, int]] = {
    "Enc-Qformer-Uni-XL/2": dict(patch_size=2, hidden_size=64, num_heads=4, depth=16, query_dim=512, query_heads=8),
    "Enc-Qformer-Uni-M/2": dict(patch_size=2, hidden_size=64, num_heads=4, depth=16, query_dim=64, query_heads=4),
    "Enc-Qformer-Uni-L/2": dict(patch_size=2, hidden_size=64, num_heads=4, depth=20, query_dim=128, query_heads=8),
    "Enc-Qformer-Uni-L2/2": dict(patch_size=2, hidden_size=128, num_heads=4, depth=24, query_dim=128, query_heads=4),
    "Enc-Qformer-Uni-WL/2": dict(patch_size=2, hidden_size=128, num_heads=4, depth=24, query_dim=256, query_heads=8),
    "Enc-Qformer-Uni-WL/1": dict(patch_size=1, hidden_size=128, num_heads=4, depth=24, query_dim=256, query_heads=8),
    "Enc-Qformer-Uni-XL/1": dict(patch_size=1, hidden_size=64, num_heads=4, depth=24, query_dim=256, query_heads=8),
    "Enc-Qformer-Uni-UWL/1": dict(patch_size=1, hidden_size=256, num_heads=8, depth=24, query_dim=256, query_heads=8),
    "Enc-Qformer-Uni-WXL/1": dict(patch_size=1, hidden_size=256, num_heads=4, depth=28, query_dim=256, query_heads=4),
    "Enc-Qformer-Uni-WXL/2": dict(patch_size=2, hidden_size=256, num_heads=4, depth=28, query_dim=256, query_heads=4),
    "Enc-Qformer-Uni-WXL/3": dict(patch_size=1, hidden_size=256, num_heads=4, depth=28, query_dim=512, query_heads=4),
    "Enc-Qformer-Uni-WXL/4": dict(patch_size=2, hidden_size=256, num_heads=4, depth=28, query_dim=512, query_heads=4),
    "Enc-Qformer-Uni-WXL/5": dict(patch_size=2, hidden_size=256, num_heads=4, depth=28, query_dim=512, query_heads=8),
}

# Official encoder keys with no counterpart, and why.
DROPPED_ENCODER_KEYS = {
    r"encoder\.final_layer_norm\.(weight|bias)": "pre-quantizer LayerNorm, unused (pre_norm: False)",
    r"encoder\.final_layer_norm2\.(weight|bias)": "unused LayerNorm of the base Encoder class",
    r"encoder\.pos_embed": "fixed 2-D sin-cos table, recomputed (checked equal before dropping)",
    r"encoder\.quantizer\._codebook\.cluster_size_wo_react": "logging-only EMA statistic",
    r"encoder\.quantizer\.count": "logging-only usage counter",
    r"encoder\.quantizer\.steps": "step counter of the unused continuous warm-up",
    r"encoder\.quantizer\.continuous": "continuous warm-up flag (checked to be off)",
    r"diffusion\..*": "RectifiedFlow schedule buffers, never used at inference",
}

_ENCODER_BLOCK_RENAMES = {
    "attn.qkv": "attn.image_qkv",
    "attn.to_query_kv": "attn.image_to_query_kv",
    "attn.proj": "attn.image_out",
    "attn.query_linear": "attn.query_qkv",
    "attn.query_proj": "attn.query_out",
    "mlp.fc1": "image_mlp.fc1",
    "mlp.fc2": "image_mlp.fc2",
    "q_mlp.fc1": "query_mlp.fc1",
    "q_mlp.fc2": "query_mlp.fc2",
    "t_embedder.mlp.0": "query_time_embedder.mlp.0",
    "t_embedder.mlp.2": "query_time_embedder.mlp.2",
    "adaLN_modulation.1": "query_modulation",
}

_ENCODER_RENAMES = {
    "encoder.x_embedder.proj.weight": "encoder.patch_embed.weight",
    "encoder.x_embedder.proj.bias": "encoder.patch_embed.bias",
    "encoder.query_tokens": "encoder.queries",
    "encoder.final_layer_norm3.weight": "quantizer.post_norm.weight",
    "encoder.final_layer_norm3.bias": "quantizer.post_norm.bias",
    "encoder.quantizer.project_in.weight": "quantizer.project_in.weight",
    "encoder.quantizer.project_in.bias": "quantizer.project_in.bias",
    "encoder.quantizer.project_out.weight": "quantizer.project_out.weight",
    "encoder.quantizer.project_out.bias": "quantizer.project_out.bias",
}

# Codebook buffers carry a leading num_codebooks=1 axis in the official layout.
_CODEBOOK_RENAMES = {
    "encoder.quantizer._codebook.embed": "quantizer.embed",
    "encoder.quantizer._codebook.embed_avg": "quantizer.embed_avg",
    "encoder.quantizer._codebook.cluster_size": "quantizer.cluster_size",
    "encoder.quantizer._codebook.timestep_p_over_c": "quantizer.position_code_usage",
    "encoder.quantizer._codebook.initted": "quantizer.initted",
    "encoder.quantizer._codebook.tpc_initted": "quantizer.position_usage_initted",
}


# ------------------------------------------------------------------------------------------ loading
def load_official_config(path: str) -> dict:
    """Read an official YAML config and return its ``tokenizer.params`` dict (plus ``model`` options).

    Raises ``ValueError`` naming the file (and the key) for what would otherwise fail later or deep inside: a YAML
    syntax error, no ``tokenizer.params`` section, a missing or non-integer ``k`` or ``image_size``, and
    ``stages`` / ``k_per_stage`` that are not comma-separated integers, differ in length, or do not add up to ``k``.
    """
    import yaml

    if not os.path.isfile(path):
        raise ValueError(f"config {path} does not exist")
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ValueError(f"config {path} is not valid YAML: {e}") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("tokenizer"), dict) or "params" not in cfg["tokenizer"]:
        raise ValueError(f"{path} is not an official Selftok config: no `tokenizer.params` section")
    if not isinstance(cfg["tokenizer"]["params"], dict):
        raise ValueError(f"{path}: `tokenizer.params` is not a mapping of options")
    params = dict(cfg["tokenizer"]["params"])
    _check_token_schedule(params, f"{path}: tokenizer.params")
    params["_model_options"] = dict(cfg.get("model") or {})
    return params


def _check_token_schedule(params: dict, where: str) -> None:
    """The keys every official config needs and ``selftok_config_from_official`` parses, checked with ``where`` (the
    file and section) in the message; ``stages`` / ``k_per_stage`` only when present (their absence is reported
    as unsupported later)."""
    for key in ("k", "image_size"):
        if key not in params:
            raise ValueError(f"{where} has no `{key}`")
        try:
            # str() first: int() would truncate 32.5 and accept True.
            if int(str(params[key]).strip()) < 1:
                raise ValueError
        except ValueError:
            raise ValueError(f"{where}.{key}: expected a positive integer, got {params[key]!r}") from None
    if "stages" not in params and "k_per_stage" not in params:
        return
    lists = {}
    for key in ("stages", "k_per_stage"):
        if key not in params:
            raise ValueError(f"{where} has `{'k_per_stage' if key == 'stages' else 'stages'}` but no `{key}`: they go together")
        try:
            lists[key] = _parse_int_list(params[key])
        except (TypeError, ValueError):
            raise ValueError(f"{where}.{key}: expected comma-separated integers (e.g. 200,400,600,800,1000), got {params[key]!r}") from None
    stages, per_stage, k = lists["stages"], lists["k_per_stage"], int(str(params["k"]).strip())
    try:
        TokenSchedule(k, stages, per_stage)
    except ValueError as e:
        raise ValueError(f"{where}: `stages` / `k_per_stage`: {e}") from None
    if any(n < 0 for n in per_stage) or sum(per_stage) != k:
        raise ValueError(f"{where}.k_per_stage: {params['k_per_stage']!r} must be token counts >= 0 adding up to k={k} (they add up to {sum(per_stage)})")


def load_official_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Load a flat official ``ImageTokenizer.state_dict()`` from ``.pth``/``.pt``/``.bin`` or ``.safetensors``.

    The tensors are memory-mapped from the file (read as they are used, by the page cache), not read into memory:
    ``torch.load(..., mmap=True, weights_only=True)``, and safetensors' own mapping. A ``.pth`` in torch's pre-1.6
    (non-zip) format cannot be mapped and is read whole.
    """
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path} does not exist")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            sd = load_file(path)
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # corrupt or truncated files surface here
        raise ValueError(f"could not read checkpoint {path}: {type(e).__name__}: {e}") from e
    # Some training wrappers nest the weights or prefix them with `module.`.
    for key in ("state_dict", "model_state_dict", "module"):
        if isinstance(sd, Mapping) and key in sd and isinstance(sd[key], Mapping) and len(sd) == 1:
            sd = sd[key]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path} does not hold a flat state dict of tensors")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}


def _parse_int_list(value: Any) -> list[int]:
    if isinstance(value, str):
        return [int(v) for v in value.split(",") if v.strip()]
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


# ------------------------------------------------------------------------------------------ config
def selftok_config_from_official(params: dict, state_dict: Optional[Mapping[str, torch.Tensor]] = None) -> SelftokConfig:
    """Build a [`SelftokConfig`] from an official ``tokenizer.params`` dict.

    Sizes come from, in order: explicit ``encoder_config`` keys, the named official encoder preset,
    and the state dict's shapes (head counts cannot be inferred from shapes and must come from one
    of the first two).
    """
    enc_cfg = dict(params.get("encoder_config") or {})
    q_cfg = dict(params.get("quantizer_config") or {})
    name = params.get("enc", "")
    if enc_cfg.get("qformer_mode", "dual") != "dual" or "-Bi-" in name or "Multi-Res" in name or "Uni0" in name:
        raise ValueError(f"encoder {name!r} (qformer_mode={enc_cfg.get('qformer_mode')!r}) is not supported: only the dual-stream 'Uni' Q-Former is")
    if enc_cfg.get("pre_norm", False):
        raise ValueError("pre_norm: True encoders are not supported (the releases use pre_norm: False)")
    if enc_cfg.get("qk_norm", False):
        raise ValueError("qk_norm: True encoders are not supported (the releases use qk_norm: False)")
    if q_cfg.get("continuous", False):
        raise ValueError("quantizer_config.continuous: True is a training warm-up mode, not a tokenizer")
    if "codebook_size" not in q_cfg:
        raise ValueError("quantizer_config has no codebook_size: only the VQ configs are supported (not FSQ)")
    if "code_dim" not in q_cfg:
        raise ValueError("quantizer_config has no code_dim")

    sizes = dict(OFFICIAL_ENCODER_PRESETS.get(name, {}))
    sizes.update({k: enc_cfg[k] for k in ("patch_size", "hidden_size", "num_heads", "depth", "query_dim", "query_heads") if k in enc_cfg})
    if state_dict is not None:
        inferred = _encoder_sizes_from_state_dict(state_dict)
        for key, value in inferred.items():
            if key in sizes and int(sizes[key]) != value:
                raise ValueError(f"config says {key}={sizes[key]} but the checkpoint has {value}")
            sizes.setdefault(key, value)
    missing = [k for k in ("patch_size", "hidden_size", "num_heads", "depth", "query_dim", "query_heads") if k not in sizes]
    if missing:
        raise ValueError(f"encoder {name!r} is not a known official preset and the config does not state {missing}")

    K = int(params["k"])
    image_size = int(params["image_size"])
    if image_size % 8:
        raise ValueError(f"image_size {image_size} is not divisible by 8")
    latent_size = image_size // 8
    stages = params.get("stages")
    if stages is None:
        raise ValueError("only configs with a `stages`/`k_per_stage` token schedule are supported (DiTi_cont)")
    code_dim = int(q_cfg["code_dim"])
    token_dim = int(params.get("encoder_hidden_size", code_dim))
    return SelftokConfig(
        latent_channels=int(params.get("in_channels", 16)),
        latent_size=latent_size,
        patch_size=int(sizes["patch_size"]),
        encoder_hidden_size=int(sizes["hidden_size"]),
        encoder_num_heads=int(sizes["num_heads"]),
        encoder_depth=int(sizes["depth"]),
        pos_embed_max_size=2 * latent_size if params.get("enable_enc_variable_size", False) else latent_size // int(sizes["patch_size"]),
        num_image_tokens=K,
        query_dim=int(sizes["query_dim"]),
        query_heads=int(sizes["query_heads"]),
        query_adaln=bool(enc_cfg.get("time_adaln", False)),
        causal_queries=bool(enc_cfg.get("attn_mask", False)),
        codebook_size=int(q_cfg["codebook_size"]),
        code_dim=code_dim,
        token_dim=token_dim,
        post_norm=bool(enc_cfg.get("post_norm", True)),
        ema_decay=float(q_cfg.get("decay", 0.99)),
        commitment_weight=float(q_cfg.get("w_commit", 1.0)),
        diversity_weight=float(q_cfg.get("w_diversity", 1.0)),
        ema_entropy_ratio=float(q_cfg.get("ema_entropy_ratio", 0.8)),
        diversity_schedule=[float(v) for v in q_cfg.get("reg", [0.1, 0.3])],
        dead_code_threshold=float(q_cfg.get("dead_code_threshold", 0.2)),
        reset_cluster_size=float(q_cfg.get("reset_cluster_size", q_cfg.get("dead_code_threshold", 0.2))),
        smart_reactivation=bool(q_cfg.get("smart_react", True)),
        schedule_stages=_parse_int_list(stages),
        schedule_tokens_per_stage=_parse_int_list(params["k_per_stage"]),
    )


def _encoder_sizes_from_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, int]:
    sizes = {}
    w = sd.get("encoder.x_embedder.proj.weight")
    if w is not None:
        sizes["hidden_size"], sizes["patch_size"] = int(w.shape[0]), int(w.shape[-1])
    q = sd.get("encoder.query_tokens")
    if q is not None:
        sizes["query_dim"] = int(q.shape[-1])
    blocks = {int(m.group(1)) for k in sd for m in [re.match(r"encoder\.blocks\.(\d+)\.", k)] if m}
    if blocks:
        sizes["depth"] = max(blocks) + 1
    return sizes


# ---------------------------------------------------------------------------------- state dicts
def _is_dropped(key: str, patterns: Mapping[str, str]) -> bool:
    return any(re.fullmatch(p, key) for p in patterns)


def convert_official_tokenizer_state_dict(
    official: Mapping[str, torch.Tensor], config: SelftokConfig
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map the ``encoder.*`` (and ``diffusion.*``) keys of an official state dict to [`SelftokModel`] names.

    ``model.*`` keys (decoder / renderer) are ignored here. Returns ``(state_dict, dropped_keys)``.
    Raises ``ValueError`` listing unknown keys, and checks the fixed tables and flags it drops.
    """
    out: dict[str, torch.Tensor] = {}
    dropped, unknown = [], []
    for key, value in official.items():
        if key.startswith("model."):
            continue
        if key in _ENCODER_RENAMES:
            out[_ENCODER_RENAMES[key]] = value
        elif key in _CODEBOOK_RENAMES:
            out[_CODEBOOK_RENAMES[key]] = value.reshape(value.shape[1:]) if value.ndim > 1 else value.reshape(())
        elif (m := re.fullmatch(r"encoder\.blocks\.(\d+)\.(.+)\.(weight|bias)", key)) and m.group(2) in _ENCODER_BLOCK_RENAMES:
            out[f"encoder.blocks.{m.group(1)}.{_ENCODER_BLOCK_RENAMES[m.group(2)]}.{m.group(3)}"] = value
        elif _is_dropped(key, DROPPED_ENCODER_KEYS):
            dropped.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unexpected keys in the official checkpoint (not mapped, not known to be unused): {sorted(unknown)}")

    # Values of dropped tables and flags are checked; on the meta device (shape-only conversion) only shapes.
    if "encoder.pos_embed" in official:
        table = official["encoder.pos_embed"].reshape(-1, config.encoder_hidden_size)
        expected = sincos_2d(config.encoder_hidden_size, config.pos_embed_max_size)
        if table.shape != expected.shape or (not table.is_meta and (table.float() - expected).abs().max() > 1e-5):
            raise ValueError(
                f"encoder.pos_embed {tuple(official['encoder.pos_embed'].shape)} is not the 2-D sin-cos table of a "
                f"{config.pos_embed_max_size}x{config.pos_embed_max_size} grid this config implies"
            )
    continuous = official.get("encoder.quantizer.continuous")
    if continuous is not None and not continuous.is_meta and bool(continuous.any()):
        raise ValueError("encoder.quantizer.continuous is set: this checkpoint is in the continuous warm-up, not quantized")
    return out, dropped


def _check_against_model(state_dict: Mapping[str, torch.Tensor], model: torch.nn.Module, what: str) -> None:
    """Strict key and shape check of a converted state dict against a model's own state dict."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{what}: checkpoint does not match the model. missing: {missing}; unexpected: {unexpected}")
    wrong = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}" for k, v in state_dict.items() if tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        raise ValueError(f"{what}: shape mismatch: {wrong}")


def build_tokenizer_from_official(params: dict, official: Mapping[str, torch.Tensor]):
    """Official config params + state dict -> a loaded [`SelftokModel`] (fp32, eval mode)."""
    from ..modeling_selftok import SelftokModel

    config = selftok_config_from_official(params, official)
    state_dict, _ = convert_official_tokenizer_state_dict(official, config)
    return _model_holding(lambda: SelftokModel(config), state_dict, "image_tokenizer")


def _model_holding(make_model, state_dict: Mapping[str, torch.Tensor], what: str):
    """``make_model()`` (eval mode) whose weights are ``state_dict``'s tensors themselves, not a copy.

    Built under accelerate's ``init_empty_weights`` (parameters on the meta device, buffers real), checked key by
    key and shape by shape (``ValueError`` naming ``what``), then filled with ``load_state_dict(strict=True,
    assign=True)``: the 2B-parameter decoder never exists twice (a random init plus the checkpoint), and the
    tensors of a memory-mapped checkpoint stay mapped. Tensors are cast to the model's dtype (float32) where they
    differ, as a copying ``load_state_dict`` would.
    """
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = make_model()
    _check_against_model(state_dict, model, what)
    expected = model.state_dict()
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state_dict.items()}, strict=True, assign=True)
    return model.eval()


# ------------------------------------------------------------------------------------------- main
def build_decoder_from_official(params: dict, official: Mapping[str, torch.Tensor]):
    """Official config params + state dict -> a loaded [`SelftokDecoderTransformer`] (fp32, eval mode)."""
    from ..modeling_selftok_decoder import SelftokDecoderTransformer
    from . import (
        convert_official_decoder_state_dict,
        decoder_config_from_official_state_dict,
    )

    model_sd = _model_keys(official, "tokenizer checkpoint")
    config = decoder_config_from_official_state_dict(
        model_sd, sample_size=int(params["image_size"]) // 8, context_see_xt=bool(params.get("context_see_xt", False))
    )
    state_dict, _ = convert_official_decoder_state_dict(model_sd, config)
    return _model_holding(lambda: SelftokDecoderTransformer(**config), state_dict, "transformer")


def build_renderer_from_official(params: dict, official: Mapping[str, torch.Tensor]):
    """Official renderer config params + state dict -> a loaded [`SelftokRenderer`] (fp32, eval mode)."""
    from ..modeling_selftok_decoder import SelftokRenderer
    from . import (
        convert_official_renderer_state_dict,
        renderer_config_from_official_state_dict,
    )

    model_sd = _model_keys(official, "renderer checkpoint")
    if not (params.get("decoder_config") or {}).get("repeat", False):
        raise ValueError("only the renderer with `repeat: True` (one canvas token repeated over the grid) is supported")
    patch = int((params.get("encoder_config") or {}).get("patch_size", OFFICIAL_ENCODER_PRESETS.get(params.get("enc"), {}).get("patch_size", 2)))
    config = renderer_config_from_official_state_dict(model_sd, patch_size=patch)
    if config["sample_size"] != int(params["image_size"]) // 8:
        raise ValueError(f"renderer checkpoint is for {config['sample_size']}x{config['sample_size']} latents, config says image_size {params['image_size']}")
    state_dict, _ = convert_official_renderer_state_dict(model_sd, config)
    return _model_holding(lambda: SelftokRenderer(**config), state_dict, "renderer")


def _model_keys(official: Mapping[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """The ``model.*`` entries (decoder or renderer) without their prefix."""
    model_sd = {k[len("model."):]: v for k, v in official.items() if k.startswith("model.")}
    if not model_sd:
        raise ValueError(f"the {what} has no `model.*` keys (no decoder / renderer weights)")
    return model_sd


def build_pipeline_from_official(
    params: dict,
    official: Mapping[str, torch.Tensor],
    renderer_params: Optional[dict] = None,
    renderer_official: Optional[Mapping[str, torch.Tensor]] = None,
    vae=None,
):
    """Build a [`SelftokDecoderPipeline`] from official configs and state dicts.

    The renderer checkpoint's encoder must be the tokenizer's (the release trains the renderer with a frozen
    encoder); it is checked, since only one codebook is kept. Without ``vae``, a seeded random tiny SD3-shaped
    VAE stands in, with a ``RandomWeightsWarning``.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler

    from ..pipeline_selftok_decoder import SelftokDecoderPipeline
    from ..vae import random_sd3_vae

    image_tokenizer = build_tokenizer_from_official(params, official)
    transformer = build_decoder_from_official(params, official)
    renderer = None
    if renderer_official is not None:
        _check_same_codebook(image_tokenizer, renderer_params, renderer_official)
        renderer = build_renderer_from_official(renderer_params, renderer_official)
    if vae is None:
        vae = random_sd3_vae(seed=0)
    if vae.config.latent_channels != image_tokenizer.config.latent_channels:
        raise ValueError(f"VAE has {vae.config.latent_channels} latent channels, the tokenizer expects {image_tokenizer.config.latent_channels}")
    return SelftokDecoderPipeline(
        image_tokenizer=image_tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
        renderer=renderer,
    )


def _check_same_codebook(image_tokenizer, renderer_params: dict, renderer_official: Mapping[str, torch.Tensor]) -> None:
    """The renderer checkpoint's encoder must map to the tokenizer's model (keys and shapes, checked on the meta
    device), and its codebook and post-quantizer norm, all that decoding reads, must equal the tokenizer's."""
    from ..modeling_selftok import SelftokModel

    config = selftok_config_from_official(renderer_params, renderer_official)
    state_dict, _ = convert_official_tokenizer_state_dict(renderer_official, config)
    with torch.device("meta"):
        _check_against_model(state_dict, SelftokModel(config), "renderer checkpoint's image_tokenizer")
    ours = image_tokenizer.state_dict()
    for name in ("quantizer.embed", "quantizer.post_norm.weight", "quantizer.post_norm.bias"):
        a, b = ours[name], state_dict[name].to(ours[name].dtype)
        if a.shape != b.shape or not torch.equal(a, b):
            raise ValueError(f"renderer checkpoint's {name} differs from the tokenizer's: they were not trained together")


#: Shards of at most this size: the 2B-parameter decoder (8 GB in float32) is written as two files.
DEFAULT_MAX_SHARD_SIZE = "5GB"


def convert_official_checkpoint(
    config_path: str,
    checkpoint_path: str,
    output_dir: str,
    renderer_config_path: Optional[str] = None,
    renderer_checkpoint_path: Optional[str] = None,
    vae_path: Optional[str] = None,
    overwrite: bool = False,
    max_shard_size: Union[int, str] = DEFAULT_MAX_SHARD_SIZE,
) -> str:
    """Convert official config + checkpoint(s) into ``output_dir`` (see the module docstring). Returns ``output_dir``.

    Weights are written as safetensors shards of at most ``max_shard_size`` (``"5GB"``, or bytes), from the
    memory-mapped checkpoint (see the module docstring on memory).

    The folder is written beside ``output_dir`` and renamed into place when complete (:func:`~selftok_hf.utils.atomic.atomic_folder`):
    a conversion that fails leaves no folder, or the previous one intact. A non-empty ``output_dir`` raises
    ``FileExistsError`` before any work unless ``overwrite``, which replaces it whole (no stale files of the old
    conversion are kept).
    """
    from diffusers import AutoencoderKL

    with atomic_folder(output_dir, overwrite=overwrite) as staged:
        params = load_official_config(config_path)
        official = load_official_state_dict(checkpoint_path)
        renderer_params = renderer_official = None
        if renderer_checkpoint_path is not None:
            renderer_params = load_official_config(renderer_config_path)
            renderer_official = load_official_state_dict(renderer_checkpoint_path)
        vae = None
        if vae_path is not None:
            try:
                vae = AutoencoderKL.from_pretrained(vae_path)
            except (OSError, ValueError) as e:
                raise ValueError(f"could not load an AutoencoderKL from {vae_path}: {e}") from e
        pipe = build_pipeline_from_official(params, official, renderer_params, renderer_official, vae)
        pipe.save_pretrained(staged, max_shard_size=max_shard_size)
    return output_dir


def _shard_size(text: str) -> int:
    """``--max-shard-size``: a number of bytes, or of KB / MB / GB (powers of 1000, as huggingface_hub counts)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]B)?\s*", text, re.IGNORECASE)
    size = int(float(match.group(1)) * 1000 ** " KMG".index((match.group(2) or " ")[0].upper())) if match else 0
    if size < 1:
        raise argparse.ArgumentTypeError(f"expected a size such as 5GB, 500MB or a number of bytes, got {text!r}")
    return size


def main(argv: Optional[list[str]] = None, prog: str = "selftok-convert") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Convert an official Selftok checkpoint (selftok-team/SelftokTokenizer) into a selftok-hf folder.",
    )
    parser.add_argument("--config", required=True, help="official tokenizer YAML, e.g. configs/res256/256-eval.yml")
    parser.add_argument("--checkpoint", required=True, help="official tokenizer checkpoint (.pth or .safetensors)")
    parser.add_argument("--renderer-config", help="official renderer YAML (configs/renderer/renderer-eval.yml)")
    parser.add_argument("--renderer-checkpoint", help="official renderer checkpoint")
    parser.add_argument("--vae", help="folder of a diffusers SD3 AutoencoderKL (e.g. sd3-medium/vae)")
    parser.add_argument("--output", required=True, help="output folder (written beside it, renamed into place when complete)")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace an existing output folder, once the new one is complete (default: refuse a non-empty one, before any work)",
    )
    parser.add_argument(
        "--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE, type=_shard_size,
        help=f"largest safetensors shard, e.g. 5GB or 500MB (default {DEFAULT_MAX_SHARD_SIZE}: the decoder is written in two files)",
    )
    args = parser.parse_args(argv)
    if (args.renderer_config is None) != (args.renderer_checkpoint is None):
        parser.error("--renderer-config and --renderer-checkpoint go together")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        parser.error(f"--output {args.output}: is a file, expected a folder")
    if is_non_empty_folder(args.output) and not args.overwrite:
        parser.error(f"--output {args.output}: the folder exists and is not empty; pass --overwrite to replace it")
    try:
        convert_official_checkpoint(
            args.config, args.checkpoint, args.output, args.renderer_config, args.renderer_checkpoint, args.vae, args.overwrite,
            max_shard_size=args.max_shard_size,
        )
    except ValueError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"{parser.prog}: error: cannot write {args.output}: {e} (any previous folder is unchanged)", file=sys.stderr)
        return 1
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
