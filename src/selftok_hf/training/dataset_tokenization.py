"""Tokenize a whole ``datasets`` dataset into Selftok ids: sharded across processes, resumable, one output dataset.

    selftok tokenize-dataset DATASET OUTPUT_DIR [--pipeline DIR] [--streaming] [--keep-image]
    accelerate launch --multi_gpu --num_processes 8 -m selftok_hf.apps.cli tokenize-dataset DATASET OUTPUT_DIR ...

or from Python, :func:`tokenize_dataset` (the "extract codes" step of LlamaGen / Emu3, for Selftok). The input is any
``datasets`` dataset with an image column (a ``Dataset`` or an ``IterableDataset``, or a name / folder opened by
:func:`open_dataset`); the output is a ``save_to_disk`` folder holding every other column plus ``image_token_ids``
(the K Selftok ids of each image, AR order), the column ``selftok-train-lm`` reads, ready for
``datasets.load_from_disk`` and ``push_to_hub``. Which tokenizer made the ids is recorded in the dataset's
``info.description`` (:func:`tokenization_record` reads it back; kept by ``save_to_disk``, not uploaded by
``push_to_hub``, whose card holds only the features and sizes).

- **Sharding.** Each process of ``accelerate launch`` (``PartialState``) encodes its part. A ``Dataset`` is cut into
  chunks of ``chunk_size`` consecutive rows and chunk ``c`` goes to process ``c % num_processes``, so the result (and
  a resume) does not depend on the number of processes. An ``IterableDataset`` is split with
  ``datasets.distributed.split_dataset_by_node`` and each process writes its own chunks in order; the merged
  dataset then lists process 0's rows, then process 1's, ... (the rows of 1 process, in another order).
- **Resume.** Finished chunks are ``save_to_disk`` folders in ``OUTPUT_DIR.chunks/`` renamed into place when
  complete (:func:`~selftok_hf.utils.atomic.atomic_folder`), so a killed run leaves only whole chunks. Run the same command
  again: finished chunks are not encoded again (a streaming process restarts from the iteration state saved with its
  last chunk, so a stream resumes with the same number of processes); the options, the tokenizer and the input are checked against ``OUTPUT_DIR.chunks/manifest.json`` first.
- **Merge.** When every process is done, the main process concatenates the chunks in order and writes ``OUTPUT_DIR``
  whole (atomically; one copy of the ids), then deletes ``OUTPUT_DIR.chunks/``; the others wait for it
  (``wait_for_everyone``, under torch.distributed's timeout) and every process returns the merged dataset.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..utils.atomic import atomic_folder, atomic_write_text, is_non_empty_folder

__all__ = [
    "IMAGE_IDS_COLUMN",
    "ImageIdsEncoder",
    "chunks_folder",
    "main",
    "open_dataset",
    "tokenization_record",
    "tokenize_dataset",
    "tokenizer_fingerprint",
]

logger = logging.getLogger(__name__)

#: The column of Selftok ids (K per row, AR order) that ``selftok-train-lm`` reads.
IMAGE_IDS_COLUMN = "image_token_ids"
#: The key of the JSON record in ``info.description`` of a tokenized dataset.
RECORD_KEY = "selftok_tokenization"
MANIFEST = "manifest.json"
ITERATION_STATE = "iteration_state.json"
DONE = "done.json"


# ------------------------------------------------------------------------------------ the image tokenizer
def _decoder_pipeline(pipeline):
    """The :class:`SelftokDecoderPipeline` that turns pixels into ids: the pipeline itself or a VLM's ``decoder``."""
    from ..pipeline_selftok import SelftokPipeline

    return pipeline.decoder if isinstance(pipeline, SelftokPipeline) else pipeline


def _weights_hash(*modules: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in sorted(module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def tokenizer_fingerprint(pipeline) -> str:
    """A hash of the image tokenizer and VAE weights of a :class:`SelftokDecoderPipeline` or :class:`SelftokPipeline`
    (the same for a VLM and its decoder): equal hashes give equal ids. Also the key of ``selftok-train-lm``'s token cache."""
    decoder = _decoder_pipeline(pipeline)
    return _weights_hash(decoder.image_tokenizer, decoder.vae)


class ImageIdsEncoder:
    """The batched ``datasets.map`` function ``rows -> {ids_column: int64 (N, K)}``: the images of ``image_column``
    (as RGB) through a :class:`SelftokDecoderPipeline` (``encode``) or a :class:`SelftokPipeline`'s processor
    (``encode_images``). Picklable, for ``DataLoader`` workers."""

    def __init__(self, pipeline, image_column: str = "image", ids_column: str = IMAGE_IDS_COLUMN) -> None:
        from ..pipeline_selftok import SelftokPipeline

        # Of a VLM only the processor (its image tokenizer attached) travels to the workers, not the LM.
        self.encoder = pipeline.processor if isinstance(pipeline, SelftokPipeline) else pipeline
        self.image_column, self.ids_column = image_column, ids_column

    def __call__(self, rows: dict[str, list]) -> dict[str, np.ndarray]:
        encode = getattr(self.encoder, "encode_images", None) or self.encoder.encode
        ids = encode([image.convert("RGB") for image in rows[self.image_column]])
        return {self.ids_column: ids.cpu().numpy()}


def _load_pipeline(pipeline, dtype: torch.dtype | None):
    """A pipeline object as it is; ``None``: the bundled 32-px default; a folder or Hub id: the class it was saved as."""
    from ..assets import embedded_pipeline
    from ..pipeline_selftok import SelftokPipeline
    from ..pipeline_selftok_decoder import SelftokDecoderPipeline

    if pipeline is None:
        return embedded_pipeline(dtype or torch.float32)
    if not isinstance(pipeline, (str, os.PathLike)):
        if not isinstance(pipeline, (SelftokPipeline, SelftokDecoderPipeline)):
            raise TypeError(f"pipeline must be a SelftokDecoderPipeline, a SelftokPipeline or a folder, got {type(pipeline).__name__}")
        return pipeline
    if Path(pipeline).is_dir():
        from ..hub import artifact_kind

        kind = artifact_kind(pipeline)
        if kind == "SelftokPipeline":
            return SelftokPipeline.from_pretrained(pipeline, dtype=dtype)
        if kind != "SelftokDecoderPipeline":
            raise ValueError(f"{pipeline} holds a {kind}; tokenizing images needs a SelftokDecoderPipeline or SelftokPipeline folder (tokenizer and VAE)")
    return SelftokDecoderPipeline.from_pretrained(str(pipeline), dtype=dtype)


def _describe_pipeline(pipeline, fingerprint: str) -> dict[str, Any]:
    from .. import __version__

    decoder = _decoder_pipeline(pipeline)
    cfg = decoder.image_tokenizer.config
    return {
        "pipeline": str(getattr(decoder, "name_or_path", "") or ""),
        "pipeline_class": type(pipeline).__name__,
        "tokenizer_weights_sha256": fingerprint,
        "num_image_tokens": cfg.num_image_tokens,
        "codebook_size": cfg.codebook_size,
        "image_size": cfg.image_size,
        "order": "ar",
        "selftok_hf_version": __version__,
    }


def tokenization_record(dataset) -> dict[str, Any] | None:
    """What :func:`tokenize_dataset` recorded in ``dataset.info.description`` (tokenizer, weights hash, K, codebook
    size, columns), or None for a dataset it did not write."""
    try:
        record = json.loads(dataset.info.description or "")
    except ValueError:
        return None
    return record.get(RECORD_KEY) if isinstance(record, dict) else None


# ------------------------------------------------------------------------------------------------- input
def open_dataset(source: str, split: str = "train", data_dir: str | None = None, streaming: bool = False, image_column: str = "image", limit: int | None = None):
    """Open ``source`` as :func:`~selftok_hf.training.data.load_image_dataset` does (a ``save_to_disk`` folder, a name
    ``load_dataset`` resolves, ``imagefolder`` with ``data_dir``, ``offline:*``), the image column renamed ``image``;
    with ``streaming``, as an ``IterableDataset`` (``load_dataset(..., streaming=True)``; a folder or ``offline:``
    source through ``to_iterable_dataset``)."""
    import datasets

    from .data import load_image_dataset

    if not streaming:
        return load_image_dataset(source, split=split, image_column=image_column, data_dir=data_dir, limit=limit)
    if source.startswith("offline:") or (Path(source).is_dir() and (Path(source) / "dataset_info.json").exists()):
        dataset = load_image_dataset(source, split=split, image_column=image_column, data_dir=data_dir, limit=limit).to_iterable_dataset()
    else:
        dataset = datasets.load_dataset(source, data_dir=data_dir, split=split, streaming=True)
        if image_column != "image":
            dataset = dataset.rename_column(image_column, "image")
        if limit is not None:
            dataset = dataset.take(limit)
    return dataset


# ----------------------------------------------------------------------------------------------- chunks
def chunks_folder(output_dir: str | os.PathLike) -> Path:
    """Where :func:`tokenize_dataset` keeps the finished chunks of ``output_dir`` until the merge: ``OUTPUT_DIR.chunks``."""
    output_dir = Path(output_dir)
    return output_dir.with_name(output_dir.name + ".chunks")


def _partial_state():
    from accelerate import PartialState

    # As the training loop does: accelerate runs several processes on CPUs (gloo) only when told `cpu`.
    return PartialState(cpu=int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available())


def _check_manifest(path: Path, manifest: dict[str, Any], overwrite: bool, is_main: bool) -> None:
    """The main process writes the job's manifest or checks it against the one of a previous run (a different job's
    chunks are discarded with ``overwrite``, refused otherwise); the others check it after the barrier."""
    previous = json.loads(path.read_text()) if path.is_file() else None
    if previous == manifest:
        return
    if not is_main:
        raise RuntimeError(f"{path} differs from this process's job: every process must be given the same dataset, pipeline and options")
    if not overwrite and previous is not None:
        changed = sorted(k for k in set(previous) | set(manifest) if previous.get(k) != manifest.get(k))
        raise ValueError(
            f"{path.parent} holds the chunks of another tokenization (different {', '.join(changed)}): run the same "
            f"command to resume it, or pass overwrite=True (--overwrite) to discard them"
        )
    if not overwrite and is_non_empty_folder(path.parent):
        raise FileExistsError(f"{path.parent} holds files but no {MANIFEST}, so it is not left by an earlier run; pass overwrite=True (--overwrite) to delete it")
    shutil.rmtree(path.parent, ignore_errors=True)
    path.parent.mkdir(parents=True)
    atomic_write_text(path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def _write_chunk(chunk, target: Path, encode_rows, batch_size: int, remove_columns: list[str], fingerprint: str, iteration_state: dict | None = None) -> None:
    encoded = chunk.map(
        encode_rows, batched=True, batch_size=batch_size, remove_columns=remove_columns, keep_in_memory=True, new_fingerprint=fingerprint
    )
    with atomic_folder(target) as staged:
        encoded.save_to_disk(str(staged))
        if iteration_state is not None:
            (staged / ITERATION_STATE).write_text(json.dumps(iteration_state))


def _finished(folder: Path) -> bool:
    return (folder / "state.json").is_file()


def tokenize_dataset(
    dataset,
    pipeline,
    output_dir: str | os.PathLike,
    *,
    image_column: str = "image",
    ids_column: str = IMAGE_IDS_COLUMN,
    keep_image: bool = False,
    batch_size: int = 16,
    chunk_size: int = 1024,
    split: str = "train",
    data_dir: str | None = None,
    streaming: bool = False,
    limit: int | None = None,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
):
    """Encode the images of ``dataset`` into Selftok ids with ``pipeline`` and save the result to ``output_dir``.

    Run it in every process of ``accelerate launch`` (or in one plain process): each encodes its shard, the main one
    merges (see the module docstring for the sharding, the resume and the merge).

    Args:
        dataset: a ``datasets.Dataset`` or ``IterableDataset``, or a source for :func:`open_dataset` (with ``split``,
            ``data_dir``, ``streaming``, ``limit``; the image column is then renamed ``image``).
        pipeline: a :class:`~selftok_hf.SelftokDecoderPipeline` or :class:`~selftok_hf.SelftokPipeline` (its decoder's
            tokenizer and VAE), a folder or Hub id of one, or None for the bundled 32-px default.
        output_dir: the ``save_to_disk`` folder to write; its chunks live in :func:`chunks_folder` until the merge.
        image_column: the column of images (PIL, as an ``Image`` feature decodes them).
        ids_column: the new column of ids, ``(K,)`` int64 per row in AR order (``image_token_ids``: what
            ``selftok-train-lm`` reads).
        keep_image: keep the image column (default: dropped; every other column is kept).
        batch_size: images per forward pass.
        chunk_size: rows per chunk, the unit written to disk and resumed.
        overwrite: replace an existing ``output_dir`` and discard the chunks of a different job (default: refuse).
        device: where to encode (default: this process's accelerator, ``PartialState().device``); the pipeline is moved.
        dtype: weights dtype when the pipeline is loaded here.

    Returns:
        The merged ``datasets.Dataset`` (loaded from ``output_dir``), in every process.
    """
    import datasets
    from accelerate.utils import gather_object
    from datasets.distributed import split_dataset_by_node
    from tqdm.auto import tqdm

    if batch_size < 1 or chunk_size < 1:
        raise ValueError(f"batch_size and chunk_size must be >= 1, got {batch_size} and {chunk_size}")
    state = _partial_state()
    rank, world = state.process_index, state.num_processes
    output_dir = Path(output_dir)
    work = chunks_folder(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"{output_dir} is a file, not a folder")
    if is_non_empty_folder(output_dir) and not overwrite:
        raise FileExistsError(f"{output_dir} is not empty; pass overwrite=True (--overwrite) to replace it")
    if isinstance(dataset, (str, os.PathLike)):
        source = str(dataset)
        dataset = open_dataset(source, split=split, data_dir=data_dir, streaming=streaming, image_column=image_column, limit=limit)
        image_column = "image"
    else:
        source = None
    iterable = isinstance(dataset, datasets.IterableDataset)
    if not iterable and not isinstance(dataset, datasets.Dataset):
        raise TypeError(f"dataset must be a datasets.Dataset or IterableDataset (or a name / folder), got {type(dataset).__name__}")
    columns = dataset.column_names
    if columns is not None:
        if image_column not in columns:
            raise ValueError(f"no column {image_column!r} in the dataset (columns: {columns})")
        if ids_column in columns:
            raise ValueError(f"the dataset already has a column {ids_column!r}")

    pipeline = _load_pipeline(pipeline, dtype)
    device = torch.device(device) if device is not None else state.device
    pipeline.to(torch.device("cpu") if device.type == "cpu" else device)
    pipeline.set_progress_bar_config(disable=True)
    fingerprint = tokenizer_fingerprint(pipeline)
    record = {**_describe_pipeline(pipeline, fingerprint), "ids_column": ids_column, "image_column": image_column, "image_kept": keep_image}
    if iterable:
        identity = {"source": source, "n_shards": dataset.n_shards, "features": None if dataset.features is None else dataset.features.to_dict()}
    else:
        identity = {"source": source, "fingerprint": dataset._fingerprint, "num_rows": len(dataset)}
    manifest = {"dataset": identity, "streaming": iterable, "tokenizer": record, "chunk_size": chunk_size}
    if iterable:
        manifest["num_processes"] = world  # split_dataset_by_node's shards depend on it
    manifest = json.loads(json.dumps(manifest, sort_keys=True))  # as read back from manifest.json
    if state.is_main_process:
        _check_manifest(work / MANIFEST, manifest, overwrite, is_main=True)
    state.wait_for_everyone()
    if not state.is_main_process:
        _check_manifest(work / MANIFEST, manifest, overwrite, is_main=False)

    encode_rows = ImageIdsEncoder(pipeline, image_column, ids_column)
    remove = [] if keep_image else [image_column]
    start_time, encoded_rows = time.perf_counter(), 0
    progress_bars_were_on = not datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()  # one bar per chunk map and save would drown ours
    try:
        if not iterable:
            num_chunks = math.ceil(len(dataset) / chunk_size)
            if num_chunks == 0:
                raise ValueError("the dataset is empty")
            names = [f"chunk-{c:06d}" for c in range(num_chunks)]
            todo = [c for c in range(rank, num_chunks, world) if not _finished(work / names[c])]
            for c in tqdm(todo, desc=f"tokenizing (process {rank})", unit="chunk", disable=not state.is_local_main_process):
                chunk = dataset.select(range(c * chunk_size, min((c + 1) * chunk_size, len(dataset))))
                _write_chunk(chunk, work / names[c], encode_rows, batch_size, remove, f"{fingerprint}-{names[c]}")
                encoded_rows += len(chunk)
        else:
            own = work / f"process-{rank:05d}-of-{world:05d}"
            if not (own / DONE).is_file():
                shard = split_dataset_by_node(dataset, rank=rank, world_size=world)
                features = shard.features
                if features is not None and isinstance(features.get(image_column), datasets.Image):
                    # Images travel as their encoded bytes into the chunk and are decoded once, by the chunk's map;
                    # the rows a resume passes over are never decoded.
                    shard = shard.cast_column(image_column, datasets.Image(decode=False))
                    features = shard.features
                done = 0
                while _finished(own / f"chunk-{done:06d}"):
                    done += 1
                if done:
                    shard.load_state_dict(json.loads((own / f"chunk-{done - 1:06d}" / ITERATION_STATE).read_text()))
                bar = tqdm(desc=f"tokenizing (process {rank})", unit="chunk", initial=done, disable=not state.is_local_main_process)
                for index, rows in enumerate(shard.iter(batch_size=chunk_size), start=done):
                    chunk = datasets.Dataset.from_dict(rows, features=features)
                    if isinstance(chunk.features.get(image_column), datasets.Image):
                        chunk = chunk.cast_column(image_column, datasets.Image())
                    name = f"chunk-{index:06d}"
                    _write_chunk(chunk, own / name, encode_rows, batch_size, remove, f"{fingerprint}-{rank}-{name}", shard.state_dict())
                    encoded_rows += len(chunk)
                    done = index + 1
                    bar.update()
                bar.close()
                atomic_write_text(own / DONE, json.dumps({"num_chunks": done}) + "\n")
        elapsed = time.perf_counter() - start_time
        if encoded_rows:
            logger.info("process %d: encoded %d images in %.1f s (%.1f images/s)", rank, encoded_rows, elapsed, encoded_rows / elapsed)
        encoded_by_all = sum(gather_object([encoded_rows])) if world > 1 else encoded_rows  # also the barrier
        if state.is_main_process:
            if iterable:
                names = []
                for r in range(world):
                    own = f"process-{r:05d}-of-{world:05d}"
                    names += [f"{own}/chunk-{c:06d}" for c in range(json.loads((work / own / DONE).read_text())["num_chunks"])]
                if not names:
                    raise ValueError("the dataset is empty")
            merged = datasets.concatenate_datasets([datasets.load_from_disk(str(work / name)) for name in names])
            merged.info.description = json.dumps({RECORD_KEY: record}, indent=2)
            with atomic_folder(output_dir, overwrite=overwrite) as staged:
                merged.save_to_disk(str(staged))
            shutil.rmtree(work, ignore_errors=True)
            total = time.perf_counter() - start_time
            logger.info(
                "wrote %s: %d rows; %d images encoded now by %d process(es) in %.1f s with the merge (%.1f images/s), the rest read from finished chunks",
                output_dir, len(merged), encoded_by_all, world, total, encoded_by_all / total,
            )  # fmt: skip
        state.wait_for_everyone()
    finally:
        if progress_bars_were_on:
            datasets.utils.enable_progress_bars()
    return datasets.load_from_disk(str(output_dir))


# ------------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None, prog: str = "selftok tokenize-dataset") -> int:
    """``selftok tokenize-dataset``: the command line of :func:`tokenize_dataset`."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Tokenize the images of a datasets dataset into Selftok ids (one process, or every process of accelerate launch).",
        epilog=(
            "examples:\n"
            "  selftok tokenize-dataset offline:fashion-mnist fmnist-ids --limit 2000\n"
            "  accelerate launch --multi_gpu --num_processes 8 -m selftok_hf.apps.cli tokenize-dataset my_images/ ids/ --pipeline converted/\n"
            "Run the same command again after an interruption: finished chunks are kept."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset", help="a save_to_disk folder, a name datasets.load_dataset resolves, imagefolder (with --data-dir) or offline:*")
    parser.add_argument("output_dir", help="the save_to_disk folder to write (chunks wait in OUTPUT_DIR.chunks until the merge)")
    parser.add_argument("--pipeline", default=None, metavar="DIR", help="a SelftokDecoderPipeline or SelftokPipeline folder (default: the bundled 32-px model)")
    parser.add_argument("--split", default="train", help="dataset split (default: train)")
    parser.add_argument("--data-dir", default=None, help="data_dir of load_dataset (e.g. the folder of imagefolder)")
    parser.add_argument("--streaming", action="store_true", help="read the dataset as an IterableDataset (load_dataset(..., streaming=True))")
    parser.add_argument("--image-column", default="image", help="the column of images (default: image; renamed image in the output)")
    parser.add_argument("--ids-column", default=IMAGE_IDS_COLUMN, help=f"the new column of ids (default: {IMAGE_IDS_COLUMN}, what selftok-train-lm reads)")
    parser.add_argument("--keep-image", action="store_true", help="keep the image column (default: drop it)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: 16)")
    parser.add_argument("--chunk-size", type=int, default=1024, help="rows per chunk, the unit saved and resumed (default: 1024)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N rows")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float16", "bfloat16"), help="weights dtype (default: float32)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT_DIR and discard another job's chunks")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.chunk_size < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--batch-size, --chunk-size and --limit must be >= 1")
    if is_non_empty_folder(args.output_dir) and not args.overwrite:
        parser.error(f"{args.output_dir} is not empty; pass --overwrite to replace it")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    result = tokenize_dataset(
        args.dataset, args.pipeline, args.output_dir, image_column=args.image_column, ids_column=args.ids_column,
        keep_image=args.keep_image, batch_size=args.batch_size, chunk_size=args.chunk_size, split=args.split,
        data_dir=args.data_dir, streaming=args.streaming, limit=args.limit, overwrite=args.overwrite, dtype=getattr(torch, args.dtype),
    )
    if _partial_state().is_main_process:
        print(f"wrote {args.output_dir}: {result.num_rows} rows, columns {result.column_names}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
