"""The main job on the embedded default: tokenize the bundled sample photos into Selftok token ids.

    selftok-quickstart [--images a.jpg b.png ...] [--output tokens.json] [--seed 0]

No download is needed. Until a trained small checkpoint ships with the package, the tokenizer and
the SD3-shaped VAE are *seeded random* tiny models: the ids are deterministic and every stage of
the real pipeline runs (PIL -> processor -> VAE -> encoder -> quantizer -> ids), but the ids carry
no learned meaning. The program says so on every run.
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

from .configuration_selftok import SELFTOK_TINY_CONFIG, SelftokConfig
from .image_processing_selftok import SelftokImageProcessorPil
from .modeling_selftok import SelftokModel
from .vae import RandomWeightsWarning, random_sd3_vae

__all__ = ["bundled_images", "default_tokenizer", "main"]

SAMPLE_PHOTOS = ("astronaut.jpg", "coffee.jpg", "chelsea.jpg")


def bundled_images() -> dict[str, PIL.Image.Image]:
    """The sample photos shipped in ``selftok_hf/assets`` (public domain / CC0, from scikit-image)."""
    assets = resources.files("selftok_hf") / "assets"
    return {name: PIL.Image.open(assets / name).convert("RGB") for name in SAMPLE_PHOTOS}


def default_tokenizer(seed: int = 0) -> tuple[SelftokModel, SelftokImageProcessorPil]:
    """The embedded default: a seeded random tiny tokenizer with a seeded random tiny SD3-shaped VAE attached."""
    config = SelftokConfig(**SELFTOK_TINY_CONFIG)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = SelftokModel(config).eval()
        # The official init zeroes the query adaLN (each block starts as the identity on the queries),
        # which makes every image give the same ids; randomise it so the demo ids depend on the image.
        for block in model.encoder.blocks:
            torch.nn.init.normal_(block.query_modulation.weight, std=0.5)
    finally:
        torch.random.set_rng_state(state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)  # announced once, below, in plain words
        model.attach_vae(random_sd3_vae(seed))
    size = config.image_size
    processor = SelftokImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return model, processor


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="selftok-quickstart", description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", nargs="*", help="image files (default: the bundled sample photos)")
    parser.add_argument("--output", default="selftok_tokens.json", help="where to write the ids (JSON)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random default checkpoint")
    args = parser.parse_args(argv)

    print("NOTE: no trained checkpoint is bundled yet; this runs a SEEDED RANDOM tiny Selftok tokenizer and a")
    print("      random SD3-shaped VAE. The ids are deterministic but meaningless. Convert the official weights")
    print("      with `selftok-convert` for real tokens.")
    if args.images:
        try:
            images = {path: PIL.Image.open(path) for path in args.images}
        except OSError as e:
            parser.exit(2, f"selftok-quickstart: error: cannot read image: {e}\n")
    else:
        images = bundled_images()

    model, processor = default_tokenizer(args.seed)
    pixel_values = processor(list(images.values()), return_tensors="pt").pixel_values
    with torch.no_grad():
        out = model.encode(pixel_values=pixel_values)
    result = {}
    for name, ids in zip(images, out.token_ids.tolist()):
        result[name] = ids
        print(f"{name}: {len(ids)} tokens (AR order, coarse first): {ids[:12]} ...")
    with open(args.output, "w") as f:
        json.dump({"num_tokens": model.config.num_tokens, "codebook_size": model.config.codebook_size, "token_ids": result}, f)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
