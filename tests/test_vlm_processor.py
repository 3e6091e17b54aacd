"""SelftokProcessor: prompt layouts built by hand, chat labels, padding, image encoding, save/load, bad input."""

import numpy as np
import pytest
import torch
from transformers import AutoProcessor

from selftok_hf import SelftokProcessor
from selftok_hf.assets import bundled_images
from selftok_hf.processing_selftok import IGNORE_INDEX
from selftok_hf.testing.tiny_vlm import tiny_selftok_pipeline

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def pipe():
    return tiny_selftok_pipeline("llama")


@pytest.fixture(scope="module")
def processor(pipe):
    return pipe.processor


def tok(processor, text):
    return processor.tokenizer(text, add_special_tokens=False)["input_ids"]


CODES = torch.arange(32).remainder(64)[None]  # one image: codebook ids 0..31


def test_text_to_image_prompt(processor):
    v, bos = processor.vocabulary, processor.tokenizer.bos_token_id
    out = processor("a red cube", return_for_image_generation=True)
    assert out["input_ids"].tolist() == [[bos] + tok(processor, "a red cube") + [v.boi_token_id]]
    assert processor.chat_prompt("a red cube", generate_image=True) == [bos] + tok(processor, "USER:") + tok(processor, " a red cube") + tok(
        processor, " ASSISTANT:"
    ) + [v.boi_token_id]


def test_image_to_text_and_interleaved(processor):
    v, bos = processor.vocabulary, processor.tokenizer.bos_token_id
    span = [v.boi_token_id] + (CODES[0] + v.first_visual_id).tolist() + [v.eoi_token_id]
    out = processor("<image> what is it?", image_token_ids=CODES)
    assert out["input_ids"][0].tolist() == [bos] + span + tok(processor, " what is it?")
    two = torch.cat([CODES, 63 - CODES])
    span2 = [v.boi_token_id] + (63 - CODES[0] + v.first_visual_id).tolist() + [v.eoi_token_id]
    out = processor("left <image> right <image>", image_token_ids=two, add_bos=False)
    assert out["input_ids"][0].tolist() == tok(processor, "left ") + span + tok(processor, " right ") + span2
    assert [x.tolist() for x in processor.extract_image_token_ids(out["input_ids"])[0]] == two.tolist()


def test_left_padding_batch(processor):
    out = processor(["a", "a much longer prompt here"], return_for_image_generation=True)
    short = processor("a", return_for_image_generation=True)["input_ids"][0]
    n = short.numel()
    assert out["input_ids"].shape[1] > n
    assert torch.equal(out["input_ids"][0, -n:], short)
    assert (out["input_ids"][0, :-n] == processor.pad_token_id).all()
    assert out["attention_mask"][0].tolist() == [0] * (out["input_ids"].shape[1] - n) + [1] * n
    right = processor(["a", "a much longer prompt here"], padding_side="right")
    assert right["attention_mask"][0, 0] == 1 and right["attention_mask"][0, -1] == 0


def test_chat_example_labels_cover_answers_only(processor):
    v, bos, eos = processor.vocabulary, processor.tokenizer.bos_token_id, processor.tokenizer.eos_token_id
    conversation = [
        {"role": "user", "content": "draw a cat"},
        {"role": "assistant", "content": "<image>"},
        {"role": "user", "content": "<image> what is this?"},
        {"role": "assistant", "content": "a cat"},
    ]
    example = processor.build_chat_example(conversation, image_token_ids=torch.cat([CODES, CODES]))
    span = [v.boi_token_id] + (CODES[0] + v.first_visual_id).tolist() + [v.eoi_token_id]
    user1 = tok(processor, "USER:") + tok(processor, " draw a cat")
    tag = tok(processor, " ASSISTANT:")
    answer1 = span + [eos]
    user2 = tok(processor, "USER:") + span + tok(processor, " what is this?")
    answer2 = tok(processor, " a cat") + [eos]
    assert example["input_ids"] == [bos] + user1 + tag + answer1 + user2 + tag + answer2
    ignored = lambda n: [IGNORE_INDEX] * n
    assert example["labels"] == ignored(1 + len(user1) + len(tag)) + answer1 + ignored(len(user2) + len(tag)) + answer2
    plain = processor.build_plain_example("a cat<image>", image_token_ids=CODES)
    assert plain["input_ids"] == [bos] + tok(processor, "a cat") + span + [eos]
    assert plain["labels"] == [IGNORE_INDEX] + plain["input_ids"][1:]


def test_images_are_tokenised_like_the_decoder_pipeline(pipe, processor):
    images = list(bundled_images().values())
    ids = processor.encode_images(images)
    assert torch.equal(ids, pipe.decoder.encode(images))
    assert len(set(map(tuple, ids.tolist()))) == 3  # the tiny tokenizer tells the photos apart
    out = processor("<image> <image>", images=images[:2], add_bos=False)
    assert [x.tolist() for x in processor.extract_image_token_ids(out["input_ids"])[0]] == ids[:2].tolist()
    # pixel values at the tokenizer's size are accepted as they are
    pixels = processor.image_processor(images, return_tensors="pt").pixel_values
    assert torch.equal(processor.encode_images(pixels), ids)


def test_save_load(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    for loaded in (SelftokProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is SelftokProcessor
        assert loaded.vocabulary == processor.vocabulary
        assert loaded.image_processor.crop_size == processor.image_processor.crop_size
        assert loaded.image_tokenizer is None  # the attached model is not part of the processor's files
        example = [{"role": "user", "content": "<image> hi"}, {"role": "assistant", "content": "yo"}]
        assert loaded.build_chat_example(example, image_token_ids=CODES) == processor.build_chat_example(example, image_token_ids=CODES)


def test_bad_input(processor, pipe):
    with pytest.raises(ValueError, match="1 '<image>' placeholder"):
        processor("<image>", image_token_ids=torch.cat([CODES, CODES]))
    with pytest.raises(ValueError, match=r"1 '<image>' placeholder\(s\) but 0 image"):
        processor.build_chat_example([{"role": "user", "content": "<image>"}], image_token_ids=None)
    with pytest.raises(ValueError, match=r"must lie in \[0, 64\)"):
        processor("<image>", image_token_ids=CODES + 40)
    with pytest.raises(ValueError, match=r"shape \(N, 32\)"):
        processor("<image>", image_token_ids=CODES[:, :31])
    with pytest.raises(TypeError, match="integers"):
        processor("<image>", image_token_ids=CODES.float())
    with pytest.raises(ValueError, match=r"pixel values must have shape \(N, 3, 64, 64\)"):
        processor.encode_images(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="either images or image_token_ids"):
        processor("<image>", images=torch.zeros(1, 3, 64, 64), image_token_ids=CODES)
    with pytest.raises(ValueError, match="role"):
        processor.build_chat_example([{"role": "system", "content": "x"}])
    bare = SelftokProcessor(processor.image_processor, processor.tokenizer, processor.vocabulary)
    with pytest.raises(ValueError, match="no image tokenizer attached"):
        bare.encode_images([np.zeros((64, 64, 3), dtype=np.uint8)])
    with pytest.raises(ValueError, match="no visual vocabulary"):
        _ = SelftokProcessor(processor.image_processor, processor.tokenizer).vocabulary
    wrong = dict(processor.vocabulary.to_dict(), boi_token_id=5)
    with pytest.raises(ValueError, match="do not match the visual vocabulary"):
        SelftokProcessor(processor.image_processor, processor.tokenizer, wrong)
