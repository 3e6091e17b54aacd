"""Cosine-similarity vector quantizer with an EMA codebook (Selftok's VQ).

Inference path (what the released tokenizer does at encode / decode time):

    z (B, K, query_dim) --project_in--> (B, K, code_dim) --l2norm--> argmax cosine vs l2-normed codebook
    ids -> codebook[ids] --project_out--> (B, K, token_dim) --post_norm (LayerNorm)--> token embeddings

Training path (:meth:`CosineVectorQuantizer.forward` in train mode), as the official VQ does it:

- the codebook is not a parameter: it follows exponential moving averages of the encoder outputs
  assigned to each code (decay 0.99, Laplace-smoothed counts, rows re-normalised), after a k-means
  initialisation on the first batch;
- codes whose EMA count falls below a threshold *relative to the expected usage*
  (``threshold * batch * K * world / C``) are re-seeded from the batch, sampling positions with
  probability ``softmax(10 * normalised 1 / perplexity_k)`` ("smart" reactivation);
- losses: commitment ``mean((sg(q) - z)^2)`` and a diversity term, ``-w * weight * H`` where H mixes
  per-position and 64-group entropies of ``0.8 * EMA usage + 0.2 * batch softmax(10 cos)`` and the
  weight decays from 0.5 to 0 as the codebook's usage perplexity goes from 10% to 30% of C.

Under ``torch.distributed`` every statistic is all-reduced, and k-means / reactivation samples are
drawn on rank 0 and broadcast, so every rank holds the same codebook.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from inspect import Parameter, Signature
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

__all__ = ["CosineVectorQuantizer", "QuantizerOutput", "QuantizerSettings"]


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if _world_size() > 1:
        dist.all_reduce(t)
    return t


def _broadcast(t: torch.Tensor) -> torch.Tensor:
    if _world_size() > 1:
        dist.broadcast(t, src=0)
    return t


def _entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy over the last axis (the official form, no epsilon: p comes from softmax mixes)."""
    return -(p * torch.log(p)).sum(dim=-1)


@dataclass
class QuantizerOutput:
    """Output of :meth:`CosineVectorQuantizer.forward` (code order), as ``VectorQuantize.forward``'s
    ``(quantized, ids, loss)`` plus what a trainer logs.

    Attributes:
        ids: ``(B, K)`` int64.
        quantized: ``(B, K, token_dim)`` post-normed token vectors; in train mode with straight-through gradients.
        loss: scalar, ``commitment_weight * commit + diversity`` in train mode, 0 in eval mode.
        stats: floats for logging in train mode (commitment, diversity entropy, usage perplexity, reactivated
            codes); empty in eval mode.
        projected: ``(B, K, code_dim)`` fp32 unit-norm projected features, the vectors compared with the codebook.
    """

    ids: torch.Tensor
    quantized: torch.Tensor
    loss: torch.Tensor
    stats: dict
    projected: torch.Tensor


@dataclass(frozen=True)
class QuantizerSettings:
    """The settings of a [`CosineVectorQuantizer`], written here once: [`SelftokConfig`] has a field of the same
    name and default for each (its quantizer section), and :meth:`from_config` reads them back from a config.
    The defaults are the official release (``256-eval.yml``).

    Attributes:
        codebook_size: number of codes C.
        code_dim: width D of a code.
        token_dim: width of the vectors handed downstream (the decoder / LM); a Linear maps codes to it when it
            differs from ``code_dim``.
        post_norm: apply LayerNorm(token_dim, eps=1e-6) to the output vectors.
        ema_decay, ema_eps: EMA codebook with Laplace smoothing.
        kmeans_iters: k-means initialisation on the first training batch.
        commitment_weight: weight of the commitment loss ``mean((sg(q) - z)^2)``.
        diversity_weight: weight of the diversity term.
        diversity_temperature: cosine logits are scaled by it before the softmax of the diversity entropy.
        ema_entropy_ratio: mix of EMA usage vs batch probabilities in the diversity entropy.
        diversity_schedule: ``(low, high)``: diversity weight 0.5 below ``low`` of the codebook in use (usage
            perplexity / C), linearly decaying to 0 at ``high``.
        dead_code_threshold, reset_cluster_size: relative to the expected usage ``batch * K * world / C``: codes
            whose EMA count falls below ``dead_code_threshold`` of it are re-seeded with a count of
            ``reset_cluster_size`` of it (0 threshold: never).
        smart_reactivation: dead codes are re-seeded from positions weighted by their inverse perplexity (else
            uniformly from the batch).
    """

    codebook_size: int = 32768
    code_dim: int = 16
    token_dim: int = 16
    post_norm: bool = True
    ema_decay: float = 0.99
    ema_eps: float = 1e-5
    kmeans_iters: int = 10
    commitment_weight: float = 1.0
    diversity_weight: float = 1.0
    diversity_temperature: float = 10.0
    ema_entropy_ratio: float = 0.8
    diversity_schedule: tuple[float, float] = (0.1, 0.3)
    dead_code_threshold: float = 0.2
    reset_cluster_size: float = 0.2
    smart_reactivation: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "diversity_schedule", tuple(self.diversity_schedule))  # a config holds a list

    @classmethod
    def from_config(cls, config: Any) -> QuantizerSettings:
        """The settings of an object with an attribute per field (a [`SelftokConfig`])."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})


def _parameter(name: str, default: Any = Parameter.empty) -> Parameter:
    return Parameter(name, Parameter.POSITIONAL_OR_KEYWORD, default=default)


# CosineVectorQuantizer's deprecated signature after input_dim: the three sizes, num_positions, then the other
# settings in field order with their defaults.
_SIZES = ("codebook_size", "code_dim", "token_dim")
_DEPRECATED_SIGNATURE = Signature(
    [_parameter(name) for name in (*_SIZES, "num_positions")]
    + [_parameter(f.name, f.default) for f in fields(QuantizerSettings) if f.name not in _SIZES]
)


class CosineVectorQuantizer(nn.Module):
    """Cosine VQ with an EMA codebook.

    Args:
        input_dim: width of the encoder outputs (the query width).
        num_positions: K, token positions per image (for the per-position usage statistics).
        settings: the codebook and training settings (default: the release's); ``QuantizerSettings.from_config``
            builds them from a [`SelftokConfig`].

    The settings' fields are also attributes of the module (``quantizer.codebook_size``, ``quantizer.ema_decay``,
    ...); :attr:`settings` reads them back.

    Deprecated: the settings as separate arguments, ``CosineVectorQuantizer(input_dim, codebook_size, code_dim,
    token_dim, num_positions, post_norm=True, ema_decay=0.99, ...)`` (FutureWarning).
    """

    def __init__(
        self, input_dim: int, *deprecated_args: Any, num_positions: int | None = None, settings: QuantizerSettings | None = None, **deprecated_kwargs: Any
    ) -> None:
        super().__init__()
        if deprecated_args or deprecated_kwargs:
            num_positions, settings = self._deprecated_arguments(deprecated_args, deprecated_kwargs, num_positions, settings)
        if num_positions is None:
            raise TypeError("CosineVectorQuantizer needs num_positions")
        settings = QuantizerSettings() if settings is None else settings
        if not isinstance(settings, QuantizerSettings):
            raise TypeError(f"settings must be a QuantizerSettings, got {type(settings).__name__}")
        for f in fields(settings):
            if f.name != "post_norm":  # that name is the LayerNorm (or Identity) module below
                setattr(self, f.name, getattr(settings, f.name))
        codebook_size, code_dim, token_dim = settings.codebook_size, settings.code_dim, settings.token_dim
        self.project_in = nn.Linear(input_dim, code_dim) if input_dim != code_dim else nn.Identity()
        self.project_out = nn.Linear(code_dim, token_dim) if token_dim != code_dim else nn.Identity()
        self.post_norm = nn.LayerNorm(token_dim, eps=1e-6) if settings.post_norm else nn.Identity()

        # EMA codebook state. `embed` rows are unit vectors; `initted` is 0 until k-means has run.
        self.register_buffer("embed", F.normalize(torch.randn(codebook_size, code_dim), dim=-1))
        self.register_buffer("embed_avg", torch.zeros(codebook_size, code_dim))
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("initted", torch.zeros(()))
        # EMA of p(code | token position): drives smart dead-code reactivation and the diversity loss.
        self.register_buffer("position_code_usage", torch.full((num_positions, codebook_size), 1.0 / codebook_size))
        self.register_buffer("position_usage_initted", torch.zeros(()))

    @staticmethod
    def _deprecated_arguments(args: tuple, kwargs: dict, num_positions: int | None, settings: QuantizerSettings | None) -> tuple[int, QuantizerSettings]:
        """``(num_positions, settings)`` from a call with the settings as separate arguments (the old signature),
        with a FutureWarning that spells the call with ``settings``."""
        if settings is not None:
            raise TypeError("pass the quantizer settings either as settings=QuantizerSettings(...) or as separate arguments, not both")
        if num_positions is not None:
            kwargs = {**kwargs, "num_positions": num_positions}
        values = _DEPRECATED_SIGNATURE.bind(*args, **kwargs).arguments  # the old signature's TypeErrors
        num_positions = values.pop("num_positions")
        settings = QuantizerSettings(**values)
        defaults = QuantizerSettings()
        spelled = ", ".join(f"{f.name}={getattr(settings, f.name)!r}" for f in fields(settings) if f.name in _SIZES or getattr(settings, f.name) != getattr(defaults, f.name))
        warnings.warn(
            "passing the quantizer settings to CosineVectorQuantizer as separate arguments is deprecated; use "
            f"CosineVectorQuantizer(input_dim, num_positions={num_positions}, settings=QuantizerSettings({spelled}))",
            FutureWarning,
            stacklevel=3,
        )
        return num_positions, settings

    @property
    def settings(self) -> QuantizerSettings:
        """The module's settings (its attributes of those names; ``post_norm``: whether it has the LayerNorm)."""
        values = {f.name: getattr(self, f.name) for f in fields(QuantizerSettings) if f.name != "post_norm"}
        return QuantizerSettings(**values, post_norm=isinstance(self.post_norm, nn.LayerNorm))

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Encoder outputs ``(B, K, input_dim)`` -> unit-norm code-space vectors ``(B, K, code_dim)``, fp32.

        The projection runs in its weights' dtype (fp32 unless the model was cast), the comparison in fp32."""
        weight = getattr(self.project_in, "weight", None)
        return F.normalize(self.project_in(features.to(torch.float32 if weight is None else weight.dtype)).float(), dim=-1)

    def cosine_similarity(self, features: torch.Tensor) -> torch.Tensor:
        """Cosine similarity ``(B, K, C)`` of the projected features to every code."""
        return self.project(features) @ self.embed.float().t()

    @torch.autocast("cuda", enabled=False)
    @torch.autocast("cpu", enabled=False)
    def quantize(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest codes by cosine similarity.

        Args:
            features: ``(B, K, input_dim)`` encoder outputs.
        Returns:
            ``(ids, projected)``: int64 ids ``(B, K)`` and the unit-norm projected features ``(B, K, code_dim)``.
        """
        projected = self.project(features)
        ids = (projected @ self.embed.float().t()).argmax(dim=-1)
        return ids, projected

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Code ids ``(B, K)`` -> token embeddings ``(B, K, token_dim)`` (codebook row, project_out, post_norm)."""
        return self.post_norm(self.project_out(F.embedding(ids, self.embed)))

    # ------------------------------------------------------------------------------ training
    def forward(self, features: torch.Tensor) -> QuantizerOutput:
        """Quantize encoder features; in train mode this is the quantizer's training step.

        Args:
            features: ``(B, K, input_dim)`` encoder outputs in code order.
        Returns:
            [`QuantizerOutput`]. In train mode, in this order: k-means initialisation (first batch only), nearest
            codes against the codebook as it was, then the EMA updates (position usage, codebook), dead-code
            reactivation, and the losses on the codes chosen before the update. In eval mode the loss is zero and
            no state changes.
        """
        with torch.autocast(features.device.type, enabled=False):
            z = self.project(features)
            if self.training:
                self._kmeans_init(z)
            # A snapshot: the EMA update below rewrites `embed` in place, and autograd needs the old one.
            embed = self.embed.clone() if self.training else self.embed
            cos = z @ embed.t()
            ids = cos.argmax(dim=-1)
            codes = F.embedding(ids, embed)
            stats = {}
            loss = z.new_zeros(())
            if self.training:
                onehot = F.one_hot(ids, self.codebook_size).to(z.dtype)
                self._update_position_usage(onehot)
                self._update_codebook(z, onehot)
                stats["reactivated_codes"] = self._reactivate_dead_codes(z)
                commit = F.mse_loss(codes.detach(), z)
                diversity, entropy = self._diversity_loss(cos)
                loss = self.commitment_weight * commit + diversity
                stats.update(
                    commitment=commit.item(), diversity_entropy=entropy.item(), usage_perplexity=self.usage_perplexity().item()
                )
                codes = z + (codes - z).detach()  # straight-through estimator
        return QuantizerOutput(ids=ids, quantized=self.post_norm(self.project_out(codes)), loss=loss, stats=stats, projected=z)

    def usage_perplexity(self) -> torch.Tensor:
        """Mean over positions of ``exp(H(p(code | position)))`` from the EMA statistics."""
        p = self.position_code_usage
        return torch.exp(-(p * torch.log(p + 1e-10)).sum(dim=-1)).mean()

    @torch.no_grad()
    def _kmeans_init(self, z: torch.Tensor) -> None:
        """Spherical k-means on the first batch (codes sampled on rank 0, statistics all-reduced)."""
        if bool(self.initted):
            return
        samples = z.detach().reshape(-1, self.code_dim)
        n, C = samples.shape[0], self.codebook_size
        idx = torch.randperm(n, device=z.device)[:C] if n >= C else torch.randint(0, n, (C,), device=z.device)
        means = _broadcast(samples[idx].contiguous())
        bins = torch.zeros(C, device=z.device)
        for _ in range(self.kmeans_iters):
            buckets = (samples @ means.t()).argmax(dim=-1)
            bins = _all_reduce_sum(torch.bincount(buckets, minlength=C).to(samples.dtype))
            sums = _all_reduce_sum(torch.zeros_like(means).index_add_(0, buckets, samples))
            new_means = F.normalize(sums / bins.clamp(min=1).unsqueeze(-1), dim=-1)
            means = torch.where((bins == 0).unsqueeze(-1), means, new_means)
        self.embed.copy_(means)
        self.embed_avg.copy_(means * bins.unsqueeze(-1))
        self.cluster_size.copy_(bins)
        self.initted.fill_(1)

    @torch.no_grad()
    def _update_position_usage(self, onehot: torch.Tensor) -> None:
        """EMA of p(code | position) over the batch; the first update uses decay 0.3 (official)."""
        batch = _all_reduce_sum(onehot.mean(dim=0)) / _world_size()
        decay = self.ema_decay if bool(self.position_usage_initted) else 0.3
        self.position_code_usage.lerp_(batch, 1 - decay)
        self.position_usage_initted.fill_(1)

    @torch.no_grad()
    def _update_codebook(self, z: torch.Tensor, onehot: torch.Tensor) -> None:
        flat_z, flat_onehot = z.reshape(-1, self.code_dim), onehot.reshape(-1, self.codebook_size)
        bins = _all_reduce_sum(flat_onehot.sum(dim=0))
        self.cluster_size.lerp_(bins, 1 - self.ema_decay)
        embed_sum = _all_reduce_sum(flat_onehot.t() @ flat_z)
        self.embed_avg.lerp_(embed_sum, 1 - self.ema_decay)
        total = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.ema_eps) / (total + self.codebook_size * self.ema_eps) * total
        self.embed.copy_(F.normalize(self.embed_avg / smoothed.unsqueeze(-1), dim=-1))

    def position_weights(self) -> torch.Tensor:
        """Smart-reactivation weight of each token position: ``softmax(10 * (1/ppl_k) / max_k(1/ppl_k))``."""
        p = self.position_code_usage
        inv_perplexity = 1 / torch.exp(-(p * torch.log(p + 1e-10)).sum(dim=-1))
        return (inv_perplexity / inv_perplexity.max() * 10.0).softmax(dim=-1)

    @torch.no_grad()
    def _reactivate_dead_codes(self, z: torch.Tensor) -> int:
        """Re-seed codes whose EMA count is below the relative threshold with batch samples."""
        if self.dead_code_threshold <= 0:
            return 0
        B, K, _ = z.shape
        expected = B * K * _world_size() / self.codebook_size  # expected count of a code per step
        dead = self.cluster_size < self.dead_code_threshold * expected
        num_dead = int(dead.sum())
        if num_dead == 0:
            return 0
        samples = z.reshape(-1, self.code_dim)
        if self.smart_reactivation:
            # Sample positions by weight, spread evenly over the batch (samples are batch-major).
            p = (self.position_weights() / B).repeat(B)
            picks = torch.multinomial(p, num_dead, replacement=True)
        else:
            picks = torch.randint(0, samples.shape[0], (num_dead,), device=z.device)
        new_codes = _broadcast(samples[picks].contiguous())
        reset = self.reset_cluster_size * expected
        self.embed[dead] = new_codes
        self.embed_avg[dead] = new_codes * reset
        self.cluster_size[dead] = reset
        return num_dead

    def _diversity_loss(self, cos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[OFF] diversity loss; returns ``(loss, entropy)``."""
        batch_p = (cos * self.diversity_temperature).softmax(dim=-1).mean(dim=0)  # (K, C)
        mix = self.position_code_usage * self.ema_entropy_ratio + batch_p * (1 - self.ema_entropy_ratio)
        groups = torch.stack([g.mean(dim=0) for g in mix.tensor_split(64, dim=0) if len(g)], dim=0)
        entropy = 0.5 * (_entropy(mix).mean() + _entropy(groups).mean())
        frac = float(self.usage_perplexity()) / self.codebook_size
        lo, hi = self.diversity_schedule
        weight = 0.5 if frac < lo else max(0.5 - 0.5 / (hi - lo) * (frac - lo), 0.0)
        return -self.diversity_weight * weight * entropy, entropy
