"""Cosine-similarity vector quantizer with an EMA codebook (Selftok's VQ).

Inference path (what the released tokenizer does at encode / decode time):

    z (B, K, query_dim) --project_in--> (B, K, code_dim) --l2norm--> argmax cosine vs l2-normed codebook
    ids -> codebook[ids] --project_out--> (B, K, token_dim) --post_norm (LayerNorm)--> token embeddings

The codebook is not a parameter: training moves it by exponential moving averages of the
assigned encoder outputs (see the tokenizer trainer). Its bookkeeping buffers (`embed_avg`,
`cluster_size`, per-position usage `position_code_usage`) are saved with the model so that
training can resume from a converted checkpoint.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CosineVectorQuantizer"]


class CosineVectorQuantizer(nn.Module):
    """Cosine VQ with an EMA codebook.

    Args:
        input_dim: width of the encoder outputs (the query width).
        codebook_size: number of codes C.
        code_dim: width D of a code.
        token_dim: width of the vectors handed downstream; a Linear maps codes to it if ``!= code_dim``.
        num_positions: K, token positions per image (for the per-position usage statistics).
        post_norm: apply LayerNorm(token_dim, eps=1e-6) to the output vectors.
    """

    def __init__(
        self,
        input_dim: int,
        codebook_size: int,
        code_dim: int,
        token_dim: int,
        num_positions: int,
        post_norm: bool = True,
    ) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.code_dim = code_dim
        self.project_in = nn.Linear(input_dim, code_dim) if input_dim != code_dim else nn.Identity()
        self.project_out = nn.Linear(code_dim, token_dim) if token_dim != code_dim else nn.Identity()
        self.post_norm = nn.LayerNorm(token_dim, eps=1e-6) if post_norm else nn.Identity()

        # EMA codebook state. `embed` rows are unit vectors; `initted` is 0 until k-means has run.
        self.register_buffer("embed", F.normalize(torch.randn(codebook_size, code_dim), dim=-1))
        self.register_buffer("embed_avg", torch.zeros(codebook_size, code_dim))
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("initted", torch.zeros(()))
        # EMA of p(code | token position): drives smart dead-code reactivation and the diversity loss.
        self.register_buffer("position_code_usage", torch.full((num_positions, codebook_size), 1.0 / codebook_size))
        self.register_buffer("position_usage_initted", torch.zeros(()))

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Encoder outputs ``(B, K, input_dim)`` -> unit-norm code-space vectors ``(B, K, code_dim)``, fp32."""
        return F.normalize(self.project_in(features.float()), dim=-1)

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
