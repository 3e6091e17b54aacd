"""Selftok image tokenizer: dual-stream Q-Former encoder + cosine VQ (transformers model).

Token order: every public tensor indexed by token position (``token_ids``, ``query_features``,
``token_embeddings``) is in **AR order**: position 0 is the coarsest token (the paper's v_1). The
official code and the decoder work in *code order* (index 0 is the finest token); the flip happens
only here and in the decoder pipeline, via :func:`~selftok_hf.token_schedule.to_code_order`.
"""


import json
import math
import os
import posixpath
import threading
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_selftok import SelftokConfig
from .embeddings import TimestepEmbedder, sincos_2d
from .hub import SelftokHubMixin
from .loading import check_loading_info
from .quantizer import CosineVectorQuantizer, QuantizerSettings
from .token_schedule import to_ar_order, to_code_order, token_positions
from .vae import pixels_to_latents

_VAE_LOCK = threading.Lock()


def _load_vae(root: str, subfolder: str, hub_kwargs: dict):
    """The VAE in ``root``'s ``subfolder`` (a local folder or a Hub repo): diffusers' ``AutoencoderKL``, or the
    pixel-space stand-in, as its ``config.json`` names it."""
    from transformers.utils import cached_file

    config = json.loads(open(cached_file(root, "config.json", subfolder=subfolder, **hub_kwargs), encoding="utf-8").read())
    name = config.get("_class_name")
    if name == "PixelSpaceAutoencoder":
        from .pixel_space import PixelSpaceAutoencoder as vae_class
    elif name == "AutoencoderKL":
        from diffusers import AutoencoderKL as vae_class
    else:
        raise ValueError(f"{root}/{subfolder} holds a {name!r}; the Selftok tokenizer loads an AutoencoderKL or a PixelSpaceAutoencoder")
    return vae_class.from_pretrained(root, subfolder=subfolder, **hub_kwargs)

__all__ = ["SelftokModel", "SelftokEncoderOutput", "SelftokModelOutput", "SelftokPreTrainedModel"]


@dataclass
class SelftokEncoderOutput(ModelOutput):
    """Output of [`SelftokModel.encode`], all in AR order (position 0 = coarsest token).

    Args:
        token_ids (`torch.LongTensor` of shape `(batch, num_image_tokens)`): codebook ids.
        token_embeddings (`torch.FloatTensor` of shape `(batch, num_image_tokens, token_dim)`): the dequantized,
            post-normed code vectors the decoder and LMs consume (= ``embed_tokens(token_ids)``).
        query_features (`torch.FloatTensor` of shape `(batch, num_image_tokens, query_dim)`): the continuous
            encoder outputs fed to the quantizer.
        projected_features (`torch.FloatTensor` of shape `(batch, num_image_tokens, code_dim)`): the
            l2-normalised projections compared with the codebook.
    """

    token_ids: Optional[torch.LongTensor] = None
    token_embeddings: Optional[torch.FloatTensor] = None
    query_features: Optional[torch.FloatTensor] = None
    projected_features: Optional[torch.FloatTensor] = None


@dataclass
class SelftokModelOutput(SelftokEncoderOutput):
    """Output of [`SelftokModel.forward`]: the fields of [`SelftokEncoderOutput`] (AR order), and in training mode
    the quantizer's loss. A subclass, and the two extra fields come last and are None in eval mode, so an eval-mode
    output indexes and unpacks (``to_tuple()``) exactly as ``encode()``'s.

    Args:
        token_embeddings (`torch.FloatTensor` of shape `(batch, num_image_tokens, token_dim)`): as in
            [`SelftokEncoderOutput`]; in training mode with straight-through gradients to the encoder.
        loss (`torch.FloatTensor` of shape `()`, training mode only): ``commitment_weight * commitment + diversity``
            (0 when the quantizer alone is in eval mode).
        quantizer_stats (`dict[str, float]`, training mode only): what the quantizer step logs (``commitment``,
            ``diversity_entropy``, ``usage_perplexity``, ``reactivated_codes``; empty when the quantizer is in eval
            mode).
    """

    loss: Optional[torch.FloatTensor] = None
    quantizer_stats: Optional[dict] = None


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation with per-token (K, C) shift/scale broadcast over the batch."""
    return x * (1 + scale) + shift


class SelftokMLP(nn.Module):
    """Linear -> GELU(tanh) -> Linear; names ``fc1``/``fc2`` as in the checkpoints."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Optional[torch.Tensor],
    scaling: float,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention, the ``"eager"`` entry of transformers' attention interface for this model.

    Args:
        query: ``(B, heads, Lq, head_dim)``; key, value: ``(B, heads, Lk, head_dim)``.
        attention_mask: boolean ``(Lq, Lk)`` (True = attend), SDPA's convention, which every implementation here
            receives; or None.
        scaling: the factor of ``query @ key^T``.
    Returns:
        the output ``(B, Lq, heads, head_dim)`` and the attention weights ``(B, heads, Lq, Lk)``.
    """
    attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        # Every query sees all image keys, so no row is fully masked.
        attn_weights = attn_weights.masked_fill(~attention_mask, float("-inf"))
    # Softmax in float32 at least (as transformers' eager functions), but never below the model's dtype: a float64
    # model stays exact.
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.promote_types(query.dtype, torch.float32)).to(query.dtype)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class SelftokDualAttention(nn.Module):
    """Joint attention of the two encoder streams ("Uni" pattern).

    - image tokens attend only to image tokens (``encoder_num_heads`` heads of the image width);
    - queries attend to ``[to_query_kv(image) ; queries]`` (``query_heads`` heads of the query width),
      bidirectionally among themselves unless ``causal_queries``.

    Both are computed by the function transformers' ``ALL_ATTENTION_FUNCTIONS`` holds for
    ``config._attn_implementation`` (``"sdpa"`` by default, ``"eager"``: :func:`eager_attention_forward`).
    """

    def __init__(self, config: SelftokConfig) -> None:
        super().__init__()
        image_dim, query_dim = config.encoder_hidden_size, config.query_dim
        self.config = config
        self.image_heads, self.query_heads = config.encoder_num_heads, config.query_heads
        self.causal_queries = config.causal_queries
        # Read by transformers' attention functions: no implicit causal mask (the query mask is explicit).
        self.is_causal = False
        # 1 / sqrt(head_dim) computed as SDPA computes its default scale, so that the sdpa path is unchanged bitwise.
        self.image_scaling = 1.0 / math.sqrt(image_dim // self.image_heads)
        self.query_scaling = 1.0 / math.sqrt(query_dim // self.query_heads)
        self.image_qkv = nn.Linear(image_dim, 3 * image_dim)
        self.image_to_query_kv = nn.Linear(image_dim, 2 * query_dim)
        self.image_out = nn.Linear(image_dim, image_dim)
        self.query_qkv = nn.Linear(query_dim, 3 * query_dim)
        self.query_out = nn.Linear(query_dim, query_dim)

    @staticmethod
    def _heads(x: torch.Tensor, n: int, heads: int) -> tuple[torch.Tensor, ...]:
        """(B, L, n*C) -> n tensors (B, heads, L, C/heads)."""
        B, L, _ = x.shape
        return x.view(B, L, n, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)

    def forward(self, image: torch.Tensor, queries: torch.Tensor, compute_image: bool = True):
        """image ``(B, N, image_dim)`` and queries ``(B, K, query_dim)``, both already normalised/modulated.

        Returns the attention outputs of both streams; the image output is ``None`` when
        ``compute_image`` is False (the last block, whose image stream nobody reads).
        """
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        image_out = None
        if compute_image:
            q, k, v = self._heads(self.image_qkv(image), 3, self.image_heads)
            attended, _ = attention_interface(self, q, k, v, None, scaling=self.image_scaling, dropout=0.0, is_causal=False)
            image_out = self.image_out(attended.flatten(2))

        image_k, image_v = self._heads(self.image_to_query_kv(image), 2, self.query_heads)
        query_q, query_k, query_v = self._heads(self.query_qkv(queries), 3, self.query_heads)
        mask = None
        if self.causal_queries:
            K, N = queries.shape[1], image.shape[1]
            mask = torch.ones(K, N + K, dtype=torch.bool, device=queries.device)
            mask[:, N:] = torch.ones(K, K, dtype=torch.bool, device=queries.device).tril()
        attended, _ = attention_interface(
            self,
            query_q,
            torch.cat([image_k, query_k], dim=2),
            torch.cat([image_v, query_v], dim=2),
            mask,
            scaling=self.query_scaling,
            dropout=0.0,
            is_causal=False,
        )
        return image_out, self.query_out(attended.flatten(2))


class SelftokEncoderBlock(nn.Module):
    """One dual-stream block: a pre-LN ViT block on the image stream, an adaLN-Zero block on the queries.

    The queries' adaLN is *token-aware*: each query k is modulated by an embedding of its fake
    timestep 1000 + 8k, the same for every sample.
    """

    def __init__(self, config: SelftokConfig) -> None:
        super().__init__()
        d, q = config.encoder_hidden_size, config.query_dim
        self.attn = SelftokDualAttention(config)
        self.image_mlp = SelftokMLP(d, int(d * config.mlp_ratio))
        self.query_mlp = SelftokMLP(q, int(q * config.mlp_ratio))
        self.query_adaln = config.query_adaln
        if self.query_adaln:
            self.query_time_embedder = TimestepEmbedder(q)
            self.query_modulation = nn.Linear(q, 6 * q)
            # adaLN-Zero: each block starts as the identity on the queries (see `_init_weights`).
            self.query_modulation.init_scheme = "zero"
            self.query_time_embedder.mlp[0].init_scheme = self.query_time_embedder.mlp[2].init_scheme = "normal"

    def forward(self, image: torch.Tensor, queries: torch.Tensor, positions: torch.Tensor, compute_image: bool = True):
        """image ``(B, N, d)``, queries ``(B, K, q)``, positions ``(K,)`` fake timesteps -> updated streams."""
        if self.query_adaln:
            mod = self.query_modulation(F.silu(self.query_time_embedder(positions, queries.dtype)))
            shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=-1)
        else:
            zero = queries.new_zeros(())
            one = queries.new_ones(())
            shift_attn = scale_attn = shift_mlp = scale_mlp = zero
            gate_attn = gate_mlp = one

        q_in = _modulate(F.layer_norm(queries, queries.shape[-1:], eps=1e-6), shift_attn, scale_attn)
        image_attn, query_attn = self.attn(F.layer_norm(image, image.shape[-1:], eps=1e-6), q_in, compute_image)
        if compute_image:
            image = image + image_attn
            image = image + self.image_mlp(F.layer_norm(image, image.shape[-1:], eps=1e-6))
        queries = queries + gate_attn * query_attn
        q_in = _modulate(F.layer_norm(queries, queries.shape[-1:], eps=1e-6), shift_mlp, scale_mlp)
        queries = queries + gate_mlp * self.query_mlp(q_in)
        return image, queries


class SelftokEncoder(nn.Module):
    """Dual-stream Q-Former: SD3 latents ``(B, C, h, w)`` -> K query features ``(B, K, query_dim)`` in code order."""

    def __init__(self, config: SelftokConfig) -> None:
        super().__init__()
        self.config = config
        p, d = config.patch_size, config.encoder_hidden_size
        self.patch_embed = nn.Conv2d(config.latent_channels, d, kernel_size=p, stride=p)
        # Fixed 2-D sin-cos table over a (pos_embed_max_size)² patch grid, centre-cropped to the input.
        self.register_buffer("pos_embed", sincos_2d(d, config.pos_embed_max_size), persistent=False)
        self.register_buffer("positions", token_positions(config.num_image_tokens), persistent=False)
        self.queries = nn.Parameter(torch.randn(1, config.num_image_tokens, config.query_dim) * 0.02)
        self.blocks = nn.ModuleList(SelftokEncoderBlock(config) for _ in range(config.encoder_depth))
        self.gradient_checkpointing = False

    def cropped_pos_embed(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Centre crop of the position table for a ``grid_h × grid_w`` patch grid -> ``(1, grid_h*grid_w, d)``."""
        m = self.config.pos_embed_max_size
        top, left = (m - grid_h) // 2, (m - grid_w) // 2
        table = self.pos_embed.view(m, m, -1)[top : top + grid_h, left : left + grid_w]
        return table.reshape(1, grid_h * grid_w, -1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        image = self.patch_embed(latents)
        grid_h, grid_w = image.shape[-2:]
        image = image.flatten(2).transpose(1, 2) + self.cropped_pos_embed(grid_h, grid_w).to(image.dtype)
        queries = self.queries.expand(latents.shape[0], -1, -1)
        positions = self.positions
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            args = (image, queries, positions, i != last)
            if self.gradient_checkpointing and self.training:
                image, queries = torch.utils.checkpoint.checkpoint(block, *args, use_reentrant=False)
            else:
                image, queries = block(*args)
        return queries


class SelftokPreTrainedModel(PreTrainedModel):
    config: SelftokConfig
    base_model_prefix = "selftok"
    main_input_name = "latents"
    supports_gradient_checkpointing = True
    # Attention goes through transformers' interface (SelftokDualAttention): "sdpa" (default) and "eager" are
    # supported, and functions registered with `AttentionInterface.register`, which receive SDPA's boolean mask.
    # Flash attention takes no mask like the causal query mask, and transformers' flex attention wants a BlockMask or
    # an additive mask: both are left out, and transformers refuses them with its own error.
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _no_split_modules = ["SelftokEncoderBlock"]

    def get_correct_attn_implementation(self, requested_attention: Optional[str], is_init_check: bool = False) -> str:
        """transformers' check of ``attn_implementation``, which also refuses the ``paged|`` implementations: they
        need a paged KV cache, and ``paged|eager`` adds the mask to the scores, which would read this model's
        boolean mask as a +0/+1 bias."""
        if requested_attention is not None and requested_attention.startswith("paged|"):
            raise ValueError(
                f'attn_implementation="{requested_attention}" is not supported by {type(self).__name__} (an encoder '
                'without a KV cache); use "sdpa" (default) or "eager"'
            )
        return super().get_correct_attn_implementation(requested_attention, is_init_check)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # Official initialisation: xavier-uniform Linear/patch weights with zero biases, N(0, .02) for the
        # timestep MLPs, zero adaLN modulation (so every block starts as the identity on the queries).
        # `transformers.initialization` helpers leave weights loaded from a checkpoint untouched.
        # Modules are visited children first and each tensor is initialised once, so special cases are
        # tagged on the Linear itself (`init_scheme`) rather than handled at the parent.
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            scheme = getattr(module, "init_scheme", "xavier")
            if scheme == "zero":
                init.zeros_(module.weight)
            elif scheme == "normal":
                init.normal_(module.weight, std=0.02)
            else:
                init.xavier_uniform_(module.weight.view(module.weight.shape[0], -1))
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, SelftokEncoder):
            init.normal_(module.queries, std=0.02)
            # Non-persistent tables are not in checkpoints: recompute them on every load.
            init.copy_(module.pos_embed, sincos_2d(module.config.encoder_hidden_size, module.config.pos_embed_max_size))
            init.copy_(module.positions, token_positions(module.config.num_image_tokens))
        elif isinstance(module, CosineVectorQuantizer):
            # Unit-norm random codes; `initted` stays 0 so training starts with k-means.
            init.copy_(module.embed, F.normalize(torch.randn_like(module.embed), dim=-1))


#: Key of a ``config.json`` naming the subfolder (of the same repo) that holds the tokenizer's weights: the repo root
#: of a ``SelftokDecoderPipeline`` folder has the tokenizer's config with ``"image_tokenizer"`` here.
WEIGHTS_SUBFOLDER_KEY = "selftok_weights_subfolder"
#: Key of a ``config.json`` naming the folder of the tokenizer's VAE, relative to that ``config.json``'s folder
#: (``"vae"`` at a pipeline's root, ``"../vae"`` in its ``image_tokenizer/``).
VAE_SUBFOLDER_KEY = "selftok_vae_subfolder"
_POINTER_KEYS = (WEIGHTS_SUBFOLDER_KEY, VAE_SUBFOLDER_KEY)
_HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "proxies")





#: How far outside [-1, 1] pixel values may lie (float rounding of ``x / 127.5 - 1`` in lower precision).
PIXEL_RANGE_TOLERANCE = 1e-2


def check_pixel_values(pixel_values) -> None:
    """Raise a clear error unless ``pixel_values`` is a finite floating ``(B>0, 3, H>0, W>0)`` tensor in [-1, 1].

    uint8 images in [0, 255] or floats in [0, 1] are refused (the tokenizer would read them as a wrong, near-white
    image): pass images through the image processor, or compute ``x / 127.5 - 1`` (uint8) / ``2 * x - 1`` ([0, 1])."""
    hint = "pass PIL images / arrays through the image processor (or SelftokDecoderPipeline.encode), or rescale: uint8 x -> x / 127.5 - 1"
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
    if not pixel_values.is_floating_point():
        raise ValueError(f"pixel_values must be a floating-point tensor in [-1, 1], got {pixel_values.dtype} ({hint})")
    if pixel_values.ndim != 4 or pixel_values.shape[1] != 3 or 0 in pixel_values.shape:
        raise ValueError(f"pixel_values must have shape (batch, 3, height, width) with no empty dimension, got {tuple(pixel_values.shape)}")
    lo, hi = torch.aminmax(pixel_values.detach())
    lo, hi = float(lo), float(hi)  # NaN propagates through min/max
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("pixel_values contain NaN or infinite values")
    if lo < -1 - PIXEL_RANGE_TOLERANCE or hi > 1 + PIXEL_RANGE_TOLERANCE:
        raise ValueError(f"pixel_values must lie in [-1, 1], got values in [{lo:g}, {hi:g}] ({hint})")


class SelftokModel(SelftokHubMixin, SelftokPreTrainedModel):
    """The Selftok image tokenizer: SD3 latents -> K discrete tokens in AR order, and tokens -> code vectors.

    The SD3 VAE is not part of this model (it is a stock diffusers ``AutoencoderKL`` stored once, next to
    the tokenizer, in the pipeline folder). Attach it with :meth:`attach_vae` to go from pixels to ids;
    loaded from a folder that holds a VAE, the tokenizer finds it itself (see :meth:`from_pretrained`).
    ``push_to_hub`` uploads what :meth:`save_pretrained` writes, model card included (:mod:`selftok_hf.hub`).

    Repo layout (what ``SelftokDecoderPipeline.save_pretrained`` and ``selftok-convert`` write)::

        config.json                  the tokenizer's config (model_type "selftok"), plus
                                     "selftok_weights_subfolder": "image_tokenizer", "selftok_vae_subfolder": "vae"
        preprocessor_config.json     its image processor (resize + centre crop, [-1, 1])
        model_index.json             the diffusers pipeline (DiffusionPipeline ignores the two files above)
        image_tokenizer/             config.json ("selftok_vae_subfolder": "../vae"), model.safetensors,
                                     preprocessor_config.json
        vae/, transformer/, renderer/, scheduler/

    So ``AutoModel.from_pretrained(repo)`` and ``AutoImageProcessor.from_pretrained(repo)`` work at the root (and in
    ``image_tokenizer/``), ``DiffusionPipeline.from_pretrained(repo)`` as before, and the weights are stored once:
    the root ``config.json`` only points to them.
    """

    def __init__(self, config: SelftokConfig) -> None:
        super().__init__(config)
        self.encoder = SelftokEncoder(config)
        self.quantizer = CosineVectorQuantizer(config.query_dim, num_positions=config.num_image_tokens, settings=QuantizerSettings.from_config(config))
        self.__dict__["_vae"] = None  # see attach_vae: deliberately not a submodule
        self.__dict__["_vae_source"] = None  # (folder or repo id, subfolder, hub kwargs) of a VAE to load on first use
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, load_vae: bool = True, strict: bool = True, **kwargs):
        """transformers' ``from_pretrained``, following the pointers of a repo's ``config.json`` (layout in the class
        docstring): weights from ``selftok_weights_subfolder`` when the config names one (and no ``subfolder`` is
        given), and the VAE of ``selftok_vae_subfolder`` attached, loaded on first use (the first pixel input or
        ``.vae``), so ``encode(pixel_values=...)`` works on a tokenizer loaded from a pipeline repo.

        Loading is strict: weights the config has no place for (``unexpected``) or parameters the weights do not
        provide (``missing``) raise a ``ValueError`` naming the keys (a ``config.json`` whose ``encoder_depth`` is
        lower than the weights' used to load with a warning table and give different ids). ``strict=False`` keeps
        transformers' behaviour (a warning; the missing ones freshly initialised).

        Args:
            load_vae: False: do not attach the repo's VAE (pass latents, or :meth:`attach_vae` one).
            strict: refuse weights that do not match the config exactly (default True).
            kwargs: as for transformers' ``from_pretrained`` (``subfolder``, ``revision``, ``cache_dir``,
                ``output_loading_info``, ...).
        """
        output_loading_info = kwargs.pop("output_loading_info", False)
        subfolder = (kwargs.get("subfolder") or "").strip("/")
        hub_kwargs = {key: kwargs[key] for key in _HUB_KWARGS if kwargs.get(key) is not None}
        config = kwargs.get("config")
        if isinstance(config, SelftokConfig):
            pointers = {key: getattr(config, key, None) for key in _POINTER_KEYS}
        else:
            config_dict, _ = SelftokConfig.get_config_dict(
                pretrained_model_name_or_path, **({"subfolder": subfolder} if subfolder else {}), **hub_kwargs
            )
            pointers = {key: config_dict.get(key) for key in _POINTER_KEYS}
        weights = pointers[WEIGHTS_SUBFOLDER_KEY]
        config_folder = subfolder
        if weights and not subfolder:
            kwargs["subfolder"] = weights
        model, loading_info = super().from_pretrained(pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs)
        if strict:
            where = "/".join(part.strip("/") if i else part.rstrip("/") for i, part in enumerate((str(pretrained_model_name_or_path), kwargs.get("subfolder") or "")) if part)
            check_loading_info(loading_info, f"{cls.__name__} from {where}")
        for key in _POINTER_KEYS:  # they describe the repo, not the model: a re-saved tokenizer must not carry them
            if key in model.config.__dict__:
                delattr(model.config, key)
        vae_folder = pointers[VAE_SUBFOLDER_KEY]
        if load_vae and vae_folder:
            root = str(pretrained_model_name_or_path)
            if os.path.isdir(root):  # a local folder: the VAE folder may lie beside it (`image_tokenizer/../vae`)
                local = os.path.normpath(os.path.join(root, config_folder, vae_folder))
                if os.path.isfile(os.path.join(local, "config.json")):
                    model.__dict__["_vae_source"] = (local, "", {})
            else:  # a Hub repo: the VAE's subfolder of the same repo and revision
                vae_subfolder = posixpath.normpath(posixpath.join(config_folder, vae_folder))
                if not vae_subfolder.startswith(".."):
                    model.__dict__["_vae_source"] = (root, vae_subfolder, hub_kwargs)
        return (model, loading_info) if output_loading_info else model

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True, *, push_to_hub: bool = False, **kwargs) -> None:
        """transformers' ``save_pretrained`` (with the code files that ``trust_remote_code=True`` loads), plus the
        image processor (``preprocessor_config.json``) and a ``README.md`` model card. With ``push_to_hub=True`` the folder is then uploaded by
        :func:`selftok_hf.hub.push_folder` (``repo_id``, ``token``, ``private``, ``commit_message``, ``create_pr``, ``revision``, ``tags``)."""
        push_arguments = self._pop_push_arguments(save_directory, push_to_hub, kwargs)
        super().save_pretrained(save_directory, is_main_process, **kwargs)
        if is_main_process:
            # Its image processor, so that AutoImageProcessor.from_pretrained(folder) works here too.
            self.image_processor().save_pretrained(save_directory)
            self._finish_save(save_directory, push_arguments)

    def image_processor(self):
        """The image processor for this tokenizer's input size (resize the shortest edge + centre crop, [-1, 1])."""
        from .image_processing_selftok import SelftokImageProcessorPil

        size = self.config.image_size
        return SelftokImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})

    # ----------------------------------------------------------------------------------------- VAE
    def attach_vae(self, vae) -> "SelftokModel":
        """Attach an SD3 ``AutoencoderKL`` for pixel input. It is held by reference, not as a submodule,
        so ``save_pretrained`` never writes its weights into the tokenizer folder."""
        if vae is not None and getattr(vae.config, "latent_channels", None) != self.config.latent_channels:
            raise ValueError(
                f"VAE has {getattr(vae.config, 'latent_channels', None)} latent channels, the tokenizer expects "
                f"{self.config.latent_channels}"
            )
        # Bypass nn.Module.__setattr__, which would register the VAE as a submodule (and save it).
        self.__dict__["_vae"] = vae
        self.__dict__["_vae_source"] = None
        return self

    @property
    def has_vae(self) -> bool:
        """Whether pixels can be tokenised: a VAE is attached, or the folder this was loaded from holds one."""
        return self.__dict__.get("_vae") is not None or self.__dict__.get("_vae_source") is not None

    @property
    def vae(self):
        """The attached VAE; the one of the folder this tokenizer was loaded from is loaded here on first use."""
        if self.__dict__.get("_vae") is None and self.__dict__.get("_vae_source") is not None:
            with _VAE_LOCK:
                if self.__dict__.get("_vae") is None and self.__dict__.get("_vae_source") is not None:
                    self.attach_vae(_load_vae(*self.__dict__["_vae_source"]).to(self.device).eval())
        return self.__dict__.get("_vae")

    @torch.no_grad()
    def latents_from_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] ``(B, 3, H, W)`` -> SD3-normalised latents ``(B, 16, H/8, W/8)``.

        Uses the VAE posterior's mode, as the official inference does.
        """
        vae = self.vae
        if vae is None:
            raise ValueError(
                "No VAE attached: pixel input needs the SD3 VAE. Call `model.attach_vae(AutoencoderKL.from_pretrained("
                "folder, subfolder='vae'))`, or use `SelftokDecoderPipeline.encode(images)`, or pass `latents=`."
            )
        check_pixel_values(pixel_values)
        cfg = self.config
        return pixels_to_latents(vae, pixel_values, cfg.vae_scaling_factor, cfg.vae_shift_factor).to(self.device)

    # ---------------------------------------------------------------------------------- validation
    def _check_latents(self, latents: torch.Tensor) -> None:
        if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
            raise TypeError(f"latents must be a floating-point tensor, got {type(latents).__name__} {getattr(latents, 'dtype', '')}")
        if latents.ndim != 4:
            raise ValueError(f"latents must have shape (batch, channels, height, width), got {tuple(latents.shape)}")
        B, C, h, w = latents.shape
        cfg = self.config
        if B == 0:
            raise ValueError("latents is an empty batch")
        if C != cfg.latent_channels:
            raise ValueError(f"latents have {C} channels, the tokenizer expects {cfg.latent_channels}")
        p, m = cfg.patch_size, cfg.pos_embed_max_size
        if h % p or w % p or h // p > m or w // p > m:
            raise ValueError(
                f"latent size {h}x{w} must be divisible by patch_size={p} and at most {m * p} per side "
                f"(trained at {cfg.latent_size}x{cfg.latent_size})"
            )
        if not bool(torch.isfinite(latents).all()):  # NaN would quantize to code 0 everywhere, silently
            raise ValueError("latents contain NaN or infinite values")

    def check_token_ids(self, token_ids: torch.Tensor) -> None:
        """Raise a clear error unless ``token_ids`` is an integer ``(B>0, K)`` tensor of valid ids."""
        if not isinstance(token_ids, torch.Tensor):
            raise TypeError(f"token_ids must be a torch.Tensor, got {type(token_ids).__name__}")
        if token_ids.is_floating_point() or token_ids.is_complex() or token_ids.dtype == torch.bool:
            raise TypeError(f"token_ids must be an integer tensor, got {token_ids.dtype}")
        K, C = self.config.num_image_tokens, self.config.codebook_size
        if token_ids.ndim != 2 or token_ids.shape[1] != K:
            raise ValueError(f"token_ids must have shape (batch, {K}), got {tuple(token_ids.shape)}")
        if token_ids.shape[0] == 0:
            raise ValueError("token_ids is an empty batch")
        lo, hi = int(token_ids.min()), int(token_ids.max())
        if lo < 0 or hi >= C:
            raise ValueError(f"token_ids must lie in [0, {C}), got values in [{lo}, {hi}]")

    # ------------------------------------------------------------------------------------- public
    def _input_latents(self, latents: Optional[torch.Tensor], pixel_values: Optional[torch.Tensor]) -> torch.Tensor:
        """The checked latents ``(B, latent_channels, h, w)`` in the model's dtype, from exactly one of the inputs."""
        if (latents is None) == (pixel_values is None):
            raise ValueError("pass exactly one of `latents` or `pixel_values`")
        if latents is None:
            latents = self.latents_from_pixels(pixel_values)
        self._check_latents(latents)
        return latents.to(self.dtype)

    def encode(
        self,
        latents: Optional[torch.Tensor] = None,
        pixel_values: Optional[torch.Tensor] = None,
        return_dict: bool = True,
    ) -> SelftokEncoderOutput | tuple:
        """Tokenize images (inference: never changes the codebook, in either mode).

        Args:
            latents: SD3-normalised latents ``(B, latent_channels, h, w)``.
            pixel_values: alternatively, images in [-1, 1] ``(B, 3, H, W)`` (needs an attached VAE; see
                [`SelftokImageProcessor`] for PIL -> pixel_values).
        Returns:
            [`SelftokEncoderOutput`] with ``token_ids`` ``(B, K)`` int64 in AR order.
        """
        features = self.encoder(self._input_latents(latents, pixel_values))
        ids, projected = self.quantizer.quantize(features)
        embeddings = self.quantizer.embed_ids(ids)
        out = SelftokEncoderOutput(
            token_ids=to_ar_order(ids),
            token_embeddings=to_ar_order(embeddings),
            query_features=to_ar_order(features),
            projected_features=to_ar_order(projected),
        )
        return out if return_dict else out.to_tuple()

    def embed_tokens(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token ids ``(B, K)`` in AR order -> dequantized, post-normed code vectors ``(B, K, token_dim)`` (AR order)."""
        self.check_token_ids(token_ids)
        return to_ar_order(self.quantizer.embed_ids(to_code_order(token_ids.long().to(self.device))))

    def forward(
        self,
        latents: Optional[torch.Tensor] = None,
        pixel_values: Optional[torch.Tensor] = None,
        return_dict: bool = True,
    ) -> SelftokModelOutput | tuple:
        """The tokenizer's forward; in training mode, its training step (as ``VectorQuantize.forward``).

        - eval mode: :meth:`encode` (``loss`` and ``quantizer_stats`` are None);
        - training mode: the encoder, then the quantizer's training step (:meth:`CosineVectorQuantizer.forward`:
          k-means initialisation on the first batch, EMA codebook update, dead-code reactivation), so each call
          changes the codebook. ``token_embeddings`` carry straight-through gradients and ``loss`` is the
          quantizer's (commitment + diversity). The decoder's flow-matching loss is not here: it needs the decoder,
          and :class:`~selftok_hf.training.tokenizer.SelftokTokenizerObjective` adds it.

        So, unlike :meth:`encode`, calling a model in training mode (as a freshly constructed ``SelftokModel(config)``
        is; ``from_pretrained`` returns it in eval mode) changes its codebook: tokenize with :meth:`encode`, or call
        ``model.eval()`` first.

        Args:
            latents: SD3-normalised latents ``(B, latent_channels, h, w)``.
            pixel_values: alternatively, images in [-1, 1] ``(B, 3, H, W)`` (needs an attached VAE).
        Returns:
            [`SelftokModelOutput`], all in AR order; ``token_ids`` ``(B, K)``, ``token_embeddings``
            ``(B, K, token_dim)``.
        """
        if not self.training:
            out = SelftokModelOutput(**self.encode(latents=latents, pixel_values=pixel_values))
        else:
            features = self.encoder(self._input_latents(latents, pixel_values))
            quantized = self.quantizer(features)
            out = SelftokModelOutput(
                token_ids=to_ar_order(quantized.ids),
                token_embeddings=to_ar_order(quantized.quantized),
                query_features=to_ar_order(features),
                projected_features=to_ar_order(quantized.projected),
                loss=quantized.loss,
                quantizer_stats=quantized.stats,
            )
        return out if return_dict else out.to_tuple()
