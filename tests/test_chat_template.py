"""The processor's chat template: the Selftok ``USER: ... ASSISTANT:`` template gives exactly the ids the hard-coded
format gave, ``apply_chat_template`` works with image items, the template round-trips through save/load, and a
text tokenizer's own template is used."""

import copy

import pytest
import torch
from transformers import AutoProcessor

from selftok_hf import SelftokProcessor
from selftok_hf.processing_selftok import IGNORE_INDEX, selftok_chat_template
from selftok_hf.testing.tiny_vlm import tiny_selftok_pipeline

pytestmark = pytest.mark.usefixtures("single_thread")

CODES = torch.arange(32).remainder(64)[None]

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def pipe():
    return tiny_selftok_pipeline("llama")


@pytest.fixture(scope="module")
def processor(pipe):
    return pipe.processor


def legacy_chat_example(processor, conversation, spans, add_generation_prompt=False):
    """The hard-coded format as it was built before the chat template (kept here as the reference)."""
    tok = processor._tokenize
    spans = iter(spans)

    def render(text):
        pieces = text.split(processor.image_placeholder)
        ids = tok(pieces[0])
        for piece in pieces[1:]:
            ids += next(spans) + tok(piece)
        return ids

    def turn(tag, content):
        separator = "" if content.startswith(processor.image_placeholder) or not content else " "
        return tok(tag), render(separator + content)

    bos = [processor.tokenizer.bos_token_id]
    input_ids, labels = list(bos), [IGNORE_INDEX]
    for message in conversation:
        if message["role"] == "user":
            tag, body = turn(processor.user_tag, message["content"])
            input_ids += tag + body
            labels += [IGNORE_INDEX] * (len(tag) + len(body))
        else:
            tag, body = turn(" " + processor.assistant_tag, message["content"])
            body = body + [processor.tokenizer.eos_token_id]
            input_ids += tag + body
            labels += [IGNORE_INDEX] * len(tag) + body
    if add_generation_prompt:
        tag = tok(" " + processor.assistant_tag)
        input_ids += tag
        labels += [IGNORE_INDEX] * len(tag)
    return {"input_ids": input_ids, "labels": labels}


CONVERSATIONS = [
    ([{"role": "user", "content": "a red cube"}], True),
    ([{"role": "user", "content": ""}], True),
    ([{"role": "user", "content": "<image> what is it?"}], True),
    ([{"role": "user", "content": "draw a cat"}, {"role": "assistant", "content": "<image>"}], False),
    ([{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "!a cat, twice: <image> and"},
      {"role": "user", "content": "?more <image>"}], True),
    ([{"role": "assistant", "content": "hello"}, {"role": "user", "content": "x"}, {"role": "assistant", "content": ""}], False),
]


@pytest.mark.parametrize("case", range(len(CONVERSATIONS)))
def test_selftok_template_gives_the_hard_coded_ids_and_labels(processor, case):
    conversation, generation_prompt = CONVERSATIONS[case]
    n = sum(m["content"].count("<image>") for m in conversation)
    ids = torch.stack([(CODES[0] + 7 * i).remainder(64) for i in range(n)]) if n else None
    spans = processor.vocabulary.image_span(ids).tolist() if n else []
    assert processor.uses_selftok_chat_template
    got = processor.build_chat_example(conversation, image_token_ids=ids, add_generation_prompt=generation_prompt)
    assert got == legacy_chat_example(processor, conversation, spans, generation_prompt)


def test_apply_chat_template_renders_image_items_as_the_placeholder(processor):
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text == "<|endoftext|>USER:<image> what is it? ASSISTANT:"
    as_string = [{"role": "user", "content": "<image> what is it?"}]
    assert processor.apply_chat_template(as_string, add_generation_prompt=True) == text == processor.render_chat(as_string, True)
    ids = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, processor_kwargs={"image_token_ids": CODES})
    assert ids[0].tolist() == processor.chat_prompt("<image> what is it?", image_token_ids=CODES)
    # The tokenized text is the same with the processor's __call__ on the rendered text (bos from the template).
    assert processor(text, image_token_ids=CODES, add_special_tokens=False)["input_ids"][0].tolist() == ids[0].tolist()
    with pytest.raises(Exception, match="roles user and assistant"):
        processor.apply_chat_template([{"role": "system", "content": "x"}])


def test_chat_template_round_trips_through_save_and_load(processor, tmp_path):
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "chat_template.jinja").read_text() == processor.chat_template == selftok_chat_template()
    for loaded in (SelftokProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert loaded.chat_template == processor.chat_template and loaded.uses_selftok_chat_template
        conversation = [{"role": "user", "content": "<image> hi"}, {"role": "assistant", "content": "yo"}]
        assert loaded.build_chat_example(conversation, image_token_ids=CODES) == processor.build_chat_example(conversation, image_token_ids=CODES)
    # A processor built on the reloaded tokenizer (which now holds the template file too) keeps the Selftok format.
    rebuilt = SelftokProcessor(processor.image_processor, AutoProcessor.from_pretrained(tmp_path).tokenizer, processor.vocabulary)
    assert rebuilt.uses_selftok_chat_template


def test_a_tokenizer_with_its_own_template_is_used(processor, tmp_path):
    tokenizer = copy.deepcopy(processor.tokenizer)
    tokenizer.chat_template = CHATML
    chat = SelftokProcessor(processor.image_processor, tokenizer, processor.vocabulary)
    assert not chat.uses_selftok_chat_template and chat.chat_template.endswith(CHATML)
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it?"}]},
    ]
    text = chat.apply_chat_template(messages, add_generation_prompt=True)
    assert text == "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\n<image> what is it?<|im_end|>\n<|im_start|>assistant\n"
    example = chat.build_chat_example(messages + [{"role": "assistant", "content": "a cat"}], image_token_ids=CODES)
    answer = [t for t, label in zip(example["input_ids"], example["labels"]) if label != IGNORE_INDEX]
    assert tokenizer.decode(answer) == "a cat<|im_end|>\n"  # the answer, as the template closes it
    assert chat.vocabulary.boi_token_id in example["input_ids"]  # the placeholder became the image span
    prompt = chat.chat_prompt("a red cube", generate_image=True)
    assert tokenizer.decode(prompt[:-1]) == "<|im_start|>user\na red cube<|im_end|>\n<|im_start|>assistant\n"
    chat.save_pretrained(tmp_path)
    loaded = SelftokProcessor.from_pretrained(tmp_path)
    assert loaded.chat_template == chat.chat_template
    assert loaded.chat_prompt("a red cube", generate_image=True) == prompt


def test_every_prompt_builder_goes_through_the_template(pipe):
    """Text-to-image prompts (chat_prompt, the pipeline's __call__) and describe() follow the processor's template."""
    from transformers.generation.streamers import BaseStreamer

    class Prompts(BaseStreamer):
        def __init__(self):
            self.first = None

        def put(self, value):
            self.first = value if self.first is None else self.first

        def end(self):
            pass

    tokenizer = copy.deepcopy(pipe.processor.tokenizer)
    tokenizer.chat_template = CHATML
    original = pipe.processor
    pipe.processor = SelftokProcessor(original.image_processor, tokenizer, original.vocabulary).attach_image_tokenizer(original.image_tokenizer)
    try:
        seen = Prompts()
        pipe("a red cube", guidance_scale=1.0, output_type="ids", streamer=seen)
        assert tokenizer.decode(seen.first[0]) == "<|im_start|>user\na red cube<|im_end|>\n<|im_start|>assistant\n<|boi|>".replace(
            "<|boi|>", pipe.vocabulary.boi_token
        )
        seen = Prompts()
        pipe.describe(image_token_ids=CODES, question="what?", max_new_tokens=2, streamer=seen)
        decoded = tokenizer.decode(seen.first[0], skip_special_tokens=True)
        assert decoded == "<|im_start|>user\n what?<|im_end|>\n<|im_start|>assistant\n"  # the image span is special
    finally:
        pipe.processor = original
