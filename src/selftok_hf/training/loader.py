"""Micro-batches through a torch ``DataLoader`` for the SFT and GRPO trainers: worker processes, streaming datasets,
exact resume.

Micro-batch ``m`` of process ``p`` is made from a *key*:

- for a map-style source (a list, a ``datasets.Dataset``) the key is ``m`` alone and the rows are a function of
  ``(seed, m, p)`` (a seeded permutation per epoch, or seeded draws), so a resumed run starts at the checkpoint's
  micro step and needs no other state;
- for a streaming source (a ``datasets.IterableDataset``, e.g. ``load_dataset(..., streaming=True)``) the key holds
  the next ``batch_size`` rows of the stream, read in order in the main process, and the stream's
  ``state_dict()`` after them. When the stream ends, the next epoch (``set_epoch``) continues it.

A sampler yields the keys in order from the first micro step to train on, and the ``DataLoader``'s workers
(``dataloader_num_workers``) turn them into batches (chat templates, tokenisation, padding). The ``DataLoader``
returns batches in key order whatever the number of workers, and nothing random happens outside the seeded
per-batch generators, so a run's data do not depend on the number of workers. Workers prefetch ahead of training;
what a checkpoint saves (:meth:`DataLoaderTrainingLoop.data_state`) is the stream position after the last batch
*trained on*, and a resumed run loads it with ``load_state_dict`` and reads on from the next example. datasets
documents two exceptions to an exact resume: the rows of a shuffle buffer (``IterableDataset.shuffle``) are lost,
and ``with_format("arrow")`` with a batched ``map`` may skip a batch.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from .loop import LoopArguments, TrainingLoop

__all__ = ["DataLoaderArguments", "DataLoaderTrainingLoop", "MicroBatchLoader", "is_streaming", "stream_batches"]

logger = logging.getLogger(__name__)


@dataclass
class DataLoaderArguments(LoopArguments):
    """:class:`~selftok_hf.training.loop.LoopArguments` plus how the SFT and GRPO trainers load their data."""

    dataloader_num_workers: int = field(
        default=0,
        metadata={
            "help": "Worker processes that build the micro-batches (torch DataLoader, as transformers' TrainingArguments; "
            "0: in the main process). The batches are the same for any number."
        },
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read the training data as a stream (datasets' load_dataset(..., streaming=True)): rows in order, "
            "epoch after epoch, none held in memory; checkpoints save the stream position, and a resumed run reads on "
            "from the next row."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dataloader_num_workers < 0:
            raise ValueError(f"dataloader_num_workers must be >= 0, got {self.dataloader_num_workers}")


def is_streaming(dataset) -> bool:
    """Whether ``dataset`` is a ``datasets.IterableDataset`` (rows in order only, no ``len``)."""
    import datasets

    return isinstance(dataset, datasets.IterableDataset)


def stream_batches(dataset, batch_size: int, state: dict[str, Any] | None = None) -> Iterator[tuple[list[dict], dict[str, Any]]]:
    """``(rows, state)`` for consecutive ``batch_size`` rows of the ``datasets.IterableDataset`` ``dataset``, forever:
    when an epoch ends, the next one (``set_epoch``; a shuffled or multi-shard stream changes its order) fills the
    batch. ``state`` is ``dataset.state_dict()`` after the batch's last row; passing it back starts after that row
    (``state=None``: at the start of epoch 0). Sets the epoch and the starting state of ``dataset`` itself."""
    epoch = state["epoch"] if state else 0
    dataset.set_epoch(epoch)
    dataset.load_state_dict(state)  # None: from the start (a previous load on this object is forgotten)
    rows, from_start, rows_this_epoch = iter(dataset), state is None, 0
    while True:
        batch = []
        while len(batch) < batch_size:
            try:
                batch.append(next(rows))
                rows_this_epoch += 1
            except StopIteration:
                if from_start and not rows_this_epoch:
                    raise ValueError("the streaming dataset has no rows") from None
                epoch += 1
                dataset.set_epoch(epoch)  # the starting state belongs to an earlier epoch: this one starts at its start
                rows, from_start, rows_this_epoch = iter(dataset), True, 0
        yield batch, dataset.state_dict()


class _Keys(torch.utils.data.Sampler):
    """The keys ``(micro_step, rows, stream_state)`` from micro step ``start`` on (module docstring)."""

    def __init__(self, start: int, stream=None, batch_size: int = 1, state: dict[str, Any] | None = None) -> None:
        self.start, self.stream, self.batch_size, self.state = start, stream, batch_size, state

    def __iter__(self):
        if self.stream is None:
            return ((micro_step, None, None) for micro_step in itertools.count(self.start))
        batches = stream_batches(self.stream, self.batch_size, self.state)
        return ((micro_step, rows, state) for micro_step, (rows, state) in zip(itertools.count(self.start), batches))


class _KeyedBatches(torch.utils.data.Dataset):
    """A map-style dataset over keys: ``make_batch(micro_step, rows)`` (rows: None for a map-style source)."""

    def __init__(self, make_batch: Callable[[int, list[dict] | None], Any]) -> None:
        self.make_batch = make_batch

    def __getitem__(self, key):
        micro_step, rows, state = key
        return micro_step, self.make_batch(micro_step, rows), state


def _as_is(item):
    return item


class MicroBatchLoader:
    """The micro-batches of one process from micro step ``start`` on, through a torch ``DataLoader``.

    Args:
        make_batch: ``(micro_step, rows) -> batch``, picklable (workers may be spawned); ``rows`` is None for a
            map-style source, whose rows ``make_batch`` reads itself.
        start: the first micro step.
        num_workers: ``DataLoader`` workers (0: in the main process).
        seed: seeds the ``DataLoader``'s own generator (its workers' base seed), so that creating it draws nothing from
            the global torch generator the training step uses.
        stream / batch_size / stream_state: a ``datasets.IterableDataset`` read ``batch_size`` rows per micro step,
            from ``stream_state`` (see :func:`stream_batches`).
    """

    def __init__(self, make_batch, start: int, num_workers: int = 0, seed: int = 0, stream=None, batch_size: int = 1, stream_state=None) -> None:
        loader = torch.utils.data.DataLoader(
            _KeyedBatches(make_batch),
            batch_size=None,
            sampler=_Keys(start, stream, batch_size, stream_state),
            num_workers=num_workers,
            collate_fn=_as_is,
            generator=torch.Generator().manual_seed(seed),
        )
        self._batches = iter(loader)
        self.next_micro_step = start
        #: The stream position after the last batch returned (None for a map-style source).
        self.state = stream_state

    def next(self, micro_step: int):
        """The batch of ``micro_step``, which must be the one after the previous call's."""
        if micro_step != self.next_micro_step:
            raise RuntimeError(f"micro-batches are read in order: expected micro step {self.next_micro_step}, got {micro_step}")
        got, batch, state = next(self._batches)
        assert got == micro_step, (got, micro_step)
        self.next_micro_step += 1
        if state is not None:
            self.state = state
        return batch

    def close(self) -> None:
        """Stop the workers."""
        self._batches = None


class DataLoaderTrainingLoop(TrainingLoop):
    """A :class:`~selftok_hf.training.loop.TrainingLoop` whose micro-batches come from a :class:`MicroBatchLoader`
    (module docstring). In :meth:`build`, subclasses set ``self.make_batch`` (see :class:`MicroBatchLoader`) and,
    for a streaming source, ``self.stream`` (through :meth:`set_stream`); :meth:`next_batch` gives
    :meth:`training_step` its batch."""

    args: DataLoaderArguments

    def __init__(self, args: DataLoaderArguments) -> None:
        super().__init__(args)
        self.make_batch: Callable[[int, list[dict] | None], Any] | None = None
        self.stream = None
        self._stream_state: dict[str, Any] | None = None
        self._loader: MicroBatchLoader | None = None

    def set_stream(self, dataset) -> None:
        """Train on the ``datasets.IterableDataset`` ``dataset``; with several processes, each reads its part
        (``datasets.distributed.split_dataset_by_node``: whole shards when they divide evenly, else every n-th row)."""
        acc = self.accelerator
        if acc.num_processes > 1:
            from datasets.distributed import split_dataset_by_node

            dataset = split_dataset_by_node(dataset, rank=acc.process_index, world_size=acc.num_processes)
        self.stream = dataset

    def next_batch(self, micro_step: int):
        """The batch of ``micro_step`` (micro steps are consecutive from the first one trained on)."""
        if self._loader is None:
            if self.stream is not None and micro_step != self.step * self.args.gradient_accumulation_steps:
                raise RuntimeError(f"a stream is read in order: the first micro step must be the checkpoint's, not {micro_step}")
            self._loader = MicroBatchLoader(
                self.make_batch, micro_step, self.args.dataloader_num_workers, self.args.seed,
                stream=self.stream, batch_size=self.args.batch_size, stream_state=self._stream_state,
            )  # fmt: skip
        return self._loader.next(micro_step)

    def data_state(self) -> dict[str, Any] | None:
        if self.stream is None:
            return None
        return self._loader.state if self._loader is not None else self._stream_state

    def load_data_state(self, state: dict[str, Any] | None) -> None:
        if self.stream is None:
            return
        if state is None and self.step > 0:
            raise ValueError(
                f"the checkpoint of step {self.step} holds no stream position (data_state_*.json): it was not written "
                "by a streaming run, so where to continue the stream is unknown"
            )
        self._stream_state = state

    def close_batches(self) -> None:
        """Stop the ``DataLoader`` workers (:meth:`run` does when training ends)."""
        if self._loader is not None:
            self._stream_state = self._loader.state
            self._loader.close()
            self._loader = None

    def run(self) -> list[dict[str, Any]]:
        try:
            return super().run()
        finally:
            self.close_batches()
