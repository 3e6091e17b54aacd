"""Held-out reconstruction of the small pixel-space Selftok tokenizer vs two baselines at the same bits per image.

Baselines (issue 4):
- bicubic down/up-sampling: the image is stored as an ``s x s`` thumbnail with ``b`` bits per channel, with
  ``3 b s² <= bits``; every such (s, b) is tried and the best is reported (an optimistic baseline);
- a plain raster-order spatial VQ autoencoder (``selftok_hf.raster_vq``) with ``grid² · log2(codebook)`` equal to
  Selftok's ``K · log2(C)``, trained on the same data, batch, steps and seed.

Held-out images: the README's three sample photos (never trained on) as 32-px centre crops and as 16 random
32-px crops each, and the first 200 Fashion-MNIST test images.

    python benchmarks/pixel_tokenizer_baselines.py --pipeline runs/pixel32/pipeline --train-mix runs/pixel32/train-mix \
        --steps 1500 --out runs/pixel32/baselines
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import torch

from selftok_hf import SelftokDecoderPipeline
from selftok_hf.metrics import psnr, ssim
from selftok_hf.raster_vq import RasterVQAutoencoder, train_raster_vq
from selftok_hf.training.data import (
    StepBatches,
    center_resize_crop,
    images_to_tensor,
    load_image_dataset,
    random_resize_crop,
)


def held_out_sets(size: int) -> dict[str, torch.Tensor]:
    photos = load_image_dataset("offline:photos", "test")
    rng = np.random.default_rng(1234)
    sets = {
        "photos_center": images_to_tensor([center_resize_crop(r["image"], size) for r in photos]),
        "photos_random_crops": images_to_tensor([random_resize_crop(r["image"], size, rng) for r in photos for _ in range(16)]),
    }
    try:
        fashion = load_image_dataset("offline:fashion-mnist", "test", limit=200)
        sets["fashion_mnist_test"] = images_to_tensor([center_resize_crop(r["image"], size) for r in fashion])
    except FileNotFoundError:
        pass
    return sets


def scores(reconstruction: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """PSNR (dB) and SSIM (skimage defaults, per-image data range of the target) on [0, 1] images, averaged."""
    a, b = (reconstruction.clamp(-1, 1) + 1) / 2, (target + 1) / 2
    return {"psnr": psnr(a, b).mean().item(), "ssim": ssim(a, b, data_range="target").mean().item()}


def bicubic(target: torch.Tensor, side: int, bits_per_channel: int) -> torch.Tensor:
    levels = 2**bits_per_channel - 1
    out = []
    for image in target:
        array = ((image.permute(1, 2, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
        small = PIL.Image.fromarray(array).resize((side, side), PIL.Image.BICUBIC)
        small = (np.round(np.asarray(small, dtype=np.float32) / 255 * levels) / levels * 255).astype(np.uint8)
        out.append(PIL.Image.fromarray(small).resize(array.shape[:2][::-1], PIL.Image.BICUBIC))
    return images_to_tensor(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", required=True, help="trained SelftokDecoderPipeline folder (with renderer)")
    parser.add_argument("--train-mix", required=True, help="the training set (save_to_disk folder) for the raster VQ")
    parser.add_argument("--steps", type=int, required=True, help="raster VQ steps: the Selftok tokenizer's budget")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--decoder-steps", type=int, nargs="+", default=[50, 10])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    pipe = SelftokDecoderPipeline.from_pretrained(args.pipeline, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    tc = pipe.image_tokenizer.config
    size = tc.image_size
    bits = tc.num_tokens * math.log2(tc.codebook_size)
    sets = held_out_sets(size)

    # Raster VQ at the same bits: a grid of g² tokens with 2^(bits / g²) codes.
    raster_path = out / "raster-vq"
    grid = 8
    raster_codebook = int(2 ** round(bits / grid**2))
    if (raster_path / "config.json").exists():
        raster = RasterVQAutoencoder.from_pretrained(str(raster_path))
    else:
        raster = RasterVQAutoencoder(image_size=size, downsample=size // grid, channels=32, codebook_size=raster_codebook)
        history: list = []
        started = time.perf_counter()
        batches = StepBatches(datasets.load_from_disk(args.train_mix), args.batch_size, size, seed=args.seed)
        train_raster_vq(raster, batches, args.steps, args.lr, args.seed, log_every=50, history=history)
        raster.save_pretrained(str(raster_path))
        (raster_path / "history.json").write_text(json.dumps({"seconds": time.perf_counter() - started, "log": history}))
    raster_bits = raster.num_tokens * math.log2(raster.config.codebook_size)

    results: dict = {"bits_per_image": {"selftok": bits, "raster_vq": raster_bits}, "sets": {}}
    bicubic_options = [(s, b) for s in range(2, size) for b in range(1, 9) if 3 * b * s * s <= bits and 3 * (b + 1) * s * s > bits]
    generator_seed = 0
    for name, target in sets.items():
        row: dict = {"images": len(target)}
        with torch.no_grad():
            ids = pipe.encode(target)
            for steps in args.decoder_steps:
                generator = torch.Generator().manual_seed(generator_seed)
                decoded = pipe(ids, num_inference_steps=steps, generator=generator, output_type="pt").images * 2 - 1
                row[f"selftok_decoder_{steps}_steps"] = scores(decoded, target)
            if pipe.renderer is not None:
                row["selftok_renderer"] = scores(pipe(ids, use_renderer=True, output_type="pt").images * 2 - 1, target)
            row["raster_vq"] = scores(raster.decode(raster.encode(target)), target)
        best = max((scores(bicubic(target, s, b), target) | {"side": s, "bits_per_channel": b} for s, b in bicubic_options), key=lambda r: r["psnr"])
        row["bicubic_best"] = best
        results["sets"][name] = row
        print(name, json.dumps(row, indent=1))
    (out / "results.json").write_text(json.dumps(results, indent=2))

    lines = ["| held-out set | n | " + " | ".join(k for k in results["sets"][next(iter(sets))] if k != "images") + " |"]
    lines.append("|" + "---|" * (len(lines[0].split("|")) - 2))
    for name, row in results["sets"].items():
        cells = [f"{v['psnr']:.2f} dB / {v['ssim']:.3f}" for k, v in row.items() if k != "images"]
        lines.append(f"| {name} | {row['images']} | " + " | ".join(cells) + " |")
    (out / "results.md").write_text("PSNR / SSIM, images in [0, 1]\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
