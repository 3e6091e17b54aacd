"""A seeded random tiny :class:`~selftok_hf.SelftokDecoderPipeline` for tests (selftok-hf's and users' own):
every stage of the real pipeline runs in milliseconds on a CPU, nothing is learned. ``save_pretrained`` it for a tiny
checkpoint folder (:mod:`selftok_hf.testing.pytest_fixtures` does, as the ``tiny_pipeline_dir`` fixture)."""

from __future__ import annotations

import warnings

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from ..configuration_selftok import SELFTOK_TINY_CONFIG, SelftokConfig
from ..modeling_selftok import SelftokModel
from ..modeling_selftok_decoder import (
    SELFTOK_DECODER_TINY_CONFIG,
    SELFTOK_RENDERER_TINY_CONFIG,
    SelftokDecoderTransformer,
    SelftokRenderer,
)
from ..pipeline_selftok_decoder import SelftokDecoderPipeline
from ..vae import RandomWeightsWarning, random_sd3_vae

__all__ = ["random_tiny_pipeline"]


def random_tiny_pipeline(seed: int = 0) -> SelftokDecoderPipeline:
    """Seeded random tiny tokenizer, decoder, renderer and SD3-shaped VAE (for tests: every stage runs, nothing is learned)."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        image_tokenizer = SelftokModel(SelftokConfig(**SELFTOK_TINY_CONFIG)).eval()
        # The official init zeroes the query adaLN (each block starts as the identity on the queries),
        # which makes every image give the same ids; randomise it so the demo ids depend on the image.
        for block in image_tokenizer.encoder.blocks:
            torch.nn.init.normal_(block.query_modulation.weight, std=0.5)
        transformer = SelftokDecoderTransformer(**SELFTOK_DECODER_TINY_CONFIG).eval()
        renderer = SelftokRenderer(**SELFTOK_RENDERER_TINY_CONFIG).eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RandomWeightsWarning)  # random by design in a test helper
            vae = random_sd3_vae(seed)
    finally:
        torch.random.set_rng_state(state)
    pipe = SelftokDecoderPipeline(image_tokenizer, transformer, vae, FlowMatchEulerDiscreteScheduler(shift=1.0), renderer)
    return pipe
