"""The main job on the embedded default: tokenize the bundled sample images into Selftok token ids, reconstruct
them with the 50-step decoder and the one-step renderer, decode them coarse to fine from growing AR prefixes of
their tokens, write the PNGs and print PSNR next to a bicubic thumbnail of the same bits.

    selftok-quickstart [--images a.jpg ...] [--pipeline DIR] [--output tokens.json] [--png recon.png] [--steps 50]

No download is needed: the default is a small *trained* Selftok (32 x 32 images, 32 tokens from a 1024-code
codebook, i.e. 320 bits per image) bundled in ``selftok_hf/assets/`` (how it was trained:
``examples/train_default_tokenizer.py`` and the README). The sample images were held out of its training. Pass
``--pipeline DIR`` to run the same job on any converted (``selftok-convert``) or trained pipeline folder.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import PIL.Image
import torch

from ..assets import bundled_fashion_images, bundled_images, embedded_pipeline
from ..evaluation.baselines import best_bicubic_thumbnail
from ..evaluation.metrics import psnr
from ..evaluation.reconstruction import side_by_side
from ..image_processing_selftok import postprocess_images
from ..pipeline_selftok_decoder import SelftokDecoderPipeline
from ..utils.moved import moved_names_getattr

__all__ = ["main", "write_grid"]

# The bundled-asset accessors and the random tiny pipeline lived here until issue 17 (selftok_hf.utils.moved).
__getattr__ = moved_names_getattr(__spec__.name)  # __name__ is "__main__" under python -m


def write_grid(path: str, columns: list[torch.Tensor], scale: int) -> None:
    """Save images in [0, 1] as a grid: one column per tensor ``(B, 3, H, W)``, one row per image, zoomed ``scale``x."""
    rows = zip(*(postprocess_images(c, "pil") for c in columns))
    grid = side_by_side([list(row) for row in rows])
    grid.resize((grid.width * scale, grid.height * scale), PIL.Image.NEAREST).save(path)


def main(argv: list[str] | None = None, prog: str = "selftok-quickstart") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", nargs="*", help="image files (default: the bundled sample images)")
    parser.add_argument("--pipeline", default=None, help="a SelftokDecoderPipeline folder (default: the bundled trained model)")
    parser.add_argument("--output", default="selftok_tokens.json", help="where to write the ids (JSON)")
    parser.add_argument("--png", default="selftok_reconstruction.png", help="side-by-side PNG: input | decoder | renderer | bicubic")
    parser.add_argument(
        "--coarse-to-fine-png", default="selftok_coarse_to_fine.png",
        help="decodes from the first 1, 2, 4, ..., K tokens (AR order), then the input",
    )
    parser.add_argument("--steps", type=int, default=50, help="decoder steps (default 50, as the official sampler)")
    parser.add_argument("--scale", type=int, default=4, help="nearest-neighbour zoom of the PNG (32-px images are small)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the decoder's initial noise")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.scale < 1:
        parser.error("--steps and --scale must be >= 1")
    if args.images:
        try:
            images = {path: PIL.Image.open(path).convert("RGB") for path in args.images}
        except OSError as e:
            parser.exit(2, f"{parser.prog}: error: cannot read image: {e}\n")
    else:
        images = {**bundled_images(), **bundled_fashion_images()}

    pipe = SelftokDecoderPipeline.from_pretrained(args.pipeline) if args.pipeline else embedded_pipeline()
    pipe.set_progress_bar_config(desc="decoding")
    cfg = pipe.image_tokenizer.config
    print(f"Selftok: {cfg.image_size}x{cfg.image_size} images -> {cfg.num_image_tokens} tokens from {cfg.codebook_size} codes")
    pixel_values = pipe.image_processor(list(images.values()), return_tensors="pt").pixel_values
    token_ids = pipe.encode(pixel_values)
    result = {}
    for name, ids in zip(images, token_ids.tolist()):
        result[name] = ids
        print(f"{name}: {len(ids)} tokens (AR order, coarse first): {ids[:12]} ...")
    with open(args.output, "w") as f:
        json.dump({"num_image_tokens": cfg.num_image_tokens, "codebook_size": cfg.codebook_size, "token_ids": result}, f)
    print(f"wrote {args.output}")

    generator = torch.Generator().manual_seed(args.seed)
    target = (pixel_values.clamp(-1, 1) + 1) / 2
    columns = {"input": target, f"{args.steps}-step decoder": pipe(token_ids, num_inference_steps=args.steps, generator=generator, output_type="pt").images}
    if pipe.renderer is not None:
        columns["one-step renderer"] = pipe(token_ids, use_renderer=True, output_type="pt").images
    bits = cfg.num_image_tokens * math.log2(cfg.codebook_size)
    thumbnail, choice = best_bicubic_thumbnail(target, bits)
    thumbnail_name = f"bicubic {choice['side']}x{choice['side']}x{choice['bits_per_channel']}-bit thumbnail ({choice['bits']} bits)"
    columns[thumbnail_name] = thumbnail
    print(f"{bits:.0f} bits per image; the baseline is the best bicubic thumbnail within them")
    for column, decoded in list(columns.items())[1:]:
        values = psnr(decoded, target)
        per_image = ", ".join(f"{name} {v:.2f}" for name, v in zip(images, values.tolist()))
        print(f"PSNR {column}: mean {values.mean():.2f} dB ({per_image})")
    write_grid(args.png, list(columns.values()), args.scale)
    print(f"wrote {args.png} (columns: {' | '.join(columns)})")

    # Coarse to fine: the decoder from the first p tokens in AR order (the same noise for every p).
    prefixes, strips = sorted({2**i for i in range(int(math.log2(cfg.num_image_tokens)) + 1)} | {cfg.num_image_tokens}), []
    for p in prefixes:
        generator = torch.Generator().manual_seed(args.seed)
        strips.append(pipe(token_ids, num_inference_steps=args.steps, prefix_length=p, generator=generator, output_type="pt").images)
    print("PSNR from the first p tokens: " + ", ".join(f"p={p} {psnr(d, target).mean():.2f}" for p, d in zip(prefixes, strips)) + " dB")
    write_grid(args.coarse_to_fine_png, strips + [target], args.scale)
    print(f"wrote {args.coarse_to_fine_png} (columns: p = {', '.join(map(str, prefixes))} tokens, then the input)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
