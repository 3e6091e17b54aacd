"""Train a small Selftok (tokenizer + diffusion decoder, then the one-step renderer) on photos available offline.

This is how the embedded default of ``selftok-quickstart`` is trained, with the library's own trainers. Two latent
spaces, the same tokenizer and decoder sizes (``examples/configs/default32_*.json``; 32 tokens x 10 bits per
32-px image):

- ``--latent-space vae`` (the paper's structure): first a small SD3-shaped ``AutoencoderKL`` (16 channels, 4x
  downsampling: 32-px images -> 8 x 8 x 16 latents, ``selftok-train-vae``), then Selftok on its latents;
- ``--latent-space pixel``: Selftok on 2 x 2 pixel blocks (16 x 16 x 12 "latents", no VAE).

Data: the scikit-image / scikit-learn photographs and the ``train`` split of Debian's ``opencv-doc`` photographs
(``offline:opencv-photos``), each downscaled once to a 160-px shortest edge and seen as official random resize +
crops, mixed with Fashion-MNIST training images. Never trained on: the README's sample photos, the ``validation``
and ``test`` splits of the opencv-doc photos, the Fashion-MNIST test split. The trainers' held-out curve uses the
validation split (``benchmarks/default_tokenizer_baselines.py`` reports on the test images).

    python examples/train_default_tokenizer.py --output-dir ~/runs/default32-vae --resume-from latest   # the first part
    python examples/train_default_tokenizer.py --output-dir /tmp/smoke --tiny         # seconds, for CI

The defaults are the first part of the shipped run (1,600 VAE steps at batch 32, 6,000 tokenizer and 2,000 renderer
steps at batch 16; about 1.5 hours on two shared CPU cores). The shipped weights then continued that pipeline
(``embedded`` was the first part's weights then, as shipped up to commit 4c8ca11; pass that folder to reproduce):

    python examples/train_default_tokenizer.py --output-dir ~/runs/default32-cont --init-from embedded --steps 16000 \
        --decay-steps 8000 --warmup-steps 300 --renderer-steps 3000 --renderer-decay-steps 1500 --resume-from latest

Every stage resumes exactly (``--resume-from latest``) and a finished stage is skipped, so the same command
continues a killed run. The result: ``OUTPUT_DIR/pipeline`` and its float16 copy ``OUTPUT_DIR/pipeline-fp16``
(what ``selftok_hf/assets`` ships).
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

import datasets
import numpy as np

from selftok_hf.training.data import (
    FASHION_MNIST_DIR,
    load_image_dataset,
    random_resize_crop,
)
from selftok_hf.assets import EMBEDDED_PIPELINE
from selftok_hf.training.stack import StackBudget, resolve_init_from, train_selftok_stack

CONFIGS = Path(__file__).resolve().parent / "configs"


def build_training_mix(path: Path, photo_repeats: int, fashion_images: int, max_side: int, tiny: bool) -> Path:
    """Photos (repeated: every visit draws a new random crop) + Fashion-MNIST, saved with ``save_to_disk``."""
    photos = [load_image_dataset("offline:photos", "train", max_side=max_side).remove_columns("name")]
    if not tiny:
        photos.append(load_image_dataset("offline:opencv-photos", "train", max_side=max_side).remove_columns("name"))
    parts = photos * photo_repeats
    if fashion_images and (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        parts.append(load_image_dataset("offline:fashion-mnist", "train", limit=fashion_images))
    datasets.concatenate_datasets(parts).save_to_disk(str(path))
    return path


def build_validation_crops(path: Path, size: int, crops_per_photo: int, tiny: bool) -> Path:
    """Fixed random crops of the validation photos (the trainers' held-out curve; never the reported test set)."""
    source = load_image_dataset("offline:photos", "test") if tiny else load_image_dataset("offline:opencv-photos", "validation")
    rng = np.random.default_rng(0)
    crops = [random_resize_crop(row["image"], size, rng) for row in source for _ in range(crops_per_photo)]
    datasets.Dataset.from_dict({"image": crops}).save_to_disk(str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="runs/default32")
    parser.add_argument("--latent-space", choices=("vae", "pixel"), default="vae")
    parser.add_argument("--vae-steps", type=int, default=1600, help="VAE optimiser steps (--latent-space vae)")
    parser.add_argument("--steps", type=int, default=6000, help="tokenizer optimiser steps")
    parser.add_argument("--renderer-steps", type=int, default=2000)
    parser.add_argument("--decay-steps", type=int, default=0, help="cosine LR decay over the last N tokenizer steps (0: constant)")
    parser.add_argument("--renderer-decay-steps", type=int, default=0, help="cosine LR decay over the last N renderer steps")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4, help="all groups: the decoder starts from scratch, not SD3")
    parser.add_argument("--warmup-steps", type=int, default=500)
    parser.add_argument("--ema-decay", type=float, default=0.999)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume-from", default=None, help="'latest' continues every stage from its last checkpoint")
    parser.add_argument(
        "--init-from",
        default=None,
        help="continue a finished pipeline's VAE, tokenizer and decoder instead of training them from scratch "
        "('embedded': the shipped default); then --steps more tokenizer steps and a new renderer",
    )
    parser.add_argument("--tiny", action="store_true", help="tiny model and data, a few steps (smoke test)")
    args = parser.parse_args()
    try:
        init_from = resolve_init_from(args.init_from, resources.files("selftok_hf.assets") / EMBEDDED_PIPELINE)
    except ValueError as error:
        parser.error(f"--init-from {error}")
    if args.tiny:
        args.vae_steps, args.steps, args.renderer_steps, args.warmup_steps, args.eval_every = 2, 2, 2, 1, 1

    out = Path(args.output_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    mix, validation = out / "train-mix", out / "validation-crops"
    if not mix.exists():
        build_training_mix(mix, photo_repeats=2 if args.tiny else 60, fashion_images=16 if args.tiny else 2000, max_side=160, tiny=args.tiny)
    if not validation.exists():
        build_validation_crops(validation, size=16 if args.tiny else 32, crops_per_photo=2 if args.tiny else 8, tiny=args.tiny)
    budget = StackBudget(
        vae_steps=args.vae_steps,
        vae_statistics_images=8 if args.tiny else 512,
        steps=args.steps,
        renderer_steps=args.renderer_steps,
        decay_steps=args.decay_steps,
        renderer_decay_steps=args.renderer_decay_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        ema_decay=args.ema_decay,
        eval_every=args.eval_every,
        seed=args.seed,
    )
    name = "default32_vae" if args.latent_space == "vae" else "default32_pixel"
    pipeline = train_selftok_stack(
        out,
        mix,
        validation,
        tokenizer_config="tiny" if args.tiny else str(CONFIGS / f"{name}_tokenizer.json"),
        decoder_config="tiny" if args.tiny else str(CONFIGS / f"{name}_decoder.json"),
        budget=budget,
        image_size=16 if args.tiny else 32,
        latent_space=args.latent_space,
        vae_config="tiny" if args.tiny else "small",
        resume_from=args.resume_from,
        init_from=init_from,
    )
    print(f"trained pipeline: {pipeline.resolve()} (float16 copy: {out / 'pipeline-fp16'})")


if __name__ == "__main__":
    main()
