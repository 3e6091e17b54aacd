"""Pixel space vs a small trained VAE's latents for the embedded default: held-out curves at equal tokenizer steps.

Both runs come from ``examples/train_default_tokenizer.py`` with the same data, tokenizer and decoder sizes, batch,
learning rate, warm-up, EMA and seed; only ``--latent-space`` differs. The curve is what the trainer logs every
``--eval-every`` steps: PSNR of a 10-step decode (fixed noise, EMA weights) of fixed random crops of the
``validation`` photos, which are used for this choice only and never for reported numbers.

    python benchmarks/default_tokenizer_latent_spaces.py --run pixel=~/runs/default32-pixel --run vae=~/runs/default32-vae \
        --out benchmarks/results/default32
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def held_out_curve(run: Path) -> dict[int, float]:
    """Step -> validation PSNR from ``RUN/tokenizer/log.jsonl`` (the last value logged for a step wins)."""
    curve = {}
    for line in (run / "tokenizer" / "log.jsonl").read_text().splitlines():
        logs = json.loads(line)
        psnr = next((v for k, v in logs.items() if k.startswith("eval/psnr_")), None)
        if psnr is not None:
            curve[logs["step"]] = psnr
    return dict(sorted(curve.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, metavar="NAME=DIR", help="a run folder and its name")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    curves = {}
    for entry in args.run:
        name, folder = entry.split("=", 1)
        curves[name] = held_out_curve(Path(folder).expanduser())
    steps = sorted({s for curve in curves.values() for s in curve})
    lines = ["| tokenizer step | " + " | ".join(curves) + " |", "|" + "---|" * (len(curves) + 1)]
    for step in steps:
        lines.append(f"| {step} | " + " | ".join(f"{c[step]:.2f}" if step in c else "" for c in curves.values()) + " |")
    text = "Validation PSNR (dB) of a 10-step decode, by tokenizer step (equal steps, equal batch)\n\n" + "\n".join(lines) + "\n"
    (out / "latent_space_comparison.md").write_text(text)
    (out / "latent_space_comparison.json").write_text(json.dumps(curves, indent=2))
    print(text)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, curve in curves.items():
        ax.plot(list(curve), list(curve.values()), marker="o", label=name)
    ax.set_xlabel("tokenizer step (batch 16)")
    ax.set_ylabel("validation PSNR, 10-step decode (dB)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latent_space_comparison.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
