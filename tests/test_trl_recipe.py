"""The LoRA setup of a Selftok VLM (visual_lora_config) under trl's fused LM head, which SFTTrainer uses for every
loss: expose_trainable_tokens_head_bias removes its AttributeError on PEFT's TrainableTokensWrapper, and the fused loss
and gradients are those of the model's own forward (examples/trl_sft_lora.py runs the whole recipe)."""

import numpy as np
import pytest
import torch
from peft import get_peft_model

from selftok_hf.modeling_selftok_lm import (
    expose_trainable_tokens_head_bias,
    visual_lora_config,
)
from selftok_hf.testing.tiny_vlm import tiny_selftok_pipeline
from selftok_hf.training.sft import SFTExampleBuilder, collate_examples

trl_utils = pytest.importorskip("trl.trainer.utils")

pytestmark = pytest.mark.usefixtures("single_thread")


def lora_pipeline(architecture: str):
    pipe = tiny_selftok_pipeline(architecture)
    pipe.language_model = get_peft_model(pipe.language_model, visual_lora_config(pipe.language_model, r=4, lora_alpha=8))
    return pipe


def chat_batch(pipe) -> dict[str, torch.Tensor]:
    ids = np.random.default_rng(0).integers(0, pipe.vocabulary.codebook_size, (2, pipe.vocabulary.num_image_tokens))
    builder = SFTExampleBuilder(pipe.processor, caption_dropout=0)
    rng = np.random.default_rng(0)
    examples = [builder({"text": "a cat", "image_token_ids": ids[0].tolist()}, "t2i", rng), builder({"text": "a dog", "image_token_ids": ids[1].tolist()}, "i2t", rng)]
    return collate_examples(examples, pipe.processor.pad_token_id)


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_visual_lora_config_trains_the_added_rows(architecture):
    pipe = tiny_selftok_pipeline(architecture)
    config = visual_lora_config(pipe.language_model)
    vocabulary = pipe.vocabulary
    added = list(range(vocabulary.first_visual_id, vocabulary.lm_vocab_size))
    # GPT-2 ties its head to the embedding, so only the embedding is named (PEFT wraps the tied head too).
    expected = {"embed_tokens": added, "lm_head": added} if architecture == "llama" else {"wte": added}
    assert config.trainable_token_indices == expected
    assert (config.r, config.lora_alpha, config.task_type) == (16, 32, "CAUSAL_LM")


@pytest.mark.parametrize("architecture", ["llama", "gpt2"])
def test_fused_lm_head_matches_the_model_loss(architecture):
    pipe = lora_pipeline(architecture)
    model = pipe.language_model
    trl_utils.add_fused_lm_head(model.get_base_model())  # what SFTTrainer does to every model it trains
    batch = chat_batch(pipe)
    if not hasattr(model.get_output_embeddings(), "bias"):  # peft 0.21: the wrapper forwards `weight` only
        with pytest.raises(AttributeError, match="'TrainableTokensWrapper' object has no attribute 'bias'"):
            model(**batch, fused_lm_head=True)

    assert expose_trainable_tokens_head_bias(model) is model
    deltas = {name: p for name, p in model.named_parameters() if "trainable_tokens_delta" in name}
    fused = model(**batch, fused_lm_head=True).loss
    fused.backward()
    fused_grads = {name: p.grad.clone() for name, p in deltas.items()}
    model.zero_grad()
    own = model(**batch).loss
    own.backward()
    torch.testing.assert_close(fused, own)
    # The trained token rows of the embedding and of the (untied) head get the same gradients through trl's loss.
    assert len(deltas) == (2 if architecture == "llama" else 1)
    for name, p in deltas.items():
        assert fused_grads[name].abs().sum() > 0
        torch.testing.assert_close(fused_grads[name], p.grad)


def test_other_heads_are_left_alone_or_refused():
    pipe = tiny_selftok_pipeline("llama")
    lm = pipe.language_model
    config = visual_lora_config(lm)
    config.trainable_token_indices = {"embed_tokens": config.trainable_token_indices["embed_tokens"]}
    plain_head = get_peft_model(lm, config)
    expose_trainable_tokens_head_bias(plain_head)
    assert isinstance(plain_head.get_output_embeddings(), torch.nn.Linear)  # left as it is: trl reads its own bias

    biased = tiny_selftok_pipeline("llama").language_model
    biased.lm_head.bias = torch.nn.Parameter(torch.zeros(biased.lm_head.out_features))
    with pytest.raises(ValueError, match="peft#3649"):
        expose_trainable_tokens_head_bias(get_peft_model(biased, visual_lora_config(biased)))
