"""add_visual_tokens on Llama, Qwen2 and GPT-2: layout, initialisation, special-token decision, save/load,
grammar-constrained generation with each architecture's KV cache."""

import warnings

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from selftok_hf import (
    SelftokVisualGrammarLogitsProcessor,
    VisualVocabulary,
    add_visual_tokens,
    generate_image_tokens,
)
from selftok_hf.configuration_selftok import SELFTOK_TINY_CONFIG, SelftokConfig
from selftok_hf.modeling_selftok_lm import visual_embedding_init
from selftok_hf.testing import random_tiny_pipeline
from selftok_hf.testing.tiny_vlm import tiny_language_model, tiny_text_tokenizer
from selftok_hf.vae import RandomWeightsWarning

ARCHITECTURES = ["llama", "qwen2", "gpt2"]


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def image_tokenizer():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return random_tiny_pipeline(0).image_tokenizer


def extended(architecture, image_tokenizer, init="mean"):
    tokenizer = tiny_text_tokenizer()
    model = tiny_language_model(architecture, len(tokenizer), tokenizer=tokenizer)
    vocabulary = add_visual_tokens(model, tokenizer, image_tokenizer, init=init)
    return model, tokenizer, vocabulary


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_layout_and_resize(architecture, image_tokenizer):
    tokenizer = tiny_text_tokenizer()
    model = tiny_language_model(architecture, len(tokenizer), tokenizer=tokenizer)
    text_rows = model.get_input_embeddings().weight[:1024].clone()
    vocabulary = add_visual_tokens(model, tokenizer, image_tokenizer)
    # 1024 text tokens, 64 visual tokens, boi, eoi = 1090 rows, padded to 1152 (a multiple of 64)
    assert vocabulary == VisualVocabulary(1024, 64, 32, 1088, 1089, 1152)
    assert model.get_input_embeddings().weight.shape[0] == model.config.vocab_size == 1152
    assert model.get_output_embeddings().weight.shape[0] == 1152
    assert VisualVocabulary.from_config(model.config) == vocabulary
    # text rows untouched, ids come from the config rather than strings
    assert torch.equal(model.get_input_embeddings().weight[:1024], text_rows)
    assert tokenizer.convert_tokens_to_ids(["<|visual_00000|>", "<|visual_00063|>", "<|begin_of_image|>", "<|end_of_image|>"]) == [1024, 1087, 1088, 1089]
    assert len(tokenizer) == 1090
    with pytest.raises(ValueError, match="already has Selftok visual tokens"):
        add_visual_tokens(model, tokenizer, image_tokenizer)


def test_mean_init(image_tokenizer):
    model, _, vocabulary = extended("llama", image_tokenizer, init="mean")
    for weight in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        text, new = weight[: vocabulary.first_visual_id], weight[vocabulary.first_visual_id :]
        # the mean of the text rows, up to noise of 1e-3 of their per-dimension spread
        assert ((new - text.mean(0)).abs() <= 5e-3 * text.std(0)).all()
        assert not torch.equal(new[0], new[1])


def test_codebook_init_is_a_fitted_affine_map(image_tokenizer):
    codes = image_tokenizer.quantizer.embed_ids(torch.arange(64)[None])[0].detach()
    torch.manual_seed(0)
    text = torch.randn(500, 48) @ torch.randn(48, 48) + 3.0
    rows = visual_embedding_init(text, 70, "codebook", codes)
    visual = rows[:64]
    # affine in the code vectors: least squares [codes, 1] -> rows fits exactly
    design = torch.cat([codes, torch.ones(64, 1)], dim=1)
    solution = torch.linalg.lstsq(design, visual, rcond=1e-4, driver="gelsd").solution  # the codes span 7 of 8 dims
    assert torch.allclose(design @ solution, visual, atol=1e-4)
    # same mean as the text rows, and their variance along the top-r principal axes (r = 7: the post-norm
    # code vectors have zero mean over their 8 features, so they span 7 directions)
    assert torch.allclose(visual.mean(0), text.mean(0), atol=1e-4)
    _, s, axes = torch.linalg.svd(text - text.mean(0), full_matrices=False)
    projected = (visual - visual.mean(0)) @ axes[:7].T
    assert torch.allclose(projected.var(0), (s[:7] ** 2) / 499, rtol=1e-3)
    assert ((visual - visual.mean(0)) @ axes[7:].T).abs().max() < 1e-3
    # markers and padding rows get the mean initialisation
    assert torch.allclose(rows[64:], text.mean(0).expand(6, -1), atol=0.05)
    with pytest.raises(ValueError, match="pass the SelftokModel"):
        visual_embedding_init(text, 70, "codebook", None)
    with pytest.raises(ValueError, match="'mean' or 'codebook'"):
        visual_embedding_init(text, 70, "zeros")


def test_codebook_init_needs_the_model(image_tokenizer):
    tokenizer = tiny_text_tokenizer()
    model = tiny_language_model("llama", len(tokenizer))
    with pytest.raises(ValueError, match="pass the SelftokModel"):
        add_visual_tokens(model, tokenizer, SelftokConfig(**SELFTOK_TINY_CONFIG), init="codebook")
    with pytest.raises(TypeError, match="SelftokModel or SelftokConfig"):
        add_visual_tokens(model, tokenizer, {"num_image_tokens": 32})
    assert len(tokenizer) == 1024  # nothing was added by the failed calls


def test_visual_tokens_are_special(image_tokenizer):
    """The decision: visual tokens and markers are special tokens, so skip_special_tokens=True leaves the text only,
    and the full decode spells the visual tokens, which parse back to codebook ids."""
    _, tokenizer, vocabulary = extended("gpt2", image_tokenizer)
    codes = torch.tensor([[5, 0, 63] + [7] * 29])
    ids = tokenizer("a cat", add_special_tokens=False)["input_ids"] + vocabulary.image_span(codes)[0].tolist() + tokenizer(" on a mat")["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a cat on a mat"
    full = tokenizer.decode(ids)
    assert full.startswith("a cat<|begin_of_image|><|visual_00005|><|visual_00000|><|visual_00063|>")
    assert vocabulary.parse_visual_tokens(full) == codes[0].tolist()
    # the strings tokenise back to the same ids
    assert tokenizer(full, add_special_tokens=False)["input_ids"] == ids


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_save_load_and_constrained_generation(architecture, image_tokenizer, tmp_path):
    model, tokenizer, vocabulary = extended(architecture, image_tokenizer, init="codebook")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert VisualVocabulary.from_config(loaded.config) == vocabulary
    assert len(AutoTokenizer.from_pretrained(tmp_path)) == len(tokenizer)
    prompt = torch.tensor([tokenizer("a red cube")["input_ids"] + [vocabulary.boi_token_id]])
    with torch.no_grad():
        assert torch.equal(loaded(prompt).logits, model(prompt).logits)

    # model.generate with the grammar processor: exactly K visual tokens, then eoi, with the KV cache
    out = loaded.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=vocabulary.num_image_tokens + 1,
        do_sample=True,
        logits_processor=[SelftokVisualGrammarLogitsProcessor(vocabulary)],
        pad_token_id=tokenizer.pad_token_id,
    )
    new = out[0, prompt.shape[1] :]
    assert vocabulary.is_visual(new[:-1]).all() and new[-1] == vocabulary.eoi_token_id

    # the dedicated sampler: same tokens with and without the KV cache (left-padded batch, sampling with seeds)
    prompts = [tokenizer("a red cube")["input_ids"], tokenizer("two small green spheres on the floor")["input_ids"]]
    length = max(map(len, prompts))
    input_ids = torch.tensor([[tokenizer.pad_token_id] * (length - len(p)) + p + [vocabulary.boi_token_id] for p in prompts])
    attention_mask = torch.tensor([[0] * (length - len(p)) + [1] * (len(p) + 1) for p in prompts])

    def sample(use_cache):
        generators = [torch.Generator().manual_seed(s) for s in (1, 2)]
        return generate_image_tokens(loaded, input_ids, attention_mask, vocabulary, generator=generators, use_cache=use_cache)

    cached = sample(True)
    assert cached.shape == (2, 32) and cached.min() >= 0 and cached.max() < 64
    assert torch.equal(cached, sample(False))


def test_lm_with_spare_rows(image_tokenizer):
    """Like Qwen2 checkpoints, an LM whose embedding already has more rows than its tokenizer has tokens: the visual
    tokens take the unused rows right after the tokenizer (re-initialised), and the matrix only grows if needed."""
    tokenizer = tiny_text_tokenizer()
    model = tiny_language_model("qwen2", 1100, tokenizer=tokenizer)
    spare = model.get_input_embeddings().weight[1024:1100].clone()
    vocabulary = add_visual_tokens(model, tokenizer, image_tokenizer, pad_to_multiple_of=None)
    assert (vocabulary.first_visual_id, vocabulary.eoi_token_id, vocabulary.lm_vocab_size) == (1024, 1089, 1100)
    rows = model.get_input_embeddings().weight
    assert rows.shape[0] == 1100 and not torch.equal(rows[1024:1100], spare)
    text_mean = rows[:1024].mean(0)
    assert ((rows[1024:1100] - text_mean).abs() <= 5e-3 * rows[:1024].std(0)).all()
