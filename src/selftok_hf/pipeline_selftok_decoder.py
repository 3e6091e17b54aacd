"""SelftokDecoderPipeline: Selftok token ids -> images, with the 50-step rectified-flow decoder or the
one-step renderer, and images -> token ids with the same object.

The sampler is the official one, exactly: code time τ runs uniformly from 1 down to 0 over
``num_inference_steps`` Euler steps (``x ← x − (τ_i − τ_{i+1}) v``, no shift), and at every step the
decoder sees only the tokens the token schedule allows at τ_i. diffusers'
``FlowMatchEulerDiscreteScheduler`` (shift 1, explicit sigmas) reproduces that update bit for bit.

Unlike the official loop, no encoder is re-run to build masks: what the decoder sees at every step comes from k(τ)
directly (``TokenSchedule.sampling_visibility``), as a window of visible tokens that the decoder runs alone, with no
masked attention (exact: masked tokens influence nothing); with ``prefix_length`` too. With classifier-free guidance
the unconditional half, which sees no token, runs no token stream at all. Everything the loop needs is decided once
per call, so it makes no host syncs per step.
"""

import contextlib
import copy
import json
import math
import numbers
import os
import shutil
import threading
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Optional, Union

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.pipeline_utils import ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

# `configuration_selftok`, `embeddings`, `loading`, `portable_config`, `quantizer` and `renamed` are imported only so
# that diffusers' remote-code loader, which copies a file's *direct* relative imports, ships them alongside this file
# (tests/test_repo_root.py and tests/test_hub.py load saved folders where selftok_hf is not installed).
from .configuration_selftok import SelftokConfig  # noqa: F401
from .embeddings import TimestepEmbedder  # noqa: F401
from .loading import check_loading_info  # noqa: F401
from .portable_config import without_local_name_or_path  # noqa: F401
from .quantizer import CosineVectorQuantizer  # noqa: F401
from .renamed import with_new_keys  # noqa: F401
from .hub import CARD_NAME, SelftokHubMixin, remote_code_files, drop_local_name_or_path
from .image_processing_selftok import SelftokImageProcessorPil, postprocess_images
from .modeling_selftok import VAE_SUBFOLDER_KEY, WEIGHTS_SUBFOLDER_KEY, SelftokModel, check_pixel_values
from .modeling_selftok_decoder import SelftokDecoderTransformer, SelftokRenderer
from .pixel_space import PixelSpaceAutoencoder
from .token_schedule import to_code_order
from .vae import latents_to_images, latents_to_pixels, pixels_to_latents, to_unit_range

__all__ = ["PerCallState", "SelftokDecoderPipeline", "sampler_sigmas"]

_PACKAGE_DIR = Path(__file__).resolve().parent
# Components whose class lives in this package, by module: their files travel into the component's folder so that a
# saved folder loads with `trust_remote_code=True` where selftok_hf is not installed (hub.remote_code_files: the
# module and everything it imports relatively, so a new import can never be forgotten).
_COMPONENT_MODULES = ("modeling_selftok_decoder", "pixel_space")


#: Dtypes the image tokenizer is never cast to by the pipeline (it stays float32; see `SelftokDecoderPipeline.to`).
_REDUCED_PRECISION = (torch.bfloat16, torch.float16)

#: The most decoder steps a call may take: the resolution of the flow-matching schedule (1000 training timesteps).
MAX_INFERENCE_STEPS = 1000


def _is_integer(value) -> bool:
    """A Python or NumPy integer, but not a bool (``True`` is not a number of steps)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def sampler_sigmas(num_inference_steps: int) -> np.ndarray:
    """The official sampler's code times τ_0..τ_{N-1}: ``linspace(1, 0, N + 1)[:-1]`` in float32."""
    return torch.linspace(1.0, 0.0, num_inference_steps + 1, dtype=torch.float32)[:-1].numpy()


_CALL_STATES = threading.local()


class PerCallState:
    """diffusers' per-call pipeline properties (``interrupt``, ``num_timesteps``, ``guidance_scale``,
    ``do_classifier_free_guidance``), kept per thread.

    diffusers pipelines store these as attributes of the pipeline (``self._interrupt = False`` at the start of a
    call, ``pipe._interrupt = True`` from a ``callback_on_step_end`` to stop). Here ``_interrupt``,
    ``_num_timesteps`` and ``_guidance_scale`` are properties over a per-thread, per-pipeline record instead, so
    one pipeline shared by server threads keeps each call's values apart: a callback running in thread A reads and
    sets thread A's values, and a call in thread B never sees A's interrupt. Reading and writing them looks exactly
    as in diffusers; after a call they keep that call's values (in that thread) until the next call starts.
    """

    def _call_state(self) -> SimpleNamespace:
        states = getattr(_CALL_STATES, "states", None)
        if states is None:
            states = _CALL_STATES.states = weakref.WeakKeyDictionary()
        state = states.get(self)
        if state is None:
            state = states[self] = SimpleNamespace(interrupt=False, num_timesteps=None, guidance_scale=None)
        return state

    def _start_call(self, guidance_scale: Optional[float] = None, num_timesteps: Optional[int] = None) -> None:
        """Reset this thread's record at the start of a call (as diffusers' ``self._interrupt = False`` ...)."""
        state = self._call_state()
        state.interrupt, state.guidance_scale, state.num_timesteps = False, guidance_scale, num_timesteps

    @property
    def _interrupt(self) -> bool:
        return self._call_state().interrupt

    @_interrupt.setter
    def _interrupt(self, value: bool) -> None:
        self._call_state().interrupt = bool(value)

    @property
    def _num_timesteps(self) -> Optional[int]:
        return self._call_state().num_timesteps

    @_num_timesteps.setter
    def _num_timesteps(self, value: Optional[int]) -> None:
        self._call_state().num_timesteps = value

    @property
    def _guidance_scale(self) -> Optional[float]:
        return self._call_state().guidance_scale

    @_guidance_scale.setter
    def _guidance_scale(self, value: Optional[float]) -> None:
        self._call_state().guidance_scale = value

    @property
    def interrupt(self) -> bool:
        """Whether the current call (in this thread) was asked to stop: set ``pipe._interrupt = True`` in a
        ``callback_on_step_end``; the remaining steps are skipped and the result so far is returned."""
        return self._interrupt

    @property
    def num_timesteps(self) -> Optional[int]:
        """The number of steps of the current (or, after it, the last) call in this thread."""
        return self._num_timesteps

    @property
    def guidance_scale(self) -> Optional[float]:
        """The classifier-free guidance scale of the current (or last) call in this thread."""
        return self._guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self._guidance_scale is not None and self._guidance_scale > 1


class SelftokDecoderPipeline(PerCallState, SelftokHubMixin, DiffusionPipeline):
    r"""Decode Selftok token ids into images (and encode images into ids).

    Components:
        image_tokenizer ([`SelftokModel`]): encoder + quantizer; its codebook turns ids into code vectors.
        transformer ([`SelftokDecoderTransformer`]): the rectified-flow MMDiT decoder (velocity).
        vae (`AutoencoderKL` or [`PixelSpaceAutoencoder`]): the SD3 VAE (16 channels, x8), or the pixel-space
            stand-in of a pixel-space tokenizer.
        scheduler (`FlowMatchEulerDiscreteScheduler`): with ``shift=1.0``.
        renderer ([`SelftokRenderer`], *optional*): the one-step renderer.

    Like diffusers' pipelines it has the ``interrupt``, ``num_timesteps`` and ``guidance_scale`` properties
    (``pipe._interrupt = True`` in a ``callback_on_step_end`` stops the loop); they are kept per thread (see
    [`PerCallState`]), so one pipeline may serve several threads at once.

    bfloat16: ``SelftokDecoderPipeline.from_pretrained(path, dtype=torch.bfloat16)`` (diffusers' older
    ``torch_dtype=`` too) or ``pipe.to(dtype=torch.bfloat16)`` runs the decoder, the renderer and the VAE in bf16,
    while the image tokenizer (encoder and quantizer) stays float32: the same latents give the same ids. The
    sampler's latents, the guidance combination and the returned images / latents are float32. Measured cost
    (``benchmarks/decoder_vs_official.py``): see the README's "Speed" section.
    """

    model_cpu_offload_seq = "image_tokenizer->transformer->renderer->vae"
    _optional_components = ["renderer"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        image_tokenizer: SelftokModel,
        transformer: SelftokDecoderTransformer,
        vae: Union[AutoencoderKL, PixelSpaceAutoencoder],
        scheduler: FlowMatchEulerDiscreteScheduler,
        renderer: Optional[SelftokRenderer] = None,
    ):
        super().__init__()
        self.register_modules(image_tokenizer=image_tokenizer, transformer=transformer, vae=vae, scheduler=scheduler, renderer=renderer)
        size = image_tokenizer.config.image_size if image_tokenizer is not None else 256
        self.image_processor = SelftokImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
        # The tokenizer takes pixels with the pipeline's VAE (rather than loading the folder's VAE a second time).
        if image_tokenizer is not None and vae is not None and image_tokenizer.__dict__.get("_vae") is None:
            image_tokenizer.attach_vae(vae)

    # ------------------------------------------------------------------------------ save / load
    def save_pretrained(self, save_directory: Union[str, os.PathLike], *, push_to_hub: bool = False, **kwargs) -> None:
        """Save like any diffusers pipeline, plus the code: ``model_index.json`` names our modules by file, and
        the files travel with the weights, so ``DiffusionPipeline.from_pretrained(dir, trust_remote_code=True)``
        works without selftok_hf installed (and ``SelftokDecoderPipeline.from_pretrained(dir)`` with it). Writes
        a ``README.md`` model card; with ``push_to_hub=True`` the folder is then uploaded by
        :func:`selftok_hf.hub.push_folder` (``repo_id``, ``token``, ``private``, ``commit_message``, ``create_pr``, ``revision``, ``tags``)."""
        push_arguments = self._pop_push_arguments(save_directory, push_to_hub, kwargs)
        super().save_pretrained(save_directory, **kwargs)
        root = Path(save_directory)
        # The pipeline's card (below) describes the tokenizer too; its own card would show a wrong loading call.
        (root / "image_tokenizer" / CARD_NAME).unlink(missing_ok=True)
        for name in remote_code_files(_PACKAGE_DIR / "pipeline_selftok_decoder.py"):
            shutil.copyfile(_PACKAGE_DIR / name, root / name)
        index_path = root / "model_index.json"
        index = json.loads(index_path.read_text())
        index["_class_name"] = ["pipeline_selftok_decoder", type(self).__name__]
        for component, entry in index.items():
            module = entry[0].removeprefix(__package__ + ".") if isinstance(entry, list) and entry[0] else None
            if module in _COMPONENT_MODULES:
                index[component] = [module, entry[1]]
                for name in remote_code_files(_PACKAGE_DIR / f"{module}.py"):
                    shutil.copyfile(_PACKAGE_DIR / name, root / component / name)
        if index.get("image_tokenizer", [None])[0] == __package__ + ".modeling_selftok":
            index["image_tokenizer"] = ["modeling_selftok", "SelftokModel"]  # its folder has the code (auto_map)
        index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
        self._write_root_tokenizer_files(root)
        drop_local_name_or_path(root)  # diffusers records the folder this pipeline was loaded from
        self._finish_save(root, push_arguments)

    def _write_root_tokenizer_files(self, root: Path) -> None:
        """Make the root answer transformers' Auto classes: a ``config.json`` (the tokenizer's, pointing to the
        weights in ``image_tokenizer/`` and to ``vae/``) and a ``preprocessor_config.json``; ``image_tokenizer/``'s
        config points to ``../vae``. Weights are not copied (see :class:`SelftokModel`'s docstring for the layout);
        ``DiffusionPipeline.from_pretrained`` reads ``model_index.json`` and ignores both root files."""
        tokenizer_config_path = root / "image_tokenizer" / "config.json"
        tokenizer_config = json.loads(tokenizer_config_path.read_text())
        has_vae = (root / "vae" / "config.json").is_file()
        if has_vae:
            tokenizer_config_path.write_text(json.dumps({**tokenizer_config, VAE_SUBFOLDER_KEY: "../vae"}, indent=2, sort_keys=True) + "\n")
        pointers = {WEIGHTS_SUBFOLDER_KEY: "image_tokenizer", **({VAE_SUBFOLDER_KEY: "vae"} if has_vae else {})}
        (root / "config.json").write_text(json.dumps({**tokenizer_config, **pointers}, indent=2, sort_keys=True) + "\n")
        self.image_processor.save_pretrained(root)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' ``from_pretrained``, checking a local folder's component folders first: an optional component
        (``renderer``) whose folder is absent loads as None even where ``model_index.json`` lists it; a missing
        required folder raises ``FileNotFoundError`` naming it (diffusers' error named the pipeline root).

        ``dtype=torch.bfloat16`` (or ``torch.float16``; diffusers' older ``torch_dtype`` too) loads the decoder,
        renderer and VAE in that dtype and the image tokenizer in float32 (see :meth:`to`); a per-component dict is
        passed on as it is."""
        for key in ("dtype", "torch_dtype"):
            if kwargs.get(key) in _REDUCED_PRECISION:
                kwargs[key] = {"default": kwargs[key], "image_tokenizer": torch.float32}
        root = Path(os.fspath(pretrained_model_name_or_path)) if isinstance(pretrained_model_name_or_path, (str, os.PathLike)) else None
        if root is not None and root.is_dir() and (root / "model_index.json").is_file():
            index = json.loads((root / "model_index.json").read_text())
            for name, entry in index.items():
                listed = not name.startswith("_") and isinstance(entry, list) and len(entry) == 2 and entry[0] and entry[1]
                if not listed or name in kwargs or (root / name).is_dir():
                    continue
                if name in cls._optional_components:
                    kwargs[name] = None
                else:
                    raise FileNotFoundError(f"{root}: model_index.json lists the component {name!r}, but its folder {str(root / name)!r} is missing")
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def to(self, *args, **kwargs):
        """diffusers' ``to``, except that the image tokenizer (encoder and quantizer) stays in float32 when the pipeline
        is cast to bfloat16 or float16: ``pipe.to(dtype=torch.bfloat16)`` runs the decoder, the renderer and the VAE in
        bfloat16. The quantizer's nearest-code search is a cosine argmax whose margins can be below bf16's resolution,
        and the tokenizer is a small part of the cost (as in the official pipeline: tokenizer fp32, VAE bf16). A
        tokenizer cast on its own (``pipe.image_tokenizer.to(...)``) is left alone until the pipeline is cast again."""
        pipe = super().to(*args, **kwargs)
        if pipe.image_tokenizer is not None and pipe.image_tokenizer.dtype in _REDUCED_PRECISION:
            pipe.image_tokenizer.to(torch.float32)
        return pipe

    @property
    def dtype(self) -> torch.dtype:
        """The decoder's dtype (diffusers reports the first component's, here the float32 image tokenizer)."""
        return self.transformer.dtype if self.transformer is not None else super().dtype

    @classmethod
    def load_config(cls, *args, **kwargs):
        """Read ``model_index.json``; when this class itself loads a folder, map the file-based module names
        that :meth:`save_pretrained` writes back to this package (no remote code needed)."""
        out = super().load_config(*args, **kwargs)
        config = out[0] if isinstance(out, tuple) else out
        if cls is SelftokDecoderPipeline and isinstance(config, dict):
            if isinstance(config.get("_class_name"), list):
                config["_class_name"] = config["_class_name"][1]
            for name, entry in config.items():
                if isinstance(entry, list) and entry and entry[0] in ("modeling_selftok", *_COMPONENT_MODULES):
                    config[name] = [f"{__package__}.{entry[0]}", entry[1]]
        return out

    # --------------------------------------------------------------------------------- helpers
    @property
    def token_schedule(self):
        return self.image_tokenizer.config.token_schedule

    def _latent_shape(self, batch_size: int) -> tuple[int, int, int, int]:
        cfg = self.image_tokenizer.config
        return (batch_size, cfg.latent_channels, cfg.latent_size, cfg.latent_size)

    def _to_images(self, latents: torch.Tensor) -> torch.Tensor:
        """SD3-normalised latents -> images in [0, 1] (official: clamp to [-1, 1], then rescale)."""
        cfg = self.image_tokenizer.config
        return latents_to_images(self.vae, latents, cfg.vae_scaling_factor, cfg.vae_shift_factor)

    def _decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """SD3-normalised latents -> the VAE's float images (about [-1, 1], not clamped)."""
        cfg = self.image_tokenizer.config
        return latents_to_pixels(self.vae, latents, cfg.vae_scaling_factor, cfg.vae_shift_factor)

    _to_unit_range = staticmethod(to_unit_range)

    @contextlib.contextmanager
    def temporary_progress_bar_config(self, **kwargs):
        """``set_progress_bar_config(**kwargs)`` for the ``with`` block only; the settings from before are restored
        after it. ``with pipe.temporary_progress_bar_config(disable=True): ...`` hides the bars of a loop of calls."""
        saved = dict(getattr(self, "_progress_bar_config", {}))
        self.set_progress_bar_config(**kwargs)
        try:
            yield self
        finally:
            self.set_progress_bar_config(**saved)

    def check_inputs(
        self,
        token_ids,
        num_inference_steps,
        guidance_scale,
        latents,
        use_renderer,
        output_type,
        prefix_length=None,
        num_images_per_prompt=1,
        generator=None,
    ):
        """Refuse bad arguments before any work, with a ``ValueError`` that says what is expected. Integer arguments
        take Python or NumPy integers (not bools); ``guidance_scale`` and ``latents`` must be finite."""
        self.image_tokenizer.check_token_ids(token_ids)
        if not _is_integer(num_images_per_prompt) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be an integer >= 1, got {num_images_per_prompt!r}")
        if prefix_length is not None:
            K = self.image_tokenizer.config.num_image_tokens
            if not _is_integer(prefix_length) or not 0 <= prefix_length <= K:
                raise ValueError(f"prefix_length must be an integer in [0, {K}] (or None for all tokens), got {prefix_length!r}")
            if use_renderer:
                raise ValueError("prefix_length cannot be used with use_renderer=True: the renderer decodes from all K tokens")
        if use_renderer:
            if self.renderer is None:
                raise ValueError("use_renderer=True but this pipeline has no renderer component (load or pass one)")
        elif not _is_integer(num_inference_steps) or not 1 <= num_inference_steps <= MAX_INFERENCE_STEPS:
            raise ValueError(
                f"num_inference_steps must be an integer in [1, {MAX_INFERENCE_STEPS}] (the schedule's resolution), got {num_inference_steps!r}"
            )
        if (
            not isinstance(guidance_scale, numbers.Real)
            or isinstance(guidance_scale, (bool, np.bool_))
            or not math.isfinite(guidance_scale)
            or guidance_scale < 1
        ):
            raise ValueError(f"guidance_scale must be a finite number >= 1 (1 disables classifier-free guidance), got {guidance_scale!r}")
        batch_size = token_ids.shape[0] * num_images_per_prompt
        if latents is not None:
            expected = self._latent_shape(batch_size)
            if not isinstance(latents, torch.Tensor) or not latents.is_floating_point():
                raise ValueError(f"latents must be a floating-point tensor, got {type(latents).__name__} {getattr(latents, 'dtype', '')}")
            if tuple(latents.shape) != expected:
                raise ValueError(
                    f"latents must have shape {expected} (the initial noise of the {expected[0]} images: rows x num_images_per_prompt), "
                    f"got {tuple(latents.shape)}"
                )
            if not bool(torch.isfinite(latents).all()):
                raise ValueError("latents contain NaN or infinite values")
        if isinstance(generator, (list, tuple)):
            if len(generator) != batch_size:
                raise ValueError(
                    f"got {len(generator)} generators for {batch_size} images ({token_ids.shape[0]} rows x {num_images_per_prompt}): "
                    "pass one torch.Generator, or a list of exactly one per image"
                )
            if not all(isinstance(g, torch.Generator) for g in generator):
                raise ValueError(f"generator must be a torch.Generator or a list of them, got {[type(g).__name__ for g in generator]}")
        elif generator is not None and not isinstance(generator, torch.Generator):
            raise ValueError(f"generator must be a torch.Generator or a list of them, got {type(generator).__name__}")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")

    # ------------------------------------------------------------------------------- encoding
    @torch.no_grad()
    def encode(self, images: Union[PIL.Image.Image, list, torch.Tensor]) -> torch.LongTensor:
        """Images (PIL, list of PIL/arrays, or pixel values in [-1, 1] ``(B, 3, H, W)``) -> token ids ``(B, K)``, AR order.

        A tensor is taken as pixel values as they are: it must be floating, finite and in [-1, 1] (a uint8 tensor or
        one in [0, 1] raises a ``ValueError``; pass such images as arrays, which the image processor rescales)."""
        if isinstance(images, torch.Tensor):
            check_pixel_values(images)
            pixel_values = images
        else:
            pixel_values = self.image_processor(images, return_tensors="pt").pixel_values
        cfg = self.image_tokenizer.config
        latents = pixels_to_latents(self.vae, pixel_values, cfg.vae_scaling_factor, cfg.vae_shift_factor)
        return self.image_tokenizer.encode(latents=latents.to(self.image_tokenizer.dtype)).token_ids

    # ------------------------------------------------------------------------------- decoding
    @torch.no_grad()
    def __call__(
        self,
        token_ids: torch.LongTensor,
        num_inference_steps: int = 50,
        guidance_scale: float = 1.0,
        generator: Optional[Union[torch.Generator, list[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable[[Any, int, torch.Tensor, dict], dict]] = None,
        callback_on_step_end_tensor_inputs: list[str] = ["latents"],
        use_renderer: bool = False,
        prefix_length: Optional[int] = None,
        num_images_per_prompt: int = 1,
        official_guidance: bool = False,
    ):
        r"""Decode token ids into images.

        Args:
            token_ids (`torch.LongTensor` of shape `(B, K)`): ids in AR order (as `encode` returns them).
            num_inference_steps (`int`, defaults to 50): Euler steps of the decoder, 1 to 1000 (ignored with the renderer).
            guidance_scale (`float`, defaults to 1.0): classifier-free guidance against the all-tokens-dropped
                branch (how the decoder was trained to be unconditional), which runs without a token stream; 1
                disables it; finite, >= 1.
            generator: `torch.Generator`(s) for the initial noise (a list: exactly one per image, ``B * num_images_per_prompt``).
            latents (`torch.Tensor` of shape `(B * num_images_per_prompt, C, h, w)`, *optional*): the initial noise at τ = 1
                (finite).
            output_type (`str`): "pil", "np", "pt" (images in [0, 1]) or "latent" (the final SD3-normalised latent).
            callback_on_step_end: called as ``fn(pipe, step, timestep, {"latents": ...})`` after every step;
                may return a replacement ``latents``, and may stop the loop with ``pipe._interrupt = True`` (the
                remaining steps are skipped and the current latent is decoded, as in diffusers).
            use_renderer (`bool`): decode in one forward pass with the renderer.
            prefix_length (`int`, *optional*): decode from only the first ``prefix_length`` tokens in AR order
                (the coarsest); the others are hidden from the decoder at every step, so 0 decodes
                unconditionally. None (or K) uses all tokens. Not available with the renderer.
            num_images_per_prompt (`int`, defaults to 1): images decoded from each row of ``token_ids``, each from
                its own noise; the output holds all images of row 0 first, then row 1's, ... (as in diffusers). The
                renderer is deterministic: its copies are equal.
            official_guidance (`bool`, defaults to False): with ``guidance_scale > 1``, reproduce the official sampler's
                guided step (``RectifiedFlow.sample_one_step`` with ``MMDiT.cfg_inference``; the official ``decoding``
                itself never guides) instead of the training-consistent one: the conditional branch's token queries do
                not attend to the image (the official call omits ``context_see_xt``), and the unconditional branch is
                embedded at the integer time ``min(floor(1000 τ), 999)`` instead of ``1000 τ``. Without guidance the two
                are the same call.
        Returns:
            [`ImagePipelineOutput`] (or a tuple) with `images`.

        Raises:
            ValueError: bad arguments (checked before any work).
            FloatingPointError: the decoded result holds NaN or inf (corrupt weights, overflow); checked once, at the end.
        """
        for name in callback_on_step_end_tensor_inputs:
            if name not in self._callback_tensor_inputs:
                raise ValueError(f"callback_on_step_end_tensor_inputs may only contain {self._callback_tensor_inputs}, got {name!r}")
        self.check_inputs(
            token_ids, num_inference_steps, guidance_scale, latents, use_renderer, output_type, prefix_length, num_images_per_prompt, generator
        )
        if not isinstance(official_guidance, (bool, np.bool_)):
            raise ValueError(f"official_guidance must be a bool, got {official_guidance!r}")
        # NumPy scalars are accepted; the loop works with Python numbers.
        num_images_per_prompt, guidance_scale = int(num_images_per_prompt), float(guidance_scale)
        num_inference_steps = int(num_inference_steps) if _is_integer(num_inference_steps) else num_inference_steps
        prefix_length = None if prefix_length is None else int(prefix_length)
        if isinstance(generator, tuple):
            generator = list(generator)
        self._start_call(guidance_scale=guidance_scale, num_timesteps=1 if use_renderer else num_inference_steps)
        device = self._execution_device
        if num_images_per_prompt > 1:
            token_ids = token_ids.repeat_interleave(num_images_per_prompt, dim=0)
        batch_size = token_ids.shape[0]

        # 1. Token ids -> code vectors, in the decoder's (code) order.
        codes = to_code_order(self.image_tokenizer.embed_tokens(token_ids.to(device)))

        if use_renderer:
            # 2a. One step: the renderer predicts the clean latent from all tokens.
            codes = codes.to(self.renderer.dtype)
            latents = self.renderer(token_codes=codes).sample.float()
        else:
            # 2b. Initial noise and the official uniform schedule.
            if latents is None:
                latents = randn_tensor(self._latent_shape(batch_size), generator=generator, device=device, dtype=torch.float32)
            latents = latents.to(device=device, dtype=torch.float32)
            # A private copy of the scheduler: its step index is per call, so threads can share this pipeline.
            scheduler = copy.deepcopy(self.scheduler)
            scheduler.set_timesteps(sigmas=sampler_sigmas(num_inference_steps), device=device)
            # Everything that does not change inside the loop is decided once, on the host, so that the loop makes no
            # host syncs and branches on no tensor: what the decoder sees at every step (the conditional rows: code
            # tokens K - prefix_length..k(τ_i); the unconditional CFG half: none, as training's CFG dropout), the model
            # dtype (a module walk in diffusers).
            do_cfg = guidance_scale > 1.0
            visibilities = self.token_schedule.sampling_visibility(
                scheduler.sigmas[:-1], prefix_length=prefix_length, unconditional_rows=batch_size if do_cfg else 0
            )
            model_dtype = self.transformer.dtype
            codes = codes.to(model_dtype)
            num_rows = 2 * batch_size if do_cfg else batch_size
            if do_cfg:
                # The unconditional half's codes are never read (the decoder skips its token stream).
                codes = torch.cat([codes, torch.zeros_like(codes)])
            sigmas = scheduler.sigmas[:-1].to(device=device, dtype=torch.float32)
            timesteps = sigmas[:, None].expand(-1, num_rows)
            official = do_cfg and bool(official_guidance)
            if official:
                # MMDiT.cfg_inference: t = floor(1000 τ).int().clamp(0, 999); the decoder embeds 1000 * timestep.
                unconditional_time = torch.floor(sigmas * 1000).clamp(0, 999) / 1000
                timesteps = torch.cat([timesteps[:, :batch_size], unconditional_time[:, None].expand(-1, batch_size)], dim=1)

            # 3. Denoising loop: at τ_i the decoder sees visibilities[i] (tokens ..k(τ_i) in code order) and nothing else.
            #    The token stream's adaLN tables depend only on the weights: computed once for the loop.
            with self.progress_bar(total=num_inference_steps) as progress_bar, self.transformer.cached_token_modulations():
                for i, t in enumerate(scheduler.timesteps):
                    if self.interrupt:
                        continue
                    model_input = torch.cat([latents, latents]) if do_cfg else latents
                    velocity = self.transformer(
                        hidden_states=model_input.to(model_dtype),
                        timestep=timesteps[i],
                        token_codes=codes,
                        visibility=visibilities[i],
                        context_see_xt=False if official else None,
                    ).sample.float()
                    if do_cfg:
                        cond, uncond = velocity.chunk(2)
                        velocity = uncond + guidance_scale * (cond - uncond)
                    latents = scheduler.step(velocity, t, latents, return_dict=False)[0]

                    if callback_on_step_end is not None:
                        callback_kwargs = {}
                        for name in callback_on_step_end_tensor_inputs:
                            callback_kwargs[name] = locals()[name]
                        callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                        latents = callback_outputs.pop("latents", latents)
                    progress_bar.update()

        # 4. Latent -> images. One check of the result (a single host sync, not one per step): NaN or inf from
        #    corrupt weights or a float16 overflow must not come out as a black image.
        if output_type == "latent":
            images = latents
            finite = torch.isfinite(latents).all()
        else:
            decoded = self._decode_latents(latents)
            finite = torch.isfinite(latents).all() & torch.isfinite(decoded).all()
        if not bool(finite):
            raise FloatingPointError(
                "decoding produced NaN or infinite values: the weights may be corrupt (or overflow in "
                f"{self.transformer.dtype}); refusing to return black images"
            )
        if output_type != "latent":
            images = postprocess_images(self._to_unit_range(decoded), output_type)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
