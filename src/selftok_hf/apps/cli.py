"""The ``selftok`` command: one entry point for every job of selftok-hf.

    selftok encode photo.jpg -o ids.npy                 # images -> Selftok token ids (.npy or .json)
    selftok decode ids.npy -o decoded/ --steps 50        # token ids -> PNGs
    selftok reconstruct photo.jpg -o recon.png           # images -> side-by-side PNG, PSNR printed
    selftok generate "a red circle left of a blue square" -o out.png   # prompt -> image
    selftok describe shapes.png                          # image -> text
    selftok push converted/ my-org/selftok              # upload a saved folder to the Hugging Face Hub
    selftok demo [--pipeline DIR] [--vlm DIR | --tiny]   # the Gradio demo page (pip install "selftok-hf[demo]")
    selftok convert | train-vae | train-tokenizer | train-renderer | train-lm | rl | eval | quickstart ...
    selftok tokenize-dataset DATASET OUT/                # a datasets dataset -> Selftok ids (accelerate launch for several processes)

``encode``, ``decode`` and ``reconstruct`` use the bundled trained 32-pixel pipeline unless ``--pipeline DIR``
names a ``SelftokDecoderPipeline`` folder (e.g. one written by ``selftok convert``). ``generate``, ``describe`` and
the demo's prompt tab use the bundled shapes-world VLM (1-3 coloured circles, squares and triangles; see
``selftok_hf.assets.embedded_vlm``) unless ``--pipeline DIR`` names a ``SelftokPipeline`` folder. Images are read exactly as the
Python API reads them (``load_image_file`` + the image processor: transparency on white, 16-bit rescaled), so
``selftok encode f`` and ``pipe.encode(PIL.Image.open(f))`` give the same ids. Outputs are checked before any work
(their folder must exist; an existing file is kept unless ``--overwrite``) and written to a temporary file beside
the target, then renamed: a failed write (a full disk) leaves the previous file intact. Bad arguments exit with
code 2 and a message. The training, conversion
and evaluation subcommands are the ``selftok-*`` console scripts under one name: ``selftok train-lm ...`` runs
``selftok-train-lm ...`` (each entry point takes ``main(argv, prog=...)``, so its usage and errors say ``selftok train-lm``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import sys
from pathlib import Path

import numpy as np

from ..renamed import add_renamed_option, renamed_kwargs
from ..utils.atomic import atomic_write

__all__ = ["DELEGATED_COMMANDS", "atomic_write", "build_parser", "main", "read_token_ids", "write_token_ids"]

#: Subcommands that hand their arguments to an existing entry point: name -> (``module:function``, summary).
DELEGATED_COMMANDS = {
    "convert": ("selftok_hf.conversion.convert_selftok_checkpoint:main", "convert an official Selftok checkpoint into a selftok-hf folder"),
    "train-tokenizer": ("selftok_hf.training.tokenizer:main", "train the Selftok tokenizer + diffusion decoder on an image folder or dataset"),
    "train-renderer": ("selftok_hf.training.renderer:main", "distil the one-step renderer from a trained decoder"),
    "train-vae": ("selftok_hf.training.autoencoder:main", "train a small SD3-shaped VAE for a small tokenizer to read"),
    "train-lm": ("selftok_hf.training.sft:main", "fine-tune a language model on Selftok tokens (full or LoRA)"),
    "rl": ("selftok_hf.rl.trainer:main", "GRPO reinforcement learning on visual tokens"),
    "eval": ("selftok_hf.evaluation.reconstruction:main", "reconstruction metrics (PSNR, SSIM, LPIPS, rFID) of a pipeline"),
    "quickstart": ("selftok_hf.apps.quickstart:main", "tokenize + reconstruct the bundled sample photos (no download)"),
    "tokenize-dataset": ("selftok_hf.training.dataset_tokenization:main", "a datasets dataset -> its Selftok ids (sharded with accelerate launch, resumable)"),
}

DTYPES = ("float32", "float16", "bfloat16")

EPILOG = """\
examples:
  selftok encode photo.jpg cat.png -o ids.npy
  selftok decode ids.npy -o decoded/ --steps 25
  selftok reconstruct photo.jpg -o recon.png --renderer
  selftok generate "a red circle left of a blue square" -o out.png --renderer
  selftok describe out.png
  selftok generate --pipeline my-vlm/ "a red circle on a blue background" -o out.png
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


def _steps(value: str) -> int:
    from ..pipeline_selftok_decoder import MAX_INFERENCE_STEPS

    number = int(value)
    if not 1 <= number <= MAX_INFERENCE_STEPS:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1 and <= {MAX_INFERENCE_STEPS} (the schedule's resolution), got {value}")
    return number


def _guidance_scale(value: str) -> float:
    number = float(value)
    if not math.isfinite(number) or number < 1:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 1 (1 disables guidance), got {value}")
    return number


def _device(value: str) -> str:
    """A torch device that exists here: ``cuda`` on a CPU-only build is refused at parse time, not after loading."""
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a torch device: {value!r} (e.g. cpu, cuda, cuda:1)") from None
    if device.type != "cpu":
        backend = getattr(torch, device.type, None) if device.type != "mps" else getattr(torch.backends, "mps", None)
        is_available = getattr(backend, "is_available", None)
        if not callable(is_available) or not is_available():
            raise argparse.ArgumentTypeError(f"device {value!r} is not available in this PyTorch build / on this machine")
        count = getattr(backend, "device_count", None)
        if device.index is not None and callable(count) and device.index >= count():
            raise argparse.ArgumentTypeError(f"device {value!r}: only {count()} {device.type} device(s) here")
    return value


def _add_runtime_arguments(parser: argparse.ArgumentParser, seed: bool = True) -> None:
    parser.add_argument("--device", type=_device, default="cpu", help="torch device to run on, e.g. cpu, cuda, cuda:1 (default: cpu)")
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="weights dtype (default: float32)")
    if seed:
        parser.add_argument("--seed", type=int, default=0, help="seed of the random noise / sampling (default: 0)")


def _add_decoder_pipeline_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pipeline", default=None, metavar="DIR", help="a SelftokDecoderPipeline folder (default: the bundled trained 32-px model)")


def _add_decoding_arguments(parser: argparse.ArgumentParser, guidance_option: str = "--guidance-scale") -> None:
    """The decoder's options; its guidance is ``guidance_option``, the name of its keyword in the Python call
    (``SelftokDecoderPipeline(guidance_scale=)``, ``SelftokPipeline(decoder_guidance_scale=)``)."""
    parser.add_argument("--steps", type=_steps, default=50, help="Euler steps of the diffusion decoder, 1 to 1000 (default: 50)")
    parser.add_argument("--renderer", action="store_true", help="decode with the one-step renderer instead of the diffusion decoder")
    parser.add_argument(guidance_option, type=_guidance_scale, default=1.0, help="decoder classifier-free guidance, >= 1; 1 disables it (default: 1)")


def _add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files (default: refuse, before any work)")


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
    _add_overwrite_argument(encode)
    _add_decoder_pipeline_argument(encode)
    _add_runtime_arguments(encode, seed=False)

    decode = command("decode", "Selftok token ids (.npy or .json from 'selftok encode') -> PNG images", "selftok decode ids.npy -o decoded/ --steps 25")
    decode.add_argument("ids", help="token ids file: *.npy (N x K integers) or *.json")
    decode.add_argument("-o", "--output-dir", required=True, help="folder for the PNGs (image_0000.png, ...); created if missing")
    _add_overwrite_argument(decode)
    _add_decoding_arguments(decode)
    _add_decoder_pipeline_argument(decode)
    _add_runtime_arguments(decode)

    reconstruct = command("reconstruct", "images -> tokens -> images: side-by-side PNG (input | reconstruction) and PSNR", "selftok reconstruct photo.jpg -o recon.png --renderer")
    reconstruct.add_argument("images", nargs="+", help="image files")
    reconstruct.add_argument("-o", "--output", required=True, help="side-by-side PNG, one row per image")
    reconstruct.add_argument("--zoom", type=_positive_int, default=1, help="nearest-neighbour zoom of the PNG (default: 1)")
    _add_overwrite_argument(reconstruct)
    _add_decoding_arguments(reconstruct)
    _add_decoder_pipeline_argument(reconstruct)
    _add_runtime_arguments(reconstruct)

    generate = command("generate", "text prompt -> image with a Selftok VLM (default: the bundled shapes-world one)", 'selftok generate "three yellow circles" -o out.png --renderer')
    generate.add_argument("prompt", help="the text prompt")
    generate.add_argument("--pipeline", default=None, metavar="DIR", help="a SelftokPipeline folder (default: the bundled shapes-world VLM)")
    generate.add_argument("-o", "--output", required=True, help="PNG path; with --num-images N > 1, NAME_0.png ... NAME_{N-1}.png")
    generate.add_argument("--num-images", type=_positive_int, default=1, help="images to sample (default: 1)")
    generate.add_argument(
        "--guidance-scale",
        type=float,
        default=5.0,
        help="classifier-free guidance on the LM's logits; 1 disables it (default: 5). Formerly --cfg; the decoder's guidance is --decoder-guidance-scale",
    )
    add_renamed_option(generate, "--cfg", "--guidance-scale")
    generate.add_argument("--temperature", type=float, default=1.0, help="token sampling temperature (default: 1)")
    generate.add_argument("--top-k", type=_positive_int, default=None, help="sample among the k most likely visual tokens")
    _add_decoding_arguments(generate, guidance_option="--decoder-guidance-scale")
    _add_runtime_arguments(generate)

    describe = command("describe", "image -> text answer with a Selftok VLM (default: the bundled shapes-world one)", "selftok describe shapes.png")
    describe.add_argument("images", nargs="+", help="image files")
    describe.add_argument("--pipeline", default=None, metavar="DIR", help="a SelftokPipeline folder (default: the bundled shapes-world VLM)")
    # The default is left to SelftokPipeline.describe (processing_selftok.DEFAULT_QUESTION; not imported here, to keep
    # `selftok --help` free of transformers).
    describe.add_argument("--question", default=None, help='the question asked about every image (default: "What is shown?", what SFT trains with)')
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
    vlm.add_argument("--vlm", default=None, metavar="DIR", help="a SelftokPipeline folder for the text-to-image tab (default: the bundled shapes-world VLM)")
    vlm.add_argument("--tiny", action="store_true", help="the text-to-image tab with the seeded random tiny VLM instead (meaningless images)")
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
    """The API's loader (:func:`load_image_file`): each image in its own mode, converted by the image processor."""
    from ..image_processing_selftok import load_image_file

    images = []
    for path in paths:
        try:
            image = load_image_file(path)
        except (OSError, ValueError) as error:
            parser.error(str(error))
        if image.width == 0 or image.height == 0:
            parser.error(f"cannot read image {path!r}: it has zero size ({image.width}x{image.height})")
        images.append(image)
    return images


@contextlib.contextmanager
def _reported(parser: argparse.ArgumentParser):
    """Bad inputs found by the pipeline exit 2 with its message; a non-finite result or a failed write exits 1."""
    try:
        yield
    except ValueError as error:
        parser.error(str(error))
    except FloatingPointError as error:
        parser.exit(1, f"{parser.prog}: error: {error}\n")


def _check_output_file(parser: argparse.ArgumentParser, path: str, overwrite: bool, option: str = "--output") -> None:
    """Before any work: the output's folder exists, the output is not a folder, and an existing file is only
    replaced with ``--overwrite``."""
    target = Path(path)
    parent = target.parent
    if not parent.is_dir():
        parser.error(f"{option} {path}: the folder {str(parent)!r} does not exist")
    if target.is_dir():
        parser.error(f"{option} {path}: is a folder, expected a file name")
    if target.exists() and not overwrite:
        parser.error(f"{option} {path}: the file exists; pass --overwrite to replace it")


def _save_outputs(parser: argparse.ArgumentParser, writes: list) -> None:
    """``writes``: (path, write) pairs, each written atomically; a failed write exits 1 naming the file."""
    for path, write in writes:
        try:
            atomic_write(path, write)
        except OSError as error:
            parser.exit(1, f"{parser.prog}: error: cannot write {path}: {error} (any previous file is unchanged)\n")


def _load_decoder_pipeline(args):
    from ..assets import embedded_pipeline
    from ..pipeline_selftok_decoder import SelftokDecoderPipeline

    dtype = _torch_dtype(args.dtype)
    pipe = SelftokDecoderPipeline.from_pretrained(args.pipeline, dtype=dtype) if args.pipeline else embedded_pipeline(dtype)
    return pipe.to(args.device)


def _load_vlm_pipeline(parser: argparse.ArgumentParser, args, path: str | None):
    from ..assets import embedded_vlm
    from ..pipeline_selftok import SelftokPipeline

    dtype = _torch_dtype(args.dtype)
    try:
        pipe = SelftokPipeline.from_pretrained(path, dtype=dtype) if path else embedded_vlm(dtype)
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
        try:
            ids = np.load(path, allow_pickle=False)  # never unpickle: a crafted .npy could run code
        except (ValueError, EOFError, OSError) as error:
            if isinstance(error, FileNotFoundError):
                raise
            raise ValueError(f"{path}: not a readable .npy file of token ids ({error})") from error
    elif path.suffix == ".json":
        try:
            data = json.loads(path.read_text())
        except ValueError as error:  # JSONDecodeError, UnicodeDecodeError
            raise ValueError(f"{path}: not a readable JSON file of token ids ({error})") from error
        rows = data.get("token_ids") if isinstance(data, dict) else data
        if isinstance(rows, dict):  # selftok quickstart: {image name: ids}
            rows = list(rows.values())
        try:
            ids = np.asarray(rows)
        except ValueError as error:  # ragged rows
            raise ValueError(f"{path}: token_ids must be an N x K array ({error})") from error
    else:
        raise ValueError(f"token ids file must end in .npy or .json, got {path.name!r}")
    if ids.ndim != 2 or ids.size == 0 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{path}: expected a non-empty N x K array of integer token ids, got shape {ids.shape} of {ids.dtype}")
    return ids.astype(np.int64)


@renamed_kwargs(num_tokens="num_image_tokens")
def write_token_ids(path: str | Path, token_ids: np.ndarray, image_names: list[str], num_image_tokens: int, codebook_size: int) -> None:
    """Write ids ``(N, K)`` as ``.npy`` (the array) or ``.json`` (with the image names and the codebook size),
    atomically (:func:`atomic_write`): a failed write leaves a previous file intact."""
    path = Path(path)
    if path.suffix == ".npy":
        atomic_write(path, lambda temporary: np.save(temporary, token_ids.astype(np.int64)))
    elif path.suffix == ".json":
        record = {"num_image_tokens": num_image_tokens, "codebook_size": codebook_size, "images": image_names, "token_ids": token_ids.tolist()}
        atomic_write(path, lambda temporary: Path(temporary).write_text(json.dumps(record) + "\n"))
    else:
        raise ValueError(f"--output must end in .npy or .json, got {path.name!r}")


# ----------------------------------------------------------------------------------------------- commands
def _encode(parser: argparse.ArgumentParser, args) -> int:
    import torch
    from tqdm.auto import tqdm

    if Path(args.output).suffix not in (".npy", ".json"):
        parser.error(f"--output must end in .npy or .json, got {args.output!r}")
    _check_output_file(parser, args.output, args.overwrite)
    images = _load_images(parser, args.images)
    pipe = _load_decoder_pipeline(args)
    batches = [images[i : i + args.batch_size] for i in range(0, len(images), args.batch_size)]
    with _reported(parser):
        token_ids = torch.cat([pipe.encode(batch).cpu() for batch in tqdm(batches, desc="encoding", unit="batch", disable=len(batches) == 1)])
    cfg = pipe.image_tokenizer.config
    try:
        write_token_ids(args.output, token_ids.numpy(), args.images, cfg.num_image_tokens, cfg.codebook_size)
    except OSError as error:
        parser.exit(1, f"{parser.prog}: error: cannot write {args.output}: {error} (any previous file is unchanged)\n")
    print(f"wrote {args.output}: {token_ids.shape[0]} images x {token_ids.shape[1]} tokens (codebook of {cfg.codebook_size})")
    return 0


def _decode(parser: argparse.ArgumentParser, args) -> int:
    import torch

    try:
        ids = read_token_ids(args.ids)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    output_dir = Path(args.output_dir)
    paths = [output_dir / f"image_{index:04d}.png" for index in range(ids.shape[0])]
    if output_dir.exists() and not output_dir.is_dir():
        parser.error(f"--output-dir {args.output_dir}: is a file, expected a folder")
    existing = [path for path in paths if path.exists()]
    if existing and not args.overwrite:
        parser.error(f"--output-dir {args.output_dir}: {len(existing)} of the output files exist (first: {existing[0].name}); pass --overwrite to replace them")
    pipe = _load_decoder_pipeline(args)
    cfg = pipe.image_tokenizer.config
    if ids.shape[1] != cfg.num_image_tokens or ids.min() < 0 or ids.max() >= cfg.codebook_size:
        parser.error(
            f"{args.ids}: this pipeline takes {cfg.num_image_tokens} ids per image in [0, {cfg.codebook_size}), "
            f"got {ids.shape[1]} ids per image in [{ids.min()}, {ids.max()}]"
        )
    if args.renderer and pipe.renderer is None:
        parser.error("--renderer: this pipeline has no renderer")
    with _reported(parser):
        images = pipe(
            torch.from_numpy(ids).to(args.device),
            num_inference_steps=args.steps,
            guidance_scale=args.guidance_scale,
            generator=_generator(args.seed),
            use_renderer=args.renderer,
        ).images
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        parser.exit(1, f"{parser.prog}: error: cannot create {output_dir}: {error}\n")
    _save_outputs(parser, [(path, image.save) for path, image in zip(paths, images)])
    print(f"wrote {len(images)} PNGs ({images[0].width}x{images[0].height}) to {output_dir}")
    return 0


def _reconstruct(parser: argparse.ArgumentParser, args) -> int:
    import PIL.Image

    from ..evaluation.metrics import psnr
    from ..evaluation.reconstruction import side_by_side
    from ..image_processing_selftok import postprocess_images

    if Path(args.output).suffix.lower() not in PIL.Image.registered_extensions():
        parser.error(f"--output must be an image file name such as recon.png, got {args.output!r}")
    _check_output_file(parser, args.output, args.overwrite)
    images = _load_images(parser, args.images)
    pipe = _load_decoder_pipeline(args)
    if args.renderer and pipe.renderer is None:
        parser.error("--renderer: this pipeline has no renderer")
    with _reported(parser):
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
    zoomed = grid.resize((grid.width * args.zoom, grid.height * args.zoom), PIL.Image.NEAREST)
    _save_outputs(parser, [(args.output, zoomed.save)])
    print(f"wrote {args.output} (columns: input | {method})")
    return 0


def _generate(parser: argparse.ArgumentParser, args) -> int:
    if not Path(args.output).parent.is_dir():
        parser.error(f"--output {args.output}: the folder {str(Path(args.output).parent)!r} does not exist")
    pipe = _load_vlm_pipeline(parser, args, args.pipeline)
    generators = [_generator(args.seed + index) for index in range(args.num_images)]
    output = pipe(
        args.prompt,
        guidance_scale=args.guidance_scale,
        num_images_per_prompt=args.num_images,
        generator=generators,
        temperature=args.temperature,
        top_k=args.top_k,
        num_inference_steps=args.steps,
        decoder_guidance_scale=args.decoder_guidance_scale,
        use_renderer=args.renderer,
    )
    output_path = Path(args.output)
    paths = [output_path] if args.num_images == 1 else [output_path.with_name(f"{output_path.stem}_{i}{output_path.suffix}") for i in range(args.num_images)]
    _save_outputs(parser, [(path, image.save) for path, image in zip(paths, output.images)])
    print(f"wrote {', '.join(map(str, paths))}")
    return 0


def _describe(parser: argparse.ArgumentParser, args) -> int:
    import torch

    images = _load_images(parser, args.images)
    pipe = _load_vlm_pipeline(parser, args, args.pipeline)
    torch.manual_seed(args.seed)
    question = {} if args.question is None else {"question": args.question}
    answers = pipe.describe(images, max_new_tokens=args.max_new_tokens, **question)
    for path, answer in zip(args.images, answers):
        print(f"{path}: {answer}")
    return 0


def _push(parser: argparse.ArgumentParser, args) -> int:
    from ..hub import artifact_kind, push_folder

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

    if args.tiny:
        from ..testing.tiny_vlm import tiny_selftok_pipeline

        vlm = tiny_selftok_pipeline("llama").to(args.device, _torch_dtype(args.dtype))
    else:
        vlm = _load_vlm_pipeline(parser, args, args.vlm)
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
