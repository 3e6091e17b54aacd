"""The ``selftok`` command: one entry point for every job of selftok-hf.

    selftok encode photo.jpg -o ids.npy                 # images -> Selftok token ids (.npy or .json)
    selftok decode ids.npy -o decoded/ --steps 50        # token ids -> PNGs
    selftok reconstruct photo.jpg -o recon.png           # images -> side-by-side PNG, PSNR printed
    selftok generate --pipeline vlm/ "a red circle"      # prompt -> image (a SelftokPipeline folder)
    selftok describe --pipeline vlm/ photo.jpg           # image -> text
    selftok push converted/ my-org/selftok              # upload a saved folder to the Hugging Face Hub
    selftok demo [--pipeline DIR] [--vlm DIR | --tiny]   # the Gradio demo page (pip install "selftok-hf[demo]")
    selftok convert | train-vae | train-tokenizer | train-renderer | train-lm | rl | eval | quickstart ...

``encode``, ``decode`` and ``reconstruct`` use the bundled trained 32-pixel pipeline unless ``--pipeline DIR``
names a ``SelftokDecoderPipeline`` folder (e.g. one written by ``selftok convert``). The training, conversion
and evaluation subcommands are the ``selftok-*`` console scripts under one name: ``selftok train-lm ...`` runs
``selftok-train-lm ...`` (each entry point takes ``main(argv, prog=...)``, so its usage and errors say ``selftok train-lm``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import numpy as np

__all__ = ["DELEGATED_COMMANDS", "build_parser", "main"]

#: Subcommands that hand their arguments to an existing entry point: name -> (``module:function``, summary).
DELEGATED_COMMANDS = {
    "convert": ("selftok_hf.convert_selftok_checkpoint:main", "convert an official Selftok checkpoint into a selftok-hf folder"),
    "train-tokenizer": ("selftok_hf.training.tokenizer:main", "train the Selftok tokenizer + diffusion decoder on an image folder or dataset"),
    "train-renderer": ("selftok_hf.training.renderer:main", "distil the one-step renderer from a trained decoder"),
    "train-vae": ("selftok_hf.training.autoencoder:main", "train a small SD3-shaped VAE for a small tokenizer to read"),
    "train-lm": ("selftok_hf.training.sft:main", "fine-tune a language model on Selftok tokens (full or LoRA)"),
    "rl": ("selftok_hf.rl.trainer:main", "GRPO reinforcement learning on visual tokens"),
    "eval": ("selftok_hf.evaluation:main", "reconstruction metrics (PSNR, SSIM, LPIPS, rFID) of a pipeline"),
    "quickstart": ("selftok_hf.quickstart:main", "tokenize + reconstruct the bundled sample photos (no download)"),
}

DTYPES = ("float32", "float16", "bfloat16")

EPILOG = """\
examples:
  selftok encode photo.jpg cat.png -o ids.npy
  selftok decode ids.npy -o decoded/ --steps 25
  selftok reconstruct photo.jpg -o recon.png --renderer
  selftok generate --pipeline my-vlm/ "a red circle on a blue background" -o out.png
  selftok describe --pipeline my-vlm/ photo.jpg --question "What is in the image?"
  selftok push converted/ my-org/selftok-512
  selftok demo --port 7860
  selftok train-tokenizer --dataset imagefolder --data-dir my_images/ --output-dir run

run 'selftok <command> --help' for the options of one command."""


# --------------------------------------------------------------------------------------------- arguments
def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {value}")
    return number


def _add_runtime_arguments(parser: argparse.ArgumentParser, seed: bool = True) -> None:
    parser.add_argument("--device", default="cpu", help="torch device to run on, e.g. cpu, cuda, cuda:1 (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="weights dtype (default: float32)")
    if seed:
        parser.add_argument("--seed", type=int, default=0, help="seed of the random noise / sampling (default: 0)")


def _add_decoder_pipeline_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", default=None, metavar="DIR", help="a SelftokDecoderPipeline folder (default: the bundled trained 32-px model)")


def _add_decoding_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=_positive_int, default=50, help="Euler steps of the diffusion decoder (default: 50)")
    parser.add_argument("--renderer", action="store_true", help="decode with the one-step renderer instead of the diffusion decoder")
    parser.add_argument("--guidance-scale", type=float, default=1.0, help="decoder classifier-free guidance; 1 disables it (default: 1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selftok",
        description="Selftok discrete visual tokens (arXiv 2505.07538) for transformers and diffusers.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="<command>", required=True)

    def command(name: str, summary: str, example: str) -> argparse.ArgumentParser:
        subparser = commands.add_parser(
            name, help=summary, description=summary[0].upper() + summary[1:] + ".", epilog=f"example:\n  {example}", formatter_class=argparse.RawDescriptionHelpFormatter
        )
        # The command's own parser travels with the arguments, so that its errors name the subcommand.
        subparser.set_defaults(command_parser=subparser)
        return subparser

    encode = command("encode", "images -> Selftok token ids (.npy array or .json)", "selftok encode photo.jpg cat.png -o ids.npy")
    encode.add_argument("images", nargs="+", help="image files")
    encode.add_argument("-o", "--output", required=True, help="where to write the ids: *.npy (int64 array N x K) or *.json")
    encode.add_argument("--batch-size", type=_positive_int, default=16, help="images per forward pass (default: 16)")
    _add_decoder_pipeline_argument(encode)
    _add_runtime_arguments(encode, seed=False)

    decode = command("decode", "Selftok token ids (.npy or .json from 'selftok encode') -> PNG images", "selftok decode ids.npy -o decoded/ --steps 25")
    decode.add_argument("ids", help="token ids file: *.npy (N x K integers) or *.json")
    decode.add_argument("-o", "--output-dir", required=True, help="folder for the PNGs (image_0000.png, ...)")
    _add_decoding_arguments(decode)
    _add_decoder_pipeline_argument(decode)
    _add_runtime_arguments(decode)

    reconstruct = command("reconstruct", "images -> tokens -> images: side-by-side PNG (input | reconstruction) and PSNR", "selftok reconstruct photo.jpg -o recon.png --renderer")
    reconstruct.add_argument("images", nargs="+", help="image files")
    reconstruct.add_argument("-o", "--output", required=True, help="side-by-side PNG, one row per image")
    reconstruct.add_argument("--zoom", type=_positive_int, default=1, help="nearest-neighbour zoom of the PNG (default: 1)")
    _add_decoding_arguments(reconstruct)
    _add_decoder_pipeline_argument(reconstruct)
    _add_runtime_arguments(reconstruct)

    generate = command("generate", "text prompt -> image with a Selftok VLM (a SelftokPipeline folder)", 'selftok generate --pipeline my-vlm/ "a red circle" -o out.png')
    generate.add_argument("prompt", help="the text prompt")
    generate.add_argument("--pipeline", required=True, metavar="DIR", help="a SelftokPipeline folder (SelftokPipeline.save_pretrained)")
    generate.add_argument("-o", "--output", required=True, help="PNG path; with --num-images N > 1, NAME_0.png ... NAME_{N-1}.png")
    generate.add_argument("--num-images", type=_positive_int, default=1, help="images to sample (default: 1)")
    generate.add_argument("--cfg", type=float, default=5.0, help="classifier-free guidance on the LM's logits; 1 disables it (default: 5)")
    generate.add_argument("--temperature", type=float, default=1.0, help="token sampling temperature (default: 1)")
    generate.add_argument("--top-k", type=_positive_int, default=None, help="sample among the k most likely visual tokens")
    _add_decoding_arguments(generate)
    _add_runtime_arguments(generate)

    describe = command("describe", "image -> text answer with a Selftok VLM (a SelftokPipeline folder)", 'selftok describe --pipeline my-vlm/ photo.jpg --question "What is shown?"')
    describe.add_argument("images", nargs="+", help="image files")
    describe.add_argument("--pipeline", required=True, metavar="DIR", help="a SelftokPipeline folder (SelftokPipeline.save_pretrained)")
    describe.add_argument("--question", default="Describe the image.", help='the question asked about every image (default: "Describe the image.")')
    describe.add_argument("--max-new-tokens", type=_positive_int, default=64, help="longest answer in tokens (default: 64)")
    _add_runtime_arguments(describe)

    push = command("push", "upload a saved folder (tokenizer, decoder pipeline, VLM pipeline, LoRA adapter) to the Hub", "selftok push converted/ my-org/selftok-512")
    push.add_argument("folder", help="a folder written by save_pretrained (or selftok convert / train-*)")
    push.add_argument("repo_id", help='the Hub repo, "user/name" or "org/name" (created if missing)')
    push.add_argument("--token", default=None, help="Hub token (default: the stored login or HF_TOKEN)")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--commit-message", default=None, help='default: "Upload <artifact> with selftok-hf"')
    push.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to main")
    push.add_argument("--revision", default=None, help="branch to commit to (created from main if missing; default: main)")
    push.add_argument("--tag", action="append", default=None, dest="tags", help="a tag added to the model card (repeatable)")

    demo = command("demo", 'a web page (Gradio): image -> tokens -> reconstruction, coarse to fine; prompt -> image with a VLM', "selftok demo --tiny --port 7860")
    demo.add_argument("--pipeline", default=None, metavar="DIR", help="a SelftokDecoderPipeline folder for the image tab (default: the bundled trained 32-px model)")
    vlm = demo.add_mutually_exclusive_group()
    vlm.add_argument("--vlm", default=None, metavar="DIR", help="a SelftokPipeline folder: adds the text-to-image tab")
    vlm.add_argument("--tiny", action="store_true", help="add the text-to-image tab with the seeded random tiny VLM (offline; meaningless images)")
    demo.add_argument("--host", default="127.0.0.1", help="address to serve on; 0.0.0.0 for every interface (default: 127.0.0.1)")
    demo.add_argument("--port", type=_positive_int, default=7860, help="port to serve on (default: 7860)")
    _add_runtime_arguments(demo, seed=False)

    for name, (_, summary) in DELEGATED_COMMANDS.items():
        # Listed here for 'selftok --help'; their arguments are parsed by the entry point itself (see main).
        commands.add_parser(name, help=summary, add_help=False)
    return parser


# ------------------------------------------------------------------------------------------------ helpers
def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def _load_images(parser: argparse.ArgumentParser, paths: list[str]):
    import PIL.Image

    images = []
    for path in paths:
        try:
            images.append(PIL.Image.open(path).convert("RGB"))
        except OSError as error:
            parser.error(f"cannot read image {path!r}: {error}")
    return images


def _load_decoder_pipeline(args):
    from .pipeline_selftok_decoder import SelftokDecoderPipeline
    from .quickstart import embedded_pipeline

    dtype = _torch_dtype(args.dtype)
    pipe = SelftokDecoderPipeline.from_pretrained(args.pipeline, dtype=dtype) if args.pipeline else embedded_pipeline(dtype)
    return pipe.to(args.device)


def _load_vlm_pipeline(parser: argparse.ArgumentParser, args, path: str):
    from .pipeline_selftok import SelftokPipeline

    try:
        pipe = SelftokPipeline.from_pretrained(path, dtype=_torch_dtype(args.dtype))
    except ValueError as error:
        parser.error(str(error))
    return pipe.to(args.device)


def _generator(seed: int):
    import torch

    # A CPU generator: the same seed gives the same noise whatever --device is.
    return torch.Generator().manual_seed(seed)


def read_token_ids(path: str | Path) -> np.ndarray:
    """Read a token ids file written by ``selftok encode`` (``.npy`` or ``.json``) or ``selftok quickstart`` (``.json``).

    Returns:
        ``np.ndarray`` of shape ``(N, K)``, int64.
    """
    path = Path(path)
    if path.suffix == ".npy":
        ids = np.load(path)
    elif path.suffix == ".json":
        data = json.loads(path.read_text())
        rows = data.get("token_ids") if isinstance(data, dict) else data
        if isinstance(rows, dict):  # selftok quickstart: {image name: ids}
            rows = list(rows.values())
        ids = np.asarray(rows)
    else:
        raise ValueError(f"token ids file must end in .npy or .json, got {path.name!r}")
    if ids.ndim != 2 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{path}: expected a non-empty N x K array of integer token ids, got shape {ids.shape} of {ids.dtype}")
    return ids.astype(np.int64)


def write_token_ids(path: str | Path, token_ids: np.ndarray, image_names: list[str], num_tokens: int, codebook_size: int) -> None:
    """Write ids ``(N, K)`` as ``.npy`` (the array) or ``.json`` (with the image names and the codebook size)."""
    path = Path(path)
    if path.suffix == ".npy":
        np.save(path, token_ids.astype(np.int64))
    elif path.suffix == ".json":
        record = {"num_tokens": num_tokens, "codebook_size": codebook_size, "images": image_names, "token_ids": token_ids.tolist()}
        path.write_text(json.dumps(record) + "\n")
    else:
        raise ValueError(f"--output must end in .npy or .json, got {path.name!r}")


# ----------------------------------------------------------------------------------------------- commands
def _encode(parser: argparse.ArgumentParser, args) -> int:
    import torch
    from tqdm.auto import tqdm

    if Path(args.output).suffix not in (".npy", ".json"):
        parser.error(f"--output must end in .npy or .json, got {args.output!r}")
    images = _load_images(parser, args.images)
    pipe = _load_decoder_pipeline(args)
    batches = [images[i : i + args.batch_size] for i in range(0, len(images), args.batch_size)]
    token_ids = torch.cat([pipe.encode(batch).cpu() for batch in tqdm(batches, desc="encoding", unit="batch", disable=len(batches) == 1)])
    cfg = pipe.image_tokenizer.config
    write_token_ids(args.output, token_ids.numpy(), args.images, cfg.num_tokens, cfg.codebook_size)
    print(f"wrote {args.output}: {token_ids.shape[0]} images x {token_ids.shape[1]} tokens (codebook of {cfg.codebook_size})")
    return 0


def _decode(parser: argparse.ArgumentParser, args) -> int:
    import torch

    try:
        ids = read_token_ids(args.ids)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    pipe = _load_decoder_pipeline(args)
    cfg = pipe.image_tokenizer.config
    if ids.shape[1] != cfg.num_tokens or ids.min() < 0 or ids.max() >= cfg.codebook_size:
        parser.error(
            f"{args.ids}: this pipeline takes {cfg.num_tokens} ids per image in [0, {cfg.codebook_size}), "
            f"got {ids.shape[1]} ids per image in [{ids.min()}, {ids.max()}]"
        )
    if args.renderer and pipe.renderer is None:
        parser.error("--renderer: this pipeline has no renderer")
    images = pipe(
        torch.from_numpy(ids).to(args.device),
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        generator=_generator(args.seed),
        use_renderer=args.renderer,
    ).images
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        image.save(output_dir / f"image_{index:04d}.png")
    print(f"wrote {len(images)} PNGs ({images[0].width}x{images[0].height}) to {output_dir}")
    return 0


def _reconstruct(parser: argparse.ArgumentParser, args) -> int:
    import PIL.Image

    from .image_processing_selftok import postprocess_images
    from .metrics import psnr
    from .quickstart import side_by_side

    images = _load_images(parser, args.images)
    pipe = _load_decoder_pipeline(args)
    if args.renderer and pipe.renderer is None:
        parser.error("--renderer: this pipeline has no renderer")
    pixel_values = pipe.image_processor(images, return_tensors="pt").pixel_values.to(args.device, pipe.image_tokenizer.dtype)
    token_ids = pipe.encode(pixel_values)
    decoded = pipe(
        token_ids,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance_scale,
        generator=_generator(args.seed),
        use_renderer=args.renderer,
        output_type="pt",
    ).images.float()
    target = ((pixel_values.float().clamp(-1, 1) + 1) / 2).to(decoded.device)
    values = psnr(decoded, target)
    method = "one-step renderer" if args.renderer else f"{args.steps}-step decoder"
    for path, value in zip(args.images, values.tolist()):
        print(f"{path}: PSNR {value:.2f} dB")
    print(f"PSNR ({method}): mean {values.mean():.2f} dB over {len(images)} images")
    rows = [list(pair) for pair in zip(postprocess_images(target.cpu(), "pil"), postprocess_images(decoded.cpu(), "pil"))]
    grid = side_by_side(rows)
    grid.resize((grid.width * args.zoom, grid.height * args.zoom), PIL.Image.NEAREST).save(args.output)
    print(f"wrote {args.output} (columns: input | {method})")
    return 0


def _generate(parser: argparse.ArgumentParser, args) -> int:
    pipe = _load_vlm_pipeline(parser, args, args.pipeline)
    generators = [_generator(args.seed + index) for index in range(args.num_images)]
    output = pipe(
        args.prompt,
        guidance_scale=args.cfg,
        num_images_per_prompt=args.num_images,
        generator=generators,
        temperature=args.temperature,
        top_k=args.top_k,
        decoder_steps=args.steps,
        decoder_guidance_scale=args.guidance_scale,
        use_renderer=args.renderer,
    )
    output_path = Path(args.output)
    paths = [output_path] if args.num_images == 1 else [output_path.with_name(f"{output_path.stem}_{i}{output_path.suffix}") for i in range(args.num_images)]
    for path, image in zip(paths, output.images):
        image.save(path)
    print(f"wrote {', '.join(map(str, paths))}")
    return 0


def _describe(parser: argparse.ArgumentParser, args) -> int:
    import torch

    images = _load_images(parser, args.images)
    pipe = _load_vlm_pipeline(parser, args, args.pipeline)
    torch.manual_seed(args.seed)
    answers = pipe.describe(images, question=args.question, max_new_tokens=args.max_new_tokens)
    for path, answer in zip(args.images, answers):
        print(f"{path}: {answer}")
    return 0


def _push(parser: argparse.ArgumentParser, args) -> int:
    from .hub import artifact_kind, push_folder

    try:
        kind = artifact_kind(args.folder)
    except ValueError as error:
        parser.error(str(error))
    commit = push_folder(args.folder, args.repo_id, token=args.token, private=args.private or None, commit_message=args.commit_message, create_pr=args.create_pr, revision=args.revision, tags=args.tags)
    print(f"pushed {kind} from {args.folder}: {commit.pr_url or commit.commit_url}")
    return 0


def _demo(parser: argparse.ArgumentParser, args) -> int:
    try:
        import gradio  # noqa: F401
    except ImportError:
        parser.exit(1, f"{parser.prog}: error: the demo needs Gradio: pip install 'selftok-hf[demo]'\n")
    from .demo import build_demo, offline_theme

    vlm = None
    if args.vlm:
        vlm = _load_vlm_pipeline(parser, args, args.vlm)
    elif args.tiny:
        from .tiny_vlm import tiny_selftok_pipeline

        vlm = tiny_selftok_pipeline("llama").to(args.device, _torch_dtype(args.dtype))
    build_demo(_load_decoder_pipeline(args), vlm).launch(server_name=args.host, server_port=args.port, theme=offline_theme())
    return 0


COMMANDS = {"encode": _encode, "decode": _decode, "reconstruct": _reconstruct, "generate": _generate, "describe": _describe, "push": _push, "demo": _demo}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in DELEGATED_COMMANDS:
        module_name, function_name = DELEGATED_COMMANDS[argv[0]][0].split(":")
        # prog: usage lines and errors name 'selftok <command>', the way the user called it.
        return getattr(importlib.import_module(module_name), function_name)(argv[1:], prog=f"selftok {argv[0]}")
    parser = build_parser()
    args = parser.parse_args(argv)
    return COMMANDS[args.command](args.command_parser, args)


if __name__ == "__main__":
    sys.exit(main())
