"""Miniature reproduction of Selftok-Zero's RL claim in the shapes world, with a raster-order VQ control.

    python benchmarks/rl_shapes_miniature.py --output-dir runs/rl_mini                 # smallest (CPU) setting
    python benchmarks/rl_shapes_miniature.py --output-dir runs/rl_gpu --preset gpu     # larger, on an accelerator

The claim (arXiv 2505.07538, Selftok-Zero): a plain policy gradient on *autoregressive* visual tokens improves
compositional text-to-image generation much more than on spatial tokens, because AR tokens make the
token-level MDP satisfy the Bellman equation. This script measures it at a scale two CPU cores can run:

1. **World.** :class:`~selftok_hf.rl.ShapesWorld` (1-3 coloured shapes, 32 px, 84 prompts in 6 GenEval-style
   categories) split into held-in and held-out prompts (per category, ``--held-out-fraction``).
2. **Tokenizers, same bits per image; three arms.** A pixel-space Selftok tokenizer (K tokens, codebook C, trained
   by :class:`~selftok_hf.training.tokenizer.TokenizerTrainer`) whose ids are decoded either by a few flow steps of
   its diffusion decoder (arm ``selftok``) or by its one-step renderer (arm ``selftok_renderer``, distilled by
   :class:`~selftok_hf.training.renderer.RendererTrainer`; same ids, other decoder), and a raster VQ autoencoder
   (arm ``raster``: :class:`~selftok_hf.evaluation.raster_vq.RasterVQAutoencoder`, a sqrt(K) x sqrt(K) grid with the same
   codebook C). All are trained on renders of random scenes of every prompt (an image codec sees no text). Their
   reconstruction accuracy (the detector's verdict on encode -> decode of ground-truth images) says how well each
   codec can express the world at all (a policy may still exceed it: it can emit ids no real image encodes to).
3. **LM.** For each arm and seed, the same small Llama (random init, the bundled BPE, extended by
   :func:`~selftok_hf.add_visual_tokens`) is fine-tuned by :class:`~selftok_hf.training.sft.SelftokSFTTrainer` on
   (prompt, image ids) pairs of *held-in prompts only* (``--sft-categories`` restricts them further), then trained
   by :class:`~selftok_hf.rl.trainer.SelftokGRPOTrainer` with the exact program reward on held-in prompts only.
4. **Evaluation.** GenEval-style accuracy (all checks of a prompt pass, by the exact detector on decoded
   pixels) per category on held-out prompts (and held-in, for reference) before SFT, after SFT and after RL.
   Mean and 95% t-interval over seeds. Same LM, SFT and RL budgets for every arm.

Everything is cached under ``--output-dir`` stage by stage (rerunning resumes); ``--workers`` runs jobs in
parallel processes with one thread each (on a shared CPU, one thread per process is much faster for these
sizes than a contended thread pool). Outputs: ``results.json``, ``results.md`` (the table), ``results.png`` (the
accuracy curves) and ``reconstructions.png`` (ground truth and each arm's encode -> decode).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

PRESETS = {
    # Sized for 2 shared CPU cores: see the README for the measured wall time.
    "cpu": {},
    "gpu": {
        "tokenizer_images": 20000, "tokenizer_steps": 20000, "tokenizer_batch": 128, "raster_steps": 20000, "sft_images_per_prompt": 200,
        "sft_steps": 6000, "lm_hidden": 256, "lm_layers": 6, "rl_steps": 500, "rl_prompts_per_step": 8, "group_size": 24, "eval_images_per_prompt": 8,
        "seeds": [0, 1, 2, 3, 4],
    },
}


@dataclass
class Config:
    """Every knob of the experiment (the ``cpu`` preset is the dataclass default)."""

    output_dir: str = "runs/rl_shapes_miniature"
    arms: str = "selftok,selftok_renderer,raster"
    seeds: list = field(default_factory=lambda: [0, 1, 2, 3, 4])
    workers: int = 2
    image_size: int = 32
    held_out_fraction: float = 0.5
    split_seed: int = 0
    sft_categories: str = "all"
    # Tokenizers: K tokens of a C-entry codebook -> K log2 C bits per image, for both arms.
    num_tokens: int = 16
    codebook_size: int = 64
    token_schedule: str = "6,5,2,2,1"
    tokenizer_images: int = 4000
    tokenizer_steps: int = 12000
    tokenizer_batch: int = 32
    tokenizer_lr: float = 1e-3
    raster_steps: int = 3000
    renderer_steps: int = 2000
    decoder_steps: int = 8
    # LM + SFT.
    lm_hidden: int = 128
    lm_layers: int = 4
    sft_images_per_prompt: int = 40
    sft_steps: int = 1500
    sft_batch: int = 32
    sft_lr: float = 1e-3
    # RL.
    rl_steps: int = 300
    rl_prompts_per_step: int = 4
    group_size: int = 8
    rl_lr: float = 3e-4
    beta: float = 0.04
    # Evaluation.
    eval_images_per_prompt: int = 8

    @property
    def bits_per_image(self) -> float:
        return self.num_tokens * math.log2(self.codebook_size)

    @property
    def schedule(self) -> list[int]:
        """Selftok tokens per stage of the token schedule (the release's 192, 184, 72, 48, 16 of 512, scaled)."""
        counts = [int(c) for c in self.token_schedule.split(",")]
        if sum(counts) != self.num_tokens or len(counts) != 5:
            raise ValueError(f"token_schedule must be 5 counts summing to num_tokens={self.num_tokens}, got {self.token_schedule!r}")
        return counts


# ---------------------------------------------------------------------------------------------- codecs
#: The experiment's arms: Selftok ids decoded by a few flow steps or by the one-step renderer, and the raster control.
ARMS = ("selftok", "selftok_renderer", "raster")
#: The file (under ``tokenizers/``) whose presence means an arm's codec is trained.
TRAINED_MARKERS = {"selftok": "selftok/pipeline/model_index.json", "selftok_renderer": "selftok/pipeline_renderer/model_index.json", "raster": "raster/config.json"}

class SelftokCodec:
    """Images in [0, 1] <-> Selftok ids through a trained pixel-space :class:`SelftokDecoderPipeline`: decoded by
    ``decoder_steps`` flow steps, or by the one-step renderer when ``use_renderer``."""

    def __init__(self, path: Path, decoder_steps: int, use_renderer: bool = False):
        from selftok_hf import SelftokDecoderPipeline

        self.pipe = SelftokDecoderPipeline.from_pretrained(path)
        self.pipe.set_progress_bar_config(disable=True)
        self.decoder_steps = decoder_steps
        self.use_renderer = use_renderer

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.LongTensor:
        return self.pipe.encode(images * 2 - 1)

    @torch.no_grad()
    def decode(self, ids: torch.LongTensor) -> torch.Tensor:
        # The decoder's noise comes from the global generator, which every caller seeds.
        return self.pipe(ids.cpu(), num_inference_steps=self.decoder_steps, use_renderer=self.use_renderer, output_type="pt").images


class RasterCodec:
    """Images in [0, 1] <-> raster-order ids through a trained :class:`RasterVQAutoencoder`."""

    def __init__(self, path: Path):
        from selftok_hf.evaluation.raster_vq import RasterVQAutoencoder

        self.model = RasterVQAutoencoder.from_pretrained(path).eval()

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.LongTensor:
        return self.model.encode(images * 2 - 1)

    @torch.no_grad()
    def decode(self, ids: torch.LongTensor) -> torch.Tensor:
        return (self.model.decode(ids.cpu()) + 1) / 2


def load_codec(cfg: Config, arm: str):
    root = Path(cfg.output_dir) / "tokenizers"
    if arm == "raster":
        return RasterCodec(root / "raster")
    if arm == "selftok_renderer":
        return SelftokCodec(root / "selftok" / "pipeline_renderer", cfg.decoder_steps, use_renderer=True)
    return SelftokCodec(root / "selftok" / "pipeline", cfg.decoder_steps)


@dataclass
class TokenLM:
    """The language side of a Selftok VLM, codec-agnostic: what ``SelftokSFTTrainer`` and ``SelftokGRPOTrainer`` read from a
    pipeline when the image decoder is passed separately (this script has no diffusers pipeline for the raster arm,
    so both arms use this same object). Nothing here draws progress bars."""

    language_model: torch.nn.Module
    processor: object
    vocabulary: object
    has_lora: bool = False

    def set_progress_bar_config(self, **kwargs) -> None:
        """Accepted for interface parity with ``SelftokPipeline``; this object draws no progress bars."""


def build_lm(cfg: Config, seed: int) -> TokenLM:
    from transformers import AutoModelForCausalLM, LlamaConfig

    from selftok_hf import SelftokConfig
    from selftok_hf.image_processing_selftok import SelftokImageProcessorPil
    from selftok_hf.modeling_selftok_lm import add_visual_tokens
    from selftok_hf.processing_selftok import SelftokProcessor
    from selftok_hf.testing.tiny_vlm import tiny_text_tokenizer

    tokenizer = tiny_text_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.lm_hidden, intermediate_size=2 * cfg.lm_hidden, num_hidden_layers=cfg.lm_layers,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    # Only K and the codebook size of the image tokenizer matter for the id layout ("mean" init for both arms).
    layout = SelftokConfig(num_image_tokens=cfg.num_tokens, codebook_size=cfg.codebook_size, schedule_tokens_per_stage=cfg.schedule)
    vocabulary = add_visual_tokens(model, tokenizer, layout, init="mean", seed=seed)
    processor = SelftokProcessor(image_processor=SelftokImageProcessorPil(), tokenizer=tokenizer, visual_vocabulary=vocabulary)
    return TokenLM(model, processor, vocabulary)


# ---------------------------------------------------------------------------------------------- stages
def render_dataset(cfg: Config, specs, n: int, seed: int):
    """``n`` ground-truth scenes of prompts drawn uniformly from ``specs``: (prompts, specs, images (n, 3, H, W))."""
    from selftok_hf.rl import ShapesWorld

    world = ShapesWorld(image_size=cfg.image_size)
    rng = np.random.default_rng([seed, 7])
    chosen = [specs[i] for i in rng.integers(len(specs), size=n)]
    images = torch.stack([world.render(world.sample_scene(spec, seed=seed * 1_000_003 + j)) for j, spec in enumerate(chosen)])
    return [s.text() for s in chosen], chosen, images


def write_tokenizer_data(cfg: Config) -> Path:
    """Render ``tokenizer_images`` random scenes of every prompt into a ``datasets`` folder (once)."""
    import datasets
    import PIL.Image

    from selftok_hf.rl import ShapesWorld

    data_dir = Path(cfg.output_dir) / "tokenizers" / "data"
    if not (data_dir / "dataset_info.json").exists():
        world = ShapesWorld(image_size=cfg.image_size)
        specs = world.all_prompts()
        chosen = np.random.default_rng(0).integers(len(specs), size=cfg.tokenizer_images)
        images = [world.render(world.sample_scene(specs[i], seed=j)) for j, i in enumerate(chosen)]
        pil = [PIL.Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for im in images]
        datasets.Dataset.from_dict({"image": pil}).save_to_disk(str(data_dir))
    return data_dir


def train_tokenizers(cfg: Config, arm: str) -> dict:
    """Train one arm's tokenizer on the rendered scenes; returns the time it took."""
    torch.set_num_threads(1)
    root = Path(cfg.output_dir) / "tokenizers"
    data_dir = root / "data"
    started = time.perf_counter()
    if arm == "selftok":
        from selftok_hf.modeling_selftok_decoder import SELFTOK_DECODER_TINY_CONFIG
        from selftok_hf.training.tokenizer import (
            TokenizerTrainingArguments,
            train_tokenizer,
        )

        patch = 2
        tokenizer_config = {
            "latent_size": cfg.image_size // patch, "latent_downsample": patch, "encoder_hidden_size": 64, "encoder_num_heads": 4, "encoder_depth": 4,
            "num_image_tokens": cfg.num_tokens, "query_dim": 128, "query_heads": 4, "codebook_size": cfg.codebook_size, "code_dim": 8, "token_dim": 8,
            "schedule_tokens_per_stage": cfg.schedule,
        }
        decoder_config = {**SELFTOK_DECODER_TINY_CONFIG, "num_layers": 4, "attention_head_dim": 16, "num_attention_heads": 4}
        (root / "selftok").mkdir(parents=True, exist_ok=True)
        for name, value in (("tokenizer_config.json", tokenizer_config), ("decoder_config.json", decoder_config)):
            (root / "selftok" / name).write_text(json.dumps(value))
        args = TokenizerTrainingArguments(
            output_dir=str(root / "selftok" / "run"), dataset=str(data_dir), max_steps=cfg.tokenizer_steps, batch_size=cfg.tokenizer_batch,
            tokenizer_config=str(root / "selftok" / "tokenizer_config.json"), decoder_config=str(root / "selftok" / "decoder_config.json"),
            latent_space="pixel", pixel_patch_size=patch, encoder_lr=cfg.tokenizer_lr, decoder_image_lr=cfg.tokenizer_lr,
            decoder_token_lr=cfg.tokenizer_lr, cache_latents=True, log_every=100, checkpoint_every=500, resume_from="latest", seed=0,
        )
        train_tokenizer(args, str(root / "selftok" / "pipeline"))
    elif arm == "selftok_renderer":
        from selftok_hf.training.renderer import (
            RendererTrainingArguments,
            train_renderer,
        )

        # The one-step renderer of the trained selftok arm (same tokenizer, so the same ids). MSE only: there are no
        # LPIPS weights offline, and the paper's GAN term starts only after 30k steps.
        renderer_args = RendererTrainingArguments(
            output_dir=str(root / "selftok" / "renderer_run"), pipeline=str(root / "selftok" / "pipeline"), dataset=str(data_dir),
            max_steps=cfg.renderer_steps, batch_size=cfg.tokenizer_batch, learning_rate=cfg.tokenizer_lr, loss_switch_step=10**9,
            log_every=100, checkpoint_every=500, resume_from="latest", seed=0,
        )
        train_renderer(renderer_args, str(root / "selftok" / "pipeline_renderer"))
    else:
        from selftok_hf.evaluation.raster_vq import RasterVQAutoencoder, train_raster_vq
        from selftok_hf.training.data import StepBatches, load_image_dataset

        grid = math.isqrt(cfg.num_tokens)
        if grid * grid != cfg.num_tokens:
            raise ValueError(f"the raster control needs a square number of tokens, got {cfg.num_tokens}")
        torch.manual_seed(0)
        model = RasterVQAutoencoder(image_size=cfg.image_size, downsample=cfg.image_size // grid, channels=32, codebook_size=cfg.codebook_size)
        batches = StepBatches(load_image_dataset(str(data_dir)), cfg.tokenizer_batch, cfg.image_size, seed=0, augment=False)
        history: list = []
        train_raster_vq(model, batches, cfg.raster_steps, learning_rate=cfg.tokenizer_lr, log_every=100, history=history)
        model.save_pretrained(root / "raster")
        (root / "raster" / "history.json").write_text(json.dumps(history))
    # Accumulated over invocations (a resumed or extended training adds its own time).
    seconds_path = root / f"{arm}_seconds.json"
    seconds = time.perf_counter() - started + (json.loads(seconds_path.read_text()) if seconds_path.exists() else 0.0)
    seconds_path.write_text(json.dumps(seconds))
    return {"arm": arm, "seconds": seconds}


def reconstruction_accuracy(cfg: Config, arm: str) -> dict:
    """The codec's ceiling: accuracy of encode -> decode of ground-truth images of every prompt."""
    from selftok_hf.rl import ProgramReward, ShapesWorld, program_accuracy

    torch.set_num_threads(1)
    codec = load_codec(cfg, arm)
    world = ShapesWorld(image_size=cfg.image_size)
    data = world.generate(world.all_prompts(), images_per_prompt=cfg.eval_images_per_prompt, seed=20_000)
    torch.manual_seed(0)
    reconstructed = codec.decode(codec.encode(data["images"]))
    results = ProgramReward().evaluate(data["prompts"], reconstructed, [{"spec": s} for s in data["specs"]])
    accuracy = program_accuracy(results, [s.category for s in data["specs"]])
    mse = (reconstructed - data["images"]).pow(2).flatten(1).mean(1)
    accuracy["psnr"] = float((10 * torch.log10(1 / mse.clamp_min(1e-10))).mean())
    return accuracy


def evaluate(cfg: Config, lm: TokenLM, codec, split: dict, seed: int) -> dict:
    from selftok_hf.rl.evaluation import shapes_geneval

    return {
        name: shapes_geneval(lm, split[name], cfg.eval_images_per_prompt, seed=seed, image_decoder=codec.decode)
        for name in ("held_out", "held_in")
    }


def run_arm(cfg: Config, arm: str, seed: int) -> dict:
    """SFT then RL of one LM on one codec's ids; evaluations before SFT, after SFT and after RL."""
    import datasets

    from selftok_hf.rl import ShapesWorld
    from selftok_hf.rl.trainer import GRPOArguments, SelftokGRPOTrainer
    from selftok_hf.training.sft import SelftokSFTTrainer, SFTArguments

    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    out = Path(cfg.output_dir) / "runs" / arm / f"seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    result_path = out / "result.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    timings, started = {}, time.perf_counter()
    codec = load_codec(cfg, arm)
    split = ShapesWorld(image_size=cfg.image_size).split(cfg.held_out_fraction, cfg.split_seed)
    sft_specs = [s for s in split["held_in"] if cfg.sft_categories == "all" or s.category in cfg.sft_categories.split(",")]
    lm = build_lm(cfg, seed)
    evals = {"before_sft": evaluate(cfg, lm, codec, split, seed)}
    timings["eval_before_sft"] = time.perf_counter() - started

    # SFT on (prompt, ids) of held-in prompts; the codec's ids are the only thing that differs between arms.
    t = time.perf_counter()
    prompts, _, images = render_dataset(cfg, sft_specs, cfg.sft_images_per_prompt * len(sft_specs), seed=30_000 + seed)
    torch.manual_seed(seed)
    ids = torch.cat([codec.encode(images[i : i + 256]) for i in range(0, len(images), 256)])
    dataset = datasets.Dataset.from_dict({"text": prompts, "image_token_ids": ids.tolist()})
    sft_args = SFTArguments(
        output_dir=str(out / "sft"), max_steps=cfg.sft_steps, batch_size=cfg.sft_batch, learning_rate=cfg.sft_lr, warmup_steps=50,
        task_mix="t2i=1", caption_dropout=0.0, log_every=100, checkpoint_every=0, seed=seed,
    )
    sft = SelftokSFTTrainer(sft_args, pipeline=lm, dataset=dataset)
    sft_history = sft.run()
    lm.language_model = sft.accelerator.unwrap_model(sft.models["language_model"])
    timings["sft"] = time.perf_counter() - t
    t = time.perf_counter()
    evals["after_sft"] = evaluate(cfg, lm, codec, split, seed)
    timings["eval_after_sft"] = time.perf_counter() - t

    # RL with the exact program reward on held-in prompts only.
    t = time.perf_counter()
    rl_args = GRPOArguments(
        output_dir=str(out / "rl"), max_steps=cfg.rl_steps, batch_size=cfg.rl_prompts_per_step, group_size=cfg.group_size,
        learning_rate=cfg.rl_lr, beta=cfg.beta, log_every=10, checkpoint_every=0, seed=seed, image_size=cfg.image_size,
        split_seed=cfg.split_seed, held_out_fraction=cfg.held_out_fraction, prompts="shapes:held_in",
    )
    rl = SelftokGRPOTrainer(rl_args, pipeline=lm, image_decoder=codec.decode)
    rl_history = rl.run()
    lm.language_model = rl.accelerator.unwrap_model(rl.models["language_model"])
    timings["rl"] = time.perf_counter() - t
    t = time.perf_counter()
    evals["after_rl"] = evaluate(cfg, lm, codec, split, seed)
    timings["eval_after_rl"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - started

    result = {
        "arm": arm, "seed": seed, "evals": evals, "timings_s": timings,
        "sft_loss": [h["loss"] for h in sft_history],
        "rl_reward": [h["reward_mean"] for h in rl_history], "rl_kl": [h["kl"] for h in rl_history], "rl_entropy": [h["entropy"] for h in rl_history],
    }
    result_path.write_text(json.dumps(result, indent=1))
    return result


# --------------------------------------------------------------------------------------------- reports
def t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% Student-t interval (0 for a single value)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()), 0.0
    from scipy import stats

    return float(values.mean()), float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))


STAGES = ("before_sft", "after_sft", "after_rl")


def gain_p_values(rl_gain: dict) -> dict[str, float]:
    """Two-sided Welch t-test p-value of each Selftok arm's overall RL gain against the raster arm's, per split
    (the seeds of two arms are independent runs; uncorrected for the several comparisons; NaN when both arms'
    gains are constant)."""
    from scipy import stats

    p_values = {}
    for key, gains in rl_gain.items():
        arm, split = key.split("/")
        control = rl_gain.get(f"raster/{split}")
        if arm != "raster" and control is not None and len(gains["overall"]["per_seed"]) > 1:
            test = stats.ttest_ind(gains["overall"]["per_seed"], control["overall"]["per_seed"], equal_var=False)
            p_values[key] = float(test.pvalue)
    return p_values
COLUMNS = ("single_object", "two_objects", "counting", "colors", "position", "color_attr", "overall")


def summarise(cfg: Config, runs: list[dict], reconstruction: dict, seconds: float) -> dict:
    """The result table (mean and 95% CI over seeds per arm / split / stage / category) and the compute spent:
    ``compute_s`` sums every stage's single-thread time (tokenizers and all runs, even those of earlier invocations);
    ``wall_time_s`` is this invocation's."""
    root = Path(cfg.output_dir) / "tokenizers"
    compute = {arm: json.loads((root / f"{arm}_seconds.json").read_text()) for arm in ARMS if (root / f"{arm}_seconds.json").exists()}
    compute["runs"] = sum(r["timings_s"]["total"] for r in runs)
    summary = {
        "config": asdict(cfg), "bits_per_image": cfg.bits_per_image, "wall_time_s": seconds, "compute_s": compute,
        "reconstruction": reconstruction, "table": {}, "rl_gain": {},
    }
    for arm in cfg.arms.split(","):
        arm_runs = [r for r in runs if r["arm"] == arm]
        for split in ("held_out", "held_in"):
            for stage in STAGES:
                row = {}
                for column in COLUMNS:
                    values = [r["evals"][stage][split][column] for r in arm_runs]
                    mean, half = t_interval(values)
                    row[column] = {"mean": mean, "ci95": half, "per_seed": values}
                summary["table"][f"{arm}/{split}/{stage}"] = row
            # What RL adds, paired by seed (the same LM before and after), which removes the between-seed spread.
            gains = {}
            for column in COLUMNS:
                values = [r["evals"]["after_rl"][split][column] - r["evals"]["after_sft"][split][column] for r in arm_runs]
                mean, half = t_interval(values)
                gains[column] = {"mean": mean, "ci95": half, "per_seed": values}
            summary["rl_gain"][f"{arm}/{split}"] = gains
    summary["gain_vs_raster_p"] = gain_p_values(summary["rl_gain"])
    summary["runs"] = runs
    return summary


def markdown(summary: dict) -> str:
    cfg = summary["config"]
    lines = [
        "# Selftok-Zero miniature: RL on AR (Selftok) vs raster (VQ) tokens in the shapes world",
        "",
        f"{len(cfg['seeds'])} seeds ({', '.join(map(str, cfg['seeds']))}); {cfg['num_tokens']} tokens x {cfg['codebook_size']} codes = "
        f"{summary['bits_per_image']:.0f} bits per image for every arm; {cfg['image_size']} px. Accuracy = every check of the prompt "
        "passes (exact detector on decoded pixels). Mean ± 95% t-interval over seeds. Single-thread compute: "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in summary["compute_s"].items())
        + f"; this invocation's wall time {summary['wall_time_s'] / 60:.1f} min.",
        "",
        "## Codec reconstruction accuracy: encode -> decode of ground-truth images (all 84 prompts)",
        "",
        "| tokenizer | " + " | ".join(COLUMNS) + " | PSNR |",
        "|---|" + "---|" * (len(COLUMNS) + 1),
    ]
    for arm, acc in summary["reconstruction"].items():
        lines.append(f"| {arm} | " + " | ".join(f"{acc[c]:.2f}" for c in COLUMNS) + f" | {acc['psnr']:.1f} |")
    for split, title in (("held_out", "Held-out prompts (never seen in SFT or RL)"), ("held_in", "Held-in prompts (SFT and RL prompts)")):
        lines += ["", f"## {title}", "", "| tokenizer | stage | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
        for arm in cfg["arms"].split(","):
            for stage in STAGES:
                row = summary["table"][f"{arm}/{split}/{stage}"]
                lines.append(f"| {arm} | {stage} | " + " | ".join(f"{row[c]['mean']:.2f} ± {row[c]['ci95']:.2f}" for c in COLUMNS) + " |")
    lines += [
        "",
        "## What RL adds: after_rl - after_sft, paired by seed",
        "",
        "| tokenizer | prompts | " + " | ".join(COLUMNS) + " | overall gain vs raster's: Welch p |",
        "|---|---|" + "---|" * (len(COLUMNS) + 1),
    ]
    for split in ("held_out", "held_in"):
        for arm in cfg["arms"].split(","):
            row = summary["rl_gain"][f"{arm}/{split}"]
            p_value = summary["gain_vs_raster_p"].get(f"{arm}/{split}")
            lines.append(
                f"| {arm} | {split} | " + " | ".join(f"{row[c]['mean']:+.2f} ± {row[c]['ci95']:.2f}" for c in COLUMNS)
                + (f" | {p_value:.3f} |" if p_value is not None else " | |")
            )
    return "\n".join(lines) + "\n"


def save_reconstruction_grid(cfg: Config, arms: list[str], path: Path, zoom: int = 3) -> list[str]:
    """One ground-truth scene of every 6th prompt (top row) and its encode -> decode by each arm (a row each), as a
    PNG zoomed ``zoom`` x (nearest neighbour); returns the prompts, left to right."""
    import PIL.Image

    from selftok_hf.rl import ShapesWorld

    world = ShapesWorld(image_size=cfg.image_size)
    data = world.generate(world.all_prompts()[::6], images_per_prompt=1, seed=20_000)
    rows = [data["images"]]
    for arm in arms:
        codec = load_codec(cfg, arm)
        torch.manual_seed(0)
        rows.append(codec.decode(codec.encode(data["images"])))
    grid = torch.cat([torch.cat(list(row.clamp(0, 1)), dim=2) for row in rows], dim=1)
    pixels = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    image = PIL.Image.fromarray(pixels)
    image.resize((image.width * zoom, image.height * zoom), PIL.Image.NEAREST).save(path)
    return data["prompts"]


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(STAGES))
    for ax, split in zip(axes, ("held_out", "held_in")):
        for offset, arm in zip((-0.06, 0.0, 0.06), ARMS):
            if f"{arm}/{split}/after_rl" not in summary["table"]:
                continue
            rows = [summary["table"][f"{arm}/{split}/{stage}"]["overall"] for stage in STAGES]
            ax.errorbar(x + offset, [r["mean"] for r in rows], yerr=[r["ci95"] for r in rows], marker="o", capsize=4, label=arm)
        ax.set_xticks(x, STAGES)
        ax.set_ylim(0, 1)
        ax.set_ylabel("GenEval-style accuracy (mean over categories)")
        ax.set_title(f"{split.replace('_', '-')} prompts")
        ax.legend()
    fig.suptitle("Shapes world: SFT then RL (program reward), AR Selftok vs raster VQ tokens (95% CI over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ------------------------------------------------------------------------------------------------ main
def _pool_map(cfg: Config, fn, jobs: list[tuple]) -> list:
    if cfg.workers <= 1 or len(jobs) <= 1:
        return [fn(*job) for job in jobs]
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(min(cfg.workers, len(jobs))) as pool:
        return pool.starmap(fn, jobs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    for f in Config.__dataclass_fields__.values():
        if f.name == "seeds":
            parser.add_argument("--seeds", type=int, nargs="+", default=None)
        else:
            parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None)
    ns = vars(parser.parse_args(argv))
    preset = ns.pop("preset")
    cfg = Config(**{**PRESETS[preset], **{k: v for k, v in ns.items() if v is not None}})
    root = Path(cfg.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    started = time.perf_counter()

    write_tokenizer_data(cfg)
    arms = cfg.arms.split(",")
    if not set(arms) <= set(ARMS):
        raise ValueError(f"--arms must name some of {', '.join(ARMS)}, got {cfg.arms!r}")
    # The renderer is trained from the selftok arm's decoder, so after it; the two tokenizers train in parallel.
    needed = {*arms, "selftok"} if "selftok_renderer" in arms else set(arms)
    for stage in (("selftok", "raster"), ("selftok_renderer",)):
        todo = [(cfg, arm) for arm in stage if arm in needed and not (root / "tokenizers" / TRAINED_MARKERS[arm]).exists()]
        for done in _pool_map(cfg, train_tokenizers, todo):
            print(f"trained the {done['arm']} codec in {done['seconds'] / 60:.1f} min", flush=True)
    recon_path = root / "tokenizers" / "reconstruction.json"
    if not recon_path.exists():
        recon_path.write_text("{}")
    reconstruction = json.loads(recon_path.read_text())
    missing = [arm for arm in arms if arm not in reconstruction]
    reconstruction.update(zip(missing, _pool_map(cfg, reconstruction_accuracy, [(cfg, arm) for arm in missing])))
    recon_path.write_text(json.dumps(reconstruction))
    print("reconstruction accuracy:", {arm: round(acc["overall"], 3) for arm, acc in reconstruction.items()}, flush=True)

    runs = _pool_map(cfg, run_arm, [(cfg, arm, seed) for seed in cfg.seeds for arm in arms])
    summary = summarise(cfg, runs, reconstruction, time.perf_counter() - started)
    (root / "results.json").write_text(json.dumps(summary, indent=1))
    (root / "results.md").write_text(markdown(summary))
    plot(summary, root / "results.png")
    save_reconstruction_grid(cfg, arms, root / "reconstructions.png")
    print(markdown(summary))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
