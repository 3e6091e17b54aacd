"""The Selftok token schedule k(τ): how many tokens the decoder may see at noise level τ.

Selftok's decoder reconstructs the latent at code time τ (τ = 1 is pure noise) while seeing
only the first ``k(τ) + 1`` tokens *in code order* (index 0 = finest token). The schedule is a
piecewise-linear map from integer timesteps ``t ∈ [0, 1000]`` to a token index, defined by stage
boundaries and a number of tokens per stage. This module is the single place where that map,
the visible-token mask and the fake "timestep" positions ``1000 + 8j`` of the tokens live; the
decoder, the sampler and the trainers all use it.

The arithmetic mirrors the official ``DiTi_cont`` bit for bit: within stage ``s`` (``low_s <=
t``), ``k = base_s + int(float32(slope_s) * (t - low_s))``, later stages overriding earlier ones,
then clamped to ``[0, K-1]``.

Public token order (AR order, coarse first) is the reverse of code order; see
:func:`to_ar_order` / :func:`to_code_order`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import torch

__all__ = ["TokenSchedule", "token_positions", "to_ar_order", "to_code_order"]

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
class TokenSchedule:
    """Piecewise-linear token schedule.

    Args:
        num_tokens: K, the number of tokens per image.
        stages: upper boundaries of the stages on the 0..1000 timestep axis, increasing,
            the last one 1000 (e.g. ``(200, 400, 600, 800, 1000)``).
        tokens_per_stage: tokens added over each stage; they sum to ``num_tokens``
            (e.g. ``(192, 184, 72, 48, 16)`` for the release).
    """

    num_tokens: int
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
        if self.num_tokens < 1:
            raise ValueError(f"num_tokens must be >= 1, got {self.num_tokens}")

    @classmethod
    def uniform(cls, num_tokens: int) -> "TokenSchedule":
        """One stage over [0, 1000]: k(t) = floor(t K / 1000) (the FSQ and renderer configs)."""
        return cls(num_tokens, (1000,), (num_tokens,))

    @classmethod
    def from_strings(cls, num_tokens: int, stages: Union[str, Sequence[int]], tokens_per_stage: Union[str, Sequence[int]]):
        """Build from the official YAML's comma-separated strings (``"200,400,..."``) or sequences."""

        def parse(v):
            if isinstance(v, str):
                return tuple(int(x) for x in v.split(",") if x.strip())
            if isinstance(v, int):
                return (v,)
            return tuple(int(x) for x in v)

        return cls(num_tokens, parse(stages), parse(tokens_per_stage))

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
        return k.clamp(0, self.num_tokens - 1)

    def sampler_timesteps(self, sigmas: torch.Tensor) -> torch.Tensor:
        """The integer timesteps the official sampler feeds the schedule: ``long(float32(σ) * 1000)``."""
        return (sigmas.to(torch.float32) * 1000).long()

    def visible_count(self, sigmas: torch.Tensor) -> torch.Tensor:
        """Number of visible tokens ``k(σ) + 1`` at code times ``sigmas`` (sampler convention)."""
        return self.token_index(self.sampler_timesteps(sigmas)) + 1

    def visible_mask(self, token_index: torch.Tensor) -> torch.Tensor:
        """Boolean mask ``(..., K)``: code-order token j is visible iff ``j <= token_index``."""
        j = torch.arange(self.num_tokens, device=token_index.device)
        return j <= token_index.unsqueeze(-1)

    def k_table(self) -> torch.Tensor:
        """k for every integer timestep 0..1000 (int64, shape ``(1001,)``)."""
        return self.token_index(torch.arange(1001))
