"""Train a Selftok tokenizer (+ diffusion decoder, then one-step renderer) on a folder of images, and reconstruct
one of them with the result.

    python examples/train_tokenizer_imagefolder.py --data-dir my_images/ --output-dir run --steps 4000
    python examples/train_tokenizer_imagefolder.py --tiny --output-dir /tmp/run     # offline smoke run, seconds

The model is the small pixel-space Selftok of the embedded default (32-px images, 32 tokens x 10 bits,
``examples/configs/default32_pixel_*.json``): it trains on a CPU. ``--tiny`` writes the six bundled sample images into
``OUTPUT_DIR/images`` and trains the tiny test model on them for a few steps (the reconstruction is noise). For the
release-size model on SD3 latents use ``selftok train-tokenizer --latent-space sd3 --tokenizer-config release ...``
(README, "Train your own tokenizer"). Every option of the trainers is a field of ``TokenizerTrainingArguments`` /
``RendererTrainingArguments``.
"""

import argparse
from pathlib import Path

import PIL.Image

from selftok_hf import SelftokDecoderPipeline
from selftok_hf.assets import bundled_fashion_images, bundled_images
from selftok_hf.evaluation.metrics import psnr
from selftok_hf.training.renderer import RendererTrainingArguments, train_renderer
from selftok_hf.training.tokenizer import TokenizerTrainingArguments, train_tokenizer

CONFIGS = Path(__file__).resolve().parent / "configs"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-dir", help="a folder of images (subfolders included)")
    source.add_argument("--tiny", action="store_true", help="the bundled sample images and the tiny model, a few steps (offline)")
    parser.add_argument("--output-dir", default="selftok-imagefolder")
    parser.add_argument("--steps", type=int, default=None, help="tokenizer steps (default: 4000; --tiny: 4)")
    parser.add_argument("--renderer-steps", type=int, default=None, help="renderer steps (default: 1000; --tiny: 2)")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    out = Path(args.output_dir)
    data_dir = Path(args.data_dir) if args.data_dir else out / "images"
    if args.tiny:
        data_dir.mkdir(parents=True, exist_ok=True)
        for name, image in {**bundled_images(), **bundled_fashion_images()}.items():
            image.save(data_dir / f"{Path(name).stem}.png")
    steps = args.steps or (4 if args.tiny else 4000)
    renderer_steps = args.renderer_steps or (2 if args.tiny else 1000)

    # 1. Tokenizer + decoder, the release objective, on random crops of the folder's images (shortest side 96 px).
    tokenizer_args = TokenizerTrainingArguments(
        output_dir=str(out / "tokenizer"),
        dataset="imagefolder",
        data_dir=str(data_dir),
        max_image_side=96,
        tokenizer_config="tiny" if args.tiny else str(CONFIGS / "default32_pixel_tokenizer.json"),
        decoder_config="tiny" if args.tiny else str(CONFIGS / "default32_pixel_decoder.json"),
        latent_space="pixel",
        max_steps=steps,
        batch_size=args.batch_size,
        encoder_lr=3e-4,  # the decoder starts from scratch (no SD3 weights): one learning rate for all groups
        decoder_image_lr=3e-4,
        decoder_token_lr=3e-4,
        checkpoint_every=max(steps // 8, 1),
        log_every=max(steps // 20, 1),
    )
    train_tokenizer(tokenizer_args, export_dir=str(out / "tokenizer-pipeline"))

    # 2. The one-step renderer, started from the decoder, with the tokenizer frozen.
    renderer_args = RendererTrainingArguments(
        output_dir=str(out / "renderer"),
        pipeline=str(out / "tokenizer-pipeline"),
        dataset="imagefolder",
        data_dir=str(data_dir),
        max_image_side=96,
        max_steps=renderer_steps,
        batch_size=args.batch_size,
        learning_rate=3e-4,
        checkpoint_every=max(renderer_steps // 4, 1),
        log_every=max(renderer_steps // 20, 1),
    )
    train_renderer(renderer_args, export_dir=str(out / "pipeline"))

    # 3. The trained pipeline: tokens and reconstructions of the first image of the folder.
    pipe = SelftokDecoderPipeline.from_pretrained(str(out / "pipeline"))
    pipe.set_progress_bar_config(disable=True)
    path = min(p for p in data_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    pixel_values = pipe.image_processor([PIL.Image.open(path).convert("RGB")], return_tensors="pt").pixel_values
    token_ids = pipe.encode(pixel_values)
    print(f"{path.name}: {token_ids.shape[1]} tokens {token_ids[0, :8].tolist()} ...")
    for name, kwargs in {"10-step decoder": {"num_inference_steps": 10}, "renderer": {"use_renderer": True}}.items():
        decoded = pipe(token_ids, output_type="pt", **kwargs).images
        print(f"PSNR {name}: {psnr(decoded, (pixel_values + 1) / 2).item():.2f} dB")
    print(f"trained pipeline: {out / 'pipeline'} (selftok reconstruct IMAGE --pipeline {out / 'pipeline'})")


if __name__ == "__main__":
    main()
