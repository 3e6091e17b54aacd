"""The whole Selftok stack trained from scratch, stage by stage: a small VAE, the tokenizer with its diffusion
decoder on the VAE's latents, then the one-step renderer.

This is the recipe behind the embedded models (``examples/train_default_tokenizer.py`` on photos,
``examples/train_shapes_vlm.py`` on the shapes world). Each stage is one of the library's trainers
(:func:`~selftok_hf.training.autoencoder.train_autoencoder`, :func:`~selftok_hf.training.tokenizer.train_tokenizer`,
:func:`~selftok_hf.training.renderer.train_renderer`) in its own folder under ``output_dir``:

    vae-run/ -> vae/            the AutoencoderKL (``latent_space="vae"`` only)
    tokenizer/ -> tokenizer-pipeline/
    renderer/ -> pipeline/      the result, and pipeline-fp16/ (its float16 copy, what a package ships)

A stage whose exported folder exists is skipped; with ``resume_from="latest"`` an interrupted stage continues
exactly from its last checkpoint, so rerunning the same call finishes a killed run. With ``init_from`` (a finished
pipeline, such as the embedded default) the VAE stage is skipped and the tokenizer stage continues that pipeline's
tokenizer and decoder on its VAE, with fresh optimiser state: how a shipped run is extended once its run folder is gone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .autoencoder import AutoencoderTrainingArguments, train_autoencoder
from .renderer import RendererTrainingArguments, train_renderer
from .tokenizer import TokenizerTrainingArguments, train_tokenizer

__all__ = ["StackBudget", "save_float16_copy", "train_selftok_stack"]


@dataclass(frozen=True)
class StackBudget:
    """Steps and optimiser settings of the three stages.

    Args:
        vae_steps: VAE optimiser steps (at ``2 * batch_size``: the VAE is small and its batches cheap).
        vae_statistics_images: images whose latents give the VAE's shift and scale factor.
        steps: tokenizer + decoder steps; ``eval_every`` of them, the held-out 10-step PSNR is logged.
        renderer_steps: one-step renderer steps (MSE only: the paper's GAN phase lowered held-out PSNR here).
        decay_steps / renderer_decay_steps: cosine learning-rate decay over the last this many tokenizer / renderer
            steps (0: constant after the warm-up; a finished constant-rate run can be extended with a decay).
        batch_size / lr / warmup_steps / ema_decay / seed: shared by the stages (one learning rate for every group:
            the decoder starts from scratch, not from SD3).
    """

    vae_steps: int = 1600
    vae_statistics_images: int = 512
    steps: int = 6000
    renderer_steps: int = 2000
    decay_steps: int = 0
    renderer_decay_steps: int = 0
    batch_size: int = 16
    lr: float = 3e-4
    warmup_steps: int = 500
    ema_decay: float = 0.999
    eval_every: int = 1000
    seed: int = 0


def train_selftok_stack(
    output_dir: str | Path,
    dataset: str | Path,
    eval_dataset: str | Path,
    tokenizer_config: str,
    decoder_config: str,
    budget: StackBudget = StackBudget(),
    image_size: int = 32,
    latent_space: str = "vae",
    vae_config: str = "small",
    resume_from: str | None = None,
    until: str = "renderer",
    init_from: str | Path | None = None,
) -> Path:
    """Train (or finish) the stack in ``output_dir`` on ``dataset`` (a ``save_to_disk`` folder of images).

    Args:
        output_dir: the run folder (layout in the module docstring).
        dataset / eval_dataset: training images and the held-out images of the tokenizer's PSNR curve.
        tokenizer_config / decoder_config: JSON files or preset names of the tokenizer and the decoder.
        budget: steps and optimiser settings.
        image_size: training crop side in pixels.
        latent_space: ``"vae"`` (a VAE trained first, the paper's structure) or ``"pixel"`` (2 x 2 pixel blocks).
        vae_config: the VAE's preset (``"small"``, ``"tiny"``) or JSON file.
        resume_from: ``"latest"`` continues every unfinished stage from its last checkpoint.
        until: the last stage to run: ``"tokenizer"`` stops before the renderer (its ids are final then: the
            renderer only decodes them), ``"renderer"`` runs all.
        init_from: a pipeline folder whose VAE, tokenizer and decoder the run continues (no VAE stage; the
            tokenizer and decoder configs are then the folder's). Its renderer is not used: the renderer stage starts
            from the continued decoder, as it does from scratch.
    Returns:
        The trained pipeline's folder: ``output_dir / "pipeline"`` (with ``pipeline-fp16`` next to it), or
        ``output_dir / "tokenizer-pipeline"`` with ``until="tokenizer"``.
    """
    if until not in ("tokenizer", "renderer"):
        raise ValueError(f"until must be 'tokenizer' or 'renderer', got {until!r}")
    out = Path(output_dir).expanduser()
    b = budget
    shared = dict(batch_size=b.batch_size, seed=b.seed, resume_from=resume_from, warmup_steps=b.warmup_steps, ema_decay=b.ema_decay)

    latent = {"latent_space": "pixel", "pixel_patch_size": 2}
    if init_from is not None:
        latent = {"latent_space": latent_space, "init_from": str(Path(init_from).expanduser())}
    elif latent_space == "vae":
        vae_dir = out / "vae"
        if not (vae_dir / "config.json").exists():
            vae_args = AutoencoderTrainingArguments(
                output_dir=str(out / "vae-run"),
                dataset=str(dataset),
                image_size=image_size,
                vae_config=vae_config,
                max_steps=b.vae_steps,
                checkpoint_every=max(b.vae_steps // 6, 1),
                log_every=max(min(50, b.vae_steps // 4), 1),
                statistics_images=b.vae_statistics_images,
                **{**shared, "batch_size": 2 * b.batch_size},
            )
            train_autoencoder(vae_args, export_dir=str(vae_dir))
        latent = {"latent_space": "vae", "vae_path": str(vae_dir)}
    elif latent_space != "pixel":
        raise ValueError(f"latent_space must be 'vae' or 'pixel', got {latent_space!r}")

    tokenizer_pipeline = out / "tokenizer-pipeline"
    if not (tokenizer_pipeline / "model_index.json").exists():
        tok_args = TokenizerTrainingArguments(
            output_dir=str(out / "tokenizer"),
            dataset=str(dataset),
            eval_dataset=str(eval_dataset),
            eval_images=32,
            eval_every=b.eval_every,
            eval_num_inference_steps=10,
            tokenizer_config=tokenizer_config,
            decoder_config=decoder_config,
            max_steps=b.steps,
            decay_steps=b.decay_steps,
            encoder_lr=b.lr,
            decoder_image_lr=b.lr,
            decoder_token_lr=b.lr,
            checkpoint_every=max(b.steps // 16, 1),
            log_every=max(min(50, b.steps // 4), 1),
            **latent,
            **shared,
        )
        train_tokenizer(tok_args, export_dir=str(tokenizer_pipeline))
    if until == "tokenizer":
        return tokenizer_pipeline

    pipeline_dir = out / "pipeline"
    if not (pipeline_dir / "model_index.json").exists():
        ren_args = RendererTrainingArguments(
            output_dir=str(out / "renderer"),
            pipeline=str(tokenizer_pipeline),
            dataset=str(dataset),
            max_steps=b.renderer_steps,
            decay_steps=b.renderer_decay_steps,
            learning_rate=b.lr,
            loss_switch_step=b.renderer_steps + 1,
            checkpoint_every=max(b.renderer_steps // 8, 1),
            log_every=max(min(50, b.renderer_steps // 4), 1),
            **shared,
        )
        pipe = train_renderer(ren_args, export_dir=str(pipeline_dir)).decoder_pipeline
        save_float16_copy(pipe, out / "pipeline-fp16")
    return pipeline_dir


def resolve_init_from(value: str | None, embedded: str | Path) -> str | None:
    """The ``init_from`` folder of an ``--init-from`` value: ``None`` stays ``None``, ``"embedded"`` is ``embedded``
    (the bundled pipeline the run continues), anything else a pipeline folder.

    Raises:
        ValueError: if the folder holds no ``model_index.json`` (checked before any data is built).
    """
    if value is None:
        return None
    folder = Path(str(embedded)) if value == "embedded" else Path(value).expanduser()
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"{value}: not a pipeline folder (no model_index.json); pass one, or 'embedded'")
    return str(folder)


def save_float16_copy(pipe, save_directory: str | Path) -> None:
    """Save ``pipe`` (a ``SelftokDecoderPipeline`` or ``SelftokPipeline``) with every floating weight stored in
    float16, the form a package ships (``selftok_hf/assets``). Casting a pipeline keeps its image tokenizer in float32
    (the quantizer's cosine argmax), so that file is rewritten in float16 here; its config still says float32, so
    loading upcasts it again. ``pipe`` itself is left cast to float16."""
    pipe.to(dtype=torch.float16).save_pretrained(str(save_directory))
    for path in Path(save_directory).rglob("*.safetensors"):
        tensors = load_file(path)
        if any(t.is_floating_point() and t.dtype != torch.float16 for t in tensors.values()):
            save_file({k: t.half() if t.is_floating_point() else t for k, t in tensors.items()}, path, metadata={"format": "pt"})
