"""Tiny random Selftok checkpoints for tests, selftok-hf's and users' own: :func:`random_tiny_pipeline` (the decoder
pipeline: tokenizer, decoder, renderer and an SD3-shaped VAE) and :func:`tiny_selftok_pipeline` (a VLM on a tiny
Llama / Qwen2 / GPT-2), seeded, in milliseconds on a CPU, nothing learned; ``save_pretrained`` either for a
checkpoint folder. Their pytest fixtures: ``pytest_plugins = ["selftok_hf.testing.pytest_fixtures"]``."""

from .tiny_pipeline import random_tiny_pipeline
from .tiny_vlm import (
    TINY_LM_CONFIGS,
    tiny_language_model,
    tiny_selftok_pipeline,
    tiny_text_tokenizer,
    train_byte_level_bpe,
)

__all__ = [
    "TINY_LM_CONFIGS",
    "random_tiny_pipeline",
    "tiny_language_model",
    "tiny_selftok_pipeline",
    "tiny_text_tokenizer",
    "train_byte_level_bpe",
]
