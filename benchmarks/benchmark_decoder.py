"""Speed and memory of Selftok encode, 50-step decode, one-step renderer and the SD3 VAE.

    python benchmarks/benchmark_decoder.py --size reduced --device cpu --batch 8
    python benchmarks/benchmark_decoder.py --size release --device cuda --dtype bfloat16 --batch 32

Prints, per stage: seconds per call, images/s, peak memory (CUDA: allocator peak; CPU: process max RSS),
and achieved FLOP/s. FLOPs of the transformers (encoder, decoder, renderer) are counted analytically from
the configs (2 FLOPs per multiply-add, matmuls and attention only); the VAE's come from
`torch.utils.flop_counter`. `--size reduced` uses the sizes of the shipped reference fixture, `release`
the released 256 px model (random weights: speed does not depend on them).
"""

from __future__ import annotations

import argparse
import resource
import time
import warnings

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from torch.utils.flop_counter import FlopCounterMode

from selftok_hf import SELFTOK_TINY_CONFIG, SelftokConfig, SelftokDecoderPipeline, SelftokDecoderTransformer, SelftokModel, SelftokRenderer
from selftok_hf.modeling_selftok_decoder import SELFTOK_DECODER_RELEASE_CONFIG, SELFTOK_RENDERER_RELEASE_CONFIG
from selftok_hf.pipeline_selftok_decoder import sampler_sigmas
from selftok_hf.vae import RandomWeightsWarning, random_sd3_vae

REDUCED_TOKENIZER = dict(SELFTOK_TINY_CONFIG)  # the reference fixture's sizes (see tests/fixtures)
REDUCED_DECODER = dict(SELFTOK_DECODER_RELEASE_CONFIG, sample_size=8, num_layers=2, num_attention_heads=2, pos_embed_max_size=12, num_image_tokens=32, token_dim=8)
REDUCED_RENDERER = dict(SELFTOK_RENDERER_RELEASE_CONFIG, sample_size=8, num_layers=2, num_attention_heads=2, num_image_tokens=32, token_dim=8)


# ------------------------------------------------------------------------------------ FLOP counts
def encoder_flops(cfg: SelftokConfig) -> float:
    """Per image: image-stream ViT blocks, image->query K/V, query blocks, both attentions, adaLN."""
    N = (cfg.latent_size // cfg.patch_size) ** 2
    h, q, K, L = cfg.encoder_hidden_size, cfg.query_dim, cfg.num_image_tokens, cfg.encoder_depth
    image = 12 * h * h * N + 2 * N * N * h  # qkv+out+mlp, attention (the last block skips this)
    queries = 12 * q * q * K + 2 * h * q * N + 2 * K * (N + K) * q + 6 * q * q * K
    macs = (L - 1) * image + L * queries + cfg.latent_channels * cfg.patch_size**2 * h * N + q * cfg.code_dim * K + K * cfg.codebook_size * cfg.code_dim
    return 2.0 * macs


def mmdit_flops(d: int, layers: int, N: int, n: int, context_see_xt: bool) -> float:
    """One MMDiT forward per image with N image and n context tokens (the last context block is pre-only)."""
    per_layer = 12 * d * d * N + 12 * d * d * n + 2 * N * (N + n) * d + 2 * n * ((N + n) if context_see_xt else n) * d
    last = 12 * d * d * N + 2 * d * d * n + 2 * N * (N + n) * d
    return 2.0 * ((layers - 1) * per_layer + last)


def decode_flops(cfg: SelftokConfig, dcfg, steps: int, cfg_scale: float = 1.0) -> float:
    d, N = dcfg.num_attention_heads * dcfg.attention_head_dim, (dcfg.sample_size // dcfg.patch_size) ** 2
    counts = cfg.token_schedule.visible_count(torch.from_numpy(sampler_sigmas(steps))).tolist()
    per_image = sum(mmdit_flops(d, dcfg.num_layers, N, n, dcfg.context_see_xt) for n in counts)
    if cfg_scale > 1:
        per_image += sum(mmdit_flops(d, dcfg.num_layers, N, n, dcfg.context_see_xt) for n in counts)
    return per_image


def renderer_flops(rcfg) -> float:
    d, N = rcfg.num_attention_heads * rcfg.attention_head_dim, (rcfg.sample_size // rcfg.patch_size) ** 2
    return mmdit_flops(d, rcfg.num_layers, N, rcfg.num_image_tokens, False)


# ------------------------------------------------------------------------------------ measuring
def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB (allocator peak)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB (process max RSS)"


def timed(fn, device: str, repeats: int) -> float:
    fn()  # warm-up
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def report(name: str, seconds: float, batch: int, flops_per_image: float | None, device: str) -> None:
    rate = f"{flops_per_image * batch / seconds / 1e12:8.3f} TFLOP/s" if flops_per_image else "      n/a"
    print(f"{name:<28} {seconds * 1e3:10.1f} ms/call {batch / seconds:10.2f} img/s  {rate}  peak {peak_memory(device)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["reduced", "release"], default="reduced")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance-scale", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--skip-vae", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)

    tok_cfg = SelftokConfig(**(REDUCED_TOKENIZER if args.size == "reduced" else {}))
    dec_kwargs = REDUCED_DECODER if args.size == "reduced" else SELFTOK_DECODER_RELEASE_CONFIG
    ren_kwargs = REDUCED_RENDERER if args.size == "reduced" else SELFTOK_RENDERER_RELEASE_CONFIG
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        vae = random_sd3_vae(0, tiny=args.size == "reduced")
    pipe = SelftokDecoderPipeline(
        SelftokModel(tok_cfg).eval(),
        SelftokDecoderTransformer(**dec_kwargs).eval(),
        vae,
        FlowMatchEulerDiscreteScheduler(shift=1.0),
        SelftokRenderer(**ren_kwargs).eval(),
    ).to(args.device)
    pipe.transformer.to(dtype)
    pipe.renderer.to(dtype)
    if dtype != torch.float32:
        pipe.vae.to(dtype)
    pipe.set_progress_bar_config(disable=True)
    B, dev = args.batch, args.device
    print(f"device {dev} ({torch.cuda.get_device_name() if dev.startswith('cuda') else f'{torch.get_num_threads()} threads'}), "
          f"{args.size} sizes, {args.dtype}, batch {B}, torch {torch.__version__}")

    latents = torch.randn(B, tok_cfg.latent_channels, tok_cfg.latent_size, tok_cfg.latent_size, device=dev)
    ids = torch.randint(0, tok_cfg.codebook_size, (B, tok_cfg.num_image_tokens), device=dev)
    with torch.no_grad():
        report("encode (latents -> ids)", timed(lambda: pipe.image_tokenizer.encode(latents=latents), dev, args.repeats), B, encoder_flops(tok_cfg), dev)
        t = timed(lambda: pipe(ids, num_inference_steps=args.steps, guidance_scale=args.guidance_scale, output_type="latent"), dev, args.repeats)
        report(f"decode {args.steps} steps (cfg {args.guidance_scale:g})", t, B, decode_flops(tok_cfg, pipe.transformer.config, args.steps, args.guidance_scale), dev)
        report("renderer (1 step)", timed(lambda: pipe(ids, use_renderer=True, output_type="latent"), dev, args.repeats), B, renderer_flops(pipe.renderer.config), dev)
        if not args.skip_vae:
            z = latents.to(dtype)
            with FlopCounterMode(display=False) as counter:
                pipe.vae.decode(z[:1])
            report("VAE decode", timed(lambda: pipe.vae.decode(z), dev, args.repeats), B, counter.get_total_flops(), dev)


if __name__ == "__main__":
    main()
