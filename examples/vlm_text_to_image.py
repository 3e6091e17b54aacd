"""Text-to-image with a Selftok VLM: prompt -> LM samples K visual tokens (classifier-free guidance) -> Selftok decoder.

    python examples/vlm_text_to_image.py --pipeline path/to/selftok-vlm --prompt "a red apple on a table"
    python examples/vlm_text_to_image.py --tiny            # offline: seeded random tiny VLM (meaningless images)
"""

import argparse

import torch

from selftok_hf import SelftokPipeline
from selftok_hf.evaluation import side_by_side
from selftok_hf.renamed import add_renamed_option
from selftok_hf.testing.tiny_vlm import tiny_selftok_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pipeline", help="a SelftokPipeline folder")
    source.add_argument("--tiny", action="store_true", help="use a seeded random tiny VLM (no download, random weights)")
    parser.add_argument("--prompt", nargs="+", default=["a red apple on a wooden table"])
    parser.add_argument("--negative-prompt", default=None)
    parser.add_argument("--guidance-scale", type=float, default=5.0)
    parser.add_argument("--num-images", type=int, default=2, help="images per prompt")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--steps", type=int, default=50, help="flow steps of the decoder (as selftok generate --steps)")
    add_renamed_option(parser, "--decoder-steps", "--steps")
    parser.add_argument("--renderer", action="store_true", help="decode with the one-step renderer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="selftok_t2i.png")
    args = parser.parse_args()

    if args.tiny:
        print("NOTE: --tiny runs a SEEDED RANDOM tiny VLM and decoder; the images carry no meaning.")
        pipe = tiny_selftok_pipeline("llama", seed=args.seed)
    else:
        pipe = SelftokPipeline.from_pretrained(args.pipeline)
        if torch.cuda.is_available():
            pipe.to("cuda")
    n = len(args.prompt) * args.num_images
    out = pipe(
        args.prompt,
        negative_prompt=args.negative_prompt,
        guidance_scale=args.guidance_scale,
        num_images_per_prompt=args.num_images,
        temperature=args.temperature,
        top_k=args.top_k,
        generator=[torch.Generator().manual_seed(args.seed + i) for i in range(n)],
        num_inference_steps=args.steps,
        use_renderer=args.renderer,
    )
    for i, ids in enumerate(out.token_ids.tolist()):
        print(f"{args.prompt[i // args.num_images]!r} image {i % args.num_images}: ids {ids[:8]} ...")
    rows = [out.images[i * args.num_images : (i + 1) * args.num_images] for i in range(len(args.prompt))]
    side_by_side(rows).save(args.output)
    print(f"wrote {args.output} (one row per prompt)")


if __name__ == "__main__":
    main()
