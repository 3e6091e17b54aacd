"""Where Selftok's visual tokens live in a causal LM's vocabulary, and which tokens may come next.

A Selftok VLM is an ordinary causal LM whose vocabulary was extended by
:func:`~selftok_hf.modeling_selftok_lm.add_visual_tokens` with one token per codebook entry plus
begin/end-of-image markers. The layout is recorded in the LM's config (key
``"selftok_visual_vocabulary"``) so that generation, training and RL never depend on token strings::

    [0, first_visual_id)                                  text tokens of the original tokenizer
    [first_visual_id, first_visual_id + codebook_size)    visual token c  <->  codebook id c
    boi_token_id, eoi_token_id                            begin / end of image
    ... up to lm_vocab_size                               embedding padding rows (never produced)

An image is always the span ``boi v_1 ... v_K eoi`` with exactly ``K = num_image_tokens`` visual
tokens in AR order (coarse first, as ``SelftokModel.encode(...).token_ids`` returns them).

The grammar of that span is one function, :func:`allowed_next_tokens`, used both to constrain sampling
(:class:`~selftok_hf.generation_selftok.SelftokVisualGrammarLogitsProcessor`) and to mask logits when
computing log-probabilities in training (:func:`mask_logits`), so the policy that samples and the policy
that is scored are the same distribution:

- inside an open image span with fewer than K visual tokens so far: only visual tokens;
- after the K-th visual token (or in a malformed, over-long span): only end-of-image;
- outside a span: any text token, plus begin-of-image unless ``allow_image_start=False``; never a
  visual token, end-of-image or a padding row.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

__all__ = [
    "VISUAL_VOCABULARY_CONFIG_KEY",
    "VisualVocabulary",
    "allowed_next_tokens",
    "image_span_progress",
    "mask_logits",
]

#: Key of the layout in the LM's ``config.json``.
VISUAL_VOCABULARY_CONFIG_KEY = "selftok_visual_vocabulary"

# Grammar states (rows of the lookup table built by `VisualVocabulary.grammar_table`).
_OUTSIDE, _VISUAL, _END = 0, 1, 2


@dataclass(frozen=True)
class VisualVocabulary:
    """The visual-token id layout of a Selftok VLM (see the module docstring).

    Args:
        first_visual_id: LM id of codebook entry 0; codebook id ``c`` is LM id ``first_visual_id + c``.
            Every id below it is a text token.
        codebook_size: number of visual tokens (the Selftok codebook size, 32768 for the release).
        num_image_tokens: K, visual tokens per image (512 for the release).
        boi_token_id / eoi_token_id: LM ids of the begin-/end-of-image markers.
        lm_vocab_size: rows of the LM's (possibly padded) embedding matrix; ids above the markers and
            below this are padding rows and are never allowed.
        visual_token_format: ``str.format`` pattern of the visual token strings in the text tokenizer.
        boi_token / eoi_token: strings of the markers in the text tokenizer.
    """

    first_visual_id: int
    codebook_size: int
    num_image_tokens: int
    boi_token_id: int
    eoi_token_id: int
    lm_vocab_size: int
    visual_token_format: str = "<|visual_{:05d}|>"
    boi_token: str = "<|begin_of_image|>"
    eoi_token: str = "<|end_of_image|>"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            expected = str if f.name in ("visual_token_format", "boi_token", "eoi_token") else int
            if not isinstance(value, expected) or isinstance(value, bool):
                raise TypeError(f"VisualVocabulary.{f.name} must be {expected.__name__}, got {type(value).__name__} {value!r}")
        if self.first_visual_id < 0 or self.codebook_size < 1 or self.num_image_tokens < 1:
            raise ValueError(
                f"need first_visual_id >= 0, codebook_size >= 1 and num_image_tokens >= 1, got "
                f"{self.first_visual_id}, {self.codebook_size}, {self.num_image_tokens}"
            )
        for name in ("boi_token_id", "eoi_token_id"):
            token_id = getattr(self, name)
            if token_id < 0 or self.first_visual_id <= token_id < self.end_visual_id:
                raise ValueError(
                    f"{name}={token_id} must be a non-negative id outside the visual range "
                    f"[{self.first_visual_id}, {self.end_visual_id})"
                )
        if self.boi_token_id == self.eoi_token_id:
            raise ValueError(f"boi_token_id and eoi_token_id must differ, both are {self.boi_token_id}")
        largest = max(self.end_visual_id - 1, self.boi_token_id, self.eoi_token_id)
        if self.lm_vocab_size <= largest:
            raise ValueError(f"lm_vocab_size={self.lm_vocab_size} must exceed the largest visual/marker id {largest}")
        if self.boi_token == self.eoi_token:
            raise ValueError(f"boi_token and eoi_token must differ, both are {self.boi_token!r}")

    # ------------------------------------------------------------------------------- ranges
    @property
    def end_visual_id(self) -> int:
        """One past the last visual id."""
        return self.first_visual_id + self.codebook_size

    @property
    def image_span_length(self) -> int:
        """Tokens an image occupies in a sequence: ``K + 2`` (boi, K visual tokens, eoi)."""
        return self.num_image_tokens + 2

    def is_visual(self, lm_ids: torch.Tensor) -> torch.Tensor:
        """Boolean tensor, same shape as ``lm_ids``: True where the id is a visual token."""
        return (lm_ids >= self.first_visual_id) & (lm_ids < self.end_visual_id)

    # -------------------------------------------------------------------------- conversions
    def to_lm_ids(self, codebook_ids: torch.Tensor) -> torch.Tensor:
        """Codebook ids in ``[0, codebook_size)`` -> LM ids (same shape, int64)."""
        codebook_ids = _as_integer_tensor(codebook_ids, "codebook_ids")
        if codebook_ids.numel() and (int(codebook_ids.min()) < 0 or int(codebook_ids.max()) >= self.codebook_size):
            raise ValueError(
                f"codebook ids must lie in [0, {self.codebook_size}), got values in "
                f"[{int(codebook_ids.min())}, {int(codebook_ids.max())}]"
            )
        return codebook_ids.long() + self.first_visual_id

    def to_codebook_ids(self, lm_ids: torch.Tensor) -> torch.Tensor:
        """LM ids of visual tokens -> codebook ids (same shape, int64). Any non-visual id is an error."""
        lm_ids = _as_integer_tensor(lm_ids, "lm_ids")
        if lm_ids.numel() and not bool(self.is_visual(lm_ids).all()):
            bad = lm_ids[~self.is_visual(lm_ids)]
            raise ValueError(
                f"expected only visual token ids in [{self.first_visual_id}, {self.end_visual_id}), "
                f"got {bad.numel()} other id(s), e.g. {bad.flatten()[:5].tolist()}"
            )
        return lm_ids.long() - self.first_visual_id

    def image_span(self, codebook_ids: torch.Tensor) -> torch.Tensor:
        """Codebook ids ``(B, K)`` in AR order -> LM ids ``(B, K + 2)``: ``boi v_1 ... v_K eoi``."""
        codebook_ids = _as_integer_tensor(codebook_ids, "codebook_ids")
        if codebook_ids.ndim != 2 or codebook_ids.shape[1] != self.num_image_tokens:
            raise ValueError(f"image token ids must have shape (batch, {self.num_image_tokens}), got {tuple(codebook_ids.shape)}")
        lm_ids = self.to_lm_ids(codebook_ids)
        boi = lm_ids.new_full((lm_ids.shape[0], 1), self.boi_token_id)
        eoi = lm_ids.new_full((lm_ids.shape[0], 1), self.eoi_token_id)
        return torch.cat([boi, lm_ids, eoi], dim=1)

    # ------------------------------------------------------------------------------ strings
    def visual_token(self, codebook_id: int) -> str:
        """The text-tokenizer string of codebook entry ``codebook_id``."""
        return self.visual_token_format.format(codebook_id)

    def visual_tokens(self) -> list[str]:
        """All ``codebook_size`` visual token strings, in codebook order."""
        return [self.visual_token(c) for c in range(self.codebook_size)]

    def parse_visual_tokens(self, text: str) -> list[int]:
        """Codebook ids of the visual token strings found in ``text`` (e.g. from ``decode(...,
        skip_special_tokens=False)``), in order."""
        prefix, _, suffix = self.visual_token_format.partition("{")
        suffix = suffix.partition("}")[2]
        ids = [int(m) for m in re.findall(re.escape(prefix) + r"(\d+)" + re.escape(suffix), text)]
        return [c for c in ids if c < self.codebook_size]

    # ------------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> VisualVocabulary:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown VisualVocabulary field(s) {sorted(unknown)}; expected {sorted(known)}")
        return cls(**data)

    def save_to_config(self, config) -> None:
        """Record this layout in a transformers config (``config.selftok_visual_vocabulary``)."""
        setattr(config, VISUAL_VOCABULARY_CONFIG_KEY, self.to_dict())

    @classmethod
    def from_config(cls, config) -> VisualVocabulary:
        """Read the layout from an LM config (or a model, whose ``.config`` is used).

        Raises:
            ValueError: if the config has no visual vocabulary (the LM was never extended).
        """
        config = getattr(config, "config", config)
        data = getattr(config, VISUAL_VOCABULARY_CONFIG_KEY, None)
        if data is None:
            raise ValueError(
                f"{type(config).__name__} has no `{VISUAL_VOCABULARY_CONFIG_KEY}`: this language model has no Selftok "
                "visual tokens. Extend it first with `selftok_hf.add_visual_tokens(model, tokenizer, image_tokenizer)`."
            )
        return cls.from_dict(data)

    def check_image_tokenizer(self, image_tokenizer_config) -> None:
        """Raise ``ValueError`` unless the Selftok tokenizer config has this K and codebook size."""
        config = getattr(image_tokenizer_config, "config", image_tokenizer_config)
        if config.num_image_tokens != self.num_image_tokens or config.codebook_size != self.codebook_size:
            raise ValueError(
                f"the language model was extended for K={self.num_image_tokens} tokens per image and a codebook of "
                f"{self.codebook_size}, but the Selftok image tokenizer has K={config.num_image_tokens} and a codebook of "
                f"{config.codebook_size}"
            )

    # ------------------------------------------------------------------------------ grammar
    def grammar_table(self, vocab_size: int | None = None, allow_image_start: bool = True, device=None) -> torch.Tensor:
        """Boolean ``(3, vocab_size)`` table: row 0 = allowed outside an image span, row 1 = inside a span
        before the K-th visual token, row 2 = after it (end-of-image only)."""
        vocab_size = self.lm_vocab_size if vocab_size is None else vocab_size
        largest = max(self.end_visual_id - 1, self.boi_token_id, self.eoi_token_id)
        if vocab_size <= largest:
            raise ValueError(f"logits have {vocab_size} entries but the visual vocabulary reaches id {largest}")
        table = torch.zeros(3, vocab_size, dtype=torch.bool, device=device)
        table[_OUTSIDE, : self.first_visual_id] = True
        table[_OUTSIDE, self.eoi_token_id] = False
        table[_OUTSIDE, self.boi_token_id] = allow_image_start
        table[_VISUAL, self.first_visual_id : self.end_visual_id] = True
        table[_END, self.eoi_token_id] = True
        return table


def _as_integer_tensor(ids, name: str) -> torch.Tensor:
    if not isinstance(ids, torch.Tensor):
        try:
            ids = torch.as_tensor(ids)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name} must be a tensor or array of integers, got {type(ids).__name__}") from e
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers, got dtype {ids.dtype}")
    return ids


def image_span_progress(input_ids: torch.LongTensor, vocabulary: VisualVocabulary) -> torch.LongTensor:
    """For every position, how many visual tokens the open image span holds after that token.

    Args:
        input_ids (`torch.LongTensor` of shape `(B, T)`): LM ids (left padding is fine).
    Returns:
        `torch.LongTensor` of shape `(B, T)`: at position t, ``t - (position of the last boi at or before
        t)`` if that boi has not been closed by an eoi, else -1 (position t is outside an image span).
        So it is 0 on a boi token, K on the K-th visual token.
    """
    if input_ids.ndim != 2:
        raise ValueError(f"input_ids must have shape (batch, length), got {tuple(input_ids.shape)}")
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
    never = torch.full_like(positions, -1)
    last_boi = torch.where(input_ids == vocabulary.boi_token_id, positions, never).cummax(dim=1).values
    last_eoi = torch.where(input_ids == vocabulary.eoi_token_id, positions, never).cummax(dim=1).values
    return torch.where(last_boi > last_eoi, positions - last_boi, never)


def allowed_next_tokens(
    input_ids: torch.LongTensor,
    vocabulary: VisualVocabulary,
    vocab_size: int | None = None,
    allow_image_start: bool = True,
    last_position_only: bool = False,
) -> torch.BoolTensor:
    """Which tokens may follow each position of ``input_ids`` under the image-span grammar.

    Args:
        input_ids (`torch.LongTensor` of shape `(B, T)`): LM ids.
        vocabulary: the layout.
        vocab_size: width of the logits (defaults to ``vocabulary.lm_vocab_size``).
        allow_image_start: whether begin-of-image may be produced outside a span (False for text-only
            answers).
        last_position_only: return only the mask for the token after the last position (sampling).
    Returns:
        `torch.BoolTensor` of shape `(B, T, vocab_size)`, or `(B, vocab_size)` with ``last_position_only``;
        entry ``[b, t, v]`` says whether token v may follow ``input_ids[b, :t + 1]``.
    """
    progress = image_span_progress(input_ids, vocabulary)
    if last_position_only:
        progress = progress[:, -1]
    state = torch.full_like(progress, _OUTSIDE)
    state = torch.where(progress >= 0, _VISUAL, state)
    state = torch.where(progress >= vocabulary.num_image_tokens, _END, state)
    table = vocabulary.grammar_table(vocab_size, allow_image_start, device=input_ids.device)
    return table[state]


def mask_logits(
    logits: torch.Tensor, input_ids: torch.LongTensor, vocabulary: VisualVocabulary, allow_image_start: bool = True
) -> torch.Tensor:
    """Set the logits of tokens the grammar forbids to ``-inf`` (out of place).

    Args:
        logits (`torch.Tensor` of shape `(B, T, V)` or `(B, V)`): ``logits[:, t]`` scores the token after
            ``input_ids[:, t]`` (a causal LM's output); with 2-D logits, the token after the last position.
        input_ids (`torch.LongTensor` of shape `(B, T)`).
    Returns:
        Masked logits, same shape and dtype. ``log_softmax`` of them gives the log-probabilities of the
        constrained policy that :class:`~selftok_hf.generation_selftok.SelftokVisualGrammarLogitsProcessor`
        samples from.
    """
    if logits.ndim == 3 and logits.shape[:2] != input_ids.shape:
        raise ValueError(f"logits {tuple(logits.shape)} do not match input_ids {tuple(input_ids.shape)} in (batch, length)")
    if logits.ndim not in (2, 3):
        raise ValueError(f"logits must have shape (B, T, V) or (B, V), got {tuple(logits.shape)}")
    allowed = allowed_next_tokens(input_ids, vocabulary, logits.shape[-1], allow_image_start, last_position_only=logits.ndim == 2)
    return logits.masked_fill(~allowed, float("-inf"))
