"""The Selftok token schedule k(τ): how many tokens the decoder may see at noise level τ.

Selftok's decoder reconstructs the latent at code time τ (τ = 1 is pure noise) while seeing
only the first ``k(τ) + 1`` tokens *in code order* (index 0 = finest token). The schedule is a
piecewise-linear map from integer timesteps ``t ∈ [0, 1000]`` to a token index, defined by stage
boundaries and a number of tokens per stage. This module is the single place where that map,
what a visible token is (:class:`TokenVisibility`, built by :meth:`TokenSchedule.training_visibility` and
:meth:`TokenSchedule.sampling_visibility`) and the fake "timestep" positions ``1000 + 8j`` of the tokens live; the
decoder, the sampler and the trainers all use it.

The arithmetic mirrors the official ``DiTi_cont`` bit for bit: within stage ``s`` (``low_s <=
t``), ``k = base_s + int(float32(slope_s) * (t - low_s))``, later stages overriding earlier ones,
then clamped to ``[0, K-1]``.

Public token order (AR order, coarse first) is the reverse of code order; see
:func:`to_ar_order` / :func:`to_code_order`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import torch

from .renamed import renamed_fields, renamed_kwargs

__all__ = ["TokenSchedule", "TokenVisibility", "token_positions", "to_ar_order", "to_code_order"]

#: The official code embeds token j at the fake timestep 1000 + 8 j (``DiTi.get_position``).
TOKEN_POSITION_OFFSET = 1000
TOKEN_POSITION_STRIDE = 8


def token_positions(num_tokens: int, device: Union[torch.device, str, None] = None) -> torch.Tensor:
    """Fake timesteps ``1000 + 8 j`` (float32, shape ``(num_tokens,)``) for code-order token j."""
    j = torch.arange(num_tokens, device=device)
    return (TOKEN_POSITION_OFFSET + TOKEN_POSITION_STRIDE * j).float()


def to_ar_order(ids_or_codes: torch.Tensor) -> torch.Tensor:
    """Code order (index 0 = finest) -> AR order (index 0 = coarsest). Flips dim 1."""
    return ids_or_codes.flip(1)


def to_code_order(ids_or_codes: torch.Tensor) -> torch.Tensor:
    """AR order (index 0 = coarsest) -> code order (index 0 = finest). Flips dim 1."""
    return ids_or_codes.flip(1)


@dataclass(frozen=True)
class TokenVisibility:
    """Which code-order tokens each row of a decoder batch sees: the one definition of a visible token.

    Row ``b`` of a batch of ``B`` rows sees code-order token ``j`` iff all of

    1. ``b < B - unconditional_rows``: the last ``unconditional_rows`` rows see no token (classifier-free
       guidance's unconditional half);
    2. ``start <= j < stop``: the window, the same for every row (``start == stop``: no row sees a token);
    3. ``mask[b, j - start]``, when ``mask`` is given.

    ``start``, ``stop`` and ``unconditional_rows`` are Python ints, so the decoder acts on them without reading a
    tensor (no host sync). It runs its token stream on the window of the conditional rows only, ``token_codes[:B -
    unconditional_rows, start:stop]`` at their own positions ``start..stop - 1``, and builds its attention key mask
    from ``mask`` alone (no mask when None). Both cuts are exact, an optimisation and not a second meaning: a token
    outside the window is no row's key, and its own output reaches the image only through later keys, never seen
    either; a row that sees no token computes image-only attention, which is what keys that are all masked give
    (masked keys get exactly zero weight). In floating point the two differ by the order of the attention sums only
    (tests/test_token_visibility.py measures that against float64).

    Build it with :meth:`TokenSchedule.training_visibility` (per-row times, CFG dropout: a mask),
    :meth:`TokenSchedule.sampling_visibility` (one time per step, ``prefix_length``, CFG: windows only) or
    :meth:`from_mask` (a caller's boolean mask); :meth:`as_mask` spells it out as a ``(B, K)`` mask.

    Args:
        start, stop: the window, ``0 <= start <= stop``.
        mask: ``(B - unconditional_rows, stop - start)`` boolean, True = visible; None: the whole window.
        unconditional_rows: how many rows, at the end of the batch, see no token.
    """

    start: int
    stop: int
    mask: Optional[torch.Tensor] = None
    unconditional_rows: int = 0

    def __post_init__(self) -> None:
        for name in ("start", "stop", "unconditional_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"TokenVisibility.{name} must be an integer >= 0, got {value!r}")
        if self.start > self.stop:
            raise ValueError(f"TokenVisibility window start={self.start} > stop={self.stop}")
        if self.mask is not None and (
            self.mask.dtype != torch.bool or self.mask.ndim != 2 or self.mask.shape[1] != self.stop - self.start
        ):
            raise ValueError(
                f"TokenVisibility.mask must be a boolean (rows, {self.stop - self.start}) tensor over the window, "
                f"got {self.mask.dtype} {tuple(self.mask.shape)}"
            )

    @classmethod
    def from_mask(cls, mask: torch.Tensor, unconditional_rows: int = 0) -> "TokenVisibility":
        """A caller's mask ``(B, n)`` (True = visible), of which the last ``unconditional_rows`` rows are not read.

        The one cut this makes reads the mask's values (one host sync): when every conditional row sees exactly its
        first ``m >= 1`` tokens, the window ``[0, m)`` without a mask, which the decoder runs without masked attention;
        otherwise the mask over all ``n`` tokens.
        """
        mask = mask[: mask.shape[0] - unconditional_rows].bool()
        num_tokens = mask.shape[1]
        if mask.shape[0] == 0:
            return cls(0, num_tokens, None, unconditional_rows)
        counts = mask.sum(dim=1)
        prefix = torch.arange(num_tokens, device=mask.device) < counts[:, None]
        uniform_prefix = (counts == counts[0]).all() & (mask == prefix).all()
        num_visible = int(torch.where(uniform_prefix, counts[0], 0))
        if num_visible > 0:
            return cls(0, num_visible, None, unconditional_rows)
        return cls(0, num_tokens, mask, unconditional_rows)

    @property
    def sees_no_token(self) -> bool:
        """Whether the window is empty, so that no row sees a token."""
        return self.start == self.stop

    def as_mask(self, num_rows: int, num_tokens: int) -> torch.Tensor:
        """The same visibility as a ``(num_rows, num_tokens)`` boolean mask over all tokens (rules 1-3 above)."""
        device = None if self.mask is None else self.mask.device
        full = torch.zeros(num_rows, num_tokens, dtype=torch.bool, device=device)
        full[: num_rows - self.unconditional_rows, self.start : self.stop] = True if self.mask is None else self.mask
        return full


@renamed_fields(num_tokens="num_image_tokens")
@dataclass(frozen=True)
class TokenSchedule:
    """Piecewise-linear token schedule.

    Args:
        num_image_tokens: K, the number of tokens per image (formerly ``num_tokens``, still accepted with a
            FutureWarning).
        stages: upper boundaries of the stages on the 0..1000 timestep axis, increasing,
            the last one 1000 (e.g. ``(200, 400, 600, 800, 1000)``).
        tokens_per_stage: tokens added over each stage; they sum to ``num_image_tokens``
            (e.g. ``(192, 184, 72, 48, 16)`` for the release).
    """

    num_image_tokens: int
    stages: tuple
    tokens_per_stage: tuple

    def __post_init__(self) -> None:
        stages, per_stage = tuple(int(s) for s in self.stages), tuple(int(k) for k in self.tokens_per_stage)
        object.__setattr__(self, "stages", stages)
        object.__setattr__(self, "tokens_per_stage", per_stage)
        if len(stages) == 0 or len(stages) != len(per_stage):
            raise ValueError(
                f"stages {stages} and tokens_per_stage {per_stage} must be non-empty and of equal length"
            )
        bounds = (0,) + stages
        if any(lo >= hi for lo, hi in zip(bounds[:-1], bounds[1:])):
            raise ValueError(f"stages must be strictly increasing and positive, got {stages}")
        if self.num_image_tokens < 1:
            raise ValueError(f"num_image_tokens must be >= 1, got {self.num_image_tokens}")

    @classmethod
    @renamed_kwargs(num_tokens="num_image_tokens")
    def uniform(cls, num_image_tokens: int) -> "TokenSchedule":
        """One stage over [0, 1000]: k(t) = floor(t K / 1000) (the FSQ and renderer configs)."""
        return cls(num_image_tokens, (1000,), (num_image_tokens,))

    @classmethod
    @renamed_kwargs(num_tokens="num_image_tokens")
    def from_strings(cls, num_image_tokens: int, stages: Union[str, Sequence[int]], tokens_per_stage: Union[str, Sequence[int]]):
        """Build from the official YAML's comma-separated strings (``"200,400,..."``) or sequences."""

        def parse(v):
            if isinstance(v, str):
                return tuple(int(x) for x in v.split(",") if x.strip())
            if isinstance(v, int):
                return (v,)
            return tuple(int(x) for x in v)

        return cls(num_image_tokens, parse(stages), parse(tokens_per_stage))

    def token_index(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Largest visible code-order token index k for timesteps on the 0..1000 axis.

        Args:
            timesteps: tensor of any shape. Integer tensors (the sampler's truncated
                ``long(1000 τ)``) and float tensors (the trainer's ``1000 τ``) are both accepted
                and treated exactly as the official code treats them.
        Returns:
            int64 tensor of the same shape, in ``[0, K-1]``.
        """
        k = torch.zeros_like(timesteps, dtype=torch.long)
        base, low = 0, 0
        for high, n in zip(self.stages, self.tokens_per_stage):
            offset = timesteps - low
            # A python float times a tensor: float32 arithmetic, as in the official code.
            step = (float(n) / (high - low) * offset).to(torch.long) + base
            k = torch.where(offset >= 0, step, k)
            base, low = base + n, high
        return k.clamp(0, self.num_image_tokens - 1)

    def sampler_timesteps(self, sigmas: torch.Tensor) -> torch.Tensor:
        """The integer timesteps the official sampler feeds the schedule: ``long(float32(σ) * 1000)``."""
        return (sigmas.to(torch.float32) * 1000).long()

    def visible_count(self, sigmas: torch.Tensor) -> torch.Tensor:
        """Number of visible tokens ``k(σ) + 1`` at code times ``sigmas`` (sampler convention)."""
        return self.token_index(self.sampler_timesteps(sigmas)) + 1

    def visible_mask(self, token_index: torch.Tensor) -> torch.Tensor:
        """Boolean mask ``(..., K)``: code-order token j is visible iff ``j <= token_index``."""
        j = torch.arange(self.num_image_tokens, device=token_index.device)
        return j <= token_index.unsqueeze(-1)

    def training_visibility(self, tau: torch.Tensor, dropped: Optional[torch.Tensor] = None) -> TokenVisibility:
        """What each training sample sees: row ``b`` sees code-order tokens ``j <= k(1000 τ_b)`` (the float time, as
        the official trainer), and none when ``dropped[b]`` (classifier-free-guidance dropout).

        Args:
            tau: code times ``(B,)`` in [0, 1].
            dropped: ``(B,)`` boolean, or None for no dropout.
        Returns:
            a mask over all K tokens, computed where ``tau`` lives (no host sync).
        """
        visible = self.visible_mask(self.token_index(tau * 1000.0))
        if dropped is not None:
            visible = visible & ~dropped[:, None]
        return TokenVisibility(0, self.num_image_tokens, visible)

    def sampling_visibility(
        self, sigmas: torch.Tensor, prefix_length: Optional[int] = None, unconditional_rows: int = 0
    ) -> list[TokenVisibility]:
        """What the decoder sees at each sampler step: at ``τ_i = sigmas[i]`` every conditional row sees code-order
        tokens ``K - prefix_length <= j <= k(τ_i)`` (the integer sampler time; ``prefix_length`` counts tokens in AR
        order, coarsest first, so a prefix of ``p`` hides the finest ``K - p``; None: all), and the last
        ``unconditional_rows`` rows see none.

        Windows without masks: the counts are read to the host once here (one host sync per call, none per step).

        Args:
            sigmas: the sampler's code times ``(steps,)``.
        Returns:
            one [`TokenVisibility`] per step.
        """
        start = 0 if prefix_length is None else self.num_image_tokens - prefix_length
        counts = self.visible_count(sigmas.cpu()).tolist()
        return [TokenVisibility(min(start, count), count, None, unconditional_rows) for count in counts]

    def k_table(self) -> torch.Tensor:
        """k for every integer timestep 0..1000 (int64, shape ``(1001,)``)."""
        return self.token_index(torch.arange(1001))
