"""selftok-eval: reconstruction quality of a Selftok pipeline (PSNR, SSIM, LPIPS, rFID), per image and per decode
setting, against the original pixels and against the VAE round trip.

    selftok-eval --pipeline DIR (--images FOLDER_OR_FILES ... | --dataset NAME_OR_PATH [--split S] [--image-column C])
                 [--steps 50 25 10] [--renderer] [--guidance-scale 1] [--seed 0] [--batch-size 8] [--max-images N]
                 [--lpips-weights FILE ...] [--inception-weights pt_inception-2015-12-05-6726825d.pth]
                 [--prefix-lengths 0 16 64 ...] [--save-images] [--device cuda] [--dtype float32] [--output-dir DIR]

Every image is resized and centre-cropped by the pipeline's own image processor, encoded to token ids, and
decoded with every setting: the rectified-flow decoder at each ``--steps`` value (same initial noise for all
step counts: image ``i`` uses ``torch.Generator().manual_seed(seed + i)``, whatever the batch size) and, with
``--renderer``, the one-step renderer.

What the numbers compare:

* **Images are 8-bit.** Reconstructions and references are quantised to 8 bits (``round(255 x)``), i.e. exactly
  what the PNGs written with ``--save-images`` hold, so every number can be recomputed from those files (and
  PSNR is on PNGs, as in Selftok's latest evaluator).
* **Two references.** ``original``: the processor's crop of the input. ``vae``: the VAE round trip
  ``vae.decode(vae.encode(original))`` through the pipeline's VAE (posterior mode; Selftok's evaluators sample
  the posterior, whose spread is negligible for the SD3 VAE). Selftok's official evaluators report against the
  VAE round trip, which excludes the VAE's own loss; peers usually report against the original. Both are here,
  plus the VAE round trip against the original (the ceiling of any latent tokenizer on that VAE).
* **PSNR**: per image on [0, 1] (data range 1), then averaged (``psnr``); ``psnr_batch_mse`` is the PSNR of each
  batch's mean MSE, averaged over batches weighted by their size, as Selftok's older evaluator computes it
  (depends on ``--batch-size``).
* **SSIM**: ``skimage.metrics.structural_similarity`` settings (7x7 uniform window, sample covariance, channel
  axis first), with ``data_range`` = ``max - min`` of each reference image, as Selftok's evaluators pass
  (``--ssim-data-range`` sets a fixed range instead).
* **LPIPS** (with ``--lpips-weights``): v0.1 AlexNet on images scaled to [-1, 1].
* **rFID** (with ``--inception-weights`` or a feature extractor in the Python API): Fréchet distance between the
  Inception pool3 features of the reconstructions and those of the reference set (pytorch-fid's network and
  299x299 bilinear resize). Needs at least 2 images and means little below thousands.

Outputs in ``--output-dir``: ``per_image.csv`` (one row per image x setting), ``summary.json`` (means per
setting and reference), ``psnr_vs_steps.png`` (needs matplotlib: ``pip install selftok-hf[eval]``),
``reconstructions.png`` (rows: images; columns: original | VAE round trip | each setting),
``coarse_to_fine.png`` (rows: images; columns: decodes from AR token prefixes of growing length, then the VAE
round trip) and, with ``--save-images``, ``images/<original|vae_round_trip|setting>/<index>.png``.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import PIL.Image
import torch
from tqdm.auto import tqdm

from ..image_processing_selftok import postprocess_images, to_rgb
from ..pipeline_selftok_decoder import SelftokDecoderPipeline
from ..renamed import renamed_kwargs
from ..vae import latents_to_images, pixels_to_latents
from .metrics import (
    LPIPS,
    FIDAccumulator,
    InceptionFeatureExtractor,
    mean_squared_error,
    psnr_from_mse,
    ssim,
)

if TYPE_CHECKING:
    import datasets

__all__ = [
    "DecodeSetting",
    "EvaluationMetrics",
    "EvaluationOutputs",
    "EvaluationResult",
    "decode_settings",
    "default_prefix_lengths",
    "evaluate_reconstruction",
    "main",
    "side_by_side",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".bmp", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"}
REFERENCES = ("original", "vae")
ImageInput = Union[str, os.PathLike, Sequence[str | os.PathLike | PIL.Image.Image], "datasets.Dataset"]


@dataclass(frozen=True)
class DecodeSetting:
    """One way of decoding token ids: the decoder with ``num_inference_steps`` Euler steps, or the renderer."""

    name: str
    num_inference_steps: int | None = None
    use_renderer: bool = False


def decode_settings(steps: Sequence[int], renderer: bool) -> list[DecodeSetting]:
    """``decoder_<n>_steps`` for every step count (in the given order, duplicates dropped), then ``renderer``."""
    settings = []
    for n in dict.fromkeys(steps):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"decoder step counts must be integers >= 1, got {n!r}")
        settings.append(DecodeSetting(f"decoder_{n}_steps", num_inference_steps=n))
    if renderer:
        settings.append(DecodeSetting("renderer", use_renderer=True))
    if not settings:
        raise ValueError("nothing to evaluate: give at least one decoder step count or renderer=True")
    return settings


@renamed_kwargs(num_tokens="num_image_tokens")
def default_prefix_lengths(num_image_tokens: int) -> list[int]:
    """0 (no token: unconditional), then K/32, K/16, ..., K (those >= 1)."""
    return [0] + sorted({num_image_tokens >> shift for shift in range(6)} - {0})


@dataclass
class EvaluationResult:
    """``summary`` (what ``summary.json`` holds) and ``rows`` (what ``per_image.csv`` holds, as dicts)."""

    summary: dict
    rows: list[dict] = field(default_factory=list)


# ------------------------------------------------------------------------------------------ image inputs
def _image_source(images: ImageInput, image_column: str) -> tuple[list[str], Callable[[int], PIL.Image.Image]]:
    """Names of the images and a loader ``index -> RGB PIL image`` for a folder, files, PIL images or a dataset."""

    def open_rgb(path) -> PIL.Image.Image:
        with PIL.Image.open(path) as image:
            return to_rgb(image)

    if hasattr(images, "column_names") and hasattr(images, "__getitem__"):  # a datasets.Dataset
        if image_column not in images.column_names:
            raise ValueError(f"the dataset has no column {image_column!r} (columns: {images.column_names})")

        def load_row(index: int) -> PIL.Image.Image:
            value = images[index][image_column]
            if isinstance(value, PIL.Image.Image):
                return to_rgb(value)
            if isinstance(value, (str, os.PathLike)):
                return open_rgb(value)
            raise TypeError(f"dataset column {image_column!r} must hold PIL images or paths, got {type(value).__name__}")

        return [str(i) for i in range(len(images))], load_row
    if isinstance(images, (str, os.PathLike)):
        images = [images]
    if not isinstance(images, Sequence):
        raise TypeError(f"images must be a folder, a list of files or PIL images, or a datasets.Dataset, got {type(images).__name__}")
    entries: list[tuple[str, Any]] = []
    for index, item in enumerate(images):
        if isinstance(item, PIL.Image.Image):
            entries.append((str(index), item))
            continue
        if not isinstance(item, (str, os.PathLike)):
            raise TypeError(f"images[{index}] must be a path or a PIL image, got {type(item).__name__}")
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            if not files:
                raise ValueError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in folder {path}")
            entries.extend((p.relative_to(path).as_posix(), p) for p in files)
        elif path.is_file():
            entries.append((str(path), path))
        else:
            raise FileNotFoundError(f"no such image file or folder: {path}")

    def load_entry(index: int) -> PIL.Image.Image:
        item = entries[index][1]
        return to_rgb(item) if isinstance(item, PIL.Image.Image) else open_rgb(item)

    return [name for name, _ in entries], load_entry


def _to_8bit(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> the nearest 8-bit levels ``round(255 x) / 255`` (float32), what a PNG stores."""
    return (images.float().clamp(0, 1) * 255).round() / 255


def _module_device(module: Any, default: torch.device) -> torch.device:
    if isinstance(module, torch.nn.Module):
        for tensor in module.parameters():
            return tensor.device
    return default


def _png(image: torch.Tensor) -> PIL.Image.Image:
    return postprocess_images(image[None], "pil")[0]


def side_by_side(rows: list[list[PIL.Image.Image]]) -> PIL.Image.Image:
    """Tile rows of equally sized images into one picture."""
    w, h = rows[0][0].size
    canvas = PIL.Image.new("RGB", (w * max(len(r) for r in rows), h * len(rows)), "white")
    for y, row in enumerate(rows):
        for x, image in enumerate(row):
            canvas.paste(image, (x * w, y * h))
    return canvas


# ------------------------------------------------------------------------------------------------ plots
def _plot_psnr_vs_steps(summary: dict, settings: list[DecodeSetting], path: Path) -> None:
    """PSNR (mean over images) against decoder steps, per reference; the renderer as horizontal lines."""
    # matplotlib is an optional dependency (extra "eval"); the caller handles its ImportError.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=100)
    axes = figure.subplots()
    decoder = [s for s in settings if not s.use_renderer]
    steps = [s.num_inference_steps for s in decoder]
    for reference, color in zip(REFERENCES, ("tab:blue", "tab:orange")):
        label = "original pixels" if reference == "original" else "VAE round trip"
        if decoder:
            values = [summary["settings"][s.name][reference]["psnr"] for s in decoder]
            axes.plot(steps, values, "o-", color=color, label=f"decoder vs {label}")
        if any(s.use_renderer for s in settings):
            value = summary["settings"]["renderer"][reference]["psnr"]
            axes.axhline(value, color=color, linestyle="--", label=f"renderer vs {label}")
    if steps:
        axes.set_xticks(sorted(steps))
    axes.set_xlabel("decoder steps")
    axes.set_ylabel("PSNR (dB)")
    axes.set_title(f"Selftok reconstruction PSNR ({summary['num_images']} images)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path)


# ------------------------------------------------------------------------------------------------ options
@dataclass(frozen=True)
class EvaluationMetrics:
    """The optional metrics of :func:`evaluate_reconstruction` (PSNR and SSIM are always computed).

    Attributes:
        lpips: an [`LPIPS`] with loaded weights, or None to skip LPIPS.
        feature_extractor: ``(B, 3, H, W)`` in [0, 1] -> ``(B, D)`` for rFID (e.g. an
            [`InceptionFeatureExtractor`] with the pytorch-fid weights), or None to skip rFID.
        ssim_data_range: ``"target"`` (max - min of each reference image, Selftok) or a fixed number.
    """

    lpips: LPIPS | None = None
    feature_extractor: Callable[[torch.Tensor], torch.Tensor] | None = None
    ssim_data_range: float | str = "target"


@dataclass(frozen=True)
class EvaluationOutputs:
    """What :func:`evaluate_reconstruction` writes and shows besides the numbers.

    Attributes:
        output_dir: where to write the CSV, JSON and PNGs; None writes nothing.
        save_images: also write every reconstruction and reference as a PNG under ``output_dir/images``.
        grid_images: images (rows) in ``reconstructions.png``.
        coarse_to_fine_images: images (rows) in ``coarse_to_fine.png`` and the summary's ``coarse_to_fine``
            entry; 0 skips them (they need a decoder setting).
        prefix_lengths: AR prefix lengths of ``coarse_to_fine.png`` (default :func:`default_prefix_lengths`).
    """

    output_dir: str | os.PathLike | None = None
    save_images: bool = False
    grid_images: int = 8
    coarse_to_fine_images: int = 4
    prefix_lengths: Sequence[int] | None = None


#: evaluate_reconstruction's former keyword arguments (deprecated) -> the option group that holds them now.
_DEPRECATED_KEYWORDS = {
    **{f.name: ("metrics", EvaluationMetrics) for f in fields(EvaluationMetrics)},
    **{f.name: ("outputs", EvaluationOutputs) for f in fields(EvaluationOutputs)},
}


def _options_from_deprecated_keywords(
    metrics: EvaluationMetrics | None, outputs: EvaluationOutputs | None, kwargs: dict[str, Any]
) -> tuple[EvaluationMetrics | None, EvaluationOutputs | None]:
    """``(metrics, outputs)`` with the deprecated keyword arguments ``lpips=...``, ``output_dir=...`` etc. moved
    into them, with a FutureWarning naming the new spelling; TypeError for unknown keywords or mixed spellings."""
    unknown = [name for name in kwargs if name not in _DEPRECATED_KEYWORDS]
    if unknown:
        raise TypeError(f"evaluate_reconstruction() got an unexpected keyword argument {unknown[0]!r}")
    groups = {"metrics": metrics, "outputs": outputs}
    for group, given in list(groups.items()):
        names = [name for name, (owner, _) in _DEPRECATED_KEYWORDS.items() if owner == group and name in kwargs]
        if not names:
            continue
        cls = _DEPRECATED_KEYWORDS[names[0]][1]
        if given is not None:
            raise TypeError(f"evaluate_reconstruction(): pass {', '.join(names)} inside {group}={cls.__name__}(...), not next to it")
        spelled = ", ".join(f"{name}=..." for name in names)
        warnings.warn(
            f"evaluate_reconstruction({spelled}) is deprecated; pass {group}={cls.__name__}({spelled}) instead",
            FutureWarning,
            stacklevel=3,
        )
        groups[group] = cls(**{name: kwargs[name] for name in names})
    return groups["metrics"], groups["outputs"]


# --------------------------------------------------------------------------------------------- evaluate
def evaluate_reconstruction(
    pipe: SelftokDecoderPipeline,
    images: ImageInput,
    *,
    steps: Sequence[int] = (50,),
    renderer: bool = False,
    guidance_scale: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
    max_images: int | None = None,
    image_column: str = "image",
    metrics: EvaluationMetrics | None = None,
    outputs: EvaluationOutputs | None = None,
    show_progress: bool = True,
    **deprecated_kwargs: Any,
) -> EvaluationResult:
    """Encode, decode and score images with a Selftok pipeline; see the module docstring for the conventions.

    Args:
        pipe: the pipeline (its device and dtype are used as they are).
        images: a folder (searched recursively), a list of image files / folders / PIL images, or a
            ``datasets.Dataset`` with an ``image_column`` of PIL images or paths.
        steps: decoder step counts to evaluate (may be empty when ``renderer`` is set).
        renderer: also evaluate the one-step renderer.
        guidance_scale: classifier-free guidance of the decoder (1 = none).
        seed: image ``i`` is decoded from the noise of ``torch.Generator().manual_seed(seed + i)``.
        batch_size: images per batch (also the batch of ``psnr_batch_mse``).
        max_images: evaluate only the first images.
        image_column: the dataset column with the images.
        metrics: an [`EvaluationMetrics`]: LPIPS, the rFID feature extractor, SSIM's data range (default: neither
            LPIPS nor rFID, Selftok's SSIM range).
        outputs: an [`EvaluationOutputs`]: the output folder, saved PNGs, image grids and the coarse-to-fine strip
            (default: nothing written; 8 grid rows and 4 coarse-to-fine rows in the summary).
        show_progress: show a progress bar over images.

    The former keyword arguments ``lpips``, ``feature_extractor``, ``ssim_data_range`` (now in ``metrics``) and
    ``output_dir``, ``save_images``, ``grid_images``, ``coarse_to_fine_images``, ``prefix_lengths`` (now in
    ``outputs``) still work, with a FutureWarning.

    Returns:
        an [`EvaluationResult`].
    """
    if deprecated_kwargs:
        metrics, outputs = _options_from_deprecated_keywords(metrics, outputs, deprecated_kwargs)
    metrics = EvaluationMetrics() if metrics is None else metrics
    outputs = EvaluationOutputs() if outputs is None else outputs
    settings = decode_settings(steps, renderer)
    prefix_lengths = _check_arguments(pipe, settings, guidance_scale, batch_size, max_images, metrics, outputs)

    names, load_image = _image_source(images, image_column)
    names = names[:max_images]
    if not names:
        raise ValueError("no images to evaluate")
    out_dir = _prepare_output_dir(outputs, settings)

    device = pipe._execution_device
    decoder_settings = [s for s in settings if not s.use_renderer]
    accumulator = _MetricAccumulator(settings, metrics, device)
    grid_rows: list[list[torch.Tensor]] = []
    coarse_inputs: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (index, token ids, VAE round trip)
    rows: list[dict] = []
    coarse_to_fine, coarse_rows = None, []
    # The pipeline's own bars (one per decode) are hidden: the evaluation shows one over images.
    with torch.no_grad(), pipe.temporary_progress_bar_config(disable=True):
        progress = tqdm(total=len(names), desc="selftok-eval", unit="img", disable=not show_progress)
        for start in range(0, len(names), batch_size):
            indices = list(range(start, min(start + batch_size, len(names))))
            token_ids, references = _encode_batch(pipe, [load_image(i) for i in indices], device)
            accumulator.score("vae_round_trip", references["vae"], {"original": references["original"]})
            decoded = {"original": references["original"], "vae_round_trip": references["vae"]}
            batch_scores = {}
            for setting in settings:
                decoded[setting.name] = _decode(pipe, token_ids, setting, guidance_scale, _noise_generators(seed, indices))
                batch_scores[setting.name] = accumulator.score(setting.name, decoded[setting.name], references)
            rows += _per_image_rows(indices, names, settings, batch_scores)
            for offset, index in enumerate(indices):
                if index < outputs.grid_images:
                    grid_rows.append([decoded[name][offset].cpu() for name in ("original", "vae_round_trip", *(s.name for s in settings))])
                if index < outputs.coarse_to_fine_images and decoder_settings:
                    coarse_inputs.append((index, token_ids[offset], decoded["vae_round_trip"][offset]))
                if outputs.save_images:
                    for folder, batch_images in decoded.items():
                        _png(batch_images[offset]).save(out_dir / "images" / folder / f"{index:06d}.png")
            accumulator.add_fid_features({"original": references["original"], "vae": references["vae"], **{s.name: decoded[s.name] for s in settings}})
            progress.update(len(indices))
        progress.close()
        if coarse_inputs:
            setting = max(decoder_settings, key=lambda s: s.num_inference_steps)
            coarse_to_fine, coarse_rows = _coarse_to_fine(pipe, coarse_inputs, prefix_lengths, setting, guidance_scale, seed)

    summary = _summary(accumulator, settings, num_images=len(names), config=pipe.image_tokenizer.config, seed=seed, guidance_scale=guidance_scale, batch_size=batch_size, metrics=metrics)
    if coarse_to_fine is not None:
        summary["coarse_to_fine"] = coarse_to_fine
    summary["reconstructions_grid_columns"] = ["original", "VAE round trip"] + [s.name for s in settings]
    if out_dir is not None:
        _write_outputs(out_dir, summary, rows, settings, {"reconstructions.png": grid_rows, "coarse_to_fine.png": coarse_rows})
    return EvaluationResult(summary=summary, rows=rows)


def _check_arguments(
    pipe: SelftokDecoderPipeline,
    settings: list[DecodeSetting],
    guidance_scale: float,
    batch_size: int,
    max_images: int | None,
    metrics: EvaluationMetrics,
    outputs: EvaluationOutputs,
) -> list[int]:
    """ValueError for a bad argument of :func:`evaluate_reconstruction`; returns the coarse-to-fine prefix lengths
    (``outputs.prefix_lengths`` or their default for the tokenizer's K), each in ``[0, K]``."""
    if any(s.use_renderer for s in settings) and pipe.renderer is None:
        raise ValueError("renderer=True but the pipeline has no renderer component")
    if guidance_scale < 1:
        raise ValueError(f"guidance_scale must be >= 1, got {guidance_scale}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_images is not None and max_images < 1:
        raise ValueError(f"max_images must be >= 1 (or None for all), got {max_images}")
    if outputs.grid_images < 0 or outputs.coarse_to_fine_images < 0:
        raise ValueError(
            f"grid_images and coarse_to_fine_images must be >= 0, got {outputs.grid_images} and {outputs.coarse_to_fine_images}"
        )
    if outputs.save_images and outputs.output_dir is None:
        raise ValueError("save_images=True needs an output_dir")
    if isinstance(metrics.ssim_data_range, str) and metrics.ssim_data_range != "target":
        raise ValueError(f"ssim_data_range must be 'target' or a number, got {metrics.ssim_data_range!r}")
    K = pipe.image_tokenizer.config.num_image_tokens
    prefix_lengths = default_prefix_lengths(K) if outputs.prefix_lengths is None else list(outputs.prefix_lengths)
    if any(isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= K for p in prefix_lengths) or not prefix_lengths:
        raise ValueError(f"prefix_lengths must be integers in [0, {K}], got {prefix_lengths}")
    return prefix_lengths


def _prepare_output_dir(outputs: EvaluationOutputs, settings: list[DecodeSetting]) -> Path | None:
    """Create ``outputs.output_dir`` (and, with ``save_images``, its ``images/<folder>`` folders); None without one."""
    if outputs.output_dir is None:
        return None
    out_dir = Path(outputs.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if outputs.save_images:
        for folder in ("original", "vae_round_trip", *(s.name for s in settings)):
            (out_dir / "images" / folder).mkdir(parents=True, exist_ok=True)
    return out_dir


def _noise_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image: image ``i`` starts from the noise of ``manual_seed(seed + i)``, whatever the batch."""
    return [torch.Generator().manual_seed(seed + i) for i in indices]


def _encode_batch(pipe: SelftokDecoderPipeline, images: list[PIL.Image.Image], device: torch.device) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``B`` RGB images -> ``(token_ids, references)``: AR-order ids ``(B, K)`` and the 8-bit references
    ``{"original": processor crop, "vae": VAE round trip}``, each ``(B, 3, H, W)`` float32 in [0, 1]."""
    cfg = pipe.image_tokenizer.config
    pixel_values = pipe.image_processor(images, return_tensors="pt").pixel_values.to(device)
    latents = pixels_to_latents(pipe.vae, pixel_values, cfg.vae_scaling_factor, cfg.vae_shift_factor)
    token_ids = pipe.image_tokenizer.encode(latents=latents.to(pipe.image_tokenizer.dtype)).token_ids
    references = {
        "original": _to_8bit((pixel_values.float() + 1) / 2),
        "vae": _to_8bit(latents_to_images(pipe.vae, latents, cfg.vae_scaling_factor, cfg.vae_shift_factor)),
    }
    return token_ids, references


def _decode(
    pipe: SelftokDecoderPipeline,
    token_ids: torch.Tensor,
    setting: DecodeSetting,
    guidance_scale: float,
    generators: list[torch.Generator],
    prefix_length: int | None = None,
) -> torch.Tensor:
    """Token ids ``(B, K)`` -> 8-bit reconstructions ``(B, 3, H, W)`` (float32 in [0, 1]) with one decode setting:
    the renderer, or the decoder from the given per-image noise (with ``prefix_length``: from the first tokens only)."""
    if setting.use_renderer:
        decoded = pipe(token_ids, use_renderer=True, output_type="pt").images
    else:
        decoded = pipe(
            token_ids,
            num_inference_steps=setting.num_inference_steps,
            guidance_scale=guidance_scale,
            generator=generators,
            output_type="pt",
            prefix_length=prefix_length,
        ).images
    return _to_8bit(decoded)


def _per_image_rows(
    indices: list[int], names: list[str], settings: list[DecodeSetting], batch_scores: dict[str, dict[str, dict[str, torch.Tensor]]]
) -> list[dict]:
    """``per_image.csv`` rows of one batch: per image (in order), one row per setting with its metrics against
    each reference; ``batch_scores[setting][reference][metric]`` is a ``(B,)`` tensor."""
    rows = []
    for offset, index in enumerate(indices):
        for setting in settings:
            row = {"image_index": index, "image": names[index], "setting": setting.name, "num_inference_steps": setting.num_inference_steps or ""}
            for reference in REFERENCES:
                for metric, values in batch_scores[setting.name][reference].items():
                    row[f"{metric}_{reference}"] = values[offset].item()
            rows.append(row)
    return rows


class _MetricAccumulator:
    """Metrics of every compared image set (each decode setting's reconstructions, and ``vae_round_trip``) against
    the references (``original``, ``vae``), batch by batch: per-image PSNR / SSIM / LPIPS, the batch-MSE PSNR
    (summed weighted by batch size) and, with a feature extractor, the rFID feature statistics."""

    def __init__(self, settings: list[DecodeSetting], metrics: EvaluationMetrics, device: torch.device) -> None:
        self.metrics, self.device = metrics, device
        compared = [s.name for s in settings] + ["vae_round_trip"]
        self.per_image: dict[str, dict[str, dict[str, list[float]]]] = {c: {r: {} for r in REFERENCES} for c in compared}
        self.batch_psnr_sums = {c: dict.fromkeys(REFERENCES, 0.0) for c in compared}
        self.fid = None
        if metrics.feature_extractor is not None:
            self.fid = {name: FIDAccumulator(metrics.feature_extractor) for name in ("original", "vae", *(s.name for s in settings))}

    def score(self, name: str, recon: torch.Tensor, references: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """Score the reconstructions ``(B, 3, H, W)`` of set ``name`` against each reference (same shape), all in
        [0, 1]; record them and return ``{reference: {metric: (B,) tensor}}``."""
        scores = {}
        for reference, target in references.items():
            mse = mean_squared_error(recon, target)
            values = {"psnr": psnr_from_mse(mse), "ssim": ssim(recon, target, data_range=self.metrics.ssim_data_range)}
            if self.metrics.lpips is not None:
                lpips_device = _module_device(self.metrics.lpips, self.device)
                values["lpips"] = self.metrics.lpips(recon.to(lpips_device), target.to(lpips_device), normalize=True).double()
            for metric, tensor in values.items():
                self.per_image[name][reference].setdefault(metric, []).extend(tensor.tolist())
            self.batch_psnr_sums[name][reference] += psnr_from_mse(mse.mean()).item() * recon.shape[0]
            scores[reference] = values
        return scores

    def add_fid_features(self, images: dict[str, torch.Tensor]) -> None:
        """Add a batch ``(B, 3, H, W)`` in [0, 1] of each image set (``original``, ``vae``, each setting) to its rFID
        statistics; nothing without a feature extractor."""
        if self.fid is None:
            return
        device = _module_device(self.metrics.feature_extractor, self.device)
        for name, batch_images in images.items():
            self.fid[name].update(batch_images.to(device))

    def summarize(self, name: str, references: Sequence[str]) -> dict[str, dict[str, float]]:
        """``{reference: {metric: mean over images, "psnr_batch_mse": batch-size-weighted mean}}`` of set ``name``."""
        result = {}
        for reference in references:
            metrics = {metric: sum(values) / len(values) for metric, values in self.per_image[name][reference].items()}
            metrics["psnr_batch_mse"] = self.batch_psnr_sums[name][reference] / len(self.per_image[name][reference]["psnr"])
            result[reference] = metrics
        return result

    def rfid(self, name: str, reference: str) -> float:
        """Fréchet distance of the features of image set ``name`` to those of ``reference`` (``original``, ``vae``)."""
        return self.fid[name].frechet_distance(self.fid[reference])


def _coarse_to_fine(
    pipe: SelftokDecoderPipeline,
    inputs: list[tuple[int, torch.Tensor, torch.Tensor]],
    prefix_lengths: list[int],
    setting: DecodeSetting,
    guidance_scale: float,
    seed: int,
) -> tuple[dict, list[list[torch.Tensor]]]:
    """Decodes from AR token prefixes of growing length, with the decoder setting ``setting``.

    Args:
        inputs: per image, ``(image index, token ids (K,), VAE round trip (3, H, W))``.
    Returns:
        ``(entry, grid_rows)``: the summary's ``coarse_to_fine`` entry (per prefix, the mean PSNR against the VAE
        round trip) and, per image, its row of ``(3, H, W)`` images: one per prefix, then the VAE round trip.
    """
    indices = [i for i, _, _ in inputs]
    ids = torch.stack([t for _, t, _ in inputs])
    vae_images = torch.stack([v for _, _, v in inputs])
    columns, psnr_by_prefix = [], []
    for prefix in prefix_lengths:
        decoded = _decode(pipe, ids, setting, guidance_scale, _noise_generators(seed, indices), prefix_length=prefix)
        columns.append(decoded.cpu())
        psnr_by_prefix.append(psnr_from_mse(mean_squared_error(decoded, vae_images)).mean().item())
    grid_rows = [[column[r] for column in columns] + [vae_images[r].cpu()] for r in range(len(indices))]
    entry = {
        "num_inference_steps": setting.num_inference_steps,
        "prefix_lengths": prefix_lengths,
        "image_indices": indices,
        "psnr_vae": psnr_by_prefix,
        "columns": [f"first {p} tokens" for p in prefix_lengths] + ["VAE round trip"],
    }
    return entry, grid_rows


def _summary(
    accumulator: _MetricAccumulator,
    settings: list[DecodeSetting],
    *,
    num_images: int,
    config: Any,
    seed: int,
    guidance_scale: float,
    batch_size: int,
    metrics: EvaluationMetrics,
) -> dict[str, Any]:
    """What ``summary.json`` holds (before the coarse-to-fine entry and the file list): the run's settings and
    conventions, the VAE round trip against the original and, per setting and reference, the mean metrics."""
    ssim_data_range = metrics.ssim_data_range
    summary: dict[str, Any] = {
        "num_images": num_images,
        "image_size": config.image_size,
        "num_image_tokens": config.num_image_tokens,
        "seed": seed,
        "guidance_scale": guidance_scale,
        "batch_size": batch_size,
        "ssim_data_range": ssim_data_range,
        "conventions": {
            "images": "8-bit (round(255 x)), as saved to PNG; metrics on [0, 1]",
            "original": "the pipeline's resize + centre crop of the input",
            "vae": "VAE round trip decode(encode(original)) through the pipeline's VAE (posterior mode)",
            "psnr": "per image (data range 1), averaged over images",
            "psnr_batch_mse": f"PSNR of each batch's mean MSE (batch size {batch_size}), averaged weighted by batch size",
            "ssim": "skimage structural_similarity, 7x7 uniform window, channel_axis=0, data_range "
            + ("max-min of each reference image" if ssim_data_range == "target" else str(ssim_data_range)),
            "lpips": "LPIPS v0.1 AlexNet on [-1, 1]" if metrics.lpips is not None else "not computed (no LPIPS weights)",
            "rfid": "Frechet distance of the feature extractor's features (pytorch-fid Inception pool3 with its weights)"
            if accumulator.fid is not None
            else "not computed (no Inception weights / feature extractor)",
        },
        "settings": {},
        "vae_round_trip": accumulator.summarize("vae_round_trip", ["original"]),
    }
    for setting in settings:
        entry = {"num_inference_steps": setting.num_inference_steps, "use_renderer": setting.use_renderer}
        entry.update(accumulator.summarize(setting.name, REFERENCES))
        summary["settings"][setting.name] = entry
    if accumulator.fid is not None:
        if num_images < 2:
            logger.warning("rFID needs at least 2 images; skipped")
            summary["conventions"]["rfid"] = "not computed (fewer than 2 images)"
        else:
            summary["vae_round_trip"]["original"]["rfid"] = accumulator.rfid("vae", "original")
            for setting in settings:
                for reference in REFERENCES:
                    summary["settings"][setting.name][reference]["rfid"] = accumulator.rfid(setting.name, reference)
    return summary


def _write_outputs(out_dir: Path, summary: dict, rows: list[dict], settings: list[DecodeSetting], grids: dict[str, list[list[torch.Tensor]]]) -> None:
    """Write ``per_image.csv``, the image grids (rows of ``(3, H, W)`` images in [0, 1]), the PSNR plot (when
    matplotlib is there) and, last, ``summary.json`` with the list of written files."""
    written = ["per_image.csv", "summary.json"]
    with open(out_dir / "per_image.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    for filename, grid in grids.items():
        if grid:
            side_by_side([[_png(image) for image in row] for row in grid]).save(out_dir / filename)
            written.append(filename)
    try:
        _plot_psnr_vs_steps(summary, settings, out_dir / "psnr_vs_steps.png")
        written.append("psnr_vs_steps.png")
    except ImportError:
        message = "matplotlib is not installed (pip install 'selftok-hf[eval]'): skipped psnr_vs_steps.png"
        logger.warning(message)
        summary["skipped"] = [message]
    summary["files"] = written
    with open(out_dir / "summary.json", "w") as handle:
        json.dump(summary, handle, indent=2)


# ------------------------------------------------------------------------------------------------- CLI
def _load_dataset(path: str, split: str):
    import datasets

    if os.path.isdir(path) and any(os.path.isfile(os.path.join(path, f)) for f in ("dataset_info.json", "state.json", "dataset_dict.json")):
        dataset = datasets.load_from_disk(path)
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise ValueError(f"split {split!r} not in {list(dataset)}")
            dataset = dataset[split]
        return dataset
    return datasets.load_dataset(path, split=split)


def _ssim_range(value: str) -> float | str:
    if value == "target":
        return value
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'target' or a positive number, got {value!r}") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be 'target' or a positive number, got {value!r}")
    return number


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Reconstruction metrics (PSNR, SSIM, LPIPS, rFID) of a Selftok pipeline, against the original pixels and the VAE round trip.",
    )
    parser.add_argument("--pipeline", required=True, help="folder of a saved SelftokDecoderPipeline (selftok-convert output)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", nargs="+", metavar="PATH", help="image folder(s) (searched recursively) and/or image files")
    source.add_argument("--dataset", metavar="NAME_OR_PATH", help="a datasets dataset (load_from_disk folder or load_dataset name)")
    parser.add_argument("--split", default="validation", help="dataset split (default: validation)")
    parser.add_argument("--image-column", default="image", help="dataset column with the images (default: image)")
    parser.add_argument("--steps", type=int, nargs="*", default=[50], help="decoder step counts (default: 50); empty for renderer only")
    parser.add_argument("--renderer", action="store_true", help="also evaluate the one-step renderer")
    parser.add_argument("--guidance-scale", type=float, default=1.0, help="decoder classifier-free guidance (default 1: none)")
    parser.add_argument("--seed", type=int, default=0, help="image i is decoded from the noise of seed + i (default 0)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    parser.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--lpips-weights", nargs="+", metavar="FILE", help="LPIPS weights: torchvision alexnet .pth and lpips v0.1 alex.pth (or one merged file)")
    parser.add_argument("--inception-weights", metavar="FILE", help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth, for rFID")
    parser.add_argument("--ssim-data-range", type=_ssim_range, default="target", help="'target' (max-min of each reference, Selftok) or a number")
    parser.add_argument("--prefix-lengths", type=int, nargs="+", help="token prefix lengths of coarse_to_fine.png (default: 0, K/32 ... K)")
    parser.add_argument("--coarse-to-fine-images", type=int, default=4, help="rows of coarse_to_fine.png (0: skip)")
    parser.add_argument("--grid-images", type=int, default=8, help="rows of reconstructions.png (0: skip)")
    parser.add_argument("--save-images", action="store_true", help="write every reconstruction and reference as PNG")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="default: cuda if available, else cpu")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32", help="dtype of the decoder, renderer and VAE (default float32; the tokenizer stays float32)")
    parser.add_argument("--output-dir", default="selftok_eval", help="default: ./selftok_eval")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def main(argv: list[str] | None = None, prog: str = "selftok-eval") -> int:
    parser = _parser(prog)
    args = parser.parse_args(argv)
    for name in ("batch_size", "max_images"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if any(n < 1 for n in args.steps):
        parser.error(f"--steps must be >= 1, got {args.steps}")
    if not args.steps and not args.renderer:
        parser.error("nothing to evaluate: give --steps and/or --renderer")
    if args.guidance_scale < 1:
        parser.error(f"--guidance-scale must be >= 1, got {args.guidance_scale}")
    if args.grid_images < 0 or args.coarse_to_fine_images < 0:
        parser.error("--grid-images and --coarse-to-fine-images must be >= 0")
    for path in [args.pipeline, *(args.lpips_weights or []), *([args.inception_weights] if args.inception_weights else [])]:
        if not os.path.exists(path):
            parser.error(f"no such file or folder: {path}")
    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        parser.error(f"--device: {e}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda requested but CUDA is not available")

    try:
        if args.dataset:
            images = _load_dataset(args.dataset, args.split)
        else:
            images = args.images
            _image_source(images, args.image_column)  # fail early on missing files / empty folders
    except (OSError, ValueError, TypeError) as e:
        parser.error(f"cannot read the images: {e}")

    # The image tokenizer stays in float32: its quantizer compares codes in float32.
    dtypes = {"image_tokenizer": torch.float32, "default": getattr(torch, args.dtype)}
    pipe = SelftokDecoderPipeline.from_pretrained(args.pipeline, dtype=dtypes).to(device)
    if args.renderer and pipe.renderer is None:
        parser.error(f"--renderer: the pipeline in {args.pipeline} has no renderer component")
    K = pipe.image_tokenizer.config.num_image_tokens
    if args.prefix_lengths is not None and any(not 0 <= p <= K for p in args.prefix_lengths):
        parser.error(f"--prefix-lengths must lie in [0, {K}] (K of this tokenizer), got {args.prefix_lengths}")

    try:
        lpips = LPIPS.from_pretrained(*args.lpips_weights).to(device) if args.lpips_weights else None
        inception = InceptionFeatureExtractor.from_pretrained(args.inception_weights).to(device) if args.inception_weights else None
    except (OSError, ValueError, TypeError) as e:
        parser.error(str(e))

    result = evaluate_reconstruction(
        pipe,
        images,
        steps=args.steps,
        renderer=args.renderer,
        guidance_scale=args.guidance_scale,
        seed=args.seed,
        batch_size=args.batch_size,
        max_images=args.max_images,
        image_column=args.image_column,
        metrics=EvaluationMetrics(lpips=lpips, feature_extractor=inception, ssim_data_range=args.ssim_data_range),
        outputs=EvaluationOutputs(
            output_dir=args.output_dir,
            save_images=args.save_images,
            grid_images=args.grid_images,
            coarse_to_fine_images=args.coarse_to_fine_images,
            prefix_lengths=args.prefix_lengths,
        ),
        show_progress=not args.no_progress,
    )
    summary = result.summary
    print(f"{summary['num_images']} images, {summary['image_size']} px, K = {summary['num_image_tokens']} tokens")
    for name, entry in summary["settings"].items():
        for reference in REFERENCES:
            metrics = entry[reference]
            shown = ", ".join(f"{m} {metrics[m]:.4f}" for m in ("psnr", "psnr_batch_mse", "ssim", "lpips", "rfid") if m in metrics)
            print(f"{name:>20} vs {reference:<8}: {shown}")
    for message in summary.get("skipped", []):
        print(message)
    print(f"wrote {', '.join(summary['files'])} to {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
