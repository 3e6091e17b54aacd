"""SelftokProcessor: text tokenizer + Selftok image processor + the visual-token id layout.

It turns text with ``<image>`` placeholders and images (or precomputed Selftok id arrays) into LM ids:
every placeholder becomes the span ``boi v_1 ... v_K eoi`` of the image's K ids in AR order. On top of
that it builds

- text-to-image prompts, ending at begin-of-image (``return_for_image_generation=True``);
- image-to-text inputs (an image span followed by text), and interleaved sequences;
- training examples: plain sequences (loss on every token, the paper's stage-1 formats) and chat
  examples (``USER: ... ASSISTANT: ...``, the paper's SFT format) whose labels are masked to the answers.

Chat layout (the one the model is trained on and prompted with)::

    [bos] USER: {user content} ASSISTANT: {assistant content}[eos] USER: ...

A text content is preceded by one space; an image at the start of a content follows the tag directly,
so a text-to-image prompt is ``[bos]USER: {prompt} ASSISTANT:<boi>``.

Images are tokenised through the :class:`~selftok_hf.SelftokModel` attached with
:meth:`SelftokProcessor.attach_image_tokenizer` (its SD3 VAE attached); id arrays need nothing.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from transformers import BatchFeature
from transformers.processing_utils import ProcessorMixin

from .modeling_selftok import SelftokModel
from .visual_vocabulary import VisualVocabulary

__all__ = ["IGNORE_INDEX", "SelftokProcessor"]

#: Label value that cross-entropy ignores (prompt tokens, padding).
IGNORE_INDEX = -100


class SelftokProcessor(ProcessorMixin):
    r"""Builds Selftok VLM inputs from text, images and Selftok id arrays.

    Args:
        image_processor ([`SelftokImageProcessorPil`] or [`SelftokImageProcessor`]): images -> pixel values.
        tokenizer: the text tokenizer, already extended by [`add_visual_tokens`].
        visual_vocabulary (`dict` or [`VisualVocabulary`]): the id layout (``model.config.selftok_visual_vocabulary``).
        image_placeholder (`str`, defaults to `"<image>"`): marks where an image goes in a text.
        user_tag / assistant_tag (`str`): chat role tags (the paper's ``USER:`` / ``ASSISTANT:``).
    """

    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        visual_vocabulary: dict | VisualVocabulary | None = None,
        image_placeholder: str = "<image>",
        user_tag: str = "USER:",
        assistant_tag: str = "ASSISTANT:",
        chat_template: str | None = None,
        **kwargs,
    ):
        if isinstance(visual_vocabulary, VisualVocabulary):
            visual_vocabulary = visual_vocabulary.to_dict()
        self.visual_vocabulary = visual_vocabulary
        self.image_placeholder = image_placeholder
        self.user_tag = user_tag
        self.assistant_tag = assistant_tag
        self._image_tokenizer = None
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)
        if visual_vocabulary is not None:
            self._check_tokenizer_matches(self.vocabulary)

    # ----------------------------------------------------------------------------- properties
    @property
    def vocabulary(self) -> VisualVocabulary:
        """The visual-token layout as a [`VisualVocabulary`]."""
        if self.visual_vocabulary is None:
            raise ValueError(
                "this processor has no visual vocabulary: build it from a model extended with `add_visual_tokens` "
                "(SelftokProcessor(image_processor, tokenizer, visual_vocabulary=VisualVocabulary.from_config(model)))"
            )
        return VisualVocabulary.from_dict(self.visual_vocabulary)

    @property
    def image_tokenizer(self) -> SelftokModel | None:
        """The attached Selftok tokenizer (not saved with the processor)."""
        return self._image_tokenizer

    @property
    def pad_token_id(self) -> int:
        """Padding id: the tokenizer's pad token, else its eos token."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
        return pad

    def _check_tokenizer_matches(self, vocabulary: VisualVocabulary) -> None:
        expected = {
            vocabulary.boi_token: vocabulary.boi_token_id,
            vocabulary.eoi_token: vocabulary.eoi_token_id,
            vocabulary.visual_token(0): vocabulary.first_visual_id,
            vocabulary.visual_token(vocabulary.codebook_size - 1): vocabulary.end_visual_id - 1,
        }
        got = dict(zip(expected, self.tokenizer.convert_tokens_to_ids(list(expected))))
        if got != expected:
            raise ValueError(f"the tokenizer's ids {got} do not match the visual vocabulary {expected}; was it extended by add_visual_tokens?")

    def to_dict(self) -> dict[str, Any]:
        # The attached image tokenizer is a model: keep it out of the (deep-copied) serialised state.
        image_tokenizer = self.__dict__.pop("_image_tokenizer", None)
        try:
            return super().to_dict()
        finally:
            self._image_tokenizer = image_tokenizer

    # ----------------------------------------------------------------------------- images
    def attach_image_tokenizer(self, image_tokenizer: SelftokModel) -> SelftokProcessor:
        """Attach the Selftok tokenizer used to turn images into ids (it needs its VAE attached for pixels).

        Raises:
            ValueError: if its K or codebook size differ from the visual vocabulary's, or its image size from
                the image processor's.
        """
        if not isinstance(image_tokenizer, SelftokModel):
            raise TypeError(f"image_tokenizer must be a SelftokModel, got {type(image_tokenizer).__name__}")
        self.vocabulary.check_image_tokenizer(image_tokenizer.config)
        size = image_tokenizer.config.image_size
        crop = self.image_processor.crop_size
        if (crop.height, crop.width) != (size, size):
            raise ValueError(f"the image processor crops to {crop.height}x{crop.width}, the image tokenizer expects {size}x{size}")
        self._image_tokenizer = image_tokenizer
        return self

    @torch.no_grad()
    def encode_images(self, images) -> torch.LongTensor:
        """Images -> Selftok codebook ids ``(N, K)`` in AR order, through the attached image tokenizer.

        Args:
            images: a PIL image, a list of PIL images / ``(H, W, 3)`` arrays (resized and centre-cropped by the
                image processor), or pixel values ``(N, 3, S, S)`` in [-1, 1] at the tokenizer's size S.
        """
        if self._image_tokenizer is None:
            raise ValueError("no image tokenizer attached: call processor.attach_image_tokenizer(selftok_model) or pass image_token_ids")
        size = self._image_tokenizer.config.image_size
        if isinstance(images, torch.Tensor):
            if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
                raise ValueError(f"pixel values must have shape (N, 3, {size}, {size}), got {tuple(images.shape)}")
            pixel_values = images
        else:
            if isinstance(images, (list, tuple)) and len(images) == 0:
                raise ValueError("got an empty list of images")
            pixel_values = self.image_processor(images, return_tensors="pt").pixel_values
        return self._image_tokenizer.encode(pixel_values=pixel_values).token_ids

    def check_image_token_ids(self, image_token_ids) -> torch.LongTensor:
        """Precomputed Selftok ids (tensor, array or nested list; ``(N, K)`` or one ``(K,)`` image) -> validated
        int64 ``(N, K)``."""
        vocabulary = self.vocabulary
        if isinstance(image_token_ids, (list, tuple)) and image_token_ids and not np.isscalar(image_token_ids[0]):
            image_token_ids = torch.stack([torch.as_tensor(np.asarray(x)) for x in image_token_ids])
        ids = torch.as_tensor(np.asarray(image_token_ids)) if not isinstance(image_token_ids, torch.Tensor) else image_token_ids
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise TypeError(f"image token ids must be integers, got dtype {ids.dtype}")
        if ids.ndim == 1:
            ids = ids[None]
        K = vocabulary.num_image_tokens
        if ids.ndim != 2 or ids.shape[1] != K:
            raise ValueError(f"image token ids must have shape (N, {K}) or ({K},), got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocabulary.codebook_size):
            raise ValueError(f"image token ids must lie in [0, {vocabulary.codebook_size}), got values in [{int(ids.min())}, {int(ids.max())}]")
        return ids.long().cpu()

    def _image_spans(self, images, image_token_ids) -> list[list[int]]:
        """The LM id spans ``boi v_1..v_K eoi`` of the given images or ids (at most one of them)."""
        if images is not None and image_token_ids is not None:
            raise ValueError("pass either images or image_token_ids, not both")
        if images is not None:
            if isinstance(images, (PIL.Image.Image, np.ndarray)) or (isinstance(images, torch.Tensor) and images.ndim == 3):
                images = [images] if not isinstance(images, torch.Tensor) else images[None]
            codebook_ids = self.encode_images(images)
        elif image_token_ids is not None:
            codebook_ids = self.check_image_token_ids(image_token_ids)
        else:
            return []
        return self.vocabulary.image_span(codebook_ids).tolist()

    # ------------------------------------------------------------------------------- text
    def _tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []

    def _bos(self) -> list[int]:
        return [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []

    def _eos(self) -> int:
        if self.tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no eos token; training examples need one to end each answer")
        return self.tokenizer.eos_token_id

    def _render(self, text: str, spans: Iterator[list[int]]) -> list[int]:
        """Text with placeholders -> ids, each placeholder replaced by the next image span."""
        pieces = text.split(self.image_placeholder)
        ids = self._tokenize(pieces[0])
        for piece in pieces[1:]:
            ids += next(spans)  # callers check the placeholder count first
            ids += self._tokenize(piece)
        return ids

    def _render_turn(self, tag: str, content: str, spans: Iterator[list[int]]) -> tuple[list[int], list[int]]:
        """A chat turn -> (tag ids, content ids) in the layout documented in the module docstring."""
        separator = "" if content.startswith(self.image_placeholder) or not content else " "
        return self._tokenize(tag), self._render(separator + content, spans)

    def __call__(
        self,
        text: str | list[str] | None = None,
        images=None,
        image_token_ids=None,
        return_for_image_generation: bool = False,
        add_bos: bool = True,
        padding_side: str = "left",
        return_tensors: str | None = "pt",
        **kwargs,
    ) -> BatchFeature:
        """Tokenise a batch of texts with ``<image>`` placeholders.

        Args:
            text: one string or a batch; each placeholder takes the next image, in order over the batch.
            images: images for the placeholders (see :meth:`encode_images`).
            image_token_ids: or precomputed Selftok ids ``(N, K)`` for them.
            return_for_image_generation: end every sequence with begin-of-image (a text-to-image prompt).
            add_bos: start every sequence with the tokenizer's bos token (if it has one).
            padding_side: ``"left"`` (for generation) or ``"right"``.
            return_tensors: ``"pt"`` or None (lists).
        Returns:
            [`BatchFeature`] with ``input_ids`` and ``attention_mask`` (`(B, T)`).
        """
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        if text is None:
            raise ValueError(f"text is required (use the placeholder {self.image_placeholder!r} alone for an image-only sequence)")
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"text must be a string or a non-empty list of strings, got {text!r}")
        spans = self._image_spans(images, image_token_ids)
        needed = sum(t.count(self.image_placeholder) for t in texts)
        if needed != len(spans):
            raise ValueError(f"the text has {needed} {self.image_placeholder!r} placeholder(s) but {len(spans)} image(s) were given")
        span_iter = iter(spans)
        sequences = []
        for t in texts:
            ids = (self._bos() if add_bos else []) + self._render(t, span_iter)
            if return_for_image_generation:
                ids.append(self.vocabulary.boi_token_id)
            if not ids:
                raise ValueError("a text gave an empty sequence")
            sequences.append(ids)
        return self.pad(sequences, padding_side=padding_side, return_tensors=return_tensors)

    def pad(self, sequences: Sequence[Sequence[int]], padding_side: str = "left", return_tensors: str | None = "pt") -> BatchFeature:
        """Pad id lists into ``input_ids`` / ``attention_mask``."""
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        length = max(len(s) for s in sequences)
        input_ids, attention_mask = [], []
        for s in sequences:
            pad = [self.pad_token_id] * (length - len(s))
            mask = [1] * len(s)
            input_ids.append(pad + list(s) if padding_side == "left" else list(s) + pad)
            attention_mask.append([0] * len(pad) + mask if padding_side == "left" else mask + [0] * len(pad))
        return BatchFeature({"input_ids": input_ids, "attention_mask": attention_mask}, tensor_type=return_tensors)

    # ------------------------------------------------------------------------------- chat
    def chat_prompt(self, user_content: str, images=None, image_token_ids=None, generate_image: bool = False) -> list[int]:
        """Ids of a one-turn generation prompt: ``[bos]USER: {user_content} ASSISTANT:``, plus begin-of-image
        with ``generate_image=True``."""
        example = self.build_chat_example([{"role": "user", "content": user_content}], images, image_token_ids, add_generation_prompt=True)
        ids = example["input_ids"]
        return ids + [self.vocabulary.boi_token_id] if generate_image else ids

    def build_chat_example(
        self,
        conversation: Sequence[dict[str, str]],
        images=None,
        image_token_ids=None,
        add_generation_prompt: bool = False,
    ) -> dict[str, list[int]]:
        """A chat-formatted example with labels masked to the assistant answers.

        Args:
            conversation: ``[{"role": "user" | "assistant", "content": str}, ...]``; contents may hold
                ``<image>`` placeholders (an assistant content ``"<image>"`` is a text-to-image answer).
            images / image_token_ids: for the placeholders, in order.
            add_generation_prompt: end with the assistant tag (for generation; no labels are then learnt
                from it).
        Returns:
            ``{"input_ids": [...], "labels": [...]}``: labels equal the ids on assistant contents and the eos
            ending each answer, and ``IGNORE_INDEX`` elsewhere.
        """
        if not conversation:
            raise ValueError("conversation is empty")
        spans = self._image_spans(images, image_token_ids)
        needed = sum(m.get("content", "").count(self.image_placeholder) for m in conversation)
        if needed != len(spans):
            raise ValueError(f"the conversation has {needed} {self.image_placeholder!r} placeholder(s) but {len(spans)} image(s) were given")
        span_iter = iter(spans)
        input_ids, labels = self._bos(), [IGNORE_INDEX] * len(self._bos())
        for i, message in enumerate(conversation):
            role, content = message.get("role"), message.get("content")
            if role not in ("user", "assistant") or not isinstance(content, str):
                raise ValueError(f"message {i} must be {{'role': 'user' | 'assistant', 'content': str}}, got {message!r}")
            if role == "user":
                tag, body = self._render_turn(self.user_tag, content, span_iter)
                input_ids += tag + body
                labels += [IGNORE_INDEX] * (len(tag) + len(body))
            else:
                tag, body = self._render_turn(" " + self.assistant_tag, content, span_iter)
                body = body + [self._eos()]
                input_ids += tag + body
                labels += [IGNORE_INDEX] * len(tag) + body
        if add_generation_prompt:
            if conversation[-1]["role"] != "user":
                raise ValueError("add_generation_prompt=True needs the conversation to end with a user message")
            tag = self._tokenize(" " + self.assistant_tag)
            input_ids += tag
            labels += [IGNORE_INDEX] * len(tag)
        return {"input_ids": input_ids, "labels": labels}

    def build_plain_example(self, text: str, images=None, image_token_ids=None) -> dict[str, list[int]]:
        """A pre-training style sequence (text-to-image ``"{caption}<image>"``, image-to-text
        ``"<image>{caption}"``, image-only ``"<image>"`` or text-only), ``[bos] ... [eos]``, loss on every
        token after bos."""
        encoded = self(text, images=images, image_token_ids=image_token_ids, return_tensors=None)
        ids = encoded["input_ids"][0] + [self._eos()]
        labels = [IGNORE_INDEX] * len(self._bos()) + ids[len(self._bos()) :]
        return {"input_ids": ids, "labels": labels}

    # ----------------------------------------------------------------------------- output
    def extract_image_token_ids(self, lm_ids: torch.LongTensor) -> list[torch.LongTensor]:
        """The complete images in each sequence of LM ids.

        Args:
            lm_ids (`torch.LongTensor` of shape `(B, T)` or `(T,)`).
        Returns:
            One int64 tensor of shape `(n_images, K)` (codebook ids, AR order) per sequence: every begin-of-image
            followed by K visual tokens (the closing end-of-image may be missing at the very end).
        """
        lm_ids = torch.as_tensor(lm_ids)
        if lm_ids.ndim == 1:
            lm_ids = lm_ids[None]
        vocabulary = self.vocabulary
        K = vocabulary.num_image_tokens
        result = []
        for row in lm_ids.cpu():
            images = []
            for start in (row == vocabulary.boi_token_id).nonzero().flatten().tolist():
                span = row[start + 1 : start + 1 + K]
                if span.numel() == K and bool(vocabulary.is_visual(span).all()):
                    images.append(vocabulary.to_codebook_ids(span))
            result.append(torch.stack(images) if images else torch.empty(0, K, dtype=torch.long))
        return result

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask"]
