"""Quickstart: images -> Selftok token ids -> images, with the 50-step diffusion decoder, the one-step renderer and
coarse-to-fine decodes from the first p tokens (token order is autoregressive: position 0 is the coarsest).

    python examples/quickstart.py                          # the bundled trained 32-px model and sample images (offline)
    python examples/quickstart.py --pipeline converted/    # a converted official pipeline (selftok convert)
    python examples/quickstart.py --images a.jpg b.png --steps 25

Writes the ids as JSON and one PNG: per image, input | decoder | renderer | decodes from the first 1, 2, 4, ... tokens.
"""

import argparse
import json

import PIL.Image
import torch

from selftok_hf import SelftokDecoderPipeline
from selftok_hf.assets import bundled_fashion_images, bundled_images, embedded_pipeline
from selftok_hf.evaluation import side_by_side
from selftok_hf.evaluation.metrics import psnr
from selftok_hf.image_processing_selftok import postprocess_images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", help="a SelftokDecoderPipeline folder (default: the bundled trained 32-px model)")
    parser.add_argument("--images", nargs="+", help="image files (default: the bundled sample photos and Fashion-MNIST items)")
    parser.add_argument("--steps", type=int, default=50, help="diffusion decoder steps (default: 50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="quickstart", help="writes OUTPUT.json (ids) and OUTPUT.png (default: quickstart)")
    args = parser.parse_args()

    pipe = SelftokDecoderPipeline.from_pretrained(args.pipeline) if args.pipeline else embedded_pipeline()
    pipe.set_progress_bar_config(disable=True)
    images = {path: PIL.Image.open(path).convert("RGB") for path in args.images} if args.images else {**bundled_images(), **bundled_fashion_images()}
    K = pipe.image_tokenizer.config.num_image_tokens

    # 1. Images -> ids (B, K), AR order. The pipeline's image processor resizes and centre-crops to its image size.
    pixel_values = pipe.image_processor(list(images.values()), return_tensors="pt").pixel_values
    token_ids = pipe.encode(pixel_values)
    with open(f"{args.output}.json", "w") as f:
        json.dump(dict(zip(images, token_ids.tolist())), f)

    # 2. Ids -> images: the diffusion decoder (same seed, same noise) and the one-step renderer.
    target = (pixel_values + 1) / 2
    columns = {"decoder": pipe(token_ids, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(args.seed), output_type="pt").images}
    if pipe.renderer is not None:
        columns["renderer"] = pipe(token_ids, use_renderer=True, output_type="pt").images
    for name, decoded in columns.items():
        print(f"PSNR {name}: {psnr(decoded, target).mean():.2f} dB")

    # 3. Coarse to fine: decode from the first p tokens only (the rest hidden from the decoder at every step);
    #    p = K is the "decoder" column.
    for p in [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256) if p < K]:
        columns[f"{p} tokens"] = pipe(
            token_ids, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(args.seed), prefix_length=p, output_type="pt"
        ).images

    for name, ids in zip(images, token_ids.tolist()):
        print(f"{name}: {K} tokens, first 8 (coarsest): {ids[:8]}")
    rows = zip(postprocess_images(target, "pil"), *(postprocess_images(c, "pil") for c in columns.values()))
    grid = side_by_side([list(row) for row in rows])
    zoom = max(1, 128 // target.shape[-1])  # 32-px images are tiny: enlarge them
    grid.resize((grid.width * zoom, grid.height * zoom), PIL.Image.NEAREST).save(f"{args.output}.png")
    print(f"wrote {args.output}.json and {args.output}.png (columns: input | {' | '.join(columns)})")


if __name__ == "__main__":
    main()
