"""Train a small pixel-space Selftok tokenizer (+ decoder, then renderer) on real photos available offline.

This is how the embedded default of ``selftok-quickstart`` was trained. Data: the scikit-image / scikit-learn
photographs (the README's sample photos astronaut / coffee / chelsea are held out), downscaled to a 96-px shortest
edge and seen as random 32-px crops, mixed 1:1 with Fashion-MNIST (Debian's ``dataset-fashion-mnist``, if
installed). Model: 32 tokens x 10 bits per 32-px image (``examples/configs/pixel32_*.json``).

    python examples/train_pixel_tokenizer.py --output-dir runs/pixel32 --steps 4000      # the shipped run
    python examples/train_pixel_tokenizer.py --output-dir /tmp/smoke --steps 2 --tiny    # seconds, for CI

The bundled copy uses the renderer's step-600 checkpoint (MSE only), chosen after the run because the 200 GAN
steps that followed lowered held-out PSNR (README). Add ``--resume`` to continue an interrupted run exactly. ``accelerate launch examples/train_pixel_tokenizer.py``
runs it data-parallel.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import datasets
import torch

from selftok_hf.training.data import FASHION_MNIST_DIR, load_image_dataset
from selftok_hf.training.renderer import RendererTrainingArguments, train_renderer
from selftok_hf.training.tokenizer import TokenizerTrainingArguments, train_tokenizer

CONFIGS = Path(__file__).resolve().parent / "configs"


def build_training_mix(path: Path, photo_repeats: int, fashion_images: int, max_side: int) -> Path:
    """Photos (repeated: every visit draws a new random crop) + Fashion-MNIST, saved with ``save_to_disk``."""
    photos = load_image_dataset("offline:photos", "train", max_side=max_side).remove_columns("name")
    parts = [photos] * photo_repeats
    if fashion_images and (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        parts.append(load_image_dataset("offline:fashion-mnist", "train", limit=fashion_images))
    mix = datasets.concatenate_datasets(parts)
    mix.save_to_disk(str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="runs/pixel32")
    parser.add_argument("--steps", type=int, default=4000, help="tokenizer optimiser steps")
    parser.add_argument("--renderer-steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4, help="all groups: the decoder starts from scratch, not SD3")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="tiny model and data (smoke test)")
    args = parser.parse_args()

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    mix = out / "train-mix"
    if not mix.exists():
        build_training_mix(mix, photo_repeats=2 if args.tiny else 100, fashion_images=16 if args.tiny else 1200, max_side=96)

    tok_args = TokenizerTrainingArguments(
        output_dir=str(out / "tokenizer"),
        dataset=str(mix),
        eval_dataset="offline:photos",
        eval_split="test",
        eval_images=3,
        eval_every=max(args.steps // 16, 1),
        eval_decoder_steps=10,
        tokenizer_config="tiny" if args.tiny else str(CONFIGS / "pixel32_tokenizer.json"),
        decoder_config="tiny" if args.tiny else str(CONFIGS / "pixel32_decoder.json"),
        latent_space="pixel",
        pixel_patch_size=2,
        max_steps=args.steps,
        batch_size=args.batch_size,
        encoder_lr=args.lr,
        decoder_image_lr=args.lr,
        decoder_token_lr=args.lr,
        checkpoint_every=max(args.steps // 16, 1),
        log_every=max(min(25, args.steps // 4), 1),
        seed=args.seed,
        resume_from="latest" if args.resume else None,
    )
    train_tokenizer(tok_args, export_dir=str(out / "tokenizer-pipeline"))

    ren_args = RendererTrainingArguments(
        output_dir=str(out / "renderer"),
        pipeline=str(out / "tokenizer-pipeline"),
        dataset=str(mix),
        max_steps=args.renderer_steps if not args.tiny else 2,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        checkpoint_every=max(args.renderer_steps // 8, 1),
        log_every=max(min(25, args.renderer_steps // 4), 1),
        seed=args.seed,
        resume_from="latest" if args.resume else None,
    )
    pipe = train_renderer(ren_args, export_dir=str(out / "pipeline")).decoder_pipeline
    # The bundled copy (selftok_hf/assets/selftok-pixel32) stores weights in float16 (12 MB); loaded back in float32.
    pipe.to(torch.float16).save_pretrained(str(out / "pipeline-fp16"))
    print(f"trained pipeline: {os.path.abspath(out / 'pipeline')} (float16 copy: {out / 'pipeline-fp16'})")


if __name__ == "__main__":
    main()
