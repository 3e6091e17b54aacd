"""SelftokPipeline and the image-token sampler: CFG and batching equal their unbatched references, save/load,
CPU offload hooks, output types, bad input."""

import warnings

import numpy as np
import PIL.Image
import pytest
import torch
from transformers import AutoModelForCausalLM

from selftok_hf import SelftokPipeline, SelftokProcessor, generate_image_tokens
from selftok_hf.assets import bundled_images
from selftok_hf.generation_selftok import classifier_free_guidance
from selftok_hf.testing import random_tiny_pipeline
from selftok_hf.testing.tiny_vlm import (
    tiny_language_model,
    tiny_selftok_pipeline,
    tiny_text_tokenizer,
)
from selftok_hf.vae import RandomWeightsWarning
from selftok_hf.visual_vocabulary import mask_logits

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def pipe():
    pipe = tiny_selftok_pipeline("qwen2", seed=1)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_cfg_greedy(model, vocabulary, prompt, negative, scale):
    """The definition, one prompt at a time: no padding, no cache, separate conditional and unconditional passes."""
    cond, uncond, tokens, guided = list(prompt), list(negative), [], []
    with torch.no_grad():
        for _ in range(vocabulary.num_image_tokens):
            c = model(torch.tensor([cond])).logits[:, -1]
            u = model(torch.tensor([uncond])).logits[:, -1]
            logits = mask_logits(classifier_free_guidance(c, u, scale), torch.tensor([cond]), vocabulary)
            guided.append(logits)
            token = int(logits.argmax())
            tokens.append(token - vocabulary.first_visual_id)
            cond.append(token)
            uncond.append(token)
    return torch.tensor(tokens), torch.cat(guided)


def test_batched_cfg_equals_unbatched_reference(pipe):
    processor, model, vocabulary = pipe.processor, pipe.language_model, pipe.vocabulary
    prompts = ["a red cube", "three blue spheres next to a large yellow cone"]
    negatives = ["", "blurry"]
    cond = [processor.chat_prompt(p, generate_image=True) for p in prompts]
    uncond = [processor.chat_prompt(n, generate_image=True) for n in negatives]
    c, u = processor.pad(cond), processor.pad(uncond)
    steps = []
    batched = generate_image_tokens(
        model, c["input_ids"], c["attention_mask"], vocabulary, guidance_scale=3.0,
        unconditional_input_ids=u["input_ids"], unconditional_attention_mask=u["attention_mask"], do_sample=False,
        callback=steps.append,
    )
    assert steps == list(range(32))
    for i in range(2):
        expected, _ = reference_cfg_greedy(model, vocabulary, cond[i], uncond[i], 3.0)
        assert torch.equal(batched[i], expected)
    # guidance changes the result (the test would pass vacuously otherwise)
    plain = generate_image_tokens(model, c["input_ids"], c["attention_mask"], vocabulary, do_sample=False)
    assert not torch.equal(plain, batched)
    # the pipeline uses the same path: its default negative prompt is the empty prompt
    out = pipe(prompts[0], guidance_scale=3.0, do_sample=False, output_type="ids")
    assert torch.equal(out.token_ids[0], batched[0])


def test_sampled_batch_equals_one_by_one(pipe):
    prompts = ["a red cube", "three blue spheres next to a large yellow cone"]
    kwargs = {"guidance_scale": 2.0, "temperature": 0.9, "top_k": 20, "top_p": 0.95, "output_type": "ids"}
    batched = pipe(prompts, num_images_per_prompt=2, generator=[torch.Generator().manual_seed(s) for s in range(4)], **kwargs)
    assert batched.token_ids.shape == (4, 32)
    singles = [pipe(prompts[i // 2], generator=torch.Generator().manual_seed(i), **kwargs).token_ids[0] for i in range(4)]
    assert torch.equal(batched.token_ids, torch.stack(singles))
    assert not torch.equal(singles[0], singles[1])  # different seeds, different images of the same prompt
    # top_k=1 is greedy
    greedy = pipe(prompts[0], guidance_scale=2.0, do_sample=False, output_type="ids").token_ids
    assert torch.equal(pipe(prompts[0], guidance_scale=2.0, top_k=1, output_type="ids").token_ids, greedy)


def test_images_and_output_types(pipe):
    out = pipe(["a cat", "a dog"], guidance_scale=1.0, generator=torch.Generator().manual_seed(0), num_inference_steps=2)
    assert len(out.images) == 2 and all(isinstance(im, PIL.Image.Image) and im.size == (64, 64) for im in out.images)
    # the images are the decoder's rendering of the returned ids (greedy tokens leave the generator to the decoder)
    out = pipe(["a cat", "a dog"], guidance_scale=1.0, do_sample=False, generator=torch.Generator().manual_seed(0), num_inference_steps=2, output_type="np")
    expected = pipe.decoder(out.token_ids, num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert out.images.shape == (2, 64, 64, 3) and np.array_equal(out.images, expected)
    rendered = pipe("a cat", guidance_scale=1.0, use_renderer=True, output_type="pt", generator=torch.Generator().manual_seed(0))
    assert rendered.images.shape == (1, 3, 64, 64) and 0 <= rendered.images.min() and rendered.images.max() <= 1
    images, ids = pipe("a cat", guidance_scale=1.0, output_type="ids", return_dict=False)
    assert images is None and ids.shape == (1, 32)


def test_describe(pipe):
    images = list(bundled_images().values())
    answers = pipe.describe(images, ["what is it?", "colour?", "where?"], max_new_tokens=6)
    assert isinstance(answers, list) and len(answers) == 3 and all(isinstance(a, str) for a in answers)
    single = pipe.describe(images[1], "colour?", max_new_tokens=6)
    assert single == answers[1]  # batched (left-padded) equals alone
    by_ids = pipe.describe(image_token_ids=pipe.processor.encode_images(images[:1]), question="what is it?", max_new_tokens=6)
    assert by_ids == answers[:1]


def test_save_load(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    loaded = SelftokPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    kwargs = {"guidance_scale": 2.0, "output_type": "ids"}
    assert torch.equal(
        loaded("a cat", generator=torch.Generator().manual_seed(3), **kwargs).token_ids,
        pipe("a cat", generator=torch.Generator().manual_seed(3), **kwargs).token_ids,
    )
    # the parts load with the stock Auto classes
    lm = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(lm).__name__ == "Qwen2ForCausalLM"
    assert SelftokProcessor.from_pretrained(tmp_path).vocabulary == pipe.vocabulary
    assert torch.equal(loaded.decoder.encode(list(bundled_images().values())), pipe.decoder.encode(list(bundled_images().values())))
    with pytest.raises(ValueError, match="not a SelftokPipeline folder"):
        SelftokPipeline.from_pretrained(tmp_path / "decoder")


def test_model_cpu_offload_hooks(pipe):
    """No accelerator here: offload to the CPU itself checks the hooks' wiring and that results are unchanged."""
    offloaded = tiny_selftok_pipeline("qwen2", seed=1)
    offloaded.set_progress_bar_config(disable=True)
    offloaded.enable_model_cpu_offload(device="cpu")
    assert offloaded.device.type == "cpu" and offloaded._lm_offload_hook is not None
    kwargs = {"guidance_scale": 2.0, "num_inference_steps": 2, "output_type": "np"}
    a = offloaded("a cat", generator=torch.Generator().manual_seed(0), **kwargs)
    b = pipe("a cat", generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.equal(a.token_ids, b.token_ids) and np.allclose(a.images, b.images, atol=1e-6)


def test_bad_input(pipe):
    with pytest.raises(ValueError, match="must not be empty"):
        pipe("")
    with pytest.raises(ValueError, match="must not be empty"):
        pipe(["a cat", "   "])
    with pytest.raises(TypeError, match="non-empty list of strings"):
        pipe([])
    with pytest.raises(ValueError, match="exceeds the model's context of 512"):
        pipe("a cat " * 300, output_type="ids")
    with pytest.raises(ValueError, match="exceeds the model's context"):
        pipe.describe(next(iter(bundled_images().values())), "why? " * 300)
    with pytest.raises(ValueError, match="2 negative prompts for 1 prompts"):
        pipe("a cat", negative_prompt=["x", "y"])
    with pytest.raises(ValueError, match="3 generators for 2 images"):
        pipe("a cat", num_images_per_prompt=2, generator=[torch.Generator()] * 3)
    with pytest.raises(ValueError, match="output_type"):
        pipe("a cat", output_type="jpeg")
    with pytest.raises(ValueError, match=r"pixel values must have shape \(N, 3, 64, 64\)"):
        pipe.describe(torch.zeros(1, 3, 48, 48))
    with pytest.raises(ValueError, match=r"must lie in \[0, 64\)"):
        pipe.describe(image_token_ids=torch.full((1, 32), 64))
    with pytest.raises(ValueError, match="must end with the begin-of-image token"):
        generate_image_tokens(pipe.language_model, torch.tensor([[5, 6]]), torch.ones(1, 2, dtype=torch.long), pipe.vocabulary)
    with pytest.raises(ValueError, match="needs unconditional_input_ids"):
        ids = torch.tensor([[5, pipe.vocabulary.boi_token_id]])
        generate_image_tokens(pipe.language_model, ids, torch.ones_like(ids), pipe.vocabulary, guidance_scale=2.0)


def test_model_without_visual_tokens_or_mismatched_k(pipe):
    tokenizer = tiny_text_tokenizer()
    plain_lm = tiny_language_model("llama", len(tokenizer))
    with pytest.raises(ValueError, match="has no Selftok visual tokens"):
        SelftokPipeline(plain_lm, pipe.processor, pipe.decoder)
    # an image tokenizer with K = 16 instead of the 32 the LM was extended for
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        decoder = random_tiny_pipeline(0)
    from selftok_hf import SelftokConfig, SelftokModel
    from selftok_hf.configuration_selftok import SELFTOK_TINY_CONFIG

    config = SelftokConfig(**dict(SELFTOK_TINY_CONFIG, num_image_tokens=16, schedule_tokens_per_stage=[6, 6, 2, 1, 1]))
    decoder.image_tokenizer = SelftokModel(config)
    with pytest.raises(ValueError, match=r"K=32 tokens per image .* image tokenizer has K=16"):
        SelftokPipeline(pipe.language_model, pipe.processor, decoder)


def test_sampler_passes_one_cache_under_the_forward_name(pipe):
    """No deprecated keyword (transformers 5.24 renamed past_key_values to cache), one KV cache object for the whole
    image, also through a PEFT wrapper (whose forward only takes **kwargs)."""
    import copy
    import inspect

    from peft import LoraConfig, get_peft_model

    name = "cache" if "cache" in inspect.signature(pipe.language_model.forward).parameters else "past_key_values"
    peft_model = get_peft_model(copy.deepcopy(pipe.language_model), LoraConfig(target_modules=["q_proj", "v_proj"]))
    ids = pipe.processor.pad([pipe.processor.chat_prompt("a red cube", generate_image=True)])
    results = []
    for model in (pipe.language_model, peft_model):
        caches = []
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        hook = base.register_forward_pre_hook(lambda m, args, kwargs: caches.append(kwargs.get(name)), with_kwargs=True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                results.append(generate_image_tokens(model, ids["input_ids"], ids["attention_mask"], pipe.vocabulary, do_sample=False))
        finally:
            hook.remove()
        assert len(caches) == 32 and caches[0] is not None and all(c is caches[0] for c in caches)
    assert torch.equal(results[0], results[1])  # a fresh LoRA adapter is the identity
