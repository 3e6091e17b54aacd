"""Training Selftok's one-step renderer with accelerate.

The renderer is the decoder's MMDiT run once, from a learned canvas instead of a noisy latent, to the clean latent
(``modeling_selftok_decoder.SelftokRenderer``). As in the paper (Selftok-Zero, appendix B.2):

- it starts from the trained decoder's weights (every shared tensor; the canvas is new);
- the encoder and the tokens are frozen: the tokenizer only supplies code vectors;
- loss = MSE + λ1 · perceptual + λ2 · GAN, with (λ1, λ2) = (0.1, 0) for the first ``loss_switch_step`` steps
  (30k in the paper) and (0.5, 0.5) afterwards.

The paper does not say in which space the MSE is taken; here it is on the (normalised) latents the renderer
predicts, and the perceptual and adversarial terms are on the decoded pixels (the VAE is frozen but
differentiated through). An optional pixel term (``pixel_loss`` = ``"l1"`` or ``"mse"`` on the decoded pixels,
weight ``pixel_loss_weight``) is not in the paper: the latent MSE weighs every latent channel alike, while PSNR
and the shapes detector read pixels, and at 8 x 8 latents a small latent error can move a whole edge.
The perceptual network and the discriminator are pluggable: any callable
``(images_a, images_b) -> per-image distance`` and any ``nn.Module`` images -> logits. LPIPS weights cannot be
downloaded here, so the default perceptual term is LPIPS only when ``lpips_weights`` names a user-supplied file
(see ``selftok_hf.evaluation.metrics.LPIPS``); without it the perceptual term is off and the trainer says so.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..modeling_selftok_decoder import SelftokRenderer
from ..pipeline_selftok_decoder import SelftokDecoderPipeline
from ..renamed import RenamedAttribute
from ..token_schedule import to_code_order
from ..utils.atomic import export_folder
from ..vae import pixels_to_latents
from .data import StepBatches, image_source_field, load_image_dataset
from .loop import LoopArguments, TrainingLoop, run_training_cli

__all__ = [
    "PatchDiscriminator",
    "RendererTrainer",
    "RendererTrainingArguments",
    "main",
    "renderer_from_decoder",
    "pixel_loss",
    "renderer_loss_weights",
    "train_renderer",
]

logger = logging.getLogger(__name__)


class PatchDiscriminator(nn.Module):
    """A small PatchGAN: images in [-1, 1] ``(B, 3, H, W)`` -> real/fake logits ``(B, 1, H/2^n, W/2^n)``.

    Args:
        channels: width of the first layer (doubled at every stride-2 layer).
        num_layers: number of stride-2 convolutions.
    """

    def __init__(self, channels: int = 32, num_layers: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, channels, 3, padding=1), nn.LeakyReLU(0.2)]
        width = channels
        for _ in range(num_layers):
            layers += [nn.Conv2d(width, width * 2, 4, stride=2, padding=1), nn.GroupNorm(8, width * 2), nn.LeakyReLU(0.2)]
            width *= 2
        layers.append(nn.Conv2d(width, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)


def renderer_loss_weights(step: int, switch_step: int, warmup: tuple[float, float] = (0.1, 0.0), after: tuple[float, float] = (0.5, 0.5)) -> tuple[float, float]:
    """(perceptual, GAN) weights at ``step``: the paper's (0.1, 0) before ``switch_step``, (0.5, 0.5) from it on."""
    return warmup if step < switch_step else after


def pixel_loss(predicted: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean ``"l1"`` or ``"mse"`` distance of decoded pixels ``(B, 3, H, W)`` in [-1, 1] -> scalar."""
    if kind == "l1":
        return F.l1_loss(predicted, target)
    if kind == "mse":
        return F.mse_loss(predicted, target)
    raise ValueError(f"pixel_loss must be 'l1' or 'mse', got {kind!r}")


def renderer_from_decoder(decoder, **overrides) -> SelftokRenderer:
    """A [`SelftokRenderer`] with the decoder's backbone weights (everything but the patch input; new canvas).

    Raises:
        ValueError: if any tensor other than the decoder's patch embedding is left over or missing.
    """
    dc = decoder.config
    renderer = SelftokRenderer(
        sample_size=dc.sample_size,
        patch_size=dc.patch_size,
        out_channels=dc.out_channels,
        num_layers=dc.num_layers,
        attention_head_dim=dc.attention_head_dim,
        num_attention_heads=dc.num_attention_heads,
        num_image_tokens=dc.num_image_tokens,
        token_dim=dc.token_dim,
        mlp_ratio=dc.mlp_ratio,
        qkv_bias=dc.qkv_bias,
        **overrides,
    )
    missing, unexpected = renderer.load_state_dict(decoder.state_dict(), strict=False)
    if sorted(missing) != ["canvas_pos_embed", "canvas_token"] or any(not k.startswith("pos_embed.") for k in unexpected):
        raise ValueError(f"decoder and renderer do not share a backbone: missing {missing}, unexpected {unexpected}")
    return renderer


@dataclass
class RendererTrainingArguments(LoopArguments):
    """Options of :class:`RendererTrainer` (plus those of :class:`LoopArguments`); each field's ``metadata["help"]``
    is its ``--help`` text."""

    pipeline: str = field(default="", metadata={"help": "A SelftokDecoderPipeline folder with the trained tokenizer and decoder."})
    dataset: str = image_source_field("dataset")
    split: str = image_source_field("split")
    image_column: str = image_source_field("image_column")
    data_dir: str | None = image_source_field("data_dir")
    max_train_images: int | None = image_source_field("max_train_images")
    max_image_side: int | None = image_source_field("max_image_side")
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW(0.9, 0.99) learning rate of the renderer."})
    discriminator_lr: float = field(default=1e-4, metadata={"help": "AdamW(0.9, 0.99) learning rate of the discriminator."})
    loss_switch_step: int = field(default=30000, metadata={"help": "Step at which (λ1, λ2) go from (0.1, 0) to (0.5, 0.5) (30000 in the paper)."})
    lpips_weights: str | None = field(default=None, metadata={"help": "A user-supplied LPIPS state-dict file for the perceptual term (selftok_hf.evaluation.metrics.LPIPS)."})
    discriminator_channels: int = field(default=32, metadata={"help": "Width of the default PatchDiscriminator."})
    pixel_loss: str = field(default="l1", metadata={"help": "'l1' or 'mse': the distance of the optional pixel term (decoded renders vs the images)."})
    pixel_loss_weight: float = field(default=0.0, metadata={"help": "Weight of the pixel term added to the latent MSE (0: off, the paper's loss)."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pixel_loss not in ("l1", "mse"):
            raise ValueError(f"pixel_loss must be 'l1' or 'mse', got {self.pixel_loss!r}")
        if self.pixel_loss_weight < 0:
            raise ValueError(f"pixel_loss_weight must be >= 0, got {self.pixel_loss_weight}")
        if not self.pipeline:
            raise ValueError("pipeline (a SelftokDecoderPipeline folder with the trained tokenizer and decoder) is required")


class RendererTrainer(TrainingLoop):
    """Accelerate trainer of the one-step renderer (module docstring).

    Args:
        args: the options.
        perceptual: ``(pred_images, target_images) -> (B,)`` distances on images in [-1, 1]; default LPIPS from
            ``args.lpips_weights`` if given, else no perceptual term.
        discriminator: images -> logits; default :class:`PatchDiscriminator`.
    """

    args: RendererTrainingArguments
    tokenizer = RenamedAttribute("image_tokenizer")  # the frozen SelftokModel, set by build()

    def __init__(
        self,
        args: RendererTrainingArguments,
        perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
        discriminator: nn.Module | None = None,
    ) -> None:
        super().__init__(args)
        self.perceptual, self.discriminator = perceptual, discriminator

    def build(self) -> None:
        args = self.args
        # Master weights in float32 even from a float16 folder (what a package ships); --mixed-precision sets the compute dtype.
        pipe = SelftokDecoderPipeline.from_pretrained(args.pipeline, dtype=torch.float32)
        device = self.accelerator.device
        self.image_tokenizer = pipe.image_tokenizer.to(device).eval().requires_grad_(False)
        self.vae = pipe.vae.to(device).eval().requires_grad_(False)
        self.decoder_pipeline = pipe
        renderer = pipe.renderer if pipe.renderer is not None else renderer_from_decoder(pipe.transformer)
        if args.gradient_checkpointing:
            renderer.enable_gradient_checkpointing()
        if self.perceptual is None and args.lpips_weights:
            from ..evaluation.metrics import LPIPS

            self.perceptual = LPIPS.from_pretrained(args.lpips_weights).to(device).eval().requires_grad_(False)
        if self.perceptual is None:
            logger.warning("no perceptual network (pass lpips_weights or perceptual=): the perceptual term is off")
        discriminator = self.discriminator if self.discriminator is not None else PatchDiscriminator(args.discriminator_channels)
        self.models = {"renderer": renderer, "discriminator": discriminator}
        self.optimizers = {
            "renderer": torch.optim.AdamW(renderer.parameters(), lr=args.learning_rate, betas=(0.9, 0.99), weight_decay=0.0),
            "discriminator": torch.optim.AdamW(discriminator.parameters(), lr=args.discriminator_lr, betas=(0.9, 0.99), weight_decay=0.0),
        }
        tc = self.image_tokenizer.config
        dataset = load_image_dataset(args.dataset, args.split, args.image_column, args.data_dir, args.max_train_images, args.max_image_side)
        self.batches = StepBatches(
            dataset, args.batch_size, tc.image_size, args.seed, self.accelerator.num_processes, self.accelerator.process_index
        )

    @torch.no_grad()
    def _codes(self, latents: torch.Tensor) -> torch.Tensor:
        """Frozen image tokenizer: latents -> post-normed code vectors ``(B, K, D)`` in code order."""
        return to_code_order(self.image_tokenizer.encode(latents=latents).token_embeddings)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        tc = self.image_tokenizer.config
        return self.vae.decode((latents / tc.vae_scaling_factor + tc.vae_shift_factor).to(self.vae.dtype)).sample.float()

    def training_step(self, micro_step: int) -> tuple[torch.Tensor, dict[str, float]]:
        tc = self.image_tokenizer.config
        pixels = self.batches.batch(micro_step).to(self.accelerator.device)
        latents = pixels_to_latents(self.vae, pixels, tc.vae_scaling_factor, tc.vae_shift_factor)
        codes = self._codes(latents)
        renderer, discriminator = self.models["renderer"], self.models["discriminator"]
        perceptual_weight, gan_weight = renderer_loss_weights(self.step, self.args.loss_switch_step)
        with self.accelerator.autocast():
            predicted = renderer(token_codes=codes).sample.float()
        mse = F.mse_loss(predicted, latents)
        loss = mse
        logs = {"mse": mse.item(), "perceptual_weight": perceptual_weight, "gan_weight": gan_weight}
        if (self.perceptual is not None and perceptual_weight > 0) or gan_weight > 0 or self.args.pixel_loss_weight > 0:
            images = self._decode(predicted)
            if self.args.pixel_loss_weight > 0:
                pixel = pixel_loss(images, pixels, self.args.pixel_loss)
                loss = loss + self.args.pixel_loss_weight * pixel
                logs["pixel_loss"] = pixel.item()
            if self.perceptual is not None and perceptual_weight > 0:
                perceptual = self.perceptual(images, pixels).mean()
                loss = loss + perceptual_weight * perceptual
                logs["perceptual"] = perceptual.item()
            if gan_weight > 0:
                # Generator: hinge loss through a discriminator whose weights receive no gradient from it.
                discriminator.requires_grad_(False)
                generator_loss = -discriminator(images).mean()
                discriminator.requires_grad_(True)
                loss = loss + gan_weight * generator_loss
                # Discriminator: hinge loss on real pixels vs the (detached) renders; its own backward.
                d_loss = F.relu(1 - discriminator(pixels)).mean() + F.relu(1 + discriminator(images.detach())).mean()
                self.accelerator.backward(d_loss)
                logs.update(generator_loss=generator_loss.item(), discriminator_loss=d_loss.item())
        logs["loss"] = loss.item()
        return loss, logs

    def export(self, save_directory: str | os.PathLike) -> SelftokDecoderPipeline:
        """Save the decoder pipeline with the trained renderer added (the converter's folder layout), renamed into
        place when complete (:func:`~selftok_hf.utils.atomic.export_folder`)."""
        pipe = self.decoder_pipeline
        pipe.register_modules(renderer=self.accelerator.unwrap_model(self.models["renderer"]))
        if self.accelerator.is_main_process:
            with export_folder(save_directory) as staged:
                pipe.save_pretrained(staged)
        self.accelerator.wait_for_everyone()
        return pipe


def train_renderer(
    args: RendererTrainingArguments,
    export_dir: str | None = None,
    perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    discriminator: nn.Module | None = None,
) -> RendererTrainer:
    """Train (or resume) and export to ``export_dir`` (default ``{output_dir}/pipeline``); returns the trainer."""
    return RendererTrainer(args, perceptual=perceptual, discriminator=discriminator).train_and_export_pipeline(export_dir)


def main(argv: list[str] | None = None, prog: str = "selftok-train-renderer") -> int:
    """``selftok-train-renderer``: train the one-step renderer of a trained tokenizer/decoder pipeline."""
    return run_training_cli(
        prog,
        "Train Selftok's one-step renderer from a trained decoder (frozen tokenizer; MSE + perceptual + GAN "
        "with the paper's schedule). Use `accelerate launch -m selftok_hf.training.renderer` for several processes.",
        RendererTrainingArguments,
        train_renderer,
        argv,
        existing_paths=("pipeline", "data_dir", "lpips_weights"),
    )


if __name__ == "__main__":
    sys.exit(main())
