"""Held-out evaluation of the shapes-world Selftok VLM trained by ``examples/train_shapes_vlm.py``.

    python benchmarks/shapes_vlm.py --run ~/runs/shapes-vlm --out benchmarks/results/shapes_vlm

Measured (the split is the training script's ``prompt_split``; nothing here was trained on or tuned on):

1. **Codec**: ground-truth scenes of all 84 enumerated prompts (8 each) encoded and decoded by the renderer the VLM
   uses (and by 10 steps of the diffusion decoder): the exact detector's verdict on the prompt's checks, the stricter
   exact match (every shape and colour of the scene found, nothing else), PSNR.
2. **Text-to-image** at every stage (``init``: the random LM, ``vlm-init``; ``sft``: ``sft-vlm``; ``rl``: ``rl/pipeline``), sampled as GRPO samples (temperature
   1, no guidance, renderer): GenEval-style accuracy per category on (a) the 43 enumerated held-out prompts,
   (b) held-out sentences outside them (colours on both sides of a relation, coloured counts, ...), (c) the quoted
   sentences, (d) held-in prompts for reference. 95% Wilson intervals per category (images are the unit; one
   training seed); the overall interval treats categories as independent binomials.
3. **Understanding**: ``describe(image, "What is shown?")`` on scenes of held-out sentences, scored aspect by aspect.
4. **Seconds per image** on this CPU for ``pipe(prompt, use_renderer=True)`` and the pipeline's defaults.

``--held-in-validation`` prints only held-in numbers of a run's ``rl/pipeline`` (text-to-image on held-in prompts,
describe on fresh scenes of them): the rule that chooses between runs, which never reads a reported set.

Writes ``results.json``, ``results.md`` and ``codec_reconstructions.png``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from selftok_hf import SelftokDecoderPipeline, SelftokPipeline
from selftok_hf.apps.quickstart import write_grid
from selftok_hf.rl import (
    CATEGORIES,
    ProgramReward,
    ShapeDetector,
    ShapesWorld,
    describe_scene,
    parse_prompt,
    program_accuracy,
)
from selftok_hf.rl.evaluation import shapes_describe, shapes_geneval

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("init", "sft", "rl")


def _training_script():
    spec = importlib.util.spec_from_file_location("train_shapes_vlm", ROOT / "examples" / "train_shapes_vlm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def wilson(successes: float, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion."""
    if n == 0:
        return (float("nan"), float("nan"))
    z, p = 1.959964, successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def with_intervals(accuracy: dict, counts: dict[str, int]) -> dict:
    """Per-category ``{"mean", "low", "high", "n"}``; overall = mean over categories with a normal interval."""
    rows, variances = {}, []
    for category, n in counts.items():
        p = accuracy[category]
        low, high = wilson(p * n, n)
        rows[category] = {"mean": p, "low": low, "high": high, "n": n}
        variances.append(p * (1 - p) / n)
    overall = accuracy["overall"]
    half = 1.959964 * math.sqrt(sum(variances)) / len(variances)
    rows["overall"] = {"mean": overall, "low": overall - half, "high": overall + half, "n": sum(counts.values())}
    return rows


def codec_report(decoder: SelftokDecoderPipeline, world: ShapesWorld, grid_path: Path | None = None) -> dict:
    """Ground-truth scenes through encode -> renderer and -> 10 decoder steps; with ``grid_path``, a PNG of 12 of
    them (columns: ground truth, renderer, 10 decoder steps; one scene of every 7th prompt, 4x zoom)."""
    data = world.generate(world.all_prompts(), images_per_prompt=8, seed=20_000)
    decoded = {}
    categories = [s.category for s in data["specs"]]
    detector, reward = ShapeDetector(), ProgramReward()
    report = {}
    with torch.no_grad():
        ids = decoder.encode(data["images"] * 2 - 1)
        for name, kwargs in (("renderer", {"use_renderer": True}), ("decoder_10_steps", {"num_inference_steps": 10})):
            torch.manual_seed(0)
            images = decoder(ids, output_type="pt", **kwargs).images
            decoded[name] = images
            results = reward.evaluate(data["prompts"], images, [{"spec": s} for s in data["specs"]])
            accuracy = program_accuracy(results, categories)
            found = detector(images)
            exact = [sorted((d.color, d.shape) for d in f) == sorted((i.color, i.shape) for i in scene) for f, scene in zip(found, data["scenes"])]
            mse = (images - data["images"]).pow(2).flatten(1).mean(1)
            report[name] = {
                "prompt_checks": with_intervals(accuracy, {c: categories.count(c) for c in CATEGORIES}),
                "exact_scene": float(np.mean(exact)),
                "psnr": float((10 * torch.log10(1 / mse.clamp_min(1e-10))).mean()),
                "images": len(images),
            }
    if grid_path is not None:
        shown = slice(0, len(data["images"]), 8 * 7)
        write_grid(str(grid_path), [data["images"][shown]] + [images[shown].clamp(0, 1) for images in decoded.values()], scale=4)
    return report


def evaluation_sets(world: ShapesWorld, split, also_held_out) -> dict[str, list]:
    enumerated = {s.text() for s in world.all_prompts()}
    rng = np.random.default_rng(2026)
    grammar = {}
    for category in ("two_objects", "counting", "position", "color_attr"):
        found = {}
        for _ in range(5000):
            spec = world.sample_prompt(rng, category=category, split=split, held_out=True)
            if spec.text() not in enumerated and spec.text() not in also_held_out:
                found.setdefault(spec.text(), spec)
            if len(found) == 15:
                break
        grammar.update(found)
    return {
        "held_out_enumerated": list(split.held_out),
        "held_out_grammar": list(grammar.values()),
        "quoted": [parse_prompt(t) for t in also_held_out],
        "held_in_enumerated": [s for s in split.held_in if not split.is_held_out(s)],
    }


def t2i_report(pipe: SelftokPipeline, sets: dict, images_per_prompt: dict[str, int]) -> dict:
    report = {}
    for name, specs in sets.items():
        n = images_per_prompt[name]
        accuracy = shapes_geneval(pipe, specs, images_per_prompt=n, seed=7, use_renderer=True)
        counts = {c: n * sum(s.category == c for s in specs) for c in CATEGORIES if any(s.category == c for s in specs)}
        report[name] = with_intervals(accuracy, counts)
    return report


def describe_report(pipe: SelftokPipeline, world: ShapesWorld, sets: dict) -> dict:
    specs = sets["held_out_enumerated"] + sets["held_out_grammar"] + sets["quoted"]
    data = world.generate(specs, images_per_prompt=3, seed=31_000)
    result = shapes_describe(pipe, data["scenes"], data["images"])
    n = len(data["scenes"])
    examples = [{"truth": describe_scene(s), "answer": a} for s, a in zip(data["scenes"][:12], result["answers"][:12])]
    return {aspect: {"mean": v, "interval": wilson(v * n, n), "n": n} for aspect, v in result.items() if aspect != "answers"} | {"examples": examples}


def held_in_validation(pipe: SelftokPipeline, world: ShapesWorld, split) -> dict[str, float]:
    """Held-in numbers only, to choose between runs without touching the reported held-out sets: text-to-image on the
    held-in enumerated prompts (8 images each, seed 101) and describe on fresh scenes of them (6 each, seed 41000)."""
    held_in = [s for s in split.held_in if not split.is_held_out(s)]
    data = world.generate(held_in, images_per_prompt=6, seed=41_000)
    return {
        "t2i_held_in": shapes_geneval(pipe, held_in, images_per_prompt=8, seed=101, use_renderer=True)["overall"],
        "describe_held_in": shapes_describe(pipe, data["scenes"], data["images"])["correct"],
    }


def seconds_per_image(pipe: SelftokPipeline, prompt: str, repeats: int = 5) -> dict:
    timings = {}
    for name, kwargs in (("renderer", {"use_renderer": True}), ("defaults", {})):
        pipe(prompt, output_type="pt", **kwargs)  # warm-up
        started = time.perf_counter()
        for i in range(repeats):
            pipe(prompt, generator=torch.Generator().manual_seed(i), output_type="pt", **kwargs)
        timings[name] = (time.perf_counter() - started) / repeats
    return timings


def _fmt(row: dict) -> str:
    return f"{row['mean']:.2f} [{row['low']:.2f}, {row['high']:.2f}]"


def markdown(results: dict) -> str:
    lines = ["# Shapes-world Selftok VLM: held-out evaluation", "", f"Run: `{results['run']}`; {results['bits_per_image']} bits per image.", ""]
    lines += ["## Codec: encode -> decode of ground-truth scenes (84 enumerated prompts x 8)", "",
              "| decoder | " + " | ".join(CATEGORIES) + " | overall | exact scene | PSNR |", "|---|" + "---|" * (len(CATEGORIES) + 3)]
    for name, row in results["codec"].items():
        checks = row["prompt_checks"]
        lines.append(f"| {name} | " + " | ".join(f"{checks[c]['mean']:.3f}" for c in CATEGORIES) + f" | {_fmt(checks['overall'])} | {row['exact_scene']:.3f} | {row['psnr']:.1f} |")
    for set_name in results["sets"]:
        lines += ["", f"## Text-to-image: {set_name} ({results['sets'][set_name]} prompts)", "", "| stage | category | accuracy [95% CI] | images |", "|---|---|---|---|"]
        for stage, report in results["t2i"].items():
            for category, row in report[set_name].items():
                lines.append(f"| {stage} | {category} | {_fmt(row)} | {row['n']} |")
    lines += ["", "## Understanding: describe(image, 'What is shown?') on scenes of held-out sentences", "", "| stage | aspect | accuracy [95% CI] | scenes |", "|---|---|---|---|"]
    for stage, report in results["describe"].items():
        for aspect, row in report.items():
            if aspect != "examples":
                lines.append(f"| {stage} | {aspect} | {row['mean']:.3f} [{row['interval'][0]:.3f}, {row['interval'][1]:.3f}] | {row['n']} |")
    lines += ["", "## Seconds per image (this CPU, batch 1)", ""] + [f"- {k}: {v:.2f} s" for k, v in results.get("seconds_per_image", {}).items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="the output folder of examples/train_shapes_vlm.py")
    parser.add_argument("--out", required=True)
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--images-per-prompt", type=int, default=8)
    parser.add_argument("--held-in-validation", action="store_true", help="print only the held-in numbers of rl/pipeline (the rule that picks a run) and exit")
    args = parser.parse_args()
    run, out = Path(args.run).expanduser(), Path(args.out)
    script = _training_script()
    world = ShapesWorld(image_size=32)
    split = script.prompt_split(world)
    if args.held_in_validation:
        pipe = script.attach_decoder(SelftokPipeline.from_pretrained(str(run / "rl" / "pipeline")), run / "codec" / "pipeline")
        pipe.set_progress_bar_config(disable=True)
        print(json.dumps({k: round(v, 3) for k, v in held_in_validation(pipe, world, split).items()}))
        return
    out.mkdir(parents=True, exist_ok=True)
    sets = evaluation_sets(world, split, script.ALSO_HELD_OUT)
    per_prompt = {"held_out_enumerated": args.images_per_prompt, "held_out_grammar": max(args.images_per_prompt // 2, 1),
                  "quoted": 2 * args.images_per_prompt, "held_in_enumerated": max(args.images_per_prompt // 2, 1)}

    decoder = SelftokDecoderPipeline.from_pretrained(str(run / "codec" / "pipeline"))
    decoder.set_progress_bar_config(disable=True)
    config = decoder.image_tokenizer.config
    # Stages measured by an earlier invocation on the same run are kept (a stage can be measured while the next trains).
    previous = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    if previous.get("run") != str(run):
        previous = {}
    results = {"run": str(run), "bits_per_image": int(config.num_image_tokens * math.log2(config.codebook_size)),
               "sets": {k: len(v) for k, v in sets.items()}, "codec": previous.get("codec") or codec_report(decoder, world, out / "codec_reconstructions.png"),
               "t2i": previous.get("t2i", {}), "describe": previous.get("describe", {})}
    print("codec:", {k: (v["prompt_checks"]["overall"]["mean"], v["exact_scene"]) for k, v in results["codec"].items()}, flush=True)
    pipe = None
    for stage in args.stages.split(","):
        if stage in results["t2i"]:
            print(f"{stage}: measured before, kept")
            continue
        path = run / {"init": "vlm-init", "sft": "sft-vlm", "rl": "rl/pipeline"}[stage]
        if not (path / "config.json").exists():
            print(f"skipping {stage}: no pipeline at {path}")
            continue
        # The random LM was saved with the tokenizer's pipeline (no renderer yet): give it the finished codec.
        pipe = script.attach_decoder(SelftokPipeline.from_pretrained(str(path)), run / "codec" / "pipeline")
        pipe.set_progress_bar_config(disable=True)
        results["t2i"][stage] = t2i_report(pipe, sets, per_prompt)
        print(stage, "t2i:", {k: round(v["overall"]["mean"], 3) for k, v in results["t2i"][stage].items()}, flush=True)
        if stage != "init":
            results["describe"][stage] = describe_report(pipe, world, sets)
            print(stage, "describe:", round(results["describe"][stage]["correct"]["mean"], 3), flush=True)
    if pipe is not None:
        results["seconds_per_image"] = seconds_per_image(pipe, "a red circle left of a blue square")
    elif "seconds_per_image" in previous:
        results["seconds_per_image"] = previous["seconds_per_image"]
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
