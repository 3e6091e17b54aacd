"""Training the VAE that a small Selftok reads: a diffusers ``AutoencoderKL`` shaped like SD3's (16 latent channels,
no quant convs), at a size a CPU trains.

Selftok tokenizes SD3-VAE latents. Real SD3 weights cannot be downloaded here, so a small Selftok trained here gets
its latent space from this trainer instead: the same ``AutoencoderKL`` class and latent width (16 channels) as SD3,
fewer and narrower blocks (``SMALL_VAE_CONFIG``: 4x downsampling, 32-px images -> ``8 x 8 x 16`` latents). The
objective is pixel MSE on the posterior sample plus a light KL term (as in latent diffusion; no GAN or LPIPS, which
have no offline weights). Export measures the latents' mean and standard deviation on training crops and stores
them as the config's ``shift_factor`` / ``scaling_factor``, the SD3 normalisation ``(z - shift) * scale`` that
Selftok's config copies (``vae_shift_factor`` / ``vae_scaling_factor``).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import AutoencoderKL

from ..utils.atomic import export_folder
from ..vae import SD3_VAE_CONFIG
from .data import StepBatches, image_source_field, load_image_dataset
from .loop import LoopArguments, TrainingLoop, load_json_or_preset, run_training_cli

__all__ = ["SMALL_VAE_CONFIG", "TINY_AUTOENCODER_CONFIG", "AutoencoderTrainer", "AutoencoderTrainingArguments", "latent_statistics", "main", "train_autoencoder"]

logger = logging.getLogger(__name__)

#: SD3's VAE (16 channels, no quant convs, mid-block attention) with three narrow blocks: 4x downsampling. The
#: normalisation is measured at export.
SMALL_VAE_CONFIG: dict[str, Any] = dict(
    SD3_VAE_CONFIG,
    down_block_types=["DownEncoderBlock2D"] * 3,
    up_block_types=["UpDecoderBlock2D"] * 3,
    block_out_channels=[32, 64, 64],
    layers_per_block=1,
    sample_size=32,
    scaling_factor=1.0,
    shift_factor=0.0,
)
#: The same structure at a width that trains in milliseconds (tests, smoke runs).
TINY_AUTOENCODER_CONFIG: dict[str, Any] = dict(SMALL_VAE_CONFIG, block_out_channels=[8, 8, 8], norm_num_groups=4)


@dataclass
class AutoencoderTrainingArguments(LoopArguments):
    """Options of :class:`AutoencoderTrainer` (plus those of :class:`LoopArguments`); each field's
    ``metadata["help"]`` is its ``--help`` text."""

    dataset: str = image_source_field("dataset")
    split: str = image_source_field("split")
    image_column: str = image_source_field("image_column")
    data_dir: str | None = image_source_field("data_dir")
    max_image_side: int | None = image_source_field("max_image_side")
    image_size: int = field(default=32, metadata={"help": "Side of the training crops."})
    vae_config: str = field(
        default="small",
        metadata={"help": "small (SMALL_VAE_CONFIG), tiny (TINY_AUTOENCODER_CONFIG), a JSON file or a JSON object of AutoencoderKL arguments."},
    )
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate."})
    kl_weight: float = field(default=1e-6, metadata={"help": "Weight of the posterior's KL divergence to N(0, 1), per latent element, against the per-pixel MSE."})
    statistics_images: int = field(default=512, metadata={"help": "Training crops whose latents set the exported shift_factor / scaling_factor."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {self.kl_weight}")
        if self.statistics_images < 2:
            raise ValueError(f"statistics_images must be >= 2, got {self.statistics_images}")


@torch.no_grad()
def latent_statistics(vae: AutoencoderKL, pixels: torch.Tensor, batch_size: int = 64) -> tuple[float, float]:
    """``(shift, scale)`` that make the posterior modes of ``pixels`` ``(N, 3, H, W)`` zero-mean, unit-variance
    overall: ``shift = mean(z)``, ``scale = 1 / std(z)``."""
    z = torch.cat([vae.encode(pixels[i : i + batch_size].to(vae.device, vae.dtype)).latent_dist.mode().float() for i in range(0, len(pixels), batch_size)])
    return z.mean().item(), 1.0 / z.std().item()


class AutoencoderTrainer(TrainingLoop):
    """Accelerate trainer of an ``AutoencoderKL`` (module docstring); ``export(dir)`` writes the normalised VAE."""

    args: AutoencoderTrainingArguments

    def build(self) -> None:
        args = self.args
        self.vae = AutoencoderKL(**load_json_or_preset(args.vae_config, {"small": SMALL_VAE_CONFIG, "tiny": TINY_AUTOENCODER_CONFIG}))
        if args.gradient_checkpointing:
            self.vae.enable_gradient_checkpointing()
        self.models = {"vae": self.vae}
        self.optimizers = {"vae": torch.optim.AdamW(self.vae.parameters(), lr=args.learning_rate, betas=(0.9, 0.99), weight_decay=0.0)}
        dataset = load_image_dataset(args.dataset, args.split, args.image_column, args.data_dir, max_side=args.max_image_side)
        self.batches = StepBatches(dataset, args.batch_size, args.image_size, args.seed, self.accelerator.num_processes, self.accelerator.process_index)

    def training_step(self, micro_step: int) -> tuple[torch.Tensor, dict[str, float]]:
        pixels = self.batches.batch(micro_step).to(self.accelerator.device)
        vae = self.models["vae"]
        with self.accelerator.autocast():
            posterior = self.accelerator.unwrap_model(vae).encode(pixels).latent_dist
            reconstruction = self.accelerator.unwrap_model(vae).decode(posterior.sample()).sample
        mse = (reconstruction.float() - pixels).pow(2).mean()
        kl = posterior.kl().mean() / posterior.mean[0].numel()  # per latent element
        loss = mse + self.args.kl_weight * kl
        # PSNR of images in [0, 1]: their MSE is a quarter of the MSE in [-1, 1].
        psnr = 10 * torch.log10(4.0 / mse.detach().clamp(min=1e-10))
        return loss, {"loss": loss.item(), "mse": mse.item(), "kl": kl.item(), "train_psnr": psnr.item()}

    def export(self, save_directory: str | os.PathLike) -> AutoencoderKL:
        """Measure the latent normalisation on ``statistics_images`` training crops, store it in the config, save
        (renamed into place when complete: :func:`~selftok_hf.utils.atomic.export_folder`)."""
        vae = self.accelerator.unwrap_model(self.models["vae"]).eval()
        count = self.args.statistics_images
        crops = StepBatches(self.batches.dataset, count, self.args.image_size, seed=self.args.seed + 1).batch(0)
        shift, scale = latent_statistics(vae, crops)
        vae.register_to_config(shift_factor=shift, scaling_factor=scale)
        logger.info("latent normalisation from %d crops: shift %.4f, scale %.4f", count, shift, scale)
        if self.accelerator.is_main_process:
            with export_folder(save_directory) as staged:
                vae.save_pretrained(staged)
        self.accelerator.wait_for_everyone()
        return vae


def train_autoencoder(args: AutoencoderTrainingArguments, export_dir: str | None = None) -> AutoencoderTrainer:
    """Train (or resume) and export to ``export_dir`` (default ``{output_dir}/vae``); returns the trainer."""
    return AutoencoderTrainer(args).train_and_export_pipeline(export_dir or os.path.join(args.output_dir, "vae"))


def main(argv: list[str] | None = None, prog: str = "selftok-train-vae") -> int:
    """``selftok-train-vae``: train a small SD3-shaped ``AutoencoderKL`` for a Selftok tokenizer to read."""
    return run_training_cli(
        prog,
        "Train a small SD3-shaped AutoencoderKL (16 latent channels) whose latents a small Selftok tokenizer reads "
        "(selftok-train-tokenizer --latent-space vae --vae-path OUT/vae).",
        AutoencoderTrainingArguments,
        train_autoencoder,
        argv,
        existing_paths=("data_dir",),
    )


if __name__ == "__main__":
    sys.exit(main())
