"""Training a Selftok tokenizer (encoder + quantizer + diffusion decoder) with accelerate.

The objective is the release's (``trainer_selftok_enc.py`` / ``image_tokenizer.py`` / ``rectified_flow.py`` of the
training repository), written out in :class:`SelftokTokenizerObjective`:

1. the image tokenizer's forward (``SelftokModel.forward`` in training mode) reads the normalised latent ``x0``: the encoder's
   K queries become code vectors through the EMA quantizer's training step (commitment + diversity losses, k-means
   initialisation, dead-code reactivation: see ``quantizer.py``);
2. a code time ``τ ~ U[0, 1)`` per image (shift 1, as the release runs), noise ``ε``, ``x_τ = τ ε + (1 - τ) x0``;
3. the decoder sees only code-order tokens ``j <= k(τ)``, and with probability 0.1 none at all (classifier-free-guidance
   dropout, never at τ = 1): ``TokenSchedule.training_visibility``;
4. loss = per-image mean of ``(v - (ε - x0))²`` averaged over the batch, plus the quantizer loss;
5. token ``j``'s gradient is scaled by ``K / (K - j)``: token ``j`` is visible for a fraction ``(K - j) / K`` of
   the time axis, so this gives every token the same expected gradient (the forward value is unchanged).

Parameter groups and learning rates follow ``256.yml``: encoder 5e-5, decoder image stream (patch embedding and
the image half of every block) 1e-5, the rest of the decoder 5e-5; AdamW(0.9, 0.99), no weight decay.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from torch import nn

from ..configuration_selftok import SELFTOK_TINY_CONFIG, SelftokConfig
from ..conversion import decoder_state_dict_from_sd3
from ..modeling_selftok import SelftokModel
from ..modeling_selftok_decoder import (
    SELFTOK_DECODER_RELEASE_CONFIG,
    SELFTOK_DECODER_TINY_CONFIG,
    SelftokDecoderTransformer,
)
from ..pipeline_selftok_decoder import SelftokDecoderPipeline
from ..pixel_space import PixelSpaceAutoencoder
from ..renamed import RenamedAttribute, renamed_fields, renamed_kwargs
from ..token_schedule import to_code_order
from ..utils.atomic import export_folder
from ..vae import pixels_to_latents
from .data import (
    StepBatches,
    cache_latents,
    center_resize_crop,
    image_source_field,
    images_to_tensor,
    load_image_dataset,
)
from .loop import (
    LoopArguments,
    TrainingLoop,
    enable_activation_checkpointing,
    load_json_or_preset,
    run_training_cli,
)

__all__ = [
    "SelftokTokenizerObjective",
    "TokenizerTrainer",
    "TokenizerTrainingArguments",
    "decoder_parameter_groups",
    "main",
    "scale_token_gradients",
    "train_tokenizer",
]

logger = logging.getLogger(__name__)

#: Keys of a decoder block that belong to the image stream (the official ``x_block``), diffusers names.
_IMAGE_STREAM_BLOCK_PARTS = ("norm1.", "attn.to_q.", "attn.to_k.", "attn.to_v.", "attn.to_out.", "norm2.", "ff.")


def scale_token_gradients(codes: torch.Tensor) -> torch.Tensor:
    """Identity in the forward pass; scales the gradient of code-order token ``j`` by ``K / (K - j)``.

    Args:
        codes: ``(B, K, D)`` token vectors in code order.
    """
    K = codes.shape[1]
    weights = K / (K - torch.arange(K, device=codes.device, dtype=codes.dtype))
    scaled = codes * weights[None, :, None]
    return scaled + (codes - scaled).detach()


class SelftokTokenizerObjective(nn.Module):
    """The image tokenizer and the decoder, trained together by the rectified-flow objective (module docstring).

    Args:
        image_tokenizer: the encoder + EMA quantizer (formerly ``tokenizer``, the name of the text tokenizer in the
            LM code).
        decoder: the MMDiT velocity model; its token count / width must match the image tokenizer's.
        cfg_dropout: probability of hiding every token from an image (classifier-free guidance).
    """

    tokenizer = RenamedAttribute("image_tokenizer")

    @renamed_kwargs(tokenizer="image_tokenizer")
    def __init__(self, image_tokenizer: SelftokModel, decoder: SelftokDecoderTransformer, cfg_dropout: float = 0.1) -> None:
        super().__init__()
        tc, dc = image_tokenizer.config, decoder.config
        if (dc.num_image_tokens, dc.token_dim, dc.in_channels) != (tc.num_image_tokens, tc.token_dim, tc.latent_channels):
            raise ValueError(
                f"decoder (num_image_tokens={dc.num_image_tokens}, token_dim={dc.token_dim}, in_channels={dc.in_channels}) does not fit "
                f"the image tokenizer (num_image_tokens={tc.num_image_tokens}, token_dim={tc.token_dim}, latent_channels={tc.latent_channels})"
            )
        if not 0 <= cfg_dropout < 1:
            raise ValueError(f"cfg_dropout must be in [0, 1), got {cfg_dropout}")
        self.image_tokenizer, self.decoder, self.cfg_dropout = image_tokenizer, decoder, cfg_dropout
        self.schedule = tc.token_schedule
        self.register_load_state_dict_pre_hook(_load_renamed_checkpoint_keys)

    def forward(self, latents: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """
        Args:
            latents: normalised clean latents ``x0`` ``(B, C, h, w)``.
        Returns:
            the scalar loss and floats to log (``mse``, per-τ-third MSEs, quantizer statistics).
        """
        B, device = latents.shape[0], latents.device
        # The image tokenizer's own forward: in training mode its quantizer step (EMA codebook, commitment + diversity).
        tokens = self.image_tokenizer(latents=latents)
        # Eval mode is encode(): no quantizer step, so no quantizer loss (as the quantizer's eval forward, 0).
        quantizer_loss = latents.new_zeros(()) if tokens.loss is None else tokens.loss

        tau = torch.rand(B, device=device)
        dropped = torch.rand(B, device=device) < self.cfg_dropout
        visibility = self.schedule.training_visibility(tau, dropped)
        codes = scale_token_gradients(to_code_order(tokens.token_embeddings))

        noise = torch.randn_like(latents)
        t = tau.view(B, 1, 1, 1)
        noisy = t * noise + (1 - t) * latents
        velocity = self.decoder(hidden_states=noisy, timestep=tau, token_codes=codes.to(noisy.dtype), visibility=visibility).sample
        per_image = (velocity.float() - (noise - latents).float()).pow(2).flatten(1).mean(1)
        mse = per_image.mean()
        loss = mse + quantizer_loss

        logs = {"loss": loss.detach().item(), "mse": mse.detach().item(), "quantizer_loss": quantizer_loss.detach().item()}
        for name, lo, hi in (("mse_low_noise", 0.0, 0.35), ("mse_mid_noise", 0.35, 0.7), ("mse_high_noise", 0.7, 1.0)):
            sel = (tau > lo) & (tau <= hi) if lo else tau <= hi
            if sel.any():
                logs[name] = per_image[sel].detach().mean().item()
        logs.update({k: float(v) for k, v in (tokens.quantizer_stats or {}).items()})
        return loss, logs


def _load_renamed_checkpoint_keys(objective, state_dict, prefix, *args) -> None:
    """A checkpoint saved while the objective's image tokenizer was its ``tokenizer`` (``tokenizer.*`` keys) resumes."""
    old = prefix + "tokenizer."
    for key in [key for key in state_dict if key.startswith(old)]:
        state_dict[prefix + "image_tokenizer." + key[len(old) :]] = state_dict.pop(key)


def decoder_parameter_groups(decoder: SelftokDecoderTransformer) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split the decoder's parameters into (image stream, rest): the patch embedding and each block's image half
    (adaLN, q/k/v/out projections, MLP) are the part initialised from SD3; the rest is the token stream and head."""
    image, rest = [], []
    for name, param in decoder.named_parameters():
        in_block = name.startswith("transformer_blocks.") and name.split(".", 2)[2].startswith(_IMAGE_STREAM_BLOCK_PARTS)
        (image if name.startswith("pos_embed.") or in_block else rest).append(param)
    return image, rest


@renamed_fields(eval_decoder_steps="eval_num_inference_steps")
@dataclass
class TokenizerTrainingArguments(LoopArguments):
    """Options of :class:`TokenizerTrainer` (plus those of :class:`LoopArguments`); each field's ``metadata["help"]``
    is its ``--help`` text."""

    dataset: str = image_source_field("dataset")
    split: str = image_source_field("split")
    image_column: str = image_source_field("image_column")
    data_dir: str | None = image_source_field("data_dir")
    max_train_images: int | None = image_source_field("max_train_images")
    max_image_side: int | None = image_source_field("max_image_side")
    eval_dataset: str | None = field(default=None, metadata={"help": "Held-out images for the reconstruction PSNR (default: --dataset)."})
    eval_split: str = field(default="test", metadata={"help": "Split of the held-out images."})
    eval_images: int = field(default=8, metadata={"help": "How many held-out centre crops to reconstruct."})
    eval_every: int = field(default=0, metadata={"help": "Steps between held-out PSNRs (0: none)."})
    eval_num_inference_steps: int = field(default=10, metadata={"help": "Flow steps of the held-out decodes (formerly --eval-decoder-steps)."})
    tokenizer_config: str | None = field(default="tiny", metadata={"help": "The tokenizer: a preset (tiny, release), a JSON file or a JSON object."})
    decoder_config: str | None = field(
        default="tiny",
        metadata={
            "help": "The decoder: a preset (tiny, release), a JSON file or a JSON object; sizes that must agree with the "
            "tokenizer (tokens, code width, latent channels and side) are filled in."
        },
    )
    latent_space: str = field(
        default="pixel",
        metadata={
            "help": "'pixel' (a PixelSpaceAutoencoder with --pixel-patch-size) or 'vae' (the AutoencoderKL folder at "
            "--vae-path: SD3's, or one written by selftok-train-vae; its channels, downsampling and normalisation set the "
            "tokenizer's latent space; 'sd3' is the same)."
        },
    )
    pixel_patch_size: int = field(default=2, metadata={"help": "Patch size of the pixel latent space."})
    vae_path: str | None = field(default=None, metadata={"help": "The AutoencoderKL folder of --latent-space vae."})
    sd3_transformer: str | None = field(default=None, metadata={"help": "A diffusers SD3Transformer2DModel folder to initialise the decoder's image stream."})
    init_from: str | None = field(default=None, metadata={"help": "A pipeline folder written by this trainer or the converter, to continue training from."})
    encoder_lr: float = field(default=5e-5, metadata={"help": "Learning rate of the encoder (the release's)."})
    decoder_image_lr: float = field(default=1e-5, metadata={"help": "Learning rate of the decoder's image stream (the release's)."})
    decoder_token_lr: float = field(default=5e-5, metadata={"help": "Learning rate of the rest of the decoder (the release's)."})
    cfg_dropout: float = field(default=0.1, metadata={"help": "Probability of dropping every token of an image."})
    cache_latents: bool = field(default=False, metadata={"help": "Encode centre crops once (datasets.map) instead of augmenting on the fly."})

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.latent_space not in ("pixel", "vae", "sd3"):
            raise ValueError(f"latent_space must be 'pixel' or 'vae' ('sd3'), got {self.latent_space!r}")
        if self.latent_space != "pixel" and not self.vae_path and not self.init_from:
            raise ValueError(f"latent_space={self.latent_space!r} needs vae_path (an AutoencoderKL folder) or init_from")


class TokenizerTrainer(TrainingLoop):
    """Accelerate trainer of a Selftok tokenizer + decoder (see the module docstring). ``run()`` trains,
    ``export(dir)`` writes a ``SelftokDecoderPipeline`` folder (the converter's layout)."""

    args: TokenizerTrainingArguments

    # ------------------------------------------------------------------------------------ models
    def _build_models(self) -> tuple[SelftokModel, SelftokDecoderTransformer, Any]:
        args = self.args
        if args.init_from:
            # Master weights in float32 even from a float16 folder (what a package ships); --mixed-precision sets the compute dtype.
            pipe = SelftokDecoderPipeline.from_pretrained(args.init_from, dtype=torch.float32)
            return pipe.image_tokenizer, pipe.transformer, pipe.vae
        tok_kwargs = load_json_or_preset(args.tokenizer_config, {"tiny": SELFTOK_TINY_CONFIG, "release": {}})
        if args.latent_space == "pixel":
            vae = PixelSpaceAutoencoder(patch_size=args.pixel_patch_size)
            tok_kwargs.update(latent_channels=vae.config.latent_channels, latent_downsample=args.pixel_patch_size)
            tok_kwargs.setdefault("vae_scaling_factor", 1.0)
            tok_kwargs.setdefault("vae_shift_factor", 0.0)
        else:
            from diffusers import AutoencoderKL

            vae = AutoencoderKL.from_pretrained(args.vae_path)
            # The latent space is the VAE's: SD3's values for the SD3 VAE, measured ones for one trained here.
            tok_kwargs.setdefault("latent_channels", vae.config.latent_channels)
            tok_kwargs.setdefault("latent_downsample", 2 ** (len(vae.config.block_out_channels) - 1))
            tok_kwargs.setdefault("vae_scaling_factor", vae.config.scaling_factor)
            tok_kwargs.setdefault("vae_shift_factor", vae.config.shift_factor or 0.0)
        # from_dict: a JSON file may be a config.json saved before a field was renamed (num_tokens).
        image_tokenizer = SelftokModel(SelftokConfig.from_dict(tok_kwargs))
        tc = image_tokenizer.config
        dec_kwargs = load_json_or_preset(
            args.decoder_config, {"tiny": SELFTOK_DECODER_TINY_CONFIG, "release": SELFTOK_DECODER_RELEASE_CONFIG}
        )
        dec_kwargs.update(
            num_image_tokens=tc.num_image_tokens, token_dim=tc.token_dim, in_channels=tc.latent_channels, out_channels=tc.latent_channels,
            sample_size=tc.latent_size,
        )
        dec_kwargs["pos_embed_max_size"] = max(dec_kwargs.get("pos_embed_max_size", 0), tc.latent_size // dec_kwargs.get("patch_size", 2))
        decoder = SelftokDecoderTransformer.from_config(dec_kwargs)  # reads the keys of older configs too
        if args.sd3_transformer:
            from diffusers import SD3Transformer2DModel

            sd3 = SD3Transformer2DModel.from_pretrained(args.sd3_transformer)
            missing, unexpected = decoder.load_state_dict(decoder_state_dict_from_sd3(sd3.state_dict(), decoder.config), strict=False)
            assert not unexpected, unexpected
            logger.info("decoder image stream initialised from %s (%d token-stream tensors start from scratch)", args.sd3_transformer, len(missing))
        return image_tokenizer, decoder, vae

    def build(self) -> None:
        args = self.args
        image_tokenizer, decoder, vae = self._build_models()
        if args.gradient_checkpointing:
            enable_activation_checkpointing(image_tokenizer)
            decoder.enable_gradient_checkpointing()
        self.vae = vae.to(self.accelerator.device).eval().requires_grad_(False)
        self.objective = SelftokTokenizerObjective(image_tokenizer, decoder, cfg_dropout=args.cfg_dropout)
        image_params, token_params = decoder_parameter_groups(decoder)
        optimizer = torch.optim.AdamW(
            [
                {"params": list(image_tokenizer.parameters()), "lr": args.encoder_lr, "name": "encoder"},
                {"params": image_params, "lr": args.decoder_image_lr, "name": "decoder_image_stream"},
                {"params": token_params, "lr": args.decoder_token_lr, "name": "decoder_rest"},
            ],
            betas=(0.9, 0.99),
            weight_decay=0.0,
        )
        self.models = {"objective": self.objective}
        self.optimizers = {"optimizer": optimizer}

        tc = image_tokenizer.config
        dataset = load_image_dataset(
            args.dataset, args.split, args.image_column, args.data_dir, args.max_train_images, args.max_image_side
        )
        if args.cache_latents:
            dataset = cache_latents(dataset, self.vae, tc.image_size, tc.vae_scaling_factor, tc.vae_shift_factor)
        self.batches = StepBatches(
            dataset, args.batch_size, tc.image_size, args.seed, self.accelerator.num_processes, self.accelerator.process_index
        )
        self.eval_pixels = None
        if args.eval_every and self.accelerator.is_main_process:
            eval_ds = load_image_dataset(args.eval_dataset or args.dataset, args.eval_split, args.image_column, args.data_dir, args.eval_images)
            self.eval_pixels = images_to_tensor([center_resize_crop(row["image"], tc.image_size) for row in eval_ds])

    # ------------------------------------------------------------------------------------- steps
    def _latents(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.accelerator.device)
        if "latents" in getattr(self.batches.dataset, "column_names", ()):
            return batch
        tc = self.objective.image_tokenizer.config
        return pixels_to_latents(self.vae, batch, tc.vae_scaling_factor, tc.vae_shift_factor)

    def training_step(self, micro_step: int) -> tuple[torch.Tensor, dict[str, float]]:
        latents = self._latents(self.batches.batch(micro_step))
        with self.accelerator.autocast():
            return self.models["objective"](latents)

    def on_log(self, logs: dict[str, float]) -> dict[str, float]:
        quantizer = self.accelerator.unwrap_model(self.models["objective"]).image_tokenizer.quantizer
        expected = self.args.batch_size * self.accelerator.num_processes * quantizer.position_code_usage.shape[0] / quantizer.codebook_size
        logs["dead_codes"] = int((quantizer.cluster_size < quantizer.dead_code_threshold * expected).sum())
        logs["codes_in_use"] = int((quantizer.cluster_size >= quantizer.dead_code_threshold * expected).sum())
        if self.accelerator.num_processes > 1:
            # Invariant of the all-reduced EMA: every process holds the same codebook (0 unless it is broken).
            checksums = self.accelerator.gather(quantizer.embed.double().sum().reshape(1))
            logs["codebook_divergence"] = float(checksums.max() - checksums.min())
        if self.eval_pixels is not None and self.step % self.args.eval_every == 0:
            logs.update(self.evaluate())
        return logs

    # ----------------------------------------------------------------------------------- outputs
    def pipeline(self) -> SelftokDecoderPipeline:
        """The models being trained, assembled (by reference) into a decoder pipeline."""
        objective = self.accelerator.unwrap_model(self.models["objective"])
        pipe = SelftokDecoderPipeline(
            image_tokenizer=objective.image_tokenizer,
            transformer=objective.decoder,
            vae=self.vae,
            scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Held-out PSNR (dB, images in [0, 1]) of an ``eval_num_inference_steps``-step decode, fixed noise."""
        objective = self.accelerator.unwrap_model(self.models["objective"])
        objective.eval()
        try:
            with self.ema_weights():
                pipe = self.pipeline()
                pixels = self.eval_pixels.to(self.accelerator.device)
                ids = pipe.encode(pixels)
                generator = torch.Generator(pixels.device).manual_seed(self.args.seed)
                decoded = pipe(ids, num_inference_steps=self.args.eval_num_inference_steps, generator=generator, output_type="pt").images
        finally:
            objective.train()
        target = (pixels.float().clamp(-1, 1) + 1) / 2
        mse = (decoded.float() - target).pow(2).flatten(1).mean(1)
        psnr = (10 * torch.log10(1.0 / mse.clamp(min=1e-10))).mean().item()
        return {f"eval/psnr_{self.args.eval_num_inference_steps}_steps": psnr}

    def export(self, save_directory: str | os.PathLike) -> SelftokDecoderPipeline:
        """Save the trained tokenizer + decoder (+ VAE, scheduler) as a ``SelftokDecoderPipeline`` folder, renamed into
        place when complete (:func:`~selftok_hf.utils.atomic.export_folder`)."""
        pipe = self.pipeline()
        if self.accelerator.is_main_process:
            with export_folder(save_directory) as staged:
                pipe.save_pretrained(staged)
        self.accelerator.wait_for_everyone()
        return pipe


def train_tokenizer(args: TokenizerTrainingArguments, export_dir: str | None = None) -> TokenizerTrainer:
    """Train (or resume) and export to ``export_dir`` (default ``{output_dir}/pipeline``); returns the trainer."""
    return TokenizerTrainer(args).train_and_export_pipeline(export_dir)


def main(argv: list[str] | None = None, prog: str = "selftok-train-tokenizer") -> int:
    """``selftok-train-tokenizer``: train a Selftok tokenizer + decoder (``accelerate launch`` for several processes)."""
    return run_training_cli(
        prog,
        "Train a Selftok tokenizer and its diffusion decoder (release objective) with accelerate. "
        "Run it directly for one process, or with `accelerate launch [--config_file F] -m selftok_hf.training.tokenizer` for DDP/FSDP/DeepSpeed.",
        TokenizerTrainingArguments,
        train_tokenizer,
        argv,
        existing_paths=("data_dir", "vae_path", "sd3_transformer", "init_from"),
    )


if __name__ == "__main__":
    sys.exit(main())
