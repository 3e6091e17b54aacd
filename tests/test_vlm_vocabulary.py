"""VisualVocabulary: id layout, conversions, config round trip, and the image-span grammar."""

import pytest
import torch
from transformers import LlamaConfig

from selftok_hf.visual_vocabulary import (
    VisualVocabulary,
    allowed_next_tokens,
    image_span_progress,
    mask_logits,
)

# Text ids 0..9, visual ids 10..13 (codebook 4), boi 14, eoi 15, padding rows 16..17.
VOCAB = VisualVocabulary(first_visual_id=10, codebook_size=4, num_image_tokens=3, boi_token_id=14, eoi_token_id=15, lm_vocab_size=18)
TEXT, VISUAL, BOI, EOI, PAD_ROWS = list(range(10)), [10, 11, 12, 13], 14, 15, [16, 17]


def allowed_set(row: torch.Tensor) -> list[int]:
    return row.nonzero().flatten().tolist()


def test_conversions_and_span():
    assert VOCAB.to_lm_ids(torch.tensor([[0, 3, 1]])).tolist() == [[10, 13, 11]]
    assert VOCAB.to_codebook_ids(torch.tensor([10, 13])).tolist() == [0, 3]
    assert VOCAB.image_span(torch.tensor([[2, 0, 1]])).tolist() == [[BOI, 12, 10, 11, EOI]]
    assert VOCAB.is_visual(torch.tensor([9, 10, 13, 14])).tolist() == [False, True, True, False]
    with pytest.raises(ValueError, match=r"codebook ids must lie in \[0, 4\)"):
        VOCAB.to_lm_ids(torch.tensor([4]))
    with pytest.raises(ValueError, match="expected only visual token ids"):
        VOCAB.to_codebook_ids(torch.tensor([10, BOI]))
    with pytest.raises(ValueError, match=r"shape \(batch, 3\)"):
        VOCAB.image_span(torch.tensor([[1, 2]]))
    with pytest.raises(TypeError, match="integers"):
        VOCAB.to_lm_ids(torch.tensor([1.0]))


def test_strings_round_trip():
    text = "a " + "".join(VOCAB.visual_token(c) for c in [3, 0, 2]) + " b"
    assert VOCAB.parse_visual_tokens(text) == [3, 0, 2]
    assert VOCAB.visual_tokens()[1] == "<|visual_00001|>"


def test_config_round_trip(tmp_path):
    config = LlamaConfig(vocab_size=18, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1)
    with pytest.raises(ValueError, match="no Selftok visual tokens"):
        VisualVocabulary.from_config(config)
    VOCAB.save_to_config(config)
    config.save_pretrained(tmp_path)
    assert VisualVocabulary.from_config(LlamaConfig.from_pretrained(tmp_path)) == VOCAB


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"boi_token_id": 11}, "outside the visual range"),
        ({"eoi_token_id": 14}, "must differ"),
        ({"lm_vocab_size": 15}, "must exceed"),
        ({"num_image_tokens": 0}, "num_image_tokens >= 1"),
        ({"codebook_size": 4.0}, "must be int"),
    ],
)
def test_invalid_layouts(kwargs, message):
    fields = dict(VOCAB.to_dict(), **kwargs)
    with pytest.raises((ValueError, TypeError), match=message):
        VisualVocabulary(**fields)


def test_grammar_by_hand():
    # left pad (0), text, boi, 3 visual, eoi, text, boi, 1 visual
    ids = torch.tensor([[0, 5, BOI, 10, 13, 11, EOI, 7, BOI, 12]])
    assert image_span_progress(ids, VOCAB).tolist() == [[-1, -1, 0, 1, 2, 3, -1, -1, 0, 1]]
    allowed = allowed_next_tokens(ids, VOCAB)
    outside = TEXT + [BOI]
    expected = [outside, outside, VISUAL, VISUAL, VISUAL, [EOI], outside, outside, VISUAL, VISUAL]
    assert [allowed_set(allowed[0, t]) for t in range(ids.shape[1])] == expected
    # the sampling path (last position only) is the same function
    assert torch.equal(allowed_next_tokens(ids, VOCAB, last_position_only=True), allowed[:, -1])
    # text-only answers: no image may start; padding rows are never allowed, even with wider logits
    no_image = allowed_next_tokens(ids[:, :2], VOCAB, vocab_size=20, allow_image_start=False)
    assert allowed_set(no_image[0, 1]) == TEXT
    # an over-long (malformed) span can only be closed
    assert allowed_set(allowed_next_tokens(torch.tensor([[BOI, 10, 10, 10, 10]]), VOCAB)[0, -1]) == [EOI]
    with pytest.raises(ValueError, match="reaches id 15"):
        allowed_next_tokens(ids, VOCAB, vocab_size=12)


def test_mask_logits_gives_constrained_log_probs():
    ids = torch.tensor([[3, BOI, 12, 13], [BOI, 10, 11, 12]])
    logits = torch.randn(2, 4, 18)
    masked = mask_logits(logits, ids, VOCAB)
    log_probs = masked.log_softmax(-1)
    # inside the span, the probability mass is renormalised over the 4 visual tokens
    expected = logits[0, 1, 10:14].log_softmax(-1)
    assert torch.allclose(log_probs[0, 1, 10:14], expected)
    assert torch.isinf(log_probs[0, 1, :10]).all()
    # after K visual tokens only eoi remains, with probability 1
    assert log_probs[1, 3, EOI] == 0 and torch.isinf(log_probs[1, 3, :EOI]).all()
    assert torch.equal(mask_logits(logits[:, -1], ids, VOCAB), masked[:, -1])
    with pytest.raises(ValueError, match="do not match"):
        mask_logits(logits[:, :2], ids, VOCAB)
