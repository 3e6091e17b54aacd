"""The main job on the embedded default: tokenize the bundled sample photos into Selftok token ids and
reconstruct them (50-step decoder and one-step renderer) into a side-by-side PNG.

    selftok-quickstart [--images a.jpg b.png ...] [--output tokens.json] [--png recon.png] [--steps 50] [--seed 0]

No download is needed. Until a trained small checkpoint ships with the package, the tokenizer, decoder,
renderer and SD3-shaped VAE are *seeded random* tiny models: ids and images are deterministic and every
stage of the real pipeline runs (PIL -> processor -> VAE -> encoder -> quantizer -> ids -> decoder -> VAE
-> PIL), but nothing carries learned meaning. The program says so on every run.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from importlib import resources
from typing import Optional

import PIL.Image
import torch

from diffusers import FlowMatchEulerDiscreteScheduler

from .configuration_selftok import SELFTOK_TINY_CONFIG, SelftokConfig
from .modeling_selftok import SelftokModel
from .modeling_selftok_decoder import SELFTOK_DECODER_TINY_CONFIG, SELFTOK_RENDERER_TINY_CONFIG, SelftokDecoderTransformer, SelftokRenderer
from .pipeline_selftok_decoder import SelftokDecoderPipeline
from .vae import RandomWeightsWarning, random_sd3_vae

__all__ = ["bundled_images", "default_pipeline", "side_by_side", "main"]

SAMPLE_PHOTOS = ("astronaut.jpg", "coffee.jpg", "chelsea.jpg")


def bundled_images() -> dict[str, PIL.Image.Image]:
    """The sample photos shipped in ``selftok_hf/assets`` (public domain / CC0, from scikit-image)."""
    assets = resources.files("selftok_hf") / "assets"
    return {name: PIL.Image.open(assets / name).convert("RGB") for name in SAMPLE_PHOTOS}


def default_pipeline(seed: int = 0) -> SelftokDecoderPipeline:
    """The embedded default: seeded random tiny tokenizer, decoder, renderer and SD3-shaped VAE."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        tokenizer = SelftokModel(SelftokConfig(**SELFTOK_TINY_CONFIG)).eval()
        # The official init zeroes the query adaLN (each block starts as the identity on the queries),
        # which makes every image give the same ids; randomise it so the demo ids depend on the image.
        for block in tokenizer.encoder.blocks:
            torch.nn.init.normal_(block.query_modulation.weight, std=0.5)
        transformer = SelftokDecoderTransformer(**SELFTOK_DECODER_TINY_CONFIG).eval()
        renderer = SelftokRenderer(**SELFTOK_RENDERER_TINY_CONFIG).eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RandomWeightsWarning)  # announced once, in plain words, by main()
            vae = random_sd3_vae(seed)
    finally:
        torch.random.set_rng_state(state)
    pipe = SelftokDecoderPipeline(tokenizer, transformer, vae, FlowMatchEulerDiscreteScheduler(shift=1.0), renderer)
    return pipe


def side_by_side(rows: list[list[PIL.Image.Image]]) -> PIL.Image.Image:
    """Tile rows of equally sized images into one picture."""
    w, h = rows[0][0].size
    canvas = PIL.Image.new("RGB", (w * max(len(r) for r in rows), h * len(rows)), "white")
    for y, row in enumerate(rows):
        for x, image in enumerate(row):
            canvas.paste(image, (x * w, y * h))
    return canvas


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="selftok-quickstart", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", nargs="*", help="image files (default: the bundled sample photos)")
    parser.add_argument("--output", default="selftok_tokens.json", help="where to write the ids (JSON)")
    parser.add_argument("--png", default="selftok_reconstruction.png", help="side-by-side PNG: input | decoder | renderer")
    parser.add_argument("--steps", type=int, default=50, help="decoder steps (default 50, as the official sampler)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random default checkpoint and of the noise")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")

    print("NOTE: no trained checkpoint is bundled yet; this runs SEEDED RANDOM tiny Selftok models (tokenizer,")
    print("      decoder, renderer) and a random SD3-shaped VAE. Ids and images are deterministic but meaningless.")
    print("      Convert the official weights with `selftok-convert` for real tokens and reconstructions.")
    if args.images:
        try:
            images = {path: PIL.Image.open(path) for path in args.images}
        except OSError as e:
            parser.exit(2, f"selftok-quickstart: error: cannot read image: {e}\n")
    else:
        images = bundled_images()

    pipe = default_pipeline(args.seed)
    pipe.set_progress_bar_config(desc="decoding")
    token_ids = pipe.encode(list(images.values()))
    result = {}
    for name, ids in zip(images, token_ids.tolist()):
        result[name] = ids
        print(f"{name}: {len(ids)} tokens (AR order, coarse first): {ids[:12]} ...")
    with open(args.output, "w") as f:
        json.dump({"num_tokens": pipe.image_tokenizer.config.num_tokens, "codebook_size": pipe.image_tokenizer.config.codebook_size, "token_ids": result}, f)
    print(f"wrote {args.output}")

    generator = torch.Generator().manual_seed(args.seed)
    decoded = pipe(token_ids, num_inference_steps=args.steps, generator=generator).images
    rendered = pipe(token_ids, use_renderer=True).images
    inputs = pipe.image_processor.postprocess(pipe.image_processor(list(images.values()), return_tensors="pt").pixel_values, value_range=(-1, 1))
    side_by_side([list(row) for row in zip(inputs, decoded, rendered)]).save(args.png)
    print(f"wrote {args.png} (columns: input | {args.steps}-step decoder | one-step renderer)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
