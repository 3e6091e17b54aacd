"""LoRA fine-tuning of a Selftok VLM on (image, caption) pairs with ``selftok-train-lm``, then generation with the adapter.

    python examples/vlm_lora_finetune.py --pipeline path/to/selftok-vlm --dataset path/to/pairs --output-dir run
    python examples/vlm_lora_finetune.py --tiny --output-dir run   # offline: tiny random VLM, the 3 bundled photos

With ``--tiny`` the example builds a seeded random tiny VLM and a 3-pair dataset from the bundled photos, trains a LoRA
adapter until it has memorised them, reloads base + adapter, and checks that each caption regenerates its photo's
Selftok ids (greedy) and that each photo is described by its caption. (Its training loss stays near 1: the base LM is
random and LoRA leaves the text rows of its output head frozen, which caps how confident text predictions can get;
the visual rows are trained through ``trainable_token_indices``. With a pretrained LM this cap does not arise.)
"""

import argparse
from pathlib import Path

import datasets
import torch

from selftok_hf import SelftokPipeline
from selftok_hf.assets import bundled_images
from selftok_hf.testing.tiny_vlm import tiny_selftok_pipeline
from selftok_hf.training.sft import main as train_lm

CAPTIONS = {"astronaut.jpg": "an astronaut in a white suit", "coffee.jpg": "a cup of coffee", "chelsea.jpg": "a tabby cat"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="offline tiny run on the bundled photos")
    parser.add_argument("--pipeline", help="a SelftokPipeline folder (the base)")
    parser.add_argument("--dataset", help="a datasets folder / name with 'image' and 'text' columns")
    parser.add_argument("--output-dir", default="selftok-vlm-lora")
    parser.add_argument("--max-steps", type=int, default=None)
    args, extra = parser.parse_known_args()

    out = Path(args.output_dir)
    if args.tiny:
        print("NOTE: --tiny fine-tunes a SEEDED RANDOM tiny VLM on 3 photos; it memorises them, nothing more.")
        base, pairs = out / "base", out / "pairs"
        tiny_selftok_pipeline("llama").save_pretrained(base)
        images = bundled_images()
        datasets.Dataset.from_dict({"image": list(images.values()), "text": [CAPTIONS[n] for n in images]}).save_to_disk(str(pairs))
        extra = ["--batch-size", "6", "--learning-rate", "5e-3", "--lora-rank", "8", "--lora-alpha", "16", "--caption-dropout", "0", "--cpu", *extra]
        args.pipeline, args.dataset = str(base), str(pairs)
        args.max_steps = args.max_steps or 200
    elif not (args.pipeline and args.dataset):
        parser.error("pass --tiny, or --pipeline and --dataset")
    train_lm([
        "--pipeline", args.pipeline, "--dataset", args.dataset, "--output-dir", str(out / "train"), "--lora",
        "--max-steps", str(args.max_steps or 1000), "--checkpoint-every", "0", *extra,
    ])

    pipe = SelftokPipeline.from_pretrained(args.pipeline).load_lora(out / "train" / "adapter")
    pipe.set_progress_bar_config(disable=True)
    if args.tiny:
        photos = list(bundled_images().values())
        expected = pipe.processor.encode_images(photos)
        generated = pipe(list(CAPTIONS.values()), guidance_scale=1.0, do_sample=False, output_type="ids").token_ids
        for caption, ok in zip(CAPTIONS.values(), (generated == expected).all(dim=1).tolist()):
            print(f"T2I {caption!r}: {'reproduces' if ok else 'does NOT reproduce'} its photo's ids")
        for caption, answer in zip(CAPTIONS.values(), pipe.describe(photos, max_new_tokens=16)):
            print(f"I2T expected {caption!r}, got {answer!r}")
    else:
        print(pipe("a photo", generator=torch.Generator().manual_seed(0), output_type="ids").token_ids)


if __name__ == "__main__":
    main()
