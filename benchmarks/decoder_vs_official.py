"""50-step decode, ours against the official Selftok code side by side, and what bfloat16 costs.

    python benchmarks/decoder_vs_official.py                       # batches 1..32, guidance 1 and 3, bf16 costs
    python benchmarks/decoder_vs_official.py --batches 1,8 --guidance 3 --repeats 7 --skip-bf16

**Speed against the official code.** Both run in this one process, on the reference fixture's weights and config
(``$SELFTOK_REFERENCE_DIR``, default ``tests/fixtures/official_reference``: random weights, reduced sizes), fp32,
CPU, the same ids and noise. The official side is the body of ``SelftokPipeline.decoding`` without the VAE
(``benchmarks/official_selftok.py``; needs the official code, ``einops`` and ``timm``), ours is
``SelftokDecoderPipeline(..., output_type="latent")``. Every repeat times one official and one ours call back to back
(alternating which goes first); the ratio printed is the median of the per-repeat ratios official / ours, with
the median times. ``max|diff|`` is the largest absolute difference of the final latents.

Guidance 1 is the official ``decoding`` (which never guides). With guidance > 1 the official side is its
``RectifiedFlow.sample_one_step`` guided step; ours is timed with ``official_guidance=True``, the call that
reproduces it, and the difference of the default (training-consistent) guidance from it is printed as well:
the official guided step embeds the unconditional branch at ``floor(1000 τ)`` (clamped to 999) and runs the
conditional branch without ``context_see_xt``.

**bfloat16.** On the same fixture: ours in bf16 (decoder and renderer; the tokenizer stays fp32) against ours in
fp32, timed the same way, with the relative L2 error ``||bf16 - fp32|| / ||fp32||`` of the final latents. Then the
embedded trained pipeline (``selftok_hf/assets/selftok-small32``, 32 px) on the bundled photos and Fashion-MNIST
images: PSNR against the input image of the fp32 and bf16 reconstructions (50-step decoder with fixed noise, and the
renderer), and PSNR of bf16 against fp32.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
import warnings
from importlib import resources
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from official_selftok import build_official_tokenizer, official_decode_latents  # noqa: E402

from selftok_hf import SelftokDecoderPipeline  # noqa: E402
from selftok_hf.assets import EMBEDDED_PIPELINE, bundled_fashion_images, bundled_images  # noqa: E402
from selftok_hf.conversion.convert_selftok_checkpoint import (  # noqa: E402
    build_pipeline_from_official,
    load_official_config,
    load_official_state_dict,
)
from selftok_hf.evaluation.metrics import psnr  # noqa: E402
from selftok_hf.vae import RandomWeightsWarning  # noqa: E402

DEFAULT_REFERENCE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "official_reference"


def paired_times(first, second, repeats: int) -> tuple[list[float], list[float]]:
    """Time ``first()`` and ``second()`` back to back ``repeats`` times (order alternating), after one warm-up each."""
    first(), second()
    times_a, times_b = [], []
    for r in range(repeats):
        order = [(first, times_a), (second, times_b)]
        for fn, out in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return times_a, times_b


def median_ratio(slow: list[float], fast: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(slow, fast))


def load_official(reference: Path):
    return build_official_tokenizer(reference / "config.yaml", reference / "official_tokenizer_state_dict.safetensors")


def load_ours(reference: Path) -> SelftokDecoderPipeline:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)  # the VAE is never used here (output_type="latent")
        ours = build_pipeline_from_official(
            load_official_config(str(reference / "config.yaml")),
            load_official_state_dict(str(reference / "official_tokenizer_state_dict.safetensors")),
            load_official_config(str(reference / "renderer_config.yaml")),
            load_official_state_dict(str(reference / "official_renderer_state_dict.safetensors")),
        )
    ours.set_progress_bar_config(disable=True)
    return ours


def inputs(ours: SelftokDecoderPipeline, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ids in code order (the official order; ours takes them flipped) and initial noise."""
    g = torch.Generator().manual_seed(seed)
    cfg = ours.image_tokenizer.config
    ids = torch.randint(0, cfg.codebook_size, (batch, cfg.num_image_tokens), generator=g)
    return ids, torch.randn(ours._latent_shape(batch), generator=g)


def compare_official(args, official, params, ours) -> None:
    print(f"\n50-step decode, official vs ours (fp32, {torch.get_num_threads()} threads, {args.repeats} paired repeats, medians)")
    print(f"{'guidance':>8} {'batch':>5} {'official ms':>12} {'ours ms':>9} {'ratio':>7} {'max|diff|':>10}  note")
    for g in args.guidance:
        for batch in args.batches:
            ids, noise = inputs(ours, batch, seed=batch)

            def run_official():
                return official_decode_latents(official, params, ids, noise, steps=args.steps, cfg_scale=g)

            def run_ours(official_guidance=g > 1):
                return ours(ids.flip(1), num_inference_steps=args.steps, guidance_scale=g, latents=noise,
                            output_type="latent", official_guidance=official_guidance).images

            with torch.no_grad():
                t_official, t_ours = paired_times(run_official, run_ours, args.repeats)
                reference = run_official()
                diff = (run_ours() - reference).abs().max().item()
                note = "official decoding" if g <= 1 else "official_guidance=True"
                if g > 1:
                    note += f"; default guidance differs by {(run_ours(False) - reference).abs().max().item():.1e}"
            print(f"{g:>8g} {batch:>5} {statistics.median(t_official) * 1e3:>12.1f} {statistics.median(t_ours) * 1e3:>9.1f} "
                  f"{median_ratio(t_official, t_ours):>6.2f}x {diff:>10.1e}  {note}", flush=True)


def relative_l2(x: torch.Tensor, reference: torch.Tensor) -> float:
    return ((x.float() - reference.float()).norm() / reference.float().norm()).item()


def bf16_costs(args, ours) -> None:
    print(f"\nbfloat16 vs float32, ours on the fixture (batch {args.bf16_batch}, {args.repeats} paired repeats, medians)")
    fp32 = ours
    bf16 = copy.deepcopy(fp32).to(dtype=torch.bfloat16)
    assert bf16.image_tokenizer.dtype == torch.float32 and bf16.transformer.dtype == torch.bfloat16
    ids, noise = inputs(fp32, args.bf16_batch, seed=0)
    ids = ids.flip(1)
    with torch.no_grad():
        for g in args.guidance:
            run = [lambda p=p: p(ids, num_inference_steps=args.steps, guidance_scale=g, latents=noise, output_type="latent").images for p in (fp32, bf16)]
            t32, t16 = paired_times(*run, args.repeats)
            print(f"  decoder, guidance {g:g}: bf16 {median_ratio(t32, t16):.2f}x the fp32 speed (fp32 {statistics.median(t32) * 1e3:.0f} ms, "
                  f"bf16 {statistics.median(t16) * 1e3:.0f} ms), relative L2 {relative_l2(run[1](), run[0]()):.2e}")
        run = [lambda p=p: p(ids, use_renderer=True, output_type="latent").images for p in (fp32, bf16)]
        t32, t16 = paired_times(*run, args.repeats)
        print(f"  renderer: bf16 {median_ratio(t32, t16):.2f}x the fp32 speed, relative L2 {relative_l2(run[1](), run[0]()):.2e}")

    print(f"\nbfloat16 vs float32 on real images: embedded {EMBEDDED_PIPELINE} (PSNR in dB against the input, mean over images)")
    path = str(resources.files("selftok_hf") / "assets" / EMBEDDED_PIPELINE)
    pipes = {name: SelftokDecoderPipeline.from_pretrained(path, dtype=dtype) for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    for p in pipes.values():
        p.set_progress_bar_config(disable=True)
    for label, images in (("photos", bundled_images()), ("fashion", bundled_fashion_images())):
        images = list(images.values())
        target = (pipes["fp32"].image_processor(images, return_tensors="pt").pixel_values + 1) / 2
        ids = {name: p.encode(images) for name, p in pipes.items()}
        agree = (ids["fp32"] == ids["bf16"]).float().mean().item()
        noise = torch.randn(pipes["fp32"]._latent_shape(len(images)), generator=torch.Generator().manual_seed(0))
        for how, kwargs in (("decoder", dict(num_inference_steps=args.steps, latents=noise)), ("renderer", dict(use_renderer=True))):
            out = {name: p(ids["fp32"], output_type="pt", **kwargs).images for name, p in pipes.items()}
            full_bf16 = pipes["bf16"](ids["bf16"], output_type="pt", **kwargs).images
            print(f"  {label:<8} {how:<8} fp32 {psnr(out['fp32'], target).mean():6.2f}  bf16 {psnr(out['bf16'], target).mean():6.2f}  "
                  f"bf16 encode+decode {psnr(full_bf16, target).mean():6.2f}  bf16 vs fp32 {psnr(out['bf16'], out['fp32']).mean():6.2f}  "
                  f"(bf16 encode: {agree:.1%} of ids equal)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reference", type=Path, default=Path(os.environ.get("SELFTOK_REFERENCE_DIR", DEFAULT_REFERENCE)))
    parser.add_argument("--official-src", default=None, help="checkout (or bare git dir) of selftok-team/SelftokTokenizer; default $SELFTOK_OFFICIAL_SRC")
    parser.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--guidance", type=lambda s: [float(x) for x in s.split(",")], default=[1.0, 3.0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--bf16-batch", type=int, default=8)
    parser.add_argument("--skip-official", action="store_true")
    parser.add_argument("--skip-bf16", action="store_true")
    args = parser.parse_args()
    if args.official_src:
        os.environ["SELFTOK_OFFICIAL_SRC"] = args.official_src
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fixture {args.reference}")
    ours = load_ours(args.reference)
    if not args.skip_official:
        compare_official(args, *load_official(args.reference), ours)
    if not args.skip_bf16:
        bf16_costs(args, ours)


if __name__ == "__main__":
    main()
