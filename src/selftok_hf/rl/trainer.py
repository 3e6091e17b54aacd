"""Selftok-Zero style RL of a Selftok VLM on its visual tokens: the simplified GRPO of :mod:`.grpo` on accelerate.

    selftok-rl --pipeline sft/pipeline --prompts shapes:held_in --output-dir rl/ --group-size 24 --beta 0.04

Every optimiser step (per process and micro-batch):

1. **Rollout.** ``batch_size`` prompts are drawn from the prompt set (a function of ``(seed, micro step,
   process)``), or read in order from a prompt stream (``--streaming``: a ``.txt`` / ``.jsonl`` file through
   ``datasets``, or a ``datasets.IterableDataset``; checkpoints keep its position), and tokenised by a torch
   ``DataLoader`` (``--dataloader-num-workers``, :mod:`~selftok_hf.training.loader`); for each, ``group_size`` images of exactly K visual tokens are sampled between
   begin/end-of-image by :func:`~selftok_hf.generation_selftok.generate_image_tokens` (grammar-masked,
   temperature only: no CFG, top-k or top-p, which would make the sampled distribution differ from pi).
2. **Rewards.** The ids are decoded to pixels by the pipeline's :class:`~selftok_hf.SelftokDecoderPipeline`
   (one-step renderer or a few flow steps) and scored by the reward callables (default: the program reward of
   the shapes world), combined with weights.
3. **Update.** Group-normalised advantages, reward at the last token, loss ``-A log pi + beta k3(pi, pi_ref)``
   with log pi from one teacher-forced pass under the same grammar mask, no importance ratio; AdamW.

Dropout is switched off throughout (the policy that samples must be the policy that is scored). The KL
reference is the initial policy, or a copy refreshed every ``reference_sync_steps`` steps (see :mod:`.grpo`
for why not the sampling policy itself); it is checkpointed with the policy.

Logged (``log.jsonl``, trackers): loss, policy loss, KL, entropy of the constrained policy, reward mean /
std overall and per category over the logging window, each reward component, and the fraction of groups
whose rewards are all equal (no learning signal). Checkpoints and exact resume come from the shared
:class:`~selftok_hf.training.loop.TrainingLoop`.

The options may also come from one JSON or YAML file instead: ``selftok-rl config.yaml``.

Outputs in ``--output-dir``: ``pipeline/`` (the full :class:`~selftok_hf.SelftokPipeline` with the RL-tuned
LM), ``log.jsonl``, ``checkpoints/``.

Why not trl's ``GRPOTrainer`` (1.16, read from its wheel): its loss with ``num_iterations=1`` and a reference
model has the same gradient as ours, and custom reward functions receive ``completion_ids`` (enough to decode
pixels). But (a) its transformers generation path builds a ``GenerationConfig`` that cannot carry our grammar
``LogitsProcessor``; ``suppress_tokens`` cannot force exactly K visual tokens then end-of-image, so one
would override the private ``_generate_single_turn`` or use the experimental ``rollout_func``; (b) its
log-probs come from a fused LM head over the full vocabulary inside ``_get_per_token_logps_and_entropies``,
so the grammar mask (needed for log pi and the KL to be over the sampled support) means overriding that
private method too. Two private overrides that move between trl releases, for a loop that is otherwise a
few lines on the shared accelerate :class:`TrainingLoop` (which also gives the same checkpoint / resume
semantics as our other trainers), decided it.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..generation_selftok import generate_image_tokens
from ..pipeline_selftok import SelftokPipeline
from ..renamed import renamed_fields, renamed_names_getattr
from ..training.loader import DataLoaderArguments, DataLoaderTrainingLoop, is_streaming
from ..training.loop import (
    TrainingArgumentParser,
    enable_activation_checkpointing,
    parse_training_arguments,
)
from ..training.sft import pipeline_or_load
from ..utils.atomic import export_folder
from .evaluation import decode_images, prompt_batch
from .grpo import constrained_logprobs, group_advantages, grpo_loss
from .rewards import CombinedReward, DetectorJudge, ProgramReward, QAReward
from .shapes_world import ShapesWorld, parse_prompt

__all__ = ["GRPOArguments", "PromptBatches", "SelftokGRPOTrainer", "build_reward", "load_prompt_stream", "load_prompts", "main"]

# GRPOTrainer was renamed so as not to share trl's class name with another API (issue 17); the old name warns.
__getattr__ = renamed_names_getattr(__name__, {"GRPOTrainer": "SelftokGRPOTrainer"})

logger = logging.getLogger(__name__)

DESCRIPTION = "Selftok-Zero style RL of a Selftok VLM on its visual tokens: simplified GRPO on accelerate."

#: Reward names understood by ``--rewards``.
BUILTIN_REWARDS: dict[str, Callable[[], Callable]] = {
    "program": ProgramReward,
    "qa": lambda: QAReward(judge=DetectorJudge()),
}


@renamed_fields(decoder_steps="num_inference_steps")
@dataclass
class GRPOArguments(DataLoaderArguments):
    """Options of ``selftok-rl`` (plus :class:`~selftok_hf.training.loader.DataLoaderArguments`; there ``batch_size``
    is the number of *prompts* per micro-batch, each sampled ``group_size`` times); each field's ``metadata["help"]``
    is its ``--help`` text."""

    pipeline: str = field(default="", metadata={"help": "A SelftokPipeline folder (e.g. an SFT output) whose LM is trained.", "required": True})
    prompts: str = field(
        default="shapes:held_in",
        metadata={
            "help": "'shapes:held_in', 'shapes:held_out' or 'shapes:all' (the shapes world's prompts), or a .txt file (one "
            "prompt per line) or .jsonl file (objects with a 'prompt' key; the other keys are handed to the rewards as "
            "metadata). Prompts are drawn at random, or with --streaming read from the file in order."
        },
    )
    image_size: int = field(default=32, metadata={"help": "Image size of the shapes world, for shapes:* prompts."})
    split_seed: int = field(default=0, metadata={"help": "Seed of the shapes world's held-in / held-out split."})
    held_out_fraction: float = field(default=0.5, metadata={"help": "Fraction of the shapes world's prompts held out."})
    group_size: int = field(default=24, metadata={"help": "G, samples per prompt (paper: 24)."})
    beta: float = field(default=0.04, metadata={"help": "Weight of the k3 KL to the reference (paper: 0.04)."})
    reference_sync_steps: int = field(
        default=0, metadata={"help": "0 keeps the initial policy as the KL reference; N > 0 copies the policy into it every N steps."}
    )
    learning_rate: float = field(default=1.5e-6, metadata={"help": "AdamW learning rate (paper: 1.5e-6)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=0.0, metadata={"help": "Gradient-norm clipping (0: none)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature, applied identically in the log-probs."})
    rewards: str = field(default="program=1", metadata={"help": "Comma-separated name=weight of built-in rewards (program, qa)."})
    use_renderer: bool = field(default=True, metadata={"help": "Decode ids to pixels for the rewards with the one-step renderer (else flow steps)."})
    num_inference_steps: int = field(default=4, metadata={"help": "Flow steps of the decoder when the renderer is not used (formerly --decoder-steps)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (advantages are normalised within a group), got {self.group_size}")
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.reference_sync_steps < 0:
            raise ValueError(f"reference_sync_steps must be >= 0, got {self.reference_sync_steps}")
        if self.reference_sync_steps == 1 and self.beta > 0:
            logger.warning("reference_sync_steps=1 makes the reference the sampling policy: the k3 KL and its gradient are then 0")
        _parse_weights(self.rewards)


def _parse_weights(spec: str) -> dict[str, float]:
    weights = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, value = part.partition("=")
        if name not in BUILTIN_REWARDS:
            raise ValueError(f"unknown reward {name!r} in {spec!r}; built-in rewards are {sorted(BUILTIN_REWARDS)}")
        try:
            weights[name] = float(value) if value else 1.0
        except ValueError as e:
            raise ValueError(f"reward weight {value!r} of {name!r} is not a number") from e
    if not weights:
        raise ValueError(f"no reward in {spec!r}")
    return weights


def build_reward(spec: str) -> CombinedReward:
    """A :class:`CombinedReward` from ``"program=1,qa=0.5"``."""
    weights = _parse_weights(spec)
    return CombinedReward({name: BUILTIN_REWARDS[name]() for name in weights}, weights)


def _is_dataset(prompts) -> bool:
    import datasets

    return isinstance(prompts, (datasets.Dataset, datasets.IterableDataset))


def _with_category(row: dict[str, Any]) -> dict[str, Any]:
    """Add the shapes-world spec and category to a prompt row when the prompt is in the world's grammar."""
    if "category" not in row:
        try:
            spec = row.get("spec") or parse_prompt(row["prompt"])
            row = {**row, "spec": spec, "category": spec.category}
        except ValueError:
            row = {**row, "category": "all"}
    return row


def load_prompts(source: str, image_size: int = 32, split_seed: int = 0, held_out_fraction: float = 0.5) -> list[dict[str, Any]]:
    """Prompt rows ``{"prompt": str, "category": str, ...}`` from ``shapes:<held_in|held_out|all>`` or a .txt / .jsonl file."""
    if source.startswith("shapes:"):
        which = source.split(":", 1)[1]
        world = ShapesWorld(image_size=image_size)
        if which == "all":
            specs = world.all_prompts()
        elif which in ("held_in", "held_out"):
            specs = world.split(held_out_fraction, split_seed)[which]
        else:
            raise ValueError(f"unknown prompt set {source!r}; use shapes:held_in, shapes:held_out or shapes:all")
        return [{"prompt": s.text(), "spec": s, "category": s.category} for s in specs]
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {source!r} not found (or use shapes:held_in / shapes:held_out / shapes:all)")
    if path.suffix == ".jsonl":
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if not all(isinstance(r, dict) and isinstance(r.get("prompt"), str) for r in rows):
            raise ValueError(f"every line of {source} must be a JSON object with a 'prompt' string")
    else:
        rows = [{"prompt": line.strip()} for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        raise ValueError(f"no prompts in {source}")
    return [_with_category(r) for r in rows]


def load_prompt_stream(source: str):
    """A ``.jsonl`` (objects with a ``"prompt"`` key) or ``.txt`` (one prompt per line) prompt file as a streaming
    ``datasets.IterableDataset``, read in file order (``--streaming``)."""
    import datasets

    path = Path(source)
    if path.suffix not in (".txt", ".jsonl"):
        raise ValueError(f"a prompt stream is a .txt or .jsonl file, not {source!r}")
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {source!r} not found")
    if path.suffix == ".jsonl":
        return datasets.load_dataset("json", data_files=str(path), split="train", streaming=True)
    lines = datasets.load_dataset("text", data_files=str(path), split="train", streaming=True)
    return lines.filter(_has_text).map(_text_to_prompt, remove_columns=["text"])


def _has_text(row: dict[str, Any]) -> bool:
    return bool(row["text"].strip())


def _text_to_prompt(row: dict[str, Any]) -> dict[str, str]:
    return {"prompt": row["text"].strip()}


def _prompt_row(row) -> dict[str, Any]:
    """A prompt string or row as a row with its category (:func:`_with_category`)."""
    row = {"prompt": row} if isinstance(row, str) else dict(row)
    if not isinstance(row.get("prompt"), str):
        raise ValueError(f"a prompt row needs a 'prompt' string, got {sorted(row)}")
    return _with_category(row)


class PromptBatches:
    """The GRPO prompt micro-batches, picklable for ``DataLoader`` workers (:mod:`~selftok_hf.training.loader`).

    Micro-batch ``m`` of process ``p`` holds ``batch_size`` prompt rows: drawn with replacement from a map-style
    prompt set by a generator seeded with ``(seed, m, p)``, or a stream's next rows. Each is repeated
    ``group_size`` times and tokenised (:func:`~selftok_hf.rl.evaluation.prompt_batch`: left-padded chat prompts
    ending with begin-of-image).

    Args:
        processor: the pipeline's processor.
        prompts: the map-style prompt rows (a list or a ``datasets.Dataset``), or None for a stream.
        seed / batch_size / group_size / process_index: the run's.
    """

    def __init__(self, processor, prompts, seed: int, batch_size: int, group_size: int, process_index: int) -> None:
        self.processor, self.prompts = processor, prompts
        self.seed, self.batch_size, self.group_size, self.process_index = seed, batch_size, group_size, process_index

    def rows(self, micro_step: int, rows: list | None = None) -> list[dict[str, Any]]:
        """The ``batch_size`` prompt rows of ``micro_step``; ``rows``: the stream's rows for it (None: map-style)."""
        if rows is None:
            if self.prompts is None:
                raise ValueError("a prompt stream's rows come from the stream: pass the micro-batch's rows")
            rng = np.random.default_rng([self.seed, micro_step, self.process_index])
            rows = [self.prompts[int(i)] for i in rng.integers(len(self.prompts), size=self.batch_size)]
        return [_prompt_row(row) for row in rows]

    def __call__(self, micro_step: int, rows: list | None = None) -> dict[str, Any]:
        """``{"rows", "input_ids", "attention_mask"}`` for the ``batch_size * group_size`` samples, grouped by prompt."""
        rows = [row for row in self.rows(micro_step, rows) for _ in range(self.group_size)]
        return {"rows": rows, **prompt_batch(self.processor, [row["prompt"] for row in rows])}


class SelftokGRPOTrainer(DataLoaderTrainingLoop):
    """Simplified-GRPO RL of the LM of a :class:`SelftokPipeline` (see the module docstring).

    Args:
        args: the options.
        pipeline: the pipeline to train (default: loaded from ``args.pipeline``).
        prompts: prompt rows ``{"prompt": str, **metadata}`` or strings, a ``datasets.Dataset`` of such rows, or a
            streaming ``datasets.IterableDataset`` of them, read in order (default: :func:`load_prompts` of
            ``args.prompts``, or :func:`load_prompt_stream` with ``args.streaming``). The micro-batches are built by a
            ``DataLoader`` (:class:`PromptBatches`, ``dataloader_num_workers``).
        reward: a reward callable (default: :func:`build_reward` of ``args.rewards``). A plain callable is wrapped as
            ``CombinedReward({"reward": reward})``.
        image_decoder: ``ids (N, K) -> images (N, 3, H, W) in [0, 1]`` for the rewards (default: the pipeline's
            :class:`SelftokDecoderPipeline`, per ``use_renderer`` / ``num_inference_steps``). With one, ``pipeline`` only
            needs ``language_model``, ``processor`` and ``vocabulary``: any visual tokenizer's ids can be trained on
            (e.g. a raster VQ control).
    """

    def __init__(
        self,
        args: GRPOArguments,
        pipeline: SelftokPipeline | None = None,
        prompts: Sequence | None = None,
        reward=None,
        image_decoder: Callable[[torch.LongTensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__(args)
        self.pipeline = pipeline
        self.image_decoder = image_decoder
        if prompts is None or _is_dataset(prompts):
            self.prompt_rows = prompts
        else:
            self.prompt_rows = [_prompt_row(p) for p in prompts]
        if reward is not None and not isinstance(reward, CombinedReward):
            reward = CombinedReward({"reward": reward})
        self.reward = reward
        self._window: dict[str, list[float]] = {}

    # ---------------------------------------------------------------------------------- build
    def build(self) -> None:
        args = self.args
        self.pipeline = pipeline_or_load(self.pipeline, args.pipeline)
        if getattr(self.pipeline, "has_lora", False):
            raise ValueError("merge the LoRA adapter first (pipeline.merge_lora()): the KL reference is a full copy of the policy")
        if self.image_decoder is None:
            decoder = self.pipeline.decoder.to(self.accelerator.device)
            decoder.set_progress_bar_config(disable=True)
            self.image_decoder = lambda ids: decode_images(decoder, ids, args.use_renderer, args.num_inference_steps)
        if self.prompt_rows is None:
            if args.streaming:
                self.prompt_rows = load_prompt_stream(args.prompts)
            else:
                self.prompt_rows = load_prompts(args.prompts, args.image_size, args.split_seed, args.held_out_fraction)
        if args.streaming and not is_streaming(self.prompt_rows):
            if not _is_dataset(self.prompt_rows):
                raise ValueError("streaming needs the prompts as a datasets.Dataset or IterableDataset, or a .txt / .jsonl prompt file")
            self.prompt_rows = self.prompt_rows.to_iterable_dataset()
        streaming = is_streaming(self.prompt_rows)
        if not streaming and not len(self.prompt_rows):
            raise ValueError("no prompts to train on")
        self.make_batch = PromptBatches(
            self.pipeline.processor, None if streaming else self.prompt_rows, args.seed, args.batch_size, args.group_size,
            self.accelerator.process_index,
        )  # fmt: skip
        if streaming:
            self.set_stream(self.prompt_rows)
        if self.reward is None:
            self.reward = build_reward(args.rewards)
        policy = self.pipeline.language_model
        if args.gradient_checkpointing:
            enable_activation_checkpointing(policy)
        self.reference = copy.deepcopy(policy).eval().requires_grad_(False)
        self.frozen_modules = {"kl_reference": self.reference}  # refreshed every N steps: checkpoints hold it
        self.models = {"language_model": policy}
        params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizers = {"language_model": torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=args.weight_decay)}

    # ------------------------------------------------------------------------------- training
    def sample_prompts(self, micro_step: int) -> list[dict[str, Any]]:
        """The prompt rows of a micro-batch of a map-style prompt set: a function of ``(seed, micro_step, process)`` only."""
        return self.make_batch.rows(micro_step)

    @torch.no_grad()
    def rollout(self, micro_step: int) -> dict[str, Any]:
        """Sample ``group_size`` images per prompt, decode them and score them.

        Returns:
            dict with ``prompt_ids`` / ``prompt_attention_mask`` `(N, P)`, ``token_ids`` `(N, K)`, ``images``
            `(N, 3, H, W)`, ``rewards`` `(N,)` and ``components`` (name -> `(N,)`), ``rows`` (N prompt rows), with
            N = batch_size * group_size, grouped by prompt.
        """
        args = self.args
        policy = self.accelerator.unwrap_model(self.models["language_model"])
        batch = self.next_batch(micro_step)
        rows = batch["rows"]
        prompts = [row["prompt"] for row in rows]
        batch = {k: batch[k].to(self.accelerator.device) for k in ("input_ids", "attention_mask")}
        token_ids = generate_image_tokens(policy, batch["input_ids"], batch["attention_mask"], self.pipeline.vocabulary, temperature=args.temperature)
        images = self.image_decoder(token_ids)
        metadata = [{k: v for k, v in row.items() if k != "prompt"} for row in rows]
        rewards, components = self.reward.compute(prompts, token_ids.cpu(), images.cpu(), metadata)
        return {
            "prompt_ids": batch["input_ids"],
            "prompt_attention_mask": batch["attention_mask"],
            "token_ids": token_ids,
            "images": images,
            "rewards": rewards,
            "components": components,
            "rows": rows,
        }

    def training_step(self, micro_step: int) -> tuple[torch.Tensor, dict[str, float]]:
        args = self.args
        model = self.models["language_model"]
        model.eval()  # no dropout: sampling and scoring use one policy
        if args.reference_sync_steps and micro_step % (args.reference_sync_steps * args.gradient_accumulation_steps) == 0 and micro_step > 0:
            self.reference.load_state_dict(self.accelerator.unwrap_model(model).state_dict())
        rollout = self.rollout(micro_step)
        rewards = rollout["rewards"]
        advantages = group_advantages(rewards, args.group_size).to(self.accelerator.device)
        inputs = (rollout["prompt_ids"], rollout["prompt_attention_mask"], rollout["token_ids"], self.pipeline.vocabulary, args.temperature)
        logprobs, entropy = constrained_logprobs(model, *inputs, return_entropy=True)
        ref_logprobs = None
        if args.beta > 0:
            with torch.no_grad():
                ref_logprobs, _ = constrained_logprobs(self.reference, *inputs)
        out = grpo_loss(logprobs, advantages, ref_logprobs, args.beta)

        grouped = rewards.view(-1, args.group_size)
        logs = {
            "loss": float(out.loss.detach()),
            "policy_loss": float(out.policy_loss),
            "kl": float(out.kl),
            "entropy": float(entropy.detach().mean()),
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std()),
            "flat_groups": float((grouped.std(1) == 0).float().mean()),
        }
        for name, values in rollout["components"].items():
            logs[f"reward_{name}"] = float(values.mean())
        for row, value in zip(rollout["rows"], rewards.tolist()):
            self._window.setdefault(row["category"], []).append(value)
        return out.loss, logs

    def optimizer_step(self) -> dict[str, float]:
        if self.args.max_grad_norm and self.accelerator.sync_gradients:
            params = [p for p in self.models["language_model"].parameters() if p.requires_grad]
            self.accelerator.clip_grad_norm_(params, self.args.max_grad_norm)
        return super().optimizer_step()

    def on_log(self, logs: dict[str, float]) -> dict[str, float]:
        """Add the reward mean / std of every category over the steps since the last log line."""
        for category, values in sorted(self._window.items()):
            t = torch.tensor(values)
            logs[f"reward/{category}/mean"] = float(t.mean())
            logs[f"reward/{category}/std"] = float(t.std()) if len(values) > 1 else 0.0
        self._window = {}
        return logs

    # --------------------------------------------------------------------------------- export
    def export(self) -> Path | None:
        """Write the pipeline with the trained LM to ``output_dir/pipeline`` (main process; for a pipeline that is
        not a :class:`SelftokPipeline`, the LM and the processor), renamed into place when complete
        (:func:`~selftok_hf.utils.atomic.export_folder`); returns the path."""
        if not self.accelerator.is_main_process:
            return None
        model = self.accelerator.unwrap_model(self.models["language_model"]).eval()
        self.pipeline.language_model = model
        path = self.output_dir / "pipeline"
        with export_folder(path) as staged:
            if isinstance(self.pipeline, SelftokPipeline):
                self.pipeline.save_pretrained(staged)
            else:
                model.save_pretrained(staged)
                self.pipeline.processor.save_pretrained(staged)
        return path


def main(argv: list[str] | None = None, prog: str = "selftok-rl") -> int:
    """``selftok-rl``: options, or one JSON / YAML file of them (:func:`~selftok_hf.training.loop.parse_training_arguments`)."""
    parser = TrainingArgumentParser(GRPOArguments, prog=prog, description=DESCRIPTION)
    (args,) = parse_training_arguments(parser, argv, existing_paths=("pipeline",))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    trainer = SelftokGRPOTrainer(args)
    history = trainer.run()
    path = trainer.export()
    if history:
        first, last = history[0], history[-1]
        print(
            f"reward {first.get('reward_mean', math.nan):.4f} (step {first['step']}) -> {last.get('reward_mean', math.nan):.4f} "
            f"(step {last['step']}); kl {last.get('kl', math.nan):.4g}, entropy {last.get('entropy', math.nan):.4g}"
        )
    if path is not None:
        print(f"wrote pipeline: {path}")
    return 0
