"""Fixed sin-cos tables and the timestep embedder shared by the Selftok encoder and decoder.

All tables are computed in float64 NumPy-equivalent arithmetic and cast to float32 once, which
is what the official code stores in its ``pos_embed`` / ``context_pos_embed`` buffers.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["sincos_1d", "sincos_2d", "timestep_frequencies", "TimestepEmbedder"]


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """``[sin(p ω), cos(p ω)]`` with ``ω_i = 10000^(-2i/dim)``; returns float32 ``(len(positions), dim)``."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding dim must be even, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = positions.reshape(-1).to(torch.float64)[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_2d(dim: int, grid_size: int) -> torch.Tensor:
    """2-D table over a ``grid_size²`` grid, row-major; first half encodes the row, second the column.

    Returns float32 ``(grid_size * grid_size, dim)``.
    """
    coords = torch.arange(grid_size, dtype=torch.float32)
    rows = coords.repeat_interleave(grid_size)
    cols = coords.repeat(grid_size)
    # The official table stacks (w, h) from meshgrid and encodes grid[0] (= column index) first.
    return torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)


def timestep_frequencies(t: torch.Tensor, dim: int = 256, max_period: float = 10000.0) -> torch.Tensor:
    """GLIDE/DiT sinusoidal features ``[cos(t f), sin(t f)]`` of (possibly fractional) timesteps ``(N,)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class TimestepEmbedder(nn.Module):
    """Sinusoidal features -> Linear -> SiLU -> Linear (the DiT timestep MLP).

    Parameter names (``mlp.0``, ``mlp.2``) match the official checkpoints.
    """

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """``t``: ``(N,)`` timesteps -> ``(N, hidden_size)``.

        ``dtype`` is that of the activations this embedding conditions (as diffusers' SD3 embedder casts to its
        pooled projection's dtype): the weights' dtype (as stored) differs from the compute dtype under diffusers'
        layerwise casting, which upcasts the weights only when each Linear runs.
        """
        freq = timestep_frequencies(t, self.frequency_embedding_size)
        return self.mlp(freq.to(dtype))
