"""Held-out reconstruction of the embedded default Selftok against two baselines at the same bits per image, and its
autoregressive (coarse-to-fine) property.

Every number is measured on images never used for training or for choosing between models
(``examples/train_default_tokenizer.py`` trains on the ``train`` splits and picks on ``validation``):

- ``photos_readme_crops``: 16 random 32-px crops (the official random resize + crop) of each of the README's three
  sample photos;
- ``photos_opencv_crops``: 8 random crops of each of the 8 ``test`` photos of ``offline:opencv-photos``;
- ``fashion_mnist_test``: the first 200 Fashion-MNIST test images.

Baselines at Selftok's ``K log2(C)`` bits:

- bicubic: the image stored as an ``s x s`` thumbnail with ``b`` bits per channel, ``3 b s² <= bits``; the best
  (s, b) is reported for each set, chosen on that set itself (an optimistic baseline);
- a raster-order spatial VQ autoencoder (``selftok_hf.evaluation.raster_vq``, a ``g x g`` grid of ``bits / g²``-bit codes)
  trained on the same data with the same batch and seed for ``--raster-steps`` steps (default: the Selftok run's
  tokenizer + renderer steps, so both see the same number of training images); its and Selftok's CPU seconds are
  reported.

The AR property: PSNR of ``pipe(ids, prefix_length=p)`` (the decoder from the first p tokens in AR order) for
p = 1, 2, 4, ..., K, as ``prefix_psnr.png`` and ``coarse_to_fine.png``.

    python benchmarks/default_tokenizer_baselines.py --run ~/runs/default32-vae --out benchmarks/results/default32
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import datasets
import numpy as np
import torch

from selftok_hf import SelftokDecoderPipeline
from selftok_hf.apps.quickstart import write_grid
from selftok_hf.evaluation.baselines import best_bicubic_thumbnail
from selftok_hf.evaluation.metrics import psnr, ssim
from selftok_hf.evaluation.raster_vq import RasterVQAutoencoder, train_raster_vq
from selftok_hf.training.data import (
    StepBatches,
    center_resize_crop,
    images_to_tensor,
    load_image_dataset,
    random_resize_crop,
)


def held_out_sets(size: int) -> dict[str, torch.Tensor]:
    """The reported sets (module docstring), ``(N, 3, size, size)`` in [-1, 1]."""
    rng = np.random.default_rng(1234)
    readme = load_image_dataset("offline:photos", "test")
    sets = {"photos_readme_crops": images_to_tensor([random_resize_crop(r["image"], size, rng) for r in readme for _ in range(16)])}
    try:
        opencv = load_image_dataset("offline:opencv-photos", "test")
        sets["photos_opencv_crops"] = images_to_tensor([random_resize_crop(r["image"], size, rng) for r in opencv for _ in range(8)])
    except FileNotFoundError as error:
        print(f"skipping photos_opencv_crops: {error}")
    try:
        fashion = load_image_dataset("offline:fashion-mnist", "test", limit=200)
        sets["fashion_mnist_test"] = images_to_tensor([center_resize_crop(r["image"], size) for r in fashion])
    except FileNotFoundError as error:
        print(f"skipping fashion_mnist_test: {error}")
    return sets


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped."""
    return (images.clamp(-1, 1) + 1) / 2


def scores(reconstruction: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM (skimage defaults, per-image data range of the target) of [0, 1] images."""
    return {"psnr": psnr(reconstruction, target).mean().item(), "ssim": ssim(reconstruction, target, data_range="target").mean().item()}


def run_steps_and_seconds(log_path: Path) -> tuple[int, float]:
    """Steps and summed wall seconds of a trainer's ``log.jsonl`` (``elapsed_s`` restarts at each resume)."""
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line]
    seconds, previous = 0.0, 0.0
    for line in lines:
        seconds += line["elapsed_s"] - previous if line["elapsed_s"] >= previous else line["elapsed_s"]
        previous = line["elapsed_s"]
    return lines[-1]["step"], seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="output folder of examples/train_default_tokenizer.py")
    parser.add_argument("--pipeline", default=None, help="pipeline to measure (default: RUN/pipeline)")
    parser.add_argument(
        "--raster-steps", type=int, default=None, help="default: the run's tokenizer + renderer steps; 0: no raster VQ baseline"
    )
    parser.add_argument(
        "--earlier-budget",
        default=None,
        help="results.json of the pipeline an --init-from run continued: its training budget is reported with this one's",
    )
    parser.add_argument("--raster-grid", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--decoder-steps", type=int, nargs="+", default=[50, 10])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    run, out = Path(args.run).expanduser(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    pipe = SelftokDecoderPipeline.from_pretrained(args.pipeline or str(run / "pipeline"), dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    tc = pipe.image_tokenizer.config
    size, K = tc.image_size, tc.num_image_tokens
    bits = K * math.log2(tc.codebook_size)
    sets = held_out_sets(size)

    budget = {}
    for stage in ("vae-run", "tokenizer", "renderer"):
        if (run / stage / "log.jsonl").exists():
            steps, seconds = run_steps_and_seconds(run / stage / "log.jsonl")
            budget[f"selftok_{stage}"] = {"steps": steps, "seconds": round(seconds)}
    selftok_steps = sum(v["steps"] for k, v in budget.items() if k != "selftok_vae-run")
    if args.earlier_budget:
        # The continued pipeline's own training comes first; the raster default stays this run's steps only.
        budget = {"continued_from": json.loads(Path(args.earlier_budget).read_text())["training_budget"], **budget}

    # Raster VQ at the same bits, trained on the same data and batch for as many steps as Selftok's two stages.
    raster_path = out / "raster-vq"
    raster_steps = selftok_steps if args.raster_steps is None else args.raster_steps
    raster_codebook = int(2 ** round(bits / args.raster_grid**2))
    if not raster_steps:
        raster = None
    elif (raster_path / "config.json").exists():
        raster = RasterVQAutoencoder.from_pretrained(str(raster_path))
        budget["raster_vq"] = json.loads((raster_path / "budget.json").read_text())
    else:
        raster = RasterVQAutoencoder(image_size=size, downsample=size // args.raster_grid, channels=32, codebook_size=raster_codebook)
        history: list = []
        started = time.perf_counter()
        batches = StepBatches(datasets.load_from_disk(str(run / "train-mix")), args.batch_size, size, seed=args.seed)
        train_raster_vq(raster, batches, raster_steps, args.lr, args.seed, log_every=100, history=history)
        raster.save_pretrained(str(raster_path))
        budget["raster_vq"] = {"steps": raster_steps, "seconds": round(time.perf_counter() - started)}
        (raster_path / "budget.json").write_text(json.dumps(budget["raster_vq"]))
        (raster_path / "history.json").write_text(json.dumps(history))
    bits_per_image = {"selftok": bits}
    if raster is not None:
        bits_per_image["raster_vq"] = raster.num_image_tokens * math.log2(raster.config.codebook_size)

    results: dict = {"bits_per_image": bits_per_image, "training_budget": budget, "sets": {}, "prefix_psnr": {}}
    prefix_lengths = sorted({2**i for i in range(int(math.log2(K)) + 1)} | {K})
    strips = []
    for name, pixels in sets.items():
        target = to_unit(pixels)
        row: dict = {"images": len(target)}
        with torch.no_grad():
            ids = pipe.encode(pixels)
            decoded = {}
            for steps in args.decoder_steps:
                generator = torch.Generator().manual_seed(args.seed)
                decoded[f"selftok_decoder_{steps}_steps"] = pipe(ids, num_inference_steps=steps, generator=generator, output_type="pt").images
            decoded["selftok_renderer"] = pipe(ids, use_renderer=True, output_type="pt").images
            if raster is not None:
                decoded["raster_vq"] = to_unit(raster.decode(raster.encode(pixels)))
            for key, images in decoded.items():
                row[key] = scores(images, target)
            prefix = {}
            steps = min(args.decoder_steps)
            for p in prefix_lengths:
                generator = torch.Generator().manual_seed(args.seed)
                images = pipe(ids, num_inference_steps=steps, prefix_length=p, generator=generator, output_type="pt").images
                prefix[p] = psnr(images, target).mean().item()
                if p in (1, 4, 16) or p == K:
                    strips.append((name, p, images[:2]))
            results["prefix_psnr"][name] = {"decoder_steps": steps, "psnr": prefix}
        decoded["bicubic_best"], choice = best_bicubic_thumbnail(target, bits)
        row["bicubic_best"] = scores(decoded["bicubic_best"], target) | {k: choice[k] for k in ("side", "bits_per_channel", "bits")}
        results["sets"][name] = row
        print(name, json.dumps(row))
        write_reconstructions(out / f"reconstructions_{name}.png", target[:8], decoded)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    write_table(out / "results.md", results)
    write_coarse_to_fine(out / "coarse_to_fine.png", strips, sets)
    plot_prefix_curve(out / "prefix_psnr.png", results["prefix_psnr"], K)
    print((out / "results.md").read_text())


def write_reconstructions(path: Path, target: torch.Tensor, decoded: dict[str, torch.Tensor], scale: int = 3) -> None:
    """Rows: images; columns: input, then every method (named in ``path.txt``)."""
    write_grid(str(path), [target] + [images[: len(target)] for images in decoded.values()], scale)
    path.with_suffix(".txt").write_text("columns: input | " + " | ".join(decoded) + "\n")


def write_coarse_to_fine(path: Path, strips: list, sets: dict[str, torch.Tensor], scale: int = 3) -> None:
    """Rows: two images of each set; columns: decodes from the first 1, 4, 16, K tokens, then the input."""
    columns = []
    for name in sets:
        per_prefix = [images[:2] for set_name, _, images in strips if set_name == name]
        columns.append(per_prefix + [to_unit(sets[name][:2])])
    # One column per prefix (then the input), the sets' rows stacked.
    write_grid(str(path), [torch.cat(parts) for parts in zip(*columns)], scale)


def write_table(path: Path, results: dict) -> None:
    sets = results["sets"]
    methods = [k for k in next(iter(sets.values())) if k != "images"]
    lines = ["| held-out set | n | " + " | ".join(methods) + " |", "|" + "---|" * (len(methods) + 2)]
    for name, row in sets.items():
        lines.append(f"| {name} | {row['images']} | " + " | ".join(f"{row[m]['psnr']:.2f} / {row[m]['ssim']:.3f}" for m in methods) + " |")
    prefix = ["", "PSNR (dB) of the decoder from the first p tokens (AR order):", ""]
    lengths = list(next(iter(results["prefix_psnr"].values()))["psnr"])
    prefix += ["| set | " + " | ".join(f"p={p}" for p in lengths) + " |", "|" + "---|" * (len(lengths) + 1)]
    for name, entry in results["prefix_psnr"].items():
        prefix.append(f"| {name} | " + " | ".join(f"{v:.2f}" for v in entry["psnr"].values()) + " |")
    bits = results["bits_per_image"]
    raster = f"raster VQ {bits['raster_vq']:.0f}, " if "raster_vq" in bits else ""
    header = (
        f"PSNR (dB) / SSIM, images in [0, 1]. Bits per image: Selftok {bits['selftok']:.0f}, {raster}"
        f"bicubic <= {bits['selftok']:.0f} (best thumbnail per set; side and bits in results.json).\n\n"
        f"Training budget (steps, wall seconds of the training runs): {json.dumps(results['training_budget'])}\n\n"
    )
    path.write_text(header + "\n".join(lines + prefix) + "\n")


def plot_prefix_curve(path: Path, prefix_psnr: dict, num_tokens: int) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no prefix_psnr.png (pip install -e '.[eval]')")
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, entry in prefix_psnr.items():
        lengths = [int(p) for p in entry["psnr"]]
        ax.plot(lengths, list(entry["psnr"].values()), marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"tokens given (AR prefix of {num_tokens})")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(f"decoder from the first p tokens ({next(iter(prefix_psnr.values()))['decoder_steps']} steps)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
