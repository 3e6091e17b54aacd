"""The accelerate training loop shared by the trainers (tokenizer, renderer, VAE, SFT, GRPO).

One loop, three guarantees:

- **Deterministic steps.** Every random draw of micro-batch ``m`` (data order, crops, diffusion times, noise,
  dropout, quantizer re-seeding) is made after seeding with ``(seed, m, process)``; nothing depends on how many
  steps ran before in this process.
- **Exact resume.** Checkpoints hold the model(s), optimizer(s) and the step counter (``accelerator.save_state``),
  and the position of a data stream where there is one (:meth:`TrainingLoop.data_state`); with deterministic steps,
  a resumed run reproduces the uninterrupted run's losses exactly.
- **Atomic checkpoints.** A checkpoint is written to a temporary directory and renamed into place, and the
  ``latest`` pointer is replaced atomically afterwards; a save killed at any point leaves the previous
  checkpoint and pointer intact. A full disk is reported as such (the partial copy deleted), and resuming from a
  checkpoint with a missing, truncated or unreadable file names the folder and the file (:func:`check_checkpoint`).
  Exports are written the same way (:func:`selftok_hf.utils.atomic.export_folder`).

Subclasses implement :meth:`TrainingLoop.build` (models, optimizers, data) and :meth:`TrainingLoop.training_step`.

The trainer CLIs parse their options with transformers' ``HfArgumentParser`` (:class:`TrainingArgumentParser`,
:func:`parse_training_arguments`): one option per field of the arguments dataclass, its help text the field's
``metadata["help"]``, or one JSON / YAML file holding them.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import math
import os
import shutil
import sys
import time
import types
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from diffusers.training_utils import EMAModel
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from tqdm.auto import tqdm
from transformers import HfArgumentParser

from ..renamed import add_renamed_option, with_new_keys
from ..utils.atomic import (
    atomic_write_text,
    check_export_target,
    install_folder,
    replaced_path,
)
from .data import step_seed

__all__ = [
    "LoopArguments",
    "TrainingLoop",
    "CONFIG_FILE_SUFFIXES",
    "ExportArguments",
    "TrainingArgumentParser",
    "check_checkpoint",
    "enable_activation_checkpointing",
    "latest_checkpoint",
    "load_json_or_preset",
    "parse_training_arguments",
    "resume_checkpoint",
    "run_training_cli",
]

logger = logging.getLogger(__name__)

_CHECKPOINTS = "checkpoints"
_LATEST = "latest"
_STATE_FILE = "trainer_state.json"
_EMA_WEIGHTS, _EMA_STATE = "ema.safetensors", "ema.json"
_DATA_STATE = "data_state_{}.json"  # one per process (TrainingLoop.data_state)


#: Suffixes of a config file given instead of options: ``selftok-train-lm config.yaml``.
CONFIG_FILE_SUFFIXES = (".json", ".yaml", ".yml")


@dataclass
class LoopArguments:
    """Options every trainer shares. Each field's ``metadata["help"]`` is its ``--help`` text
    (:class:`TrainingArgumentParser`)."""

    output_dir: str = field(default="selftok-run", metadata={"help": "Where checkpoints, logs (log.jsonl) and the exported model go."})
    max_steps: int = field(default=1000, metadata={"help": "Optimiser steps to run in total (a resumed run continues to this number)."})
    batch_size: int = field(default=8, metadata={"help": "Images per process per micro-batch."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimiser step."})
    seed: int = field(default=0, metadata={"help": "Base seed of every random draw: each draw of a micro-batch is seeded by (seed, micro step, process)."})
    mixed_precision: str = field(default="no", metadata={"help": "'no', 'bf16' or 'fp16' (autocast; parameters stay fp32)."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations in the backward pass."})
    checkpoint_every: int = field(default=500, metadata={"help": "Steps between checkpoints (0: only at the end)."})
    keep_checkpoints: int = field(default=2, metadata={"help": "How many checkpoints to keep (oldest deleted first)."})
    resume_from: str | None = field(default=None, metadata={"help": "'latest' (a fresh start if OUTPUT_DIR has no checkpoint yet), a checkpoint directory, or None."})
    log_every: int = field(default=10, metadata={"help": "Steps between log lines."})
    report_to: str | None = field(default=None, metadata={"help": "accelerate tracker (e.g. 'tensorboard'), or None."})
    cpu: bool = field(default=False, metadata={"help": "Force CPU even when an accelerator is present."})
    warmup_steps: int = field(default=0, metadata={"help": "Linear learning-rate warm-up over this many optimiser steps, then constant (0: none)."})
    decay_steps: int = field(
        default=0,
        metadata={
            "help": "Cosine decay of the learning rate towards 0 over the last this many of max_steps (0: none; warm-up / "
            "constant / decay, so a constant-rate run can be extended and then decayed)."
        },
    )
    ema_decay: float = field(
        default=0.0,
        metadata={
            "help": "Keep an exponential moving average of the trained parameters with this decay (diffusers' EMAModel, "
            "decay warm-up (1 + s) / (10 + s)); evaluation and export then use the averaged weights (0: off)."
        },
    )

    def __post_init__(self) -> None:
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0 <= self.decay_steps <= self.max_steps:
            raise ValueError(f"decay_steps must be in [0, max_steps={self.max_steps}], got {self.decay_steps}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.gradient_accumulation_steps < 1:
            raise ValueError(f"gradient_accumulation_steps must be >= 1, got {self.gradient_accumulation_steps}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")


@dataclass
class ExportArguments:
    """The ``--export-dir`` option of the tokenizer, renderer and VAE trainers (:func:`run_training_cli`)."""

    export_dir: str | None = field(default=None, metadata={"help": "Where to write the trained model (None: a folder in OUTPUT_DIR, e.g. OUTPUT_DIR/pipeline)."})


class TrainingArgumentParser(HfArgumentParser):
    """transformers' ``HfArgumentParser`` for the trainer CLIs: one option per dataclass field, spelt ``--flag-name``
    and ``--flag_name``, typed from the annotation (``X | None`` parses as ``X``), its help text the field's
    ``metadata["help"]``, its default shown; a field whose metadata has ``"required": True`` must be given. Booleans
    are ``--flag`` / ``--flag false`` and, for those whose default is True, ``--no-flag`` (transformers); those whose
    default is False also take ``--no-flag`` (hidden from ``--help``), the spelling these CLIs always had.

    A field renamed with :func:`~selftok_hf.renamed.renamed_fields` also takes its old spellings, with a
    ``FutureWarning``.

    Instead of options, the command line may name one JSON or YAML file holding them (:func:`parse_training_arguments`).
    """

    def __init__(self, dataclass_types, **kwargs) -> None:
        kwargs.setdefault(
            "epilog",
            "Instead of options, one JSON or YAML file can hold them: %(prog)s config.json or %(prog)s config.yaml, "
            "an object whose keys are the option names with underscores (e.g. {\"output_dir\": \"run\", \"max_steps\": 100}).",
        )
        super().__init__(dataclass_types, **kwargs)
        for dtype in self.dataclass_types:
            hints = get_type_hints(dtype)
            for f in fields(dtype):
                if hints[f.name] is bool and f.default is False:
                    flags = (f"--no_{f.name}", f"--no-{f.name.replace('_', '-')}")
                    self.add_argument(*flags, action="store_false", dest=f.name, default=False, help=argparse.SUPPRESS)
            for old, new in getattr(dtype, "_renamed_fields", {}).items():
                add_renamed_option(self, f"--{old}", f"--{new}")
                add_renamed_option(self, f"--{old.replace('_', '-')}", f"--{new.replace('_', '-')}")


def _config_value_error(name: str, value: Any, hint: Any) -> str | None:
    """Why ``value`` (from a config file) cannot be field ``name`` of type ``hint``, or None. ``int`` is accepted
    for ``float`` (and converted by the caller)."""
    kinds = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    if value is None and type(None) in kinds:
        return None
    for kind in kinds:
        if kind is bool and isinstance(value, bool):
            return None
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return None
        if kind in (int, str) and isinstance(value, kind) and not isinstance(value, bool):
            return None
    names = " or ".join("null" if kind is type(None) else kind.__name__ for kind in kinds)
    advice = " (YAML reads 1e-4 as text: write 1.0e-4)" if float in kinds and isinstance(value, str) else ""
    return f"{name} must be {names}, got {value!r}{advice}"


def _parse_config_file(parser: HfArgumentParser, path: str) -> tuple[Any, ...]:
    """The dataclasses of ``parser`` from a JSON or YAML file, as ``HfArgumentParser.parse_json_file`` /
    ``parse_yaml_file`` (``json.loads`` / ``yaml.safe_load``, then ``parse_dict``), after checking that every value
    has its field's type and that required fields are there; any problem exits with code 2 naming the file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        values = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as err:
        parser.error(f"config file {path}: {err}")
    if not isinstance(values, dict):
        parser.error(f"config file {path}: expected an object of option names and values, got {type(values).__name__}")
    for dtype in parser.dataclass_types:
        values = with_new_keys(values, getattr(dtype, "_renamed_fields", {}), warn_as=f"config file {path}")
        hints = get_type_hints(dtype)
        for f in fields(dtype):
            if f.name in values:
                error = _config_value_error(f.name, values[f.name], hints[f.name])
                if error:
                    parser.error(f"config file {path}: {error}")
                if float in (get_args(hints[f.name]) or (hints[f.name],)) and isinstance(values[f.name], int):
                    values[f.name] = float(values[f.name])  # what the command line would give
            elif f.metadata.get("required"):
                parser.error(f"config file {path}: {f.name} is required")
    try:
        return parser.parse_dict(values)
    except (ValueError, TypeError) as err:
        parser.error(f"config file {path}: {err}")


def parse_training_arguments(
    parser: HfArgumentParser, argv: Sequence[str] | None = None, existing_paths: Collection[str] = ()
) -> tuple[Any, ...]:
    """The dataclass instances of ``parser`` from ``argv`` (default ``sys.argv[1:]``): options, or a single JSON /
    YAML file path (:data:`CONFIG_FILE_SUFFIXES`, the way transformers' example scripts take one). A bad value exits
    with code 2 and a message naming it: an unknown option, a value that a dataclass rejects (a ``ValueError`` from
    its ``__post_init__``), a path in ``existing_paths`` (field names of the first dataclass) that does not exist,
    or a ``resume_from`` that names no usable checkpoint (:func:`resume_checkpoint`, :func:`check_checkpoint`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) == 1 and argv[0].endswith(CONFIG_FILE_SUFFIXES):
        parsed = _parse_config_file(parser, argv[0])
    else:
        try:
            *parsed, unknown = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True, look_for_args_file=False)
        except ValueError as err:
            parser.error(str(err))
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args = parsed[0]
    for name in existing_paths:
        value = getattr(args, name)
        if value and not os.path.exists(value):
            parser.error(f"--{name.replace('_', '-')}: no such file or folder: {value}")
    if isinstance(args, LoopArguments) and args.resume_from:
        try:
            path = resume_checkpoint(args.output_dir, args.resume_from)
            if path is not None:
                check_checkpoint(path)
        except (FileNotFoundError, ValueError) as err:
            parser.error(f"--resume-from {args.resume_from}: {err}")
    return tuple(parsed)


def run_training_cli(
    prog: str, description: str, args_cls: type, train: Callable, argv: list[str] | None = None, existing_paths: Collection[str] = ()
) -> int:
    """Shared ``main()`` of the tokenizer, renderer and VAE trainers: the options of ``args_cls`` plus ``--export-dir``
    (:class:`ExportArguments`) or one config file, invalid ones exiting with code 2 (:func:`parse_training_arguments`);
    then ``train(args, export_dir)``."""
    parser = TrainingArgumentParser([args_cls, ExportArguments], prog=prog, description=description)
    args, export = parse_training_arguments(parser, argv, existing_paths)
    if export.export_dir:
        try:
            check_export_target(export.export_dir)  # before training, not after it
        except FileExistsError as err:
            parser.error(f"--export-dir: {err}")
    logging.basicConfig(level=logging.INFO)
    train(args, export.export_dir)
    return 0


def load_json_or_preset(value: str | None, presets: dict[str, dict]) -> dict:
    """``value`` as keyword arguments: the name of a preset in ``presets``, a JSON file, or a JSON object (None: {})."""
    if value is None:
        return {}
    if value in presets:
        return dict(presets[value])
    if not value.lstrip().startswith("{") and Path(value).is_file():
        return json.loads(Path(value).read_text())
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise ValueError(f"{value!r} is neither a preset ({sorted(presets)}), a JSON file nor a JSON object") from None


def enable_activation_checkpointing(model) -> None:
    """Recompute a transformers model's activations in the backward pass: ``activation_checkpointing_enable`` where
    transformers has it (5.24 deprecated the older ``gradient_checkpointing_enable``), else the older name."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint the ``latest`` pointer of ``output_dir`` names, or None."""
    pointer = Path(output_dir) / _CHECKPOINTS / _LATEST
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if path.is_dir() else None


def resume_checkpoint(output_dir: str | os.PathLike, resume_from: str) -> Path | None:
    """The checkpoint ``resume_from`` names. ``"latest"`` in a run folder with no checkpoint yet means a fresh start
    (None); a ``latest`` pointer whose folder is gone, or a missing named checkpoint, is an error, never a silent
    restart from step 0."""
    if resume_from != "latest":
        path = Path(resume_from)
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint {resume_from} not found")
        return path
    root = Path(output_dir) / _CHECKPOINTS
    pointer = root / _LATEST
    if not pointer.exists():
        if any(root.glob("step-*")):
            raise FileNotFoundError(f"{root} holds checkpoints but no '{_LATEST}' pointer; pass --resume-from with one of them")
        return None
    path = latest_checkpoint(output_dir)
    if path is None:
        # A death between moving an old copy aside and renaming the new one in (save_checkpoint).
        aside = replaced_path(root / pointer.read_text().strip())
        if aside.is_dir():
            return aside
        raise FileNotFoundError(f"'{_LATEST}' names {pointer.read_text().strip()!r}, which is missing from {root}")
    return path


def check_checkpoint(path: str | os.PathLike) -> int:
    """The step of checkpoint ``path``, after checking that it is complete: its ``trainer_state.json`` is readable
    and every file it lists (what :meth:`TrainingLoop.save_checkpoint` wrote) is there with its size. Reads no
    weights. Raises ``FileNotFoundError`` or ``ValueError`` naming the folder and the file."""
    path = Path(path)
    state_file = path / _STATE_FILE
    if not state_file.is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {_STATE_FILE})")
    try:
        state = json.loads(state_file.read_text())
        step = int(state["step"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"checkpoint {path} is damaged: {_STATE_FILE} is unreadable ({type(err).__name__}: {err})") from None
    # Checkpoints written before the file list was recorded have none: they are checked when loaded.
    damaged = []
    for name, size in sorted(state.get("files", {}).items()):
        file = path / name
        if not file.is_file():
            damaged.append(f"{name} is missing")
        elif file.stat().st_size != size:
            damaged.append(f"{name} has {file.stat().st_size} bytes, {size} were written")
    if damaged:
        raise ValueError(f"checkpoint {path} is incomplete or damaged: {'; '.join(damaged)}")
    return step


# How a full disk shows up while saving: OSError ENOSPC/EDQUOT (json, open), safetensors' "No space left on device",
# torch.save's "[enforce fail at inline_container.cc:...] . PytorchStreamWriter failed writing file ...: file write
# failed" or "unexpected pos N vs M" (torch reports no errno).
_DISK_FULL_MESSAGES = ("No space left on device", "Disk quota exceeded", "file write failed", "unexpected pos")


def _is_disk_full(error: BaseException) -> bool:
    return getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(m in str(error) for m in _DISK_FULL_MESSAGES)


class TrainingLoop:
    """Base class of the accelerate trainers (see the module docstring).

    Subclasses set, in :meth:`build`: ``self.models`` (name -> module, prepared and checkpointed),
    ``self.optimizers`` (name -> optimizer, stepped in insertion order after every accumulation cycle) and anything
    :meth:`training_step` needs.
    """

    def __init__(self, args: LoopArguments) -> None:
        self.args = args
        self.accelerator = Accelerator(
            mixed_precision=args.mixed_precision,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            log_with=args.report_to,
            project_dir=args.output_dir,
            # accelerate runs several processes on CPUs (gloo) only when told `cpu`: do so when no GPU is present.
            cpu=args.cpu or (int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()),
            # The encoder's last block has an image stream nobody reads, the decoder's last block no token queries.
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        )
        self.output_dir = Path(args.output_dir)
        self.step = 0
        self.models: dict[str, torch.nn.Module] = {}
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.ema: EMAModel | None = None
        #: Modules whose weights checkpoints hold although no optimizer trains them (e.g. GRPO's KL reference),
        #: saved as safetensors: never through accelerate's pickled custom objects.
        self.frozen_modules: dict[str, torch.nn.Module] = {}
        self.history: list[dict[str, Any]] = []

    # --------------------------------------------------------------------------- subclass hooks
    def build(self) -> None:
        """Create ``self.models``, ``self.optimizers`` and the data source."""
        raise NotImplementedError

    def training_step(self, micro_step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of micro-batch ``micro_step`` (already seeded) and floats to log."""
        raise NotImplementedError

    def learning_rate_factor(self, step: int) -> float:
        """Multiplier of every base learning rate at optimiser step ``step`` (0-based): the linear warm-up, then 1, then
        the cosine decay of the last ``decay_steps`` steps (towards 0, which the step after the last would reach). A
        pure function of the step, so a resumed run needs no scheduler state."""
        args = self.args
        factor = min(1.0, (step + 1) / args.warmup_steps) if args.warmup_steps else 1.0
        decay_start = args.max_steps - args.decay_steps
        if args.decay_steps and step >= decay_start:
            # (d + 1) / (decay_steps + 1) for the d-th decay step: every step still learns, the next would be at 0.
            factor *= 0.5 * (1 + math.cos(math.pi * (step + 1 - decay_start) / (args.decay_steps + 1)))
        return factor

    def optimizer_step(self) -> dict[str, float]:
        """Step every optimizer at its warmed-up learning rates, zero the gradients, update the EMA; returns extra
        floats to log (e.g. learning rates)."""
        logs = {}
        factor = self.learning_rate_factor(self.step)
        for name, optimizer in self.optimizers.items():
            for group in optimizer.param_groups:
                group.setdefault("base_lr", group["lr"])
                group["lr"] = group["base_lr"] * factor
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            for group in optimizer.param_groups:
                logs[f"lr/{group.get('name', name)}"] = group["lr"]
        if self.ema is not None:
            self.ema.step(self._trained_parameters())
        return logs

    def on_log(self, logs: dict[str, float]) -> dict[str, float]:
        """Hook to add slower statistics at logging steps (e.g. codebook usage)."""
        return logs

    def data_state(self) -> dict[str, Any] | None:
        """Where this process is in a data stream whose position the step alone does not give (e.g. a streaming
        dataset's ``state_dict()`` after the last micro-batch trained on), as JSON-serialisable values; checkpoints
        save it as ``data_state_{process}.json``. None (the default): nothing to save."""
        return None

    def load_data_state(self, state: dict[str, Any] | None) -> None:
        """Resume hook, called with ``self.step`` already set: what :meth:`data_state` returned when the checkpoint
        was written, or None when it holds none (a checkpoint of a trainer whose data position is the step's)."""

    # ------------------------------------------------------------------------------- checkpoints
    def _unwrapped(self) -> dict[str, torch.nn.Module]:
        return {name: self.accelerator.unwrap_model(m) for name, m in self.models.items()}

    def _trained_parameters(self) -> list[torch.nn.Parameter]:
        return [p for model in self._unwrapped().values() for p in model.parameters() if p.requires_grad]

    @contextmanager
    def ema_weights(self) -> Iterator[None]:
        """Inside this block the trained models hold their EMA weights (a no-op without ``ema_decay``); the
        training weights are put back on exit. Evaluation and export run inside it."""
        if self.ema is None:
            yield
            return
        params = self._trained_parameters()
        self.ema.store(params)
        self.ema.copy_to(params)
        try:
            yield
        finally:
            self.ema.restore(params)

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step-XXXXXXXX`` atomically and point ``latest`` at it. On a full disk the partial copy
        is deleted and an ``OSError`` (ENOSPC) says so; the previous checkpoint and pointer are intact."""
        root = self.output_dir / _CHECKPOINTS
        name = f"step-{self.step:08d}"
        final, tmp = root / name, root / f".tmp-{name}"
        if self.accelerator.is_main_process:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        try:
            self.accelerator.save_state(str(tmp))
            data_state = self.data_state()
            if data_state is not None:
                tmp.mkdir(parents=True, exist_ok=True)
                (tmp / _DATA_STATE.format(self.accelerator.process_index)).write_text(json.dumps(data_state))
            # Every process's files are written before the main process lists them.
            self.accelerator.wait_for_everyone()
            if self.accelerator.is_main_process:
                if self.ema is not None:
                    state = self.ema.state_dict()
                    save_file({f"{i}": t.detach().contiguous().cpu() for i, t in enumerate(state.pop("shadow_params"))}, str(tmp / _EMA_WEIGHTS))
                    atomic_write_text(tmp / _EMA_STATE, json.dumps(state))
                for module_name, module in self.frozen_modules.items():
                    save_model(module, str(tmp / f"{module_name}.safetensors"))
                # The list of files and sizes lets a resume name a file that went missing or was truncated since.
                files = {str(f.relative_to(tmp)): f.stat().st_size for f in sorted(tmp.rglob("*")) if f.is_file()}
                trainer_state = {"step": self.step, "args": asdict(self.args), "files": files}
                atomic_write_text(tmp / _STATE_FILE, json.dumps(trainer_state, indent=2))
                # Saving a step that already exists (a finished run resumed) moves the old copy aside until the new
                # one is in place: a death at any point leaves one complete copy under a known name (resume_checkpoint).
                install_folder(tmp, final)
                atomic_write_text(root / _LATEST, name)
        except Exception as err:
            if not _is_disk_full(err):
                raise
            if self.accelerator.is_main_process:
                shutil.rmtree(tmp, ignore_errors=True)  # frees the space the partial copy took
            previous = latest_checkpoint(self.output_dir)
            raise OSError(
                errno.ENOSPC,
                f"the disk is full: checkpoint {name} could not be written in {root} ({type(err).__name__}: {err}). "
                f"The previous checkpoint ({previous or 'none yet'}) is intact; free some space and resume with "
                "--resume-from latest",
            ) from err
        if self.accelerator.is_main_process:
            kept = sorted(p for p in root.glob("step-*") if p.is_dir())
            for old in kept[: max(0, len(kept) - self.args.keep_checkpoints)]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return final

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        path = Path(path)
        step = check_checkpoint(path)
        pickles = sorted(p.name for p in path.glob("custom_checkpoint_*"))
        if pickles:
            # accelerate would unpickle these with weights_only=False (arbitrary code); our trainers never write them.
            raise ValueError(f"{path} holds {pickles}, pickled objects this trainer never writes; refusing to load them")
        if self.ema is not None and not (path / _EMA_WEIGHTS).exists():
            raise FileNotFoundError(f"{path} holds no EMA weights ({_EMA_WEIGHTS}) but ema_decay is set")
        try:
            self.accelerator.load_state(str(path))
            for module_name, module in self.frozen_modules.items():
                load_model(module, str(path / f"{module_name}.safetensors"), device=str(self.accelerator.device))
            if self.ema is not None:
                shadow = load_file(str(path / _EMA_WEIGHTS))
                state = json.loads((path / _EMA_STATE).read_text())
                self.ema.load_state_dict({**state, "shadow_params": [shadow[f"{i}"] for i in range(len(shadow))]})
            data_file = path / _DATA_STATE.format(self.accelerator.process_index)
            data_state = json.loads(data_file.read_text()) if data_file.exists() else None
        except (OSError, RuntimeError, ValueError, SafetensorError) as err:
            # Torch and safetensors name neither the folder nor the file ("failed finding central directory",
            # "incomplete metadata"); a checkpoint of another model or config fails here too.
            raise ValueError(
                f"checkpoint {path} could not be loaded: it is damaged or belongs to another model or configuration "
                f"({type(err).__name__}: {err})"
            ) from err
        self.step = step
        self.load_data_state(data_state)

    # -------------------------------------------------------------------------------------- run
    def _seed_micro_step(self, micro_step: int) -> None:
        seed = step_seed(self.args.seed, micro_step, self.accelerator.process_index)
        torch.manual_seed(seed)

    def run(self) -> list[dict[str, Any]]:
        """Train to ``max_steps`` (resuming if asked); returns the logged history of this process. With
        ``ema_decay`` the models hold the EMA weights afterwards (the checkpoint keeps both)."""
        args, acc = self.args, self.accelerator
        torch.manual_seed(args.seed)  # identical initial weights on every process
        self.build()
        names = list(self.models) + list(self.optimizers)
        prepared = acc.prepare(*self.models.values(), *self.optimizers.values())
        prepared = prepared if isinstance(prepared, (tuple, list)) else (prepared,)
        n_models = len(self.models)
        self.models = dict(zip(names[:n_models], prepared[:n_models]))
        self.optimizers = dict(zip(names[n_models:], prepared[n_models:]))
        if args.ema_decay:
            self.ema = EMAModel(self._trained_parameters(), decay=args.ema_decay)

        log_path = self.output_dir / "log.jsonl"
        if args.resume_from:
            path = resume_checkpoint(self.output_dir, args.resume_from)
            if path is not None:
                self.load_checkpoint(path)
                logger.info("resumed from %s at step %d", path, self.step)
                if acc.is_main_process and log_path.exists():  # drop lines logged after the checkpoint
                    lines = [line for line in log_path.read_text().splitlines() if line and json.loads(line).get("step", 0) <= self.step]
                    atomic_write_text(log_path, "".join(line + "\n" for line in lines))
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            for leftover in (self.output_dir / _CHECKPOINTS).glob(".tmp-step-*"):
                shutil.rmtree(leftover, ignore_errors=True)
        if args.report_to:
            acc.init_trackers("selftok", config={k: v for k, v in asdict(args).items() if isinstance(v, (int, float, str, bool))})

        for model in self.models.values():
            model.train()
        progress = tqdm(total=args.max_steps, initial=self.step, disable=not acc.is_local_main_process, desc="training")
        started = time.perf_counter()
        while self.step < args.max_steps:
            logs: dict[str, float] = {}
            for micro in range(args.gradient_accumulation_steps):
                micro_step = self.step * args.gradient_accumulation_steps + micro
                self._seed_micro_step(micro_step)
                with acc.accumulate(*self.models.values()):
                    loss, micro_logs = self.training_step(micro_step)
                    acc.backward(loss)  # accelerate divides by the accumulation steps
                for k, v in micro_logs.items():
                    logs[k] = logs.get(k, 0.0) + v / args.gradient_accumulation_steps
            if not math.isfinite(logs.get("loss", 0.0)):
                raise FloatingPointError(f"non-finite loss at step {self.step}: {logs}")
            logs.update(self.optimizer_step())
            self.step += 1
            progress.update(1)
            if self.step % args.log_every == 0 or self.step == args.max_steps:
                logs = self.on_log(logs)
                logs["step"] = self.step
                logs["elapsed_s"] = time.perf_counter() - started
                self.history.append(logs)
                progress.set_postfix({k: f"{v:.4g}" for k, v in logs.items() if k in ("loss", "mse", "usage_perplexity")})
                acc.log(logs, step=self.step)
                if acc.is_main_process:
                    with open(log_path, "a") as f:
                        f.write(json.dumps(logs) + "\n")
            if args.checkpoint_every and self.step % args.checkpoint_every == 0 and self.step < args.max_steps:
                self.save_checkpoint()
        progress.close()
        self.save_checkpoint()
        if self.ema is not None:
            # As diffusers' training scripts do before saving: training is over, the averaged weights are the model.
            self.ema.copy_to(self._trained_parameters())
        return self.history

    def finish(self) -> None:
        """Close trackers and the process group (call once, after exporting)."""
        self.accelerator.end_training()

    def train_and_export_pipeline(self, export_dir: str | os.PathLike | None = None):
        """Train (or resume), export the decoder pipeline to ``export_dir`` (default ``{output_dir}/pipeline``) and
        :meth:`finish`; returns ``self``. For trainers whose ``export(save_directory)`` writes one pipeline folder."""
        self.run()
        self.export(export_dir or os.path.join(self.args.output_dir, "pipeline"))
        self.finish()
        return self
