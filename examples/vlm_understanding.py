"""Image understanding with a Selftok VLM: images -> Selftok ids -> ``USER: <image> question ASSISTANT:`` -> answer.

    python examples/vlm_understanding.py --pipeline path/to/selftok-vlm --images photo.jpg --question "What is shown?"
    python examples/vlm_understanding.py --tiny            # offline: seeded random tiny VLM (meaningless answers)
"""

import argparse

import PIL.Image

from selftok_hf import SelftokPipeline
from selftok_hf.assets import bundled_images
from selftok_hf.processing_selftok import DEFAULT_QUESTION
from selftok_hf.testing.tiny_vlm import tiny_selftok_pipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pipeline", help="a SelftokPipeline folder")
    source.add_argument("--tiny", action="store_true", help="use a seeded random tiny VLM (no download, random weights)")
    parser.add_argument("--images", nargs="*", help="image files (default: the bundled sample photos)")
    parser.add_argument("--question", default=DEFAULT_QUESTION)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    args = parser.parse_args()

    if args.tiny:
        print("NOTE: --tiny runs a SEEDED RANDOM tiny VLM; the answers carry no meaning.")
        pipe = tiny_selftok_pipeline("llama")
    else:
        pipe = SelftokPipeline.from_pretrained(args.pipeline)
    images = {path: PIL.Image.open(path) for path in args.images} if args.images else bundled_images()
    answers = pipe.describe(list(images.values()), args.question, max_new_tokens=args.max_new_tokens)
    for name, answer in zip(images, answers):
        print(f"{name}: {answer!r}")


if __name__ == "__main__":
    main()
