"""SelftokPipeline: text-to-image and image understanding with a causal LM that speaks Selftok tokens.

    pipe = SelftokPipeline.from_pretrained("path/to/folder")
    images = pipe("a red apple on a table", guidance_scale=5.0).images
    answer = pipe.describe(images[0], "What is on the table?")

The pipeline holds three parts: the LM (any ``AutoModelForCausalLM`` extended by
:func:`~selftok_hf.add_visual_tokens`), the :class:`~selftok_hf.SelftokProcessor`, and the
:class:`~selftok_hf.SelftokDecoderPipeline` (Selftok image tokenizer, diffusion decoder, SD3 VAE, optional
renderer) that turns generated ids into pixels and images into ids.

Folder layout written by :meth:`SelftokPipeline.save_pretrained`::

    folder/
        selftok_pipeline.json      marks the folder; names the parts
        config.json, model.safetensors, generation_config.json
                                   the LM: AutoModelForCausalLM.from_pretrained(folder)
        tokenizer.json, tokenizer_config.json, processor_config.json
                                   the processor: SelftokProcessor / AutoProcessor.from_pretrained(folder)
        decoder/                   SelftokDecoderPipeline.from_pretrained(folder / "decoder")
        pipeline_selftok.py, ...   the code, for loading without selftok_hf (see below)
        README.md                  the model card (selftok_hf.hub)

So the LM folder is also a plain causal-LM checkpoint (trl, PEFT and serving stacks load it directly). Where
selftok_hf is not installed, ``get_class_from_dynamic_module("pipeline_selftok.SelftokPipeline", folder)``
(transformers) loads this class from the folder's code files, and its
``from_pretrained(folder, trust_remote_code=True)`` works as here.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput
from huggingface_hub import CommitInfo
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM

from .generation_selftok import (
    SelftokVisualGrammarLogitsProcessor,
    context_length,
    generate_image_tokens,
)
from .hub import CARD_NAME, SelftokHubMixin, hub_model_id, push_saved, remote_code_files
from .pipeline_selftok_decoder import PerCallState, SelftokDecoderPipeline
from .processing_selftok import DEFAULT_QUESTION, SelftokProcessor
from .renamed import renamed_kwargs
from .visual_vocabulary import VisualVocabulary

__all__ = ["SelftokPipeline", "SelftokPipelineOutput"]

PIPELINE_CONFIG_NAME = "selftok_pipeline.json"
DECODER_SUBFOLDER = "decoder"


@dataclass
class SelftokPipelineOutput(BaseOutput):
    """Output of [`SelftokPipeline`].

    Args:
        images: decoded images (PIL list, NumPy ``(N, H, W, 3)``, tensor ``(N, 3, H, W)`` in [0, 1], the final
            latents for ``output_type="latent"``, or None for ``output_type="ids"``); N = prompts x images per prompt,
            grouped by prompt.
        token_ids (`torch.LongTensor` of shape `(N, K)`): the generated Selftok ids (AR order); `(N, p)`, p < K,
            when a callback stopped generation after p tokens (``pipe._interrupt = True``).
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor | None
    token_ids: torch.LongTensor


class SelftokPipeline(PerCallState, SelftokHubMixin):
    r"""Text-to-image generation and image understanding with a Selftok VLM.

    As a diffusers pipeline, it has the ``interrupt``, ``num_timesteps`` (here: the K visual tokens of an image)
    and ``guidance_scale`` properties, kept per thread ([`PerCallState`]); ``pipe._interrupt = True`` in a
    ``callback_on_step_end`` stops the token loop.

    Args:
        language_model: a causal LM extended by [`add_visual_tokens`].
        processor ([`SelftokProcessor`]): its text tokenizer, image processor and id layout.
        decoder ([`SelftokDecoderPipeline`]): Selftok ids <-> images.
    Raises:
        ValueError: if the LM has no visual tokens, or its K / codebook size / id layout disagree with the
            image tokenizer or the processor.
    """

    _callback_tensor_inputs = ["token_ids", "logits"]

    def __init__(self, language_model, processor: SelftokProcessor, decoder: SelftokDecoderPipeline):
        vocabulary = VisualVocabulary.from_config(language_model.config)
        vocabulary.check_image_tokenizer(decoder.image_tokenizer.config)
        if processor.vocabulary != vocabulary:
            raise ValueError(f"the processor's visual vocabulary {processor.vocabulary} differs from the language model's {vocabulary}")
        self.language_model = language_model
        self.processor = processor
        self.decoder = decoder
        self.vocabulary = vocabulary
        if decoder.image_tokenizer.vae is None:
            decoder.image_tokenizer.attach_vae(decoder.vae)
        processor.attach_image_tokenizer(decoder.image_tokenizer)
        self._lm_offload_hook = None
        self._offload_device: torch.device | None = None
        self._progress_bar_config: dict[str, Any] = {}

    # ----------------------------------------------------------------------------- save / load
    @classmethod
    def from_pretrained(
        cls,
        pretrained_path: str | os.PathLike,
        dtype: torch.dtype | None = None,
        trust_remote_code: bool = False,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        force_download: bool = False,
        subfolder: str | None = None,
        **language_model_kwargs,
    ) -> SelftokPipeline:
        """Load a folder written by :meth:`save_pretrained` (see the module docstring for the layout).

        Args:
            pretrained_path: the folder, or a Hub repo id (the repo is downloaded with ``snapshot_download``).
            dtype: dtype of the LM and the decoder models (default: as saved / float32).
            trust_remote_code: let the LM and the processor's parts load with the folder's code files (needed where
                selftok_hf is not installed and this class came from ``get_class_from_dynamic_module``).
            revision / cache_dir / token / local_files_only / force_download: as for every ``from_pretrained``;
                they apply to the one download of the repo, from which the LM, the processor and the decoder
                all load (so all three come from the same revision).
            subfolder: the pipeline's folder inside the repo (or inside ``pretrained_path``).
            language_model_kwargs: passed to ``AutoModelForCausalLM.from_pretrained`` (e.g. ``device_map``,
                ``attn_implementation``).
        """
        subfolder = (subfolder or "").strip("/")
        root = Path(pretrained_path)
        repo_id = hub_model_id(str(pretrained_path))
        if repo_id:
            from huggingface_hub import snapshot_download

            root = Path(
                snapshot_download(
                    repo_id,
                    revision=revision,
                    cache_dir=cache_dir,
                    token=token,
                    local_files_only=local_files_only,
                    force_download=force_download,
                    allow_patterns=[f"{subfolder}/*"] if subfolder else None,
                )
            )
        root = root / subfolder if subfolder else root
        if not (root / PIPELINE_CONFIG_NAME).is_file():
            raise ValueError(f"{root} is not a SelftokPipeline folder (no {PIPELINE_CONFIG_NAME}); save one with SelftokPipeline.save_pretrained")
        layout = json.loads((root / PIPELINE_CONFIG_NAME).read_text())
        language_model = AutoModelForCausalLM.from_pretrained(root, dtype=dtype, trust_remote_code=trust_remote_code, **language_model_kwargs).eval()
        processor = SelftokProcessor.from_pretrained(root, trust_remote_code=trust_remote_code)
        if repo_id:
            # Loaded from the snapshot folder, named by the repo id (e.g. a LoRA card's base_model).
            language_model.config.name_or_path = language_model.name_or_path = repo_id
        decoder_kwargs = {"dtype": dtype} if dtype is not None else {}
        decoder = SelftokDecoderPipeline.from_pretrained(root / layout.get("decoder", DECODER_SUBFOLDER), **decoder_kwargs)
        return cls(language_model, processor, decoder)

    def save_pretrained(self, save_directory: str | os.PathLike, *, push_to_hub: bool = False, **kwargs) -> None:
        """Write the LM and processor at the root of ``save_directory``, the decoder pipeline in ``decoder/``, the
        code files that load it without selftok_hf, and a ``README.md`` model card.

        ``kwargs`` go to the LM's ``save_pretrained`` (e.g. ``max_shard_size``). With ``push_to_hub=True`` the folder
        is then uploaded by :func:`selftok_hf.hub.push_folder` (``repo_id``, ``token``, ``private``,
        ``commit_message``, ``create_pr``, ``revision``, ``tags``). A LoRA-wrapped LM must be merged first (:meth:`merge_lora`), or its
        adapter saved on its own (:meth:`save_lora_adapter`).
        """
        if self.has_lora:
            raise ValueError("the language model carries a LoRA adapter: call pipe.merge_lora() before save_pretrained, or save the adapter with pipe.save_lora_adapter(dir)")
        push_arguments = self._pop_push_arguments(save_directory, push_to_hub, kwargs)
        root = Path(save_directory)
        root.mkdir(parents=True, exist_ok=True)
        self.language_model.save_pretrained(root, **kwargs)
        self.processor.save_pretrained(root)
        self.decoder.save_pretrained(root / DECODER_SUBFOLDER)
        (root / DECODER_SUBFOLDER / CARD_NAME).unlink(missing_ok=True)  # the pipeline's card (below) describes the decoder too
        layout = {"_class_name": type(self).__name__, "language_model": ".", "processor": ".", "decoder": DECODER_SUBFOLDER}
        (root / PIPELINE_CONFIG_NAME).write_text(json.dumps(layout, indent=2) + "\n")
        # This module and everything it imports, for `get_class_from_dynamic_module` (see the module docstring).
        for name in remote_code_files(__file__):
            shutil.copyfile(Path(__file__).parent / name, root / name)
        self._finish_save(root, push_arguments, base_model=hub_model_id(self.language_model.name_or_path))

    # --------------------------------------------------------------------------------- LoRA
    @property
    def has_lora(self) -> bool:
        """Whether the LM is wrapped with a PEFT adapter."""
        from peft import PeftModel

        return isinstance(self.language_model, PeftModel)

    def save_lora_adapter(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Write the LM's PEFT adapter, the processor and a ``README.md`` model card to ``save_directory``.

        The folder loads onto this pipeline's base with :meth:`load_lora` (or ``PeftModel.from_pretrained`` on the
        base LM). ``kwargs`` go to PEFT's ``save_pretrained`` (e.g. ``save_embedding_layers=False`` when every new
        token row is in the adapter's ``trainable_token_indices``).
        """
        if not self.has_lora:
            raise ValueError("the language model has no LoRA adapter to save (wrap it with peft.get_peft_model or load one with load_lora)")
        self.language_model.save_pretrained(save_directory, **kwargs)
        self.processor.save_pretrained(save_directory)
        self._finish_save(save_directory, None)

    def push_lora_adapter(self, repo_id: str, *, card_data: dict[str, Any] | None = None, **push_kwargs: Any) -> CommitInfo:
        """Upload what :meth:`save_lora_adapter` writes to ``repo_id`` as one commit (``push_kwargs``: ``token``,
        ``private``, ``commit_message``, ``commit_description``, ``create_pr``, ``revision``, ``tags``; see
        :func:`selftok_hf.hub.push_folder`).

        ``language_model.push_to_hub`` (PEFT's) uploads the adapter without the processor, and with transformers'
        generic model card unless the repo already has one.
        """
        return push_saved(self.save_lora_adapter, repo_id, card_data=card_data, **push_kwargs)

    def load_lora(self, adapter_path: str | os.PathLike, merge: bool = False) -> SelftokPipeline:
        """Put a PEFT LoRA adapter (e.g. from ``selftok-train-lm --lora``) on the LM; with ``merge=True`` fold it in."""
        from peft import PeftModel

        self.language_model = PeftModel.from_pretrained(self.language_model, adapter_path).eval()
        return self.merge_lora() if merge else self

    def merge_lora(self) -> SelftokPipeline:
        """Fold the LoRA adapter into the LM weights (``merge_and_unload``)."""
        if not self.has_lora:
            raise ValueError("the language model has no LoRA adapter to merge")
        self.language_model = self.language_model.merge_and_unload()
        return self

    # ------------------------------------------------------------------------------ devices
    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> SelftokPipeline:
        """Move (and cast) the LM and the decoder models."""
        self.language_model.to(device=device, dtype=dtype)
        self.decoder.to(device=device, dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        """Where inputs go: the offload device when model CPU offload is on, else the LM's device."""
        if self._offload_device is not None:
            return self._offload_device
        return next(self.language_model.parameters()).device

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: str | torch.device = "cuda") -> None:
        """Keep every model on the CPU and move each to the accelerator only while it runs: the LM while it
        generates, then the decoder's models one by one (diffusers' model offload)."""
        from accelerate import cpu_offload_with_hook

        device = torch.device(device)
        if gpu_id is not None:
            device = torch.device(device.type, gpu_id)
        self.language_model.to("cpu")
        _, self._lm_offload_hook = cpu_offload_with_hook(self.language_model, device)
        self._offload_device = device
        self.decoder.enable_model_cpu_offload(device=device)

    def _offload_language_model(self) -> None:
        if self._lm_offload_hook is not None:
            self._lm_offload_hook.offload()

    def set_progress_bar_config(self, **kwargs) -> None:
        """tqdm options (e.g. ``disable=True``) for the token and the decoder progress bars."""
        self._progress_bar_config = kwargs
        self.decoder.set_progress_bar_config(**kwargs)

    # ------------------------------------------------------------------------------- checks
    def _check_prompts(self, prompt, name: str = "prompt") -> list[str]:
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, (list, tuple)) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise TypeError(f"{name} must be a string or a non-empty list of strings, got {prompt!r}")
        if any(not p.strip() for p in prompts):
            raise ValueError(f"{name} must not be empty (got {prompts!r})")
        return list(prompts)

    def _check_length(self, length: int, new_tokens: int) -> None:
        limit = context_length(self.language_model.config)
        if limit is not None and length + new_tokens > limit:
            raise ValueError(f"the prompt has {length} tokens; with {new_tokens} tokens to generate it exceeds the model's context of {limit}")

    # ---------------------------------------------------------------------------- text -> image
    @torch.no_grad()
    @renamed_kwargs(decoder_steps="num_inference_steps")
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        guidance_scale: float = 5.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        do_sample: bool = True,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        num_inference_steps: int = 50,
        decoder_guidance_scale: float = 1.0,
        use_renderer: bool = False,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[Any, int, int, dict], dict | None] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ["token_ids"],
        streamer=None,
    ) -> SelftokPipelineOutput | tuple:
        r"""Generate images from text.

        Args:
            prompt: a prompt or a list of prompts.
            negative_prompt: prompt(s) for the unconditional branch of classifier-free guidance (default: the empty
                prompt, which training with caption dropout teaches the LM).
            guidance_scale: classifier-free guidance on the LM's logits (conditional and unconditional prompts run
                as one doubled batch); 1 disables it. 5 is a common value for AR text-to-image models (the paper
                does not state its value).
            num_images_per_prompt: images per prompt.
            generator: a ``torch.Generator`` or one per image (N = prompts x images per prompt): with a list, every
                image is sampled exactly as it would be alone.
            do_sample / temperature / top_k / top_p: token sampling (``do_sample=False``: greedy).
            num_inference_steps / decoder_guidance_scale / use_renderer: the decoder's flow steps (formerly
                ``decoder_steps``), classifier-free guidance and one-step renderer: passed to the
                [`SelftokDecoderPipeline`] as ``num_inference_steps`` / ``guidance_scale`` / ``use_renderer``.
            output_type: ``"pil"``, ``"np"``, ``"pt"``, ``"latent"``, or ``"ids"`` (no decoding).
            callback_on_step_end: called as ``fn(pipe, step, token_index, callback_kwargs)`` after every sampled
                visual token, in diffusers' ``(pipe, i, t, kwargs)`` form. A *step* is one visual-token position:
                ``step`` = ``token_index`` = the position (0 .. K - 1, AR order) of the token just sampled, for all
                N images at once (the decoder's diffusion steps that follow do not call it; the decoder's own
                ``callback_on_step_end`` does). ``callback_kwargs`` holds the names in
                ``callback_on_step_end_tensor_inputs``: ``"token_ids"`` `(N, step + 1)`, the codebook ids so far,
                and ``"logits"`` `(N, V)`, the guided, grammar-masked (and temperature / top-k / top-p warped)
                scores the token was drawn from. Returning ``{"token_ids": ...}`` replaces the token just sampled
                (its last column; the earlier ones must be unchanged). Setting ``pipe._interrupt = True`` stops
                generation after this token: the p = step + 1 tokens so far are returned (``token_ids`` `(N, p)`)
                and decoded from that AR prefix (``prefix_length=p``, the coarse image they determine).
            callback_on_step_end_tensor_inputs: the tensors passed to the callback (``pipe._callback_tensor_inputs``).
            streamer: a transformers ``BaseStreamer``, fed as ``model.generate(streamer=...)`` feeds it: ``put`` of
                the prompt ids `(N, T)` (left-padded; the conditional prompts), then ``put`` of each sampled visual
                token's LM ids `(N,)`, then ``end()``. (transformers' ``TextStreamer`` takes a batch of one.)
        Returns:
            [`SelftokPipelineOutput`] (``images``, ``token_ids``), or a tuple ``(images, token_ids)``.
        """
        prompts = self._check_prompts(prompt)
        if negative_prompt is None:
            negative_prompts = [""] * len(prompts)
        else:
            negative_prompts = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
            if len(negative_prompts) != len(prompts):
                raise ValueError(f"got {len(negative_prompts)} negative prompts for {len(prompts)} prompts")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"num_images_per_prompt must be an integer >= 1, got {num_images_per_prompt!r}")
        if output_type not in ("pil", "np", "pt", "latent", "ids"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt', 'latent' or 'ids', got {output_type!r}")
        for name in callback_on_step_end_tensor_inputs:
            if name not in self._callback_tensor_inputs:
                raise ValueError(f"callback_on_step_end_tensor_inputs may only contain {self._callback_tensor_inputs}, got {name!r}")
        num_images = len(prompts) * num_images_per_prompt
        if isinstance(generator, list) and len(generator) != num_images:
            raise ValueError(f"got {len(generator)} generators for {num_images} images ({len(prompts)} prompts x {num_images_per_prompt})")

        def batch(contents: list[str]):
            ids = [self.processor.chat_prompt(c, generate_image=True) for c in contents for _ in range(num_images_per_prompt)]
            return self.processor.pad(ids, padding_side="left")

        conditional = batch(prompts)
        self._check_length(conditional["input_ids"].shape[1], self.vocabulary.num_image_tokens)
        unconditional = batch(negative_prompts) if guidance_scale != 1.0 else None
        self._start_call(guidance_scale=guidance_scale, num_timesteps=self.vocabulary.num_image_tokens)
        step_end_callback = None
        if callback_on_step_end is not None:

            def step_end_callback(step: int, tensors: dict[str, torch.Tensor]):
                callback_kwargs = {name: tensors[name] for name in callback_on_step_end_tensor_inputs}
                return callback_on_step_end(self, step, step, callback_kwargs)

        progress = tqdm(**{"total": self.vocabulary.num_image_tokens, "desc": "visual tokens", **self._progress_bar_config})
        with progress:
            token_ids = generate_image_tokens(
                self.language_model,
                conditional["input_ids"],
                conditional["attention_mask"],
                self.vocabulary,
                guidance_scale=guidance_scale,
                unconditional_input_ids=None if unconditional is None else unconditional["input_ids"],
                unconditional_attention_mask=None if unconditional is None else unconditional["attention_mask"],
                do_sample=do_sample,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                generator=generator,
                device=self.device,
                callback=lambda step: progress.update(),
                streamer=streamer,
                step_end_callback=step_end_callback,
                should_stop=lambda: self.interrupt,
            ).cpu()
        self._offload_language_model()

        images = None
        if output_type != "ids":
            K = self.vocabulary.num_image_tokens
            generated = token_ids.shape[1]
            # Stopped early: decode the AR prefix (the hidden tail's values are never seen by the decoder).
            decode_ids = token_ids if generated == K else torch.cat([token_ids, token_ids.new_zeros(token_ids.shape[0], K - generated)], 1)
            if generated < K and use_renderer:
                raise ValueError(f"generation stopped after {generated} of {K} tokens; the renderer needs all of them (use output_type='ids' or the decoder)")
            images = self.decoder(
                decode_ids,
                num_inference_steps=num_inference_steps,
                guidance_scale=decoder_guidance_scale,
                generator=generator,
                use_renderer=use_renderer,
                output_type=output_type,
                prefix_length=None if generated == K else generated,
            ).images
        if not return_dict:
            return images, token_ids
        return SelftokPipelineOutput(images=images, token_ids=token_ids)

    # ---------------------------------------------------------------------------- image -> text
    @torch.no_grad()
    def describe(
        self,
        images=None,
        question: str | list[str] = DEFAULT_QUESTION,
        image_token_ids=None,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        streamer=None,
        **generate_kwargs,
    ) -> str | list[str]:
        """Answer a question about each image (understanding).

        Args:
            images: a PIL image, a list of them, or pixel values ``(N, 3, S, S)`` in [-1, 1]; tokenised by the
                pipeline's Selftok tokenizer.
            question: one question for all images, or one per image.
            image_token_ids: instead of images, precomputed Selftok ids ``(N, K)``.
            max_new_tokens / do_sample / generate_kwargs: passed to ``language_model.generate`` (greedy by
                default); the answer never contains an image (begin-of-image is disallowed).
            streamer: a transformers ``BaseStreamer`` (e.g. ``TextStreamer(processor.tokenizer, skip_prompt=True)``
                for one image), given to ``generate``: the prompt ids, then every generated token, then ``end()``.
        Returns:
            The answer (a string for a single PIL image, else a list of strings), without special tokens.
        """
        single = isinstance(images, PIL.Image.Image)
        if (images is None) == (image_token_ids is None):
            raise ValueError("pass exactly one of images or image_token_ids")
        codebook_ids = self.processor.encode_images(images) if images is not None else self.processor.check_image_token_ids(image_token_ids)
        questions = [question] * len(codebook_ids) if isinstance(question, str) else list(question)
        if len(questions) != len(codebook_ids):
            raise ValueError(f"got {len(questions)} questions for {len(codebook_ids)} images")
        if any(not isinstance(q, str) for q in questions):
            raise TypeError(f"question must be a string or a list of strings, got {question!r}")
        placeholder = self.processor.image_placeholder
        prompts = [
            self.processor.chat_prompt(f"{placeholder} {q}".rstrip(), image_token_ids=ids[None]) for q, ids in zip(questions, codebook_ids)
        ]
        inputs = self.processor.pad(prompts, padding_side="left")
        self._check_length(inputs["input_ids"].shape[1], max_new_tokens)
        tokenizer = self.processor.tokenizer
        output = self.language_model.generate(
            input_ids=inputs["input_ids"].to(self.device),
            attention_mask=inputs["attention_mask"].to(self.device),
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            logits_processor=[SelftokVisualGrammarLogitsProcessor(self.vocabulary, allow_image_start=False)],
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=self.processor.pad_token_id,
            streamer=streamer,
            **generate_kwargs,
        )
        self._offload_language_model()
        answers = [a.strip() for a in tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)]
        return answers[0] if single else answers
