"""Seeded random tiny Selftok VLMs for examples, tests and benchmarks: no download needed.

Nothing here carries learned meaning (random LM, random tiny Selftok stack, see
:func:`selftok_hf.testing.random_tiny_pipeline`), but every stage of the real system runs.

The text tokenizer is real: ``assets/tiny_bpe_tokenizer.json`` is a byte-level BPE (1,024 tokens,
``<|endoftext|>`` = id 0 used as bos/eos, ``<|pad|>`` = id 1) trained with the ``tokenizers`` library by
:func:`train_byte_level_bpe` on the 168 top-level ``*.py`` files of the CPython 3.11.7 standard library
(4.7 MB; vocab 1024, min frequency 2). It is a fixed file rather than rebuilt at run time because the
standard library differs between Python versions. It is our own artifact; the corpus is under the PSF
license.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

__all__ = ["TINY_LM_CONFIGS", "tiny_language_model", "tiny_selftok_pipeline", "tiny_text_tokenizer", "train_byte_level_bpe"]

TINY_TOKENIZER_ASSET = "tiny_bpe_tokenizer.json"

#: Tiny causal LM configs (random init) for the three architectures the VLM is tested with.
TINY_LM_CONFIGS = {
    "llama": (LlamaConfig, {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}),
    "qwen2": (Qwen2Config, {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}),
    "gpt2": (GPT2Config, {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 512}),
}


def train_byte_level_bpe(files: Sequence[str], vocab_size: int = 1024, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE text tokenizer on local text files (how the bundled asset was made)."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train(list(files), vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=["<|endoftext|>", "<|pad|>"], show_progress=False)
    return _wrap(bpe._tokenizer)


def _wrap(tokenizer_object) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer_object, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|pad|>")


def tiny_text_tokenizer() -> PreTrainedTokenizerFast:
    """The bundled 1,024-token byte-level BPE (see the module docstring), as a fresh transformers tokenizer."""
    from tokenizers import Tokenizer

    path = resources.files("selftok_hf") / "assets" / TINY_TOKENIZER_ASSET
    return _wrap(Tokenizer.from_str(path.read_text(encoding="utf-8")))


def tiny_language_model(architecture: str = "llama", vocab_size: int = 1024, seed: int = 0, tokenizer=None):
    """A seeded random tiny causal LM (``"llama"``, ``"qwen2"`` or ``"gpt2"``), its special ids taken from
    ``tokenizer`` when given."""
    if architecture not in TINY_LM_CONFIGS:
        raise ValueError(f"architecture must be one of {sorted(TINY_LM_CONFIGS)}, got {architecture!r}")
    config_class, kwargs = TINY_LM_CONFIGS[architecture]
    special = {}
    if tokenizer is not None:
        special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    config = config_class(vocab_size=vocab_size, **kwargs, **special)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = AutoModelForCausalLM.from_config(config)
    finally:
        torch.random.set_rng_state(state)
    for name, value in special.items():
        setattr(model.generation_config, name, value)
    return model.eval()


def tiny_selftok_pipeline(architecture: str = "llama", seed: int = 0, init: str = "codebook"):
    """A complete seeded random tiny :class:`~selftok_hf.SelftokPipeline`: tiny LM + bundled BPE extended with
    the tiny Selftok vocabulary (K = 32 tokens per image, 64 codes), and the quickstart's tiny decoder stack."""
    from ..modeling_selftok_lm import add_visual_tokens
    from ..pipeline_selftok import SelftokPipeline
    from ..processing_selftok import SelftokProcessor
    from .tiny_pipeline import random_tiny_pipeline

    decoder = random_tiny_pipeline(seed)  # silences its random VAE's RandomWeightsWarning itself
    tokenizer = tiny_text_tokenizer()
    language_model = tiny_language_model(architecture, len(tokenizer), seed, tokenizer)
    vocabulary = add_visual_tokens(language_model, tokenizer, decoder.image_tokenizer, init=init, seed=seed)
    processor = SelftokProcessor(image_processor=decoder.image_processor, tokenizer=tokenizer, visual_vocabulary=vocabulary)
    return SelftokPipeline(language_model, processor, decoder)
