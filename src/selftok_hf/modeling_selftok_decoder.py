"""Selftok's rectified-flow MMDiT decoder and its one-step renderer, as diffusers models.

Both networks are SD3-medium-shaped MMDiTs with two streams that meet in joint attention:

- the **image stream** (patchified noisy latent for the decoder, a learned canvas for the renderer),
  modulated by the diffusion-time embedding exactly like SD3;
- the **token stream**: the K post-normed Selftok code vectors, in *code order* (index 0 = finest
  token), embedded by ``Linear(token_dim -> width)`` plus a fixed sin-cos table at the fake timesteps
  ``1000 + 8 j``. Each token-stream block has its own timestep MLP, and token ``j`` is modulated by
  ``t_emb(1000 + 8 j)`` instead of the diffusion time, so this modulation depends on the weights only.
  The last block is "pre-only" (its token outputs are never used), and its token modulation comes
  from the diffusion-time embedding.

The image stream uses diffusers' own SD3 modules and parameter names (``pos_embed``, ``norm1``,
``attn.to_q/to_k/to_v/to_out.0``, ``ff``, ``norm_out``, ``proj_out``), so it can be initialised from a
[`~diffusers.SD3Transformer2DModel`] with ``selftok_hf.conversion.decoder_state_dict_from_sd3``. The token
stream reuses SD3's names for its joint-attention side (``attn.add_*_proj``, ``to_add_out``, ``ff_context``).
Official checkpoints (github ``selftok-team/SelftokTokenizer``) load through the mappings in
``selftok_hf.conversion`` (``convert_official_decoder_state_dict`` / ``convert_official_renderer_state_dict``);
this file holds the models only, and is what a saved folder ships as remote code.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from typing import Any, Iterator, Optional, Union

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, FrozenDict, register_to_config
from diffusers.loaders import PeftAdapterMixin
from diffusers.models.attention import AttentionModuleMixin, FeedForward
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import PatchEmbed
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNormContinuous, AdaLayerNormZero
from torch import nn

from .embeddings import TimestepEmbedder, sincos_1d
from .loading import StrictFromPretrainedMixin
from .portable_config import PortableConfigMixin
from .renamed import RenamedKeysMixin, renamed_kwargs, with_new_keys
from .token_schedule import TokenVisibility, token_positions

__all__ = [
    "SelftokDecoderTransformer",
    "SelftokRenderer",
    "SelftokJointBlock",
    "SelftokJointAttention",
    "SelftokJointAttnProcessor",
    "SelftokTokenAdaLayerNormZero",
    "SELFTOK_DECODER_RELEASE_CONFIG",
    "SELFTOK_DECODER_TINY_CONFIG",
    "SELFTOK_RENDERER_RELEASE_CONFIG",
    "SELFTOK_RENDERER_TINY_CONFIG",
]

# ----------------------------------------------------------------------------------------- blocks
class SelftokTokenAdaLayerNormZero(nn.Module):
    """adaLN-Zero of the token stream, with one modulation per token position.

    Token ``j`` is conditioned on ``t_emb(1000 + 8 j)`` from this block's own timestep MLP, never on
    the diffusion time, so the ``(K, 6 * dim)`` modulation table is a function of the weights alone.
    The six chunks are ordered like diffusers' [`AdaLayerNormZero`]: shift, scale, gate (attention),
    then shift, scale, gate (MLP).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.token_embedder = TimestepEmbedder(dim)
        self.linear = nn.Linear(dim, 6 * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)

    def modulation(self, positions: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Fake timesteps ``(n,)`` -> modulation table ``(n, 6 * dim)``; ``dtype`` is the token stream's."""
        return self.linear(F.silu(self.token_embedder(positions, dtype)))

    def forward(self, x: torch.Tensor, modulation: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``x`` ``(B, n, dim)`` and ``modulation`` ``(n, 6 * dim)`` -> modulated ``x`` and four ``(1, n, dim)`` gates."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.unsqueeze(0).chunk(6, dim=-1)
        return self.norm(x) * (1 + scale_msa) + shift_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp


class SelftokJointAttnProcessor:
    """Joint attention of the image and token streams, run by diffusers' attention dispatch.

    Keys and values are ``[tokens ; image]``. Image queries attend to every visible key. Token queries
    do the same when ``context_see_xt``; otherwise they attend to the tokens only. In a pre-only
    block the token outputs are never used, so no token queries are computed at all.

    The token stream may cover only the first rows of the batch (``encoder_hidden_states`` with fewer rows than
    ``hidden_states``, or None for none): the remaining rows see no token at all, so their image queries attend to
    the image keys alone. That is what a row whose every token is masked computes (masked keys get exactly zero
    weight), without the token stream: classifier-free guidance's unconditional half.

    ``ModelMixin.set_attention_backend`` sets ``_attention_backend``; None is diffusers' active backend
    (``DIFFUSERS_ATTN_BACKEND``, default ``"native"``: ``F.scaled_dot_product_attention``). The key mask is
    boolean; backends that take no mask (flash) raise diffusers' error when one is needed: different visible tokens
    within the conditional rows (training). Sampling, with or without guidance or ``prefix_length``, passes only the
    visible tokens and no mask (the token schedule's [`~selftok_hf.token_schedule.TokenVisibility`] windows).
    """

    _attention_backend = None

    @renamed_kwargs(context_sees_image="context_see_xt")
    def __call__(
        self,
        attn: "SelftokJointAttention",
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor],
        attention_mask: Optional[torch.Tensor] = None,
        context_see_xt: bool = True,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """As [`SelftokJointAttention.forward`]. Heads are laid out ``(B, L, heads, head_dim)``, diffusers' dispatch layout."""
        image_query = attn.split_heads(attn.to_q(hidden_states))
        image_key = attn.split_heads(attn.to_k(hidden_states))
        image_value = attn.split_heads(attn.to_v(hidden_states))
        num_rows = hidden_states.shape[0]
        num_conditional = 0 if encoder_hidden_states is None else encoder_hidden_states.shape[0]
        token_out = None
        if num_conditional:
            image_out, token_out = self._joint(
                attn,
                image_query[:num_conditional],
                image_key[:num_conditional],
                image_value[:num_conditional],
                encoder_hidden_states,
                attention_mask,
                context_see_xt,
            )
        if num_conditional < num_rows:
            # Rows without tokens: image-only attention, no mask.
            image_only = self._attend(image_query[num_conditional:], image_key[num_conditional:], image_value[num_conditional:], None)
            image_out = torch.cat([image_out, image_only]) if num_conditional else image_only
        image_out = attn.to_out[0](image_out.flatten(2))
        return image_out, (None if token_out is None else attn.to_add_out(token_out.flatten(2)))

    def _joint(self, attn, image_query, image_key, image_value, encoder_hidden_states, attention_mask, context_see_xt):
        """Attention of the rows that have a token stream -> image output and token output (None in a pre-only
        block), both ``(B, L, heads, head_dim)``."""
        num_tokens = encoder_hidden_states.shape[1]
        key = torch.cat([attn.split_heads(attn.add_k_proj(encoder_hidden_states)), image_key], dim=1)
        value = torch.cat([attn.split_heads(attn.add_v_proj(encoder_hidden_states)), image_value], dim=1)
        if attn.context_pre_only:
            return self._attend(image_query, key, value, attention_mask), None
        token_query = attn.split_heads(attn.add_q_proj(encoder_hidden_states))
        if context_see_xt:
            # Every query sees the same keys: one call over [tokens ; image] queries.
            out = self._attend(torch.cat([token_query, image_query], dim=1), key, value, attention_mask)
            return out[:, num_tokens:], out[:, :num_tokens]
        image_out = self._attend(image_query, key, value, attention_mask)
        token_mask = None if attention_mask is None else attention_mask[..., :num_tokens]
        return image_out, self._attend(token_query, key[:, :num_tokens], value[:, :num_tokens], token_mask)

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """``(B, Lq, heads, head_dim)`` queries over ``(B, Lk, heads, head_dim)`` keys/values, ``mask`` ``(B, 1, 1, Lk)``
        boolean (True = attend) or None -> ``(B, Lq, heads, head_dim)``."""
        return dispatch_attention_fn(query, key, value, attn_mask=mask, backend=self._attention_backend)


class SelftokJointAttention(nn.Module, AttentionModuleMixin):
    """The projections of Selftok's joint attention; [`SelftokJointAttnProcessor`] computes it.

    Parameter names follow diffusers' SD3 ``Attention`` (``to_q``... for the image, ``add_*`` for the tokens).
    As a diffusers ``AttentionModuleMixin`` its processor takes ``set_attention_backend``.
    """

    _default_processor_cls = SelftokJointAttnProcessor
    _available_processors = [SelftokJointAttnProcessor]
    # The processor reads the separate projections; diffusers' fused `to_qkv` would be ignored.
    _supports_qkv_fusion = False

    def __init__(self, dim: int, num_heads: int, head_dim: int, qkv_bias: bool, context_pre_only: bool) -> None:
        super().__init__()
        inner_dim = num_heads * head_dim
        self.num_heads = num_heads
        self.context_pre_only = context_pre_only
        self.to_q = nn.Linear(dim, inner_dim, bias=qkv_bias)
        self.to_k = nn.Linear(dim, inner_dim, bias=qkv_bias)
        self.to_v = nn.Linear(dim, inner_dim, bias=qkv_bias)
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, dim)])
        self.add_k_proj = nn.Linear(dim, inner_dim, bias=qkv_bias)
        self.add_v_proj = nn.Linear(dim, inner_dim, bias=qkv_bias)
        if not context_pre_only:
            self.add_q_proj = nn.Linear(dim, inner_dim, bias=qkv_bias)
            self.to_add_out = nn.Linear(inner_dim, dim)
        self.set_processor(self._default_processor_cls())

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, L, heads * head_dim)`` -> ``(B, L, heads, head_dim)``."""
        return x.unflatten(-1, (self.num_heads, -1))

    @renamed_kwargs(context_sees_image="context_see_xt")
    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor],
        attention_mask: Optional[torch.Tensor] = None,
        context_see_xt: bool = True,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """
        Args:
            hidden_states: image stream ``(B, N, dim)``.
            encoder_hidden_states: token stream ``(B_c, n, dim)`` of the first ``B_c <= B`` rows; the other rows (all
                of them when None) see no token.
            attention_mask: boolean key mask ``(B_c, 1, 1, n + N)`` (True = attend), or None for all keys.
            context_see_xt: whether token queries may attend to image keys (formerly ``context_sees_image``).
        Returns:
            image output ``(B, N, dim)`` and token output ``(B_c, n, dim)`` (None in a pre-only block or without tokens).
        """
        return self.processor(self, hidden_states, encoder_hidden_states, attention_mask, context_see_xt)


def _gated_residual(
    x: torch.Tensor,
    attn_output: torch.Tensor,
    gate_msa: torch.Tensor,
    shift_mlp: torch.Tensor,
    scale_mlp: torch.Tensor,
    gate_mlp: torch.Tensor,
    norm: nn.Module,
    ff: nn.Module,
) -> torch.Tensor:
    """The adaLN-Zero tail of a DiT block: gated attention residual, then the modulated, gated MLP residual.

    The modulation tensors broadcast against ``x`` ``(B, L, dim)``: ``(B, 1, dim)`` or ``(1, L, dim)``.
    """
    x = x + gate_msa * attn_output
    return x + gate_mlp * ff(norm(x) * (1 + scale_mlp) + shift_mlp)


class SelftokJointBlock(nn.Module):
    """One MMDiT block: SD3's image-stream block plus Selftok's token stream, joined in attention.

    Args:
        dim: width of both streams.
        num_heads, head_dim: attention heads (``num_heads * head_dim == dim``).
        mlp_ratio: hidden width of the GELU(tanh) MLPs, relative to ``dim``.
        qkv_bias: whether the query/key/value projections have biases.
        context_pre_only: the last block; its token stream only provides keys and values, and its
            token modulation comes from the diffusion-time embedding (two chunks, ordered scale, shift as
            in diffusers' [`AdaLayerNormContinuous`]).
    """

    def __init__(self, dim: int, num_heads: int, head_dim: int, mlp_ratio: float, qkv_bias: bool, context_pre_only: bool):
        super().__init__()
        self.context_pre_only = context_pre_only
        self.norm1 = AdaLayerNormZero(dim)
        if context_pre_only:
            self.norm1_context = AdaLayerNormContinuous(dim, dim, elementwise_affine=False, eps=1e-6)
        else:
            self.norm1_context = SelftokTokenAdaLayerNormZero(dim)
        self.attn = SelftokJointAttention(dim, num_heads, head_dim, qkv_bias, context_pre_only)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ff = FeedForward(dim, dim_out=dim, mult=mlp_ratio, activation_fn="gelu-approximate")
        if not context_pre_only:
            self.norm2_context = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
            self.ff_context = FeedForward(dim, dim_out=dim, mult=mlp_ratio, activation_fn="gelu-approximate")

    @renamed_kwargs(context_sees_image="context_see_xt")
    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor],
        temb: torch.Tensor,
        token_modulation: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        context_see_xt: bool = True,
    ) -> tuple[Optional[torch.Tensor], torch.Tensor]:
        """
        Args:
            hidden_states: image stream ``(B, N, dim)``.
            encoder_hidden_states: token stream ``(B_c, n, dim)``, the visible window's ``n`` tokens in code order, of the first
                ``B_c <= B`` rows. The other rows (all of them when None) see no token: their image stream runs alone,
                exactly what a row with every token masked computes.
            temb: diffusion-time embedding ``(B, dim)``.
            token_modulation: this block's ``(n, 6 * dim)`` token modulation table for the ``n`` tokens' positions
                (``SelftokTokenAdaLayerNormZero.modulation``); None in the pre-only block and without tokens.
            attention_mask: boolean key mask ``(B_c, 1, 1, n + N)`` or None.
            context_see_xt: whether token queries attend to image keys (formerly ``context_sees_image``).
        Returns:
            ``(encoder_hidden_states, hidden_states)``; the token stream is None after the pre-only block (and stays
            None without tokens).
        """
        norm_hidden, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(hidden_states, emb=temb)
        if encoder_hidden_states is None:
            norm_context = None
        elif self.context_pre_only:
            norm_context = self.norm1_context(encoder_hidden_states, temb[: encoder_hidden_states.shape[0]])
        else:
            norm_context, *context_mods = self.norm1_context(encoder_hidden_states, token_modulation)

        image_attn, token_attn = self.attn(norm_hidden, norm_context, attention_mask, context_see_xt)

        hidden_states = _gated_residual(
            hidden_states,
            image_attn,
            gate_msa.unsqueeze(1),
            shift_mlp.unsqueeze(1),
            scale_mlp.unsqueeze(1),
            gate_mlp.unsqueeze(1),
            self.norm2,
            self.ff,
        )
        if self.context_pre_only or encoder_hidden_states is None:
            return None, hidden_states
        encoder_hidden_states = _gated_residual(
            encoder_hidden_states, token_attn, *context_mods, self.norm2_context, self.ff_context
        )
        return encoder_hidden_states, hidden_states


# ------------------------------------------------------------------------------------------ models
#: Config keys of the decoder and the renderer renamed so that each quantity has one name (issue 17): old -> new.
_RENAMED_CONFIG_KEYS = {"code_dim": "token_dim", "num_tokens": "num_image_tokens"}
_renamed_config_kwargs = renamed_kwargs(**_RENAMED_CONFIG_KEYS)


class _RenamedKeysFrozenDict(RenamedKeysMixin, FrozenDict):
    """The models' ``config``: the old keys (``config.code_dim``, ``config["num_tokens"]``) read the new ones, warning."""

    _renamed_keys = _RENAMED_CONFIG_KEYS


class _SelftokMMDiTBase(StrictFromPretrainedMixin, PortableConfigMixin, ModelMixin, ConfigMixin, PeftAdapterMixin):
    """Token stream, transformer blocks and output head shared by the decoder and the renderer.

    ``from_pretrained`` is strict (:class:`~selftok_hf.loading.StrictFromPretrainedMixin`): weights missing from the
    file or left over (a config that does not belong to them) raise a ``ValueError`` naming the keys; ``strict=False``
    only warns, as diffusers.

    Subclasses build their image stream, call :meth:`_build_backbone`, and run :meth:`_run_backbone`.
    """

    config_name = "config.json"
    _supports_gradient_checkpointing = True
    _no_split_modules = ["SelftokJointBlock"]
    _skip_layerwise_casting_patterns = ["pos_embed", "norm", "canvas"]

    @classmethod
    def extract_init_dict(cls, config_dict, **kwargs):
        """diffusers' ``extract_init_dict`` (``from_config``, ``from_pretrained``); a config saved before the renames
        (``code_dim``, ``num_tokens``) loads as it is."""
        return super().extract_init_dict(with_new_keys(config_dict, _RENAMED_CONFIG_KEYS), **kwargs)

    def register_to_config(self, **kwargs) -> None:
        super().register_to_config(**kwargs)
        self._internal_dict = _RenamedKeysFrozenDict(self._internal_dict)

    def _build_backbone(self, out_channels: int) -> None:
        """Token stream, blocks and head, sized by ``self.config`` (registered before ``__init__`` runs)."""
        cfg = self.config
        num_layers, patch_size = cfg.num_layers, cfg.patch_size
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.inner_dim = dim = cfg.num_attention_heads * cfg.attention_head_dim
        self.out_channels = out_channels
        self.time_embedder = TimestepEmbedder(dim)
        self.context_embedder = nn.Linear(cfg.token_dim, dim)
        # A fixed function of (K, width), so not saved: recomputed identically at load time.
        self.register_buffer("context_pos_embed", sincos_1d(dim, token_positions(cfg.num_image_tokens)), persistent=False)
        self.transformer_blocks = nn.ModuleList(
            [
                SelftokJointBlock(
                    dim,
                    cfg.num_attention_heads,
                    cfg.attention_head_dim,
                    cfg.mlp_ratio,
                    cfg.qkv_bias,
                    context_pre_only=i == num_layers - 1,
                )
                for i in range(num_layers)
            ]
        )
        self.norm_out = AdaLayerNormContinuous(dim, dim, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.gradient_checkpointing = False
        # One cache per thread: a pipeline shared by server threads runs several sampling loops at once.
        self._token_modulation_caches: dict[int, dict] = {}
        self._init_token_stream()

    @torch.no_grad()
    def _init_token_stream(self) -> None:
        """Official initialisation of what SD3 cannot provide: zero adaLN-Zero modulations, N(0, 0.02) token MLPs."""
        for block in self.transformer_blocks:
            for norm in (block.norm1, block.norm1_context):
                nn.init.zeros_(norm.linear.weight)
                nn.init.zeros_(norm.linear.bias)
            if not block.context_pre_only:
                nn.init.normal_(block.norm1_context.token_embedder.mlp[0].weight, std=0.02)
                nn.init.normal_(block.norm1_context.token_embedder.mlp[2].weight, std=0.02)

    @contextlib.contextmanager
    def cached_token_modulations(self) -> Iterator[None]:
        """Reuse the token-stream modulation tables across forward calls inside this context.

        Those tables depend on the weights only, so a sampling loop can compute them once instead of at
        every step (with all tokens visible they are about a quarter of a batch-1 forward). The cache is
        used only under ``torch.no_grad()`` and is cleared on exit; do not change the weights inside.
        """
        thread = threading.get_ident()
        previous = self._token_modulation_caches.get(thread)
        self._token_modulation_caches[thread] = {}
        try:
            yield
        finally:
            if previous is None:
                self._token_modulation_caches.pop(thread, None)
            else:
                self._token_modulation_caches[thread] = previous

    def _token_modulation(self, index: int, block: SelftokJointBlock, context: torch.Tensor, start: int) -> Optional[torch.Tensor]:
        """The ``(n, 6 * dim)`` table of block ``index`` for the embedded tokens ``context`` ``(B, n, dim)``, code-order
        tokens ``start..start + n - 1``: from the cache inside :meth:`cached_token_modulations` (no grad), else
        computed; None for the pre-only block."""
        if block.context_pre_only:
            return None
        device, stop = context.device, start + context.shape[1]
        cache = self._token_modulation_caches.get(threading.get_ident())
        if cache is None or torch.is_grad_enabled():
            return block.norm1_context.modulation(token_positions(stop, device=device)[start:], context.dtype)
        autocast_dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None
        key = (index, device, context.dtype, autocast_dtype)
        if key not in cache:
            positions = token_positions(self.config.num_image_tokens, device=device)
            cache[key] = block.norm1_context.modulation(positions, context.dtype)
        return cache[key][start:stop]

    def _run_backbone(
        self,
        hidden_states: torch.Tensor,
        token_codes: torch.Tensor,
        visibility: TokenVisibility,
        temb: torch.Tensor,
        context_see_xt: bool,
    ) -> torch.Tensor:
        """
        Args:
            hidden_states: embedded image stream ``(B, N, dim)``.
            token_codes: code vectors ``(B, n, token_dim)`` in code order; only ``visibility``'s window of its
                conditional rows is read.
            visibility: which tokens each row sees (checked by the caller).
            temb: diffusion-time embedding ``(B, dim)``.
            context_see_xt: whether token queries attend to image keys.
        Returns:
            per-patch outputs ``(B, N, patch_size**2 * out_channels)``.
        """
        # The token stream runs on the visible window of the rows that see tokens (TokenVisibility: exact cuts), and
        # this is the one place where visibility becomes an attention key mask: [window tokens ; every image key].
        num_conditional = hidden_states.shape[0] - visibility.unconditional_rows
        start, stop = visibility.start, visibility.stop
        context = attention_mask = None
        if num_conditional > 0 and not visibility.sees_no_token:
            context = self.context_embedder(token_codes[:num_conditional, start:stop])
            context = context + self.context_pos_embed[start:stop].to(context.dtype)
            if visibility.mask is not None:
                image_keys = visibility.mask.new_ones(num_conditional, hidden_states.shape[1])
                attention_mask = torch.cat([visibility.mask, image_keys], dim=1)[:, None, None, :]

        for index, block in enumerate(self.transformer_blocks):
            token_modulation = None if context is None else self._token_modulation(index, block, context, start)
            args = (hidden_states, context, temb, token_modulation, attention_mask, context_see_xt)
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                context, hidden_states = self._gradient_checkpointing_func(block, *args)
            else:
                context, hidden_states = block(*args)

        hidden_states = self.norm_out(hidden_states, temb)
        return self.proj_out(hidden_states)

    def _unpatchify(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """``(B, h * w, p * p * C)`` patch outputs on an ``h x w`` patch grid -> ``(B, C, h * p, w * p)``."""
        p = self.config.patch_size
        x = x.reshape(x.shape[0], height, width, p, p, self.out_channels)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], self.out_channels, height * p, width * p)

    def _check_token_codes(self, token_codes: torch.Tensor, batch_size: Optional[int], allow_prefix: bool) -> None:
        """``token_codes`` must be ``(batch_size, K, token_dim)``, or ``(batch_size, n <= K, token_dim)`` with ``allow_prefix``."""
        token_dim, K = self.config.token_dim, self.config.num_image_tokens
        batch = "batch" if batch_size is None else f"batch={batch_size}"
        expected = f"({batch}, {'n <= ' if allow_prefix else ''}{K}, {token_dim})"
        if (
            token_codes.ndim != 3
            or (batch_size is not None and token_codes.shape[0] != batch_size)
            or token_codes.shape[2] != token_dim
            or token_codes.shape[1] > K
            or (not allow_prefix and token_codes.shape[1] != K)
        ):
            raise ValueError(f"token_codes must have shape {expected}, got {tuple(token_codes.shape)}")


class SelftokDecoderTransformer(_SelftokMMDiTBase):
    """Selftok's diffusion decoder: predicts the rectified-flow velocity of a latent given the visible tokens.

    Args:
        sample_size: latent side the model is built for (32 for 256-px images); any side up to
            ``pos_embed_max_size * patch_size`` works.
        patch_size: latent patch size.
        in_channels, out_channels: latent channels (16 for the SD3 VAE).
        num_layers: number of joint blocks (the last one is pre-only).
        attention_head_dim, num_attention_heads: attention shape; the width is their product.
        pos_embed_max_size: side of the (SD3) 2-D position-embedding table, centre-cropped to the input.
        num_image_tokens: K, tokens per image (formerly ``num_tokens``).
        token_dim: width of the token vectors, the image tokenizer's ``token_dim`` (formerly ``code_dim``).
        context_see_xt: whether token queries attend to image keys (True in the release).
        mlp_ratio: MLP hidden width relative to the model width.
        qkv_bias: biases in the query/key/value projections.
    """

    @_renamed_config_kwargs
    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        patch_size: int = 2,
        in_channels: int = 16,
        out_channels: Optional[int] = 16,
        num_layers: int = 24,
        attention_head_dim: int = 64,
        num_attention_heads: int = 24,
        pos_embed_max_size: int = 192,
        num_image_tokens: int = 512,
        token_dim: int = 16,
        context_see_xt: bool = True,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
    ):
        super().__init__()
        out_channels = out_channels if out_channels is not None else in_channels
        # SD3's patch embedding: Conv2d patchifier + a centre-cropped 2-D table (loaded from SD3 / the checkpoint).
        self.pos_embed = PatchEmbed(
            height=sample_size,
            width=sample_size,
            patch_size=patch_size,
            in_channels=in_channels,
            embed_dim=num_attention_heads * attention_head_dim,
            pos_embed_max_size=pos_embed_max_size,
        )
        self._build_backbone(out_channels)

    def _check_latents(self, hidden_states: torch.Tensor) -> None:
        cfg = self.config
        if hidden_states.ndim != 4 or hidden_states.shape[1] != cfg.in_channels:
            raise ValueError(
                f"hidden_states must be a (batch, {cfg.in_channels}, height, width) latent, got {tuple(hidden_states.shape)}"
            )
        height, width = hidden_states.shape[-2:]
        max_side = cfg.pos_embed_max_size * cfg.patch_size
        if height % cfg.patch_size or width % cfg.patch_size or height > max_side or width > max_side:
            raise ValueError(
                f"latent size {height}x{width} must be a multiple of patch_size={cfg.patch_size} and at most {max_side}"
            )

    @renamed_kwargs(context_sees_image="context_see_xt")
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: Union[torch.Tensor, float],
        token_codes: torch.Tensor,
        token_mask: Optional[torch.Tensor] = None,
        return_dict: bool = True,
        unconditional_rows: int = 0,
        context_see_xt: Optional[bool] = None,
        visibility: Optional[TokenVisibility] = None,
    ) -> Union[Transformer2DModelOutput, tuple[torch.Tensor]]:
        """Velocity ``v = ε - x0`` of the noisy latent ``x_τ = τ ε + (1 - τ) x0``.

        Which tokens each row sees is a [`~selftok_hf.token_schedule.TokenVisibility`]: ``visibility``, as the token
        schedule builds it (``training_visibility`` / ``sampling_visibility``: what the trainer and the pipeline pass),
        or else ``TokenVisibility.from_mask(token_mask, unconditional_rows)`` (all tokens when ``token_mask`` is None).
        Invisible tokens are hidden from both streams; their code vectors need not be zeroed.

        Args:
            hidden_states: noisy latent ``(B, in_channels, H, W)``.
            timestep: code time τ in [0, 1] (τ = 1 is pure noise), ``(B,)`` or a scalar; embedded as ``1000 τ``.
            token_codes: post-normed code vectors in code order, ``(B, K, token_dim)``. Passing only the
                first ``n <= K`` tokens ``(B, n, token_dim)`` is the same as masking the others.
            token_mask: ``(B, n)`` boolean, True for visible tokens (``j <= k(τ)``); None = all visible.
                Not with ``visibility``.
            return_dict: return a [`Transformer2DModelOutput`] instead of a tuple.
            unconditional_rows: the last ``unconditional_rows`` rows see no token at all (classifier-free guidance's
                unconditional half): their ``token_codes`` and ``token_mask`` rows are not read, and the token stream
                is not run for them; their image queries attend to the image alone. The same as an all-False
                ``token_mask`` row up to float rounding (see ``TokenVisibility``). Not with ``visibility``, which
                carries its own.
            context_see_xt: whether token queries attend to image keys (formerly ``context_sees_image``); None
                (default) follows ``config.context_see_xt``. The official sampler's guided conditional branch calls its model without
                that flag, i.e. with False.
            visibility: which tokens each row sees; its window must lie within the ``n`` tokens passed.
        Returns:
            the velocity ``(B, out_channels, H, W)`` as ``.sample`` (or the first tuple element).
        """
        self._check_latents(hidden_states)
        batch_size, _, height, width = hidden_states.shape
        self._check_token_codes(token_codes, batch_size, allow_prefix=True)
        visibility = self._visibility(token_codes, token_mask, unconditional_rows, visibility, batch_size)
        timestep = torch.as_tensor(timestep, device=hidden_states.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(batch_size)
        if timestep.shape != (batch_size,):
            raise ValueError(f"timestep must be a scalar or have shape ({batch_size},), got {tuple(timestep.shape)}")

        hidden = self.pos_embed(hidden_states)
        # The sinusoidal features of 1000 τ need float32: bf16 cannot resolve the angles.
        temb = self.time_embedder(timestep.to(torch.float32) * 1000.0, hidden.dtype)
        if context_see_xt is None:
            context_see_xt = self.config.context_see_xt
        out = self._run_backbone(hidden, token_codes, visibility, temb, context_see_xt=bool(context_see_xt))
        p = self.config.patch_size
        out = self._unpatchify(out, height // p, width // p)
        if not return_dict:
            return (out,)
        return Transformer2DModelOutput(sample=out)

    @staticmethod
    def _visibility(token_codes, token_mask, unconditional_rows, visibility, batch_size: int) -> TokenVisibility:
        """The checked [`TokenVisibility`] of a forward call (see :meth:`forward`)."""
        num_tokens = token_codes.shape[1]
        if visibility is None:
            if token_mask is not None and tuple(token_mask.shape) != tuple(token_codes.shape[:2]):
                raise ValueError(
                    f"token_mask must have shape {tuple(token_codes.shape[:2])} (batch, tokens), got {tuple(token_mask.shape)}"
                )
            if not isinstance(unconditional_rows, int) or isinstance(unconditional_rows, bool) or not 0 <= unconditional_rows <= batch_size:
                raise ValueError(f"unconditional_rows must be an integer in [0, {batch_size}] (the batch size), got {unconditional_rows!r}")
            if token_mask is None:
                return TokenVisibility(0, num_tokens, None, unconditional_rows)
            return TokenVisibility.from_mask(token_mask, unconditional_rows)
        if token_mask is not None or unconditional_rows:
            raise ValueError("pass either visibility or token_mask / unconditional_rows (visibility carries both)")
        if not isinstance(visibility, TokenVisibility):
            raise ValueError(f"visibility must be a TokenVisibility, got {type(visibility).__name__}")
        num_conditional = batch_size - visibility.unconditional_rows
        if visibility.stop > num_tokens or num_conditional < 0:
            raise ValueError(
                f"visibility (tokens {visibility.start}..{visibility.stop - 1}, {visibility.unconditional_rows} unconditional "
                f"rows) does not fit {batch_size} rows of {num_tokens} tokens"
            )
        if visibility.mask is not None and visibility.mask.shape[0] != num_conditional:
            raise ValueError(f"visibility.mask must have {num_conditional} rows (the conditional ones), got {visibility.mask.shape[0]}")
        return visibility


class SelftokRenderer(_SelftokMMDiTBase):
    """Selftok's one-step renderer: all K tokens -> the clean latent, in a single forward pass.

    The image stream starts from a learned canvas token (shared by every patch when
    ``shared_canvas_token``, as in the release) plus a learned position embedding. The time is fixed
    at 1000 (τ = 1), every token is visible, and token queries do not attend to the image.

    Args:
        sample_size: side of the output latent (32 for 256-px images); fixed by the learned embeddings.
        patch_size, out_channels: output patch size and latent channels.
        num_layers, attention_head_dim, num_attention_heads, num_image_tokens, token_dim, mlp_ratio, qkv_bias:
            as in [`SelftokDecoderTransformer`].
        shared_canvas_token: one canvas token repeated over the patch grid (True) or one per patch.
    """

    #: The renderer always sees the sample at the noisiest time.
    render_time = 1000.0

    @_renamed_config_kwargs
    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        patch_size: int = 2,
        out_channels: int = 16,
        num_layers: int = 24,
        attention_head_dim: int = 64,
        num_attention_heads: int = 24,
        num_image_tokens: int = 512,
        token_dim: int = 16,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        shared_canvas_token: bool = True,
    ):
        super().__init__()
        if sample_size % patch_size:
            raise ValueError(f"sample_size={sample_size} must be a multiple of patch_size={patch_size}")
        dim = num_attention_heads * attention_head_dim
        num_patches = (sample_size // patch_size) ** 2
        self.canvas_token = nn.Parameter(torch.randn(1, 1 if shared_canvas_token else num_patches, dim) * dim**-0.5)
        self.canvas_pos_embed = nn.Parameter(torch.randn(num_patches, dim) * dim**-0.5)
        self._build_backbone(out_channels)

    def forward(
        self, token_codes: torch.Tensor, return_dict: bool = True
    ) -> Union[Transformer2DModelOutput, tuple[torch.Tensor]]:
        """
        Args:
            token_codes: all K post-normed code vectors in code order, ``(B, K, token_dim)``.
            return_dict: return a [`Transformer2DModelOutput`] instead of a tuple.
        Returns:
            the predicted clean latent ``(B, out_channels, sample_size, sample_size)`` as ``.sample``.
        """
        self._check_token_codes(token_codes, None, allow_prefix=False)
        batch_size = token_codes.shape[0]
        canvas = self.canvas_token + self.canvas_pos_embed
        hidden = canvas.expand(batch_size, *canvas.shape[1:])
        timestep = torch.full((batch_size,), self.render_time, device=token_codes.device)
        temb = self.time_embedder(timestep, hidden.dtype)
        out = self._run_backbone(hidden, token_codes, TokenVisibility(0, token_codes.shape[1]), temb, context_see_xt=False)
        grid = self.config.sample_size // self.config.patch_size
        out = self._unpatchify(out, grid, grid)
        if not return_dict:
            return (out,)
        return Transformer2DModelOutput(sample=out)


# ------------------------------------------------------------------------------ release and tiny configs
def _init_defaults(model_class: type) -> dict[str, Any]:
    """The keyword defaults of ``model_class.__init__``, in order: the config of ``model_class()``."""
    parameters = inspect.signature(model_class.__init__).parameters
    return {name: p.default for name, p in parameters.items() if p.default is not inspect.Parameter.empty}


#: The released 256-px decoder (official ``MMDiT_XL`` with the ``256-eval.yml`` settings): the defaults of
#: `SelftokDecoderTransformer`, read from its signature (where they are written).
SELFTOK_DECODER_RELEASE_CONFIG: dict[str, Any] = _init_defaults(SelftokDecoderTransformer)

#: A few-kB decoder with the release structure, sized to pair with ``SELFTOK_TINY_CONFIG`` (8x8x16 latents,
#: 32 tokens of width 8), for tests and the embedded default.
SELFTOK_DECODER_TINY_CONFIG: dict[str, Any] = {
    **SELFTOK_DECODER_RELEASE_CONFIG,
    "sample_size": 8,
    "num_layers": 2,
    "attention_head_dim": 8,
    "num_attention_heads": 2,
    "pos_embed_max_size": 6,
    "num_image_tokens": 32,
    "token_dim": 8,
}

#: The released one-step renderer (official ``MMDiT_XL_Renderer``, ``renderer-eval.yml``): the decoder's
#: backbone with a shared canvas token instead of a patch input; the defaults of `SelftokRenderer`.
SELFTOK_RENDERER_RELEASE_CONFIG: dict[str, Any] = _init_defaults(SelftokRenderer)

# The renderer's settings that are the decoder's too (sizes of the shared backbone).
_RENDERER_SHARED_KEYS = tuple(k for k in SELFTOK_RENDERER_RELEASE_CONFIG if k in SELFTOK_DECODER_RELEASE_CONFIG)

#: A tiny renderer with the release structure, for tests.
SELFTOK_RENDERER_TINY_CONFIG: dict[str, Any] = {
    **{k: SELFTOK_DECODER_TINY_CONFIG[k] for k in _RENDERER_SHARED_KEYS},
    "shared_canvas_token": True,
}
