"""Supervised fine-tuning of a Selftok VLM on (image, text) pairs, full or LoRA, on accelerate.

    selftok-train-lm --pipeline vlm/ --dataset pairs/ --output-dir run/ [--lora] [--task-mix t2i=0.5,i2t=0.5]

- **Data.** Any ``datasets`` dataset with an image and a text column (a ``save_to_disk`` folder, an
  ``imagefolder`` with ``metadata.jsonl``, a name ``load_dataset`` resolves offline). Images are tokenised
  once with ``datasets.map`` through the pipeline's Selftok tokenizer and cached as an Arrow file keyed by the
  dataset and the tokenizer weights, so later runs skip the encoder and the VAE.
- **Mixture.** Every example is drawn as one task with the probabilities of ``--task-mix``: ``t2i``
  (caption -> image), ``i2t`` (image + question -> caption), ``image`` (image only) or ``text`` (text only,
  from ``--text-dataset`` or the captions). In the chat format (default: the processor's chat template, which is the
  paper's SFT stage ``USER:`` / ``ASSISTANT:`` unless the text tokenizer has its own; loss on answers only;
  built by ``SelftokProcessor.build_chat_example``), ``t2i`` and ``i2t`` are conversations and ``image`` / ``text`` are
  plain sequences; ``--no-chat-format`` makes every task a plain sequence with loss on all tokens (the
  paper's pre-training formats). ``--caption-dropout`` removes the caption of that fraction of ``t2i``
  examples, which teaches the unconditional branch that classifier-free guidance needs.
- **LoRA.** ``--lora`` adapts the attention and MLP projections of the architecture (see
  :func:`~selftok_hf.modeling_selftok_lm.visual_lora_config`) and trains the new token rows (visual tokens,
  markers, padding) of the embedding and head with PEFT's ``trainable_token_indices``, so the adapter holds
  those rows only, not whole matrices. ``--merge-lora`` folds the adapter in and writes a full pipeline.
- **Loading.** A torch ``DataLoader`` builds the micro-batches (:class:`SFTBatches`; ``--dataloader-num-workers``,
  the same batches for any number). ``--streaming`` (or a ``datasets.IterableDataset`` passed in) reads the pairs
  as a stream, tokenising images as they are read, and checkpoints keep the stream position
  (:mod:`~selftok_hf.training.loader`).
- **Loop.** The shared :class:`~selftok_hf.training.loop.TrainingLoop`: deterministic steps, exact resume,
  atomic checkpoints.

The options may also come from one JSON or YAML file instead: ``selftok-train-lm config.yaml``.

Outputs in ``--output-dir``: ``pipeline/`` (a full :class:`~selftok_hf.SelftokPipeline` folder; full
fine-tuning or ``--merge-lora``), ``adapter/`` (with ``--lora``: adapter, processor and model card, written by
``SelftokPipeline.save_lora_adapter``; load with ``SelftokPipeline.load_lora``), ``log.jsonl`` and ``checkpoints/``.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..modeling_selftok_lm import visual_lora_config
from ..pipeline_selftok import SelftokPipeline
from ..processing_selftok import DEFAULT_QUESTION, IGNORE_INDEX, SelftokProcessor
from ..renamed import renamed_names_getattr
from ..utils.atomic import export_folder
from .data import load_image_dataset
from .dataset_tokenization import (
    IMAGE_IDS_COLUMN,
    ImageIdsEncoder,
    tokenization_record,
    tokenizer_fingerprint,
)
from .loader import DataLoaderArguments, DataLoaderTrainingLoop, is_streaming
from .loop import (
    TrainingArgumentParser,
    enable_activation_checkpointing,
    parse_training_arguments,
)

__all__ = [
    "SFTArguments",
    "SFTBatches",
    "SFTExampleBuilder",
    "SelftokSFTTrainer",
    "collate_examples",
    "main",
    "parse_task_mix",
    "pipeline_or_load",
    "pretokenize_images",
]

# SFTTrainer was renamed so as not to share trl's class name with another API (issue 17); the old name warns.
__getattr__ = renamed_names_getattr(__name__, {"SFTTrainer": "SelftokSFTTrainer"})

logger = logging.getLogger(__name__)

TASKS = ("t2i", "i2t", "image", "text")
DESCRIPTION = "Supervised fine-tuning of a Selftok VLM on (image, text) pairs, full or LoRA, on accelerate."


def parse_task_mix(spec: str) -> dict[str, float]:
    """``"t2i=0.5,i2t=0.4,text=0.1"`` -> normalised probabilities over :data:`TASKS`."""
    mix = {}
    for item in spec.split(","):
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in TASKS:
            raise ValueError(f"task mix items must be NAME=WEIGHT with NAME in {TASKS}, got {item!r}")
        try:
            mix[name] = float(value)
        except ValueError:
            raise ValueError(f"task weight must be a number, got {item!r}") from None
        if mix[name] < 0:
            raise ValueError(f"task weights must be >= 0, got {item!r}")
    total = sum(mix.values())
    if total <= 0:
        raise ValueError(f"task mix {spec!r} has no positive weight")
    return {name: weight / total for name, weight in mix.items()}


def pretokenize_images(dataset, pipeline: SelftokPipeline, image_column: str = "image", batch_size: int = 16, cache_dir: str | os.PathLike | None = None):
    """Add a ``image_token_ids`` column (K Selftok ids per row, AR order) and drop the images, with ``datasets.map``.

    The result is cached in ``cache_dir`` (default: ``selftok-image-tokens/`` in the ``datasets`` cache,
    ``HF_DATASETS_CACHE``: never in the user's dataset folder) under a name derived from the dataset fingerprint and a
    hash of the image tokenizer and VAE weights, so a second call with the same data and tokenizer reads the Arrow
    file instead of encoding again.
    """
    if image_column not in dataset.column_names:
        raise ValueError(f"no column {image_column!r} in the dataset (columns: {dataset.column_names})")
    import datasets

    key = f"{dataset._fingerprint}-{tokenizer_fingerprint(pipeline)}"
    cache_dir = Path(cache_dir) if cache_dir is not None else Path(datasets.config.HF_DATASETS_CACHE) / "selftok-image-tokens"
    cache_dir.mkdir(parents=True, exist_ok=True)
    cache_file = str(cache_dir / f"selftok-image-tokens-{key}.arrow")

    return dataset.map(
        ImageIdsEncoder(pipeline, image_column),
        batched=True,
        batch_size=batch_size,
        remove_columns=[image_column],
        cache_file_name=cache_file,
        new_fingerprint=key,
        desc="tokenising images",
    )


@dataclass
class SFTExampleBuilder:
    """Turns a row ``{text, image_token_ids}`` and a task into ``{input_ids, labels}``.

    Args:
        processor: the pipeline's [`SelftokProcessor`].
        text_column: the caption column.
        answer_column: the column ``i2t`` examples answer with (default: ``text_column``), when the answer about an
            image differs from the caption that draws it (a prompt vs a full description of the scene).
        question: the user turn of ``i2t`` chat examples (after the image).
        chat_format: chat conversations (loss on answers) for t2i / i2t; else plain sequences.
        caption_dropout: probability of an empty caption in ``t2i`` examples.
        max_length: drop examples longer than this (the LM's context).
    """

    processor: SelftokProcessor
    text_column: str = "text"
    answer_column: str | None = None
    question: str = DEFAULT_QUESTION
    chat_format: bool = True
    caption_dropout: float = 0.1
    max_length: int | None = None

    def __call__(self, row: dict[str, Any], task: str, rng: np.random.Generator) -> dict[str, list[int]]:
        placeholder = self.processor.image_placeholder
        caption = row.get(self.text_column) or ""
        ids = row.get(IMAGE_IDS_COLUMN)
        image_ids = None if ids is None else np.asarray(ids)[None]
        if task in ("t2i", "i2t", "image") and image_ids is None:
            raise ValueError(f"task {task!r} needs image ids; the row has only {sorted(row)}")
        if task == "t2i":
            if rng.random() < self.caption_dropout:
                caption = ""
            if self.chat_format:
                conversation = [{"role": "user", "content": caption}, {"role": "assistant", "content": placeholder}]
                example = self.processor.build_chat_example(conversation, image_token_ids=image_ids)
            else:
                example = self.processor.build_plain_example(caption + placeholder, image_token_ids=image_ids)
        elif task == "i2t":
            if self.answer_column is not None:
                caption = row.get(self.answer_column) or ""
            if self.chat_format:
                conversation = [{"role": "user", "content": f"{placeholder} {self.question}".rstrip()}, {"role": "assistant", "content": caption}]
                example = self.processor.build_chat_example(conversation, image_token_ids=image_ids)
            else:
                example = self.processor.build_plain_example(placeholder + caption, image_token_ids=image_ids)
        elif task == "image":
            example = self.processor.build_plain_example(placeholder, image_token_ids=image_ids)
        elif task == "text":
            if placeholder in caption:
                raise ValueError(f"text-only example contains the image placeholder {placeholder!r}: {caption!r}")
            example = self.processor.build_plain_example(caption)
        else:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if self.max_length is not None and len(example["input_ids"]) > self.max_length:
            raise ValueError(f"a {task} example has {len(example['input_ids'])} tokens, more than the context of {self.max_length}")
        return example


def collate_examples(examples: list[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ``{input_ids, labels}`` examples into ``input_ids``, ``attention_mask`` and ``labels`` `(B, T)`."""
    length = max(len(e["input_ids"]) for e in examples)
    input_ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        input_ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        attention_mask[i, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


@dataclass
class SFTArguments(DataLoaderArguments):
    """Options of ``selftok-train-lm`` (plus those of :class:`~selftok_hf.training.loader.DataLoaderArguments`); each
    field's ``metadata["help"]`` is its ``--help`` text."""

    pipeline: str = field(
        default="",
        metadata={"help": "A SelftokPipeline folder whose LM is fine-tuned (its decoder stack tokenises the images).", "required": True},
    )
    dataset: str = field(
        default="",
        metadata={
            "help": "The (image, text) pairs: a save_to_disk folder, an imagefolder with metadata.jsonl, or a name "
            "load_dataset resolves (with --streaming: read as a stream).",
            "required": True,
        },
    )
    split: str = field(default="train", metadata={"help": "Split of the dataset (and of a text dataset loaded by name)."})
    image_column: str = field(default="image", metadata={"help": "The dataset's image column."})
    text_column: str = field(default="text", metadata={"help": "The caption column (of the dataset and of the text dataset)."})
    answer_column: str = field(default="", metadata={"help": "The column i2t examples answer with, when it is not the caption column."})
    text_dataset: str = field(default="", metadata={"help": "Optional text-only dataset for the text task (a folder or a name; map-style)."})
    task_mix: str = field(default="t2i=0.5,i2t=0.5", metadata={"help": "Task probabilities over t2i, i2t, image and text, e.g. 't2i=0.5,i2t=0.5'."})
    chat_format: bool = field(
        default=True, metadata={"help": "t2i and i2t examples as chat conversations with the loss on the answers; else plain sequences."}
    )
    question: str = field(default=DEFAULT_QUESTION, metadata={"help": "The user turn of i2t chat examples (after the image)."})
    caption_dropout: float = field(default=0.1, metadata={"help": "Probability of an empty caption in t2i examples (for classifier-free guidance)."})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate (with the loop's warm-up and decay)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient-norm clipping (0: none)."})
    lora: bool = field(default=False, metadata={"help": "LoRA (and the new token rows) instead of full fine-tuning."})
    lora_rank: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    merge_lora: bool = field(default=False, metadata={"help": "With --lora, also write the merged full pipeline."})
    image_batch_size: int = field(default=16, metadata={"help": "Images per batch when tokenising the dataset's images."})
    cache_dir: str = field(default="", metadata={"help": "Folder of the image-token cache (default: in the datasets cache)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        parse_task_mix(self.task_mix)
        if not 0 <= self.caption_dropout <= 1:
            raise ValueError(f"caption_dropout must be in [0, 1], got {self.caption_dropout}")
        if self.merge_lora and not self.lora:
            raise ValueError("merge_lora needs lora")


def pipeline_or_load(pipeline: SelftokPipeline | None, path: str | None) -> SelftokPipeline:
    """The pipeline a trainer was given, else the one saved at ``path`` (its ``--pipeline`` argument)."""
    if pipeline is not None:
        return pipeline
    if not path:
        raise ValueError("no pipeline: pass --pipeline (a SelftokPipeline folder)")
    # Master weights in float32 even from a float16 folder (what a package ships); --mixed-precision sets the compute dtype.
    return SelftokPipeline.from_pretrained(path, dtype=torch.float32)


class SFTBatches:
    """The SFT micro-batches, picklable for ``DataLoader`` workers (:mod:`~selftok_hf.training.loader`): micro-batch
    ``m`` of process ``p`` is a function of ``(seed, m, p)`` and, for a stream, of the rows read for it.

    Every example slot has a position (``m * global batch + p * batch_size + i``) and a task drawn from
    ``task_mix`` by a generator seeded with ``(seed, m, p)``, which also draws the caption dropout. A map-style
    ``dataset`` gives the row at that position of its epoch's permutation (seeded by ``(seed, epoch, size)``); a
    stream gives its next row. ``text`` examples read ``text_dataset`` (map-style) the same way when there is one.

    Args:
        builder: the :class:`SFTExampleBuilder`.
        dataset: the map-style pairs (with ``image_token_ids``), or None for a stream (rows passed to ``__call__``).
        text_dataset: optional map-style text-only rows for the ``text`` task.
        task_mix: ``parse_task_mix`` spec.
        seed / batch_size / num_processes / process_index: the run's.
        pad_token_id: right-padding id of the collated batch.
    """

    def __init__(self, builder: SFTExampleBuilder, dataset, text_dataset, task_mix: str, seed: int, batch_size: int,
                 num_processes: int, process_index: int, pad_token_id: int) -> None:  # fmt: skip
        mix = parse_task_mix(task_mix)
        self.builder, self.dataset, self.text_dataset = builder, dataset, text_dataset
        self.task_names, self.task_probs = list(mix), np.array(list(mix.values()))
        self.seed, self.batch_size, self.num_processes, self.process_index = seed, batch_size, num_processes, process_index
        self.pad_token_id = pad_token_id
        self._permutations: dict[tuple[int, int], np.ndarray] = {}

    def _permutation(self, epoch: int, size: int) -> np.ndarray:
        """The order of a dataset of ``size`` rows in ``epoch`` (seeded by ``(seed, epoch, size)``; the last few kept)."""
        key = (epoch, size)
        if key not in self._permutations:
            if len(self._permutations) > 3:
                self._permutations.pop(next(iter(self._permutations)))
            self._permutations[key] = np.random.default_rng([self.seed, epoch, size]).permutation(size)
        return self._permutations[key]

    def _row(self, source, position: int) -> dict[str, Any]:
        epoch, offset = divmod(position, len(source))
        return source[int(self._permutation(epoch, len(source))[offset])]

    def examples(self, micro_step: int, rows: list[dict[str, Any]] | None = None) -> list[dict[str, list[int]]]:
        """The examples of micro-batch ``micro_step``; ``rows``: the stream's rows for it (None: map-style)."""
        if rows is None and self.dataset is None:
            raise ValueError("a streaming dataset's rows come from the stream: pass the micro-batch's rows")
        rng = np.random.default_rng([self.seed, micro_step, self.process_index])
        start = micro_step * self.batch_size * self.num_processes + self.process_index * self.batch_size
        out = []
        for i, position in enumerate(range(start, start + self.batch_size)):
            task = self.task_names[rng.choice(len(self.task_names), p=self.task_probs)]
            if task == "text" and self.text_dataset is not None:
                row = self._row(self.text_dataset, position)
            else:
                row = rows[i] if rows is not None else self._row(self.dataset, position)
            out.append(self.builder(row, task, rng))
        return out

    def __call__(self, micro_step: int, rows: list[dict[str, Any]] | None = None) -> dict[str, torch.Tensor]:
        return collate_examples(self.examples(micro_step, rows), self.pad_token_id)


def _load_stream(source: str, split: str):
    """``source`` as a ``datasets.IterableDataset``: a ``save_to_disk`` folder read in order, else
    ``load_dataset(source, split=split, streaming=True)``."""
    import datasets

    path = Path(source)
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        dataset = datasets.load_from_disk(source)
        return (dataset[split] if isinstance(dataset, datasets.DatasetDict) else dataset).to_iterable_dataset()
    return datasets.load_dataset(source, split=split, streaming=True)


class SelftokSFTTrainer(DataLoaderTrainingLoop):
    """Fine-tunes the LM of a :class:`SelftokPipeline` on a mixture of T2I / I2T / image / text examples; the
    micro-batches are built by a ``DataLoader`` (:class:`SFTBatches`, ``dataloader_num_workers``).

    Args:
        args: the options.
        pipeline: the pipeline to train (default: loaded from ``args.pipeline``).
        dataset: the pairs as a ``datasets.Dataset`` or a streaming ``datasets.IterableDataset`` (default: loaded
            from ``args.dataset``); rows need the text column and either an image column or ``image_token_ids``.
            A stream's images are tokenised as they are read (a lazy ``map``), a map-style dataset's once
            (:func:`pretokenize_images`). With ``args.streaming`` a map-style dataset is read as a stream.
        text_dataset: optional text-only ``datasets.Dataset`` (map-style).
    """

    def __init__(self, args: SFTArguments, pipeline: SelftokPipeline | None = None, dataset=None, text_dataset=None) -> None:
        super().__init__(args)
        self.pipeline = pipeline
        self.dataset = dataset
        self.text_dataset = text_dataset

    # ---------------------------------------------------------------------------------- build
    def _load_data(self) -> bool:
        """Load and check the data; returns whether the pairs are a stream."""
        args = self.args
        image_column = args.image_column
        if self.dataset is None:
            if not args.dataset:
                raise ValueError("no dataset: pass --dataset")
            if args.streaming:
                self.dataset = _load_stream(args.dataset, args.split)
            else:
                # A dataset of precomputed ids (selftok tokenize-dataset) needs no image column.
                self.dataset = load_image_dataset(args.dataset, split=args.split, image_column=args.image_column, ids_column=IMAGE_IDS_COLUMN)
                image_column = "image"
        streaming = args.streaming or is_streaming(self.dataset)
        if streaming and not is_streaming(self.dataset):
            self.dataset = self.dataset.to_iterable_dataset()
        # A stream's columns are unknown after some operations (e.g. map): then its first row's.
        columns = self.dataset.column_names if self.dataset.column_names is not None else list(next(iter(self.dataset)))
        if args.text_column not in columns:
            raise ValueError(f"no text column {args.text_column!r} in the dataset (columns: {columns})")
        if args.answer_column and args.answer_column not in columns:
            raise ValueError(f"no answer column {args.answer_column!r} in the dataset (columns: {columns})")
        if IMAGE_IDS_COLUMN in columns:
            record = tokenization_record(self.dataset)  # written by selftok tokenize-dataset
            if record is not None and record.get("tokenizer_weights_sha256") != (ours := tokenizer_fingerprint(self.pipeline)):
                logger.warning(
                    "the dataset's image_token_ids were made by another image tokenizer (%s, weights %s) than this pipeline's "
                    "(weights %s): its decoder reads them differently",
                    record.get("pipeline"), record.get("tokenizer_weights_sha256"), ours,
                )  # fmt: skip
            if not streaming:
                ids = self.pipeline.processor.check_image_token_ids(np.asarray(self.dataset[:1][IMAGE_IDS_COLUMN]))
                logger.info("using the dataset's precomputed image_token_ids (%s per image)", ids.shape[1])
        elif streaming:
            if image_column not in columns:
                raise ValueError(f"no column {image_column!r} in the dataset (columns: {columns})")
            encode = ImageIdsEncoder(self.pipeline, image_column)
            self.dataset = self.dataset.map(encode, batched=True, batch_size=args.image_batch_size, remove_columns=[image_column])
        else:
            self.dataset = pretokenize_images(self.dataset, self.pipeline, image_column, args.image_batch_size, args.cache_dir or None)
        if self.text_dataset is None and args.text_dataset:
            import datasets

            path = Path(args.text_dataset)
            self.text_dataset = datasets.load_from_disk(path) if path.is_dir() else datasets.load_dataset(args.text_dataset, split=args.split)
        if self.text_dataset is not None:
            if is_streaming(self.text_dataset):
                raise ValueError("the text dataset must be a map-style datasets.Dataset (its rows are read by position), not a stream")
            if args.text_column not in self.text_dataset.column_names:
                raise ValueError(f"no text column {args.text_column!r} in the text dataset (columns: {self.text_dataset.column_names})")
        return streaming

    def _wrap_lora(self, model):
        from peft import get_peft_model

        args = self.args
        return get_peft_model(model, visual_lora_config(model, r=args.lora_rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout))

    def build(self) -> None:
        args, acc = self.args, self.accelerator
        self.pipeline = pipeline_or_load(self.pipeline, args.pipeline)
        self.pipeline.set_progress_bar_config(disable=True)
        streaming = self._load_data()
        model = self.pipeline.language_model
        if args.gradient_checkpointing:
            enable_activation_checkpointing(model)
        if args.lora:
            if args.gradient_checkpointing:
                model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need a graph to recompute
            model = self._wrap_lora(model)
        self.pipeline.language_model = model
        self.builder = SFTExampleBuilder(
            self.pipeline.processor,
            text_column=args.text_column,
            answer_column=args.answer_column or None,
            question=args.question,
            chat_format=args.chat_format,
            caption_dropout=args.caption_dropout,
            max_length=_context(model),
        )
        self.make_batch = SFTBatches(
            self.builder, None if streaming else self.dataset, self.text_dataset, args.task_mix, args.seed, args.batch_size,
            acc.num_processes, acc.process_index, self.pipeline.processor.pad_token_id,
        )  # fmt: skip
        if streaming:
            self.set_stream(self.dataset)
        params = [p for p in model.parameters() if p.requires_grad]
        self.models = {"language_model": model}
        self.optimizers = {"language_model": torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.weight_decay)}

    # ------------------------------------------------------------------------------- training
    def examples(self, micro_step: int) -> list[dict[str, list[int]]]:
        """The examples of a micro-batch of a map-style dataset: a function of ``(seed, micro_step, process)`` only."""
        return self.make_batch.examples(micro_step)

    def training_step(self, micro_step: int) -> tuple[torch.Tensor, dict[str, float]]:
        batch = self.next_batch(micro_step)
        model = self.models["language_model"]
        batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
        loss = model(**batch).loss
        return loss, {"loss": float(loss.detach())}

    def optimizer_step(self) -> dict[str, float]:
        if self.args.max_grad_norm and self.accelerator.sync_gradients:
            params = [p for p in self.models["language_model"].parameters() if p.requires_grad]
            self.accelerator.clip_grad_norm_(params, self.args.max_grad_norm)
        return super().optimizer_step()

    # --------------------------------------------------------------------------------- export
    def export(self) -> dict[str, Path]:
        """Write ``adapter/`` (LoRA) and/or ``pipeline/`` (full weights) under ``output_dir``, each renamed into place
        when complete (:func:`~selftok_hf.utils.atomic.export_folder`); returns their paths."""
        written = {}
        if not self.accelerator.is_main_process:
            return written
        model = self.accelerator.unwrap_model(self.models["language_model"])
        model.eval()
        self.pipeline.language_model = model
        if self.args.lora:
            adapter_dir = self.output_dir / "adapter"
            # Every new row (visual tokens, markers, padding) is in trainable_token_indices, so the adapter needs no
            # full embedding matrices.
            with export_folder(adapter_dir) as staged:
                self.pipeline.save_lora_adapter(staged, save_embedding_layers=False)
            written["adapter"] = adapter_dir
            if not self.args.merge_lora:
                return written
            self.pipeline.merge_lora()
        pipeline_dir = self.output_dir / "pipeline"
        with export_folder(pipeline_dir) as staged:
            self.pipeline.save_pretrained(staged)
        written["pipeline"] = pipeline_dir
        return written


def _context(model) -> int | None:
    from ..generation_selftok import context_length

    return context_length(model.config)


def main(argv: list[str] | None = None, prog: str = "selftok-train-lm") -> int:
    """``selftok-train-lm``: options, or one JSON / YAML file of them (:func:`~selftok_hf.training.loop.parse_training_arguments`)."""
    parser = TrainingArgumentParser(SFTArguments, prog=prog, description=DESCRIPTION)
    (args,) = parse_training_arguments(parser, argv, existing_paths=("pipeline",))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    trainer = SelftokSFTTrainer(args)
    history = trainer.run()
    written = trainer.export()
    if history:
        first, last = history[0].get("loss", math.nan), history[-1].get("loss", math.nan)
        print(f"loss {first:.4f} (step {history[0]['step']}) -> {last:.4f} (step {history[-1]['step']})")
    for name, path in written.items():
        print(f"wrote {name}: {path}")
    return 0
