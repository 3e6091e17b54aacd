"""Convert the official Selftok release (github selftok-team/SelftokTokenizer) into a diffusers folder, then use it:
image -> 512 tokens -> image with the 50-step decoder and the one-step renderer.

    python examples/convert_official_weights.py --config configs/res256/256-eval.yml --checkpoint tokenizer_512_ckpt.pth \\
        --renderer-config configs/renderer/renderer-eval.yml --renderer-checkpoint renderer_512_ckpt.pth \\
        --vae stable-diffusion-3-medium/vae --output converted
    python examples/convert_official_weights.py --tiny --output /tmp/converted    # offline: the reduced fixture

``--tiny`` converts ``tests/fixtures/official_reference``: state dicts in the official format and layout (random
weights, reduced sizes, written by the official code), without an SD3 VAE (a seeded random tiny stand-in, with a
warning). The converter is strict: an unknown, missing or mis-shaped official key is an error that names it. Ids
come back in AR order (position 0 coarsest); the official code's order is ``ids.flip(1)``.

The output folder (default ``converted``) is written beside itself and renamed into place when complete. Running the
script again with the same ``--output`` stops at once (exit status 2, before converting anything) with a message
saying the folder exists; pass ``--overwrite`` to replace it: the new conversion replaces the old folder whole (no
stale files kept), and only once it is complete, so a failed run leaves the previous folder as it was.
"""

import argparse
from pathlib import Path

import torch

from selftok_hf import SelftokDecoderPipeline
from selftok_hf.assets import bundled_images
from selftok_hf.conversion.convert_selftok_checkpoint import convert_official_checkpoint
from selftok_hf.evaluation.metrics import psnr
from selftok_hf.utils.atomic import is_non_empty_folder

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "official_reference"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="convert the repository's reduced official-format fixture")
    parser.add_argument("--config", help="official tokenizer YAML (configs/res256/256-eval.yml)")
    parser.add_argument("--checkpoint", help="official tokenizer checkpoint (.pth)")
    parser.add_argument("--renderer-config", help="official renderer YAML (configs/renderer/renderer-eval.yml)")
    parser.add_argument("--renderer-checkpoint", help="official renderer checkpoint (.pth)")
    parser.add_argument("--vae", help="a diffusers SD3 AutoencoderKL folder (stable-diffusion-3-medium/vae)")
    parser.add_argument("--output", default="converted", help="output folder (default: converted)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing output folder, once the new one is complete (default: refuse)"
    )
    parser.add_argument("--steps", type=int, default=50, help="decoder steps (default: 50, the official sampler)")
    args = parser.parse_args()
    if args.tiny:
        args.config, args.checkpoint = FIXTURE / "config.yaml", FIXTURE / "official_tokenizer_state_dict.safetensors"
        args.renderer_config, args.renderer_checkpoint = FIXTURE / "renderer_config.yaml", FIXTURE / "official_renderer_state_dict.safetensors"
    elif not (args.config and args.checkpoint):
        parser.error("pass --tiny, or at least --config and --checkpoint")
    if is_non_empty_folder(args.output) and not args.overwrite:
        parser.error(f"--output {args.output}: the folder exists and is not empty (a previous run?); pass --overwrite to replace it")

    # 1. Official YAML + state dicts -> model_index.json, image_tokenizer/, transformer/, renderer/, vae/, scheduler/.
    try:
        convert_official_checkpoint(
            str(args.config),
            str(args.checkpoint),
            args.output,
            renderer_config_path=args.renderer_config and str(args.renderer_config),
            renderer_checkpoint_path=args.renderer_checkpoint and str(args.renderer_checkpoint),
            vae_path=args.vae,
            overwrite=args.overwrite,
        )
    except FileExistsError as error:  # --output names a file
        parser.error(f"--output {args.output}: {error}")
    print(f"wrote {args.output} (components: {', '.join(sorted(p.name for p in Path(args.output).iterdir() if p.is_dir()))})")

    # 2. The converted folder is an ordinary diffusers pipeline.
    pipe = SelftokDecoderPipeline.from_pretrained(args.output)
    pipe.set_progress_bar_config(disable=True)
    cfg = pipe.image_tokenizer.config
    print(f"tokenizer: {cfg.image_size} px -> {cfg.num_image_tokens} tokens from a codebook of {cfg.codebook_size}")
    pixel_values = pipe.image_processor([bundled_images()["coffee.jpg"]], return_tensors="pt").pixel_values
    token_ids = pipe.encode(pixel_values)
    print(f"coffee.jpg ids (AR order): {token_ids[0, :8].tolist()} ...; official order: {token_ids.flip(1)[0, :8].tolist()} ...")
    target = (pixel_values + 1) / 2
    decoded = pipe(token_ids, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0), output_type="pt").images
    print(f"PSNR {args.steps}-step decoder: {psnr(decoded, target).item():.2f} dB")
    if pipe.renderer is not None:
        print(f"PSNR renderer: {psnr(pipe(token_ids, use_renderer=True, output_type='pt').images, target).item():.2f} dB")


if __name__ == "__main__":
    main()
