"""SelftokProcessor: text tokenizer + Selftok image processor + the visual-token id layout.

It turns text with ``<image>`` placeholders and images (or precomputed Selftok id arrays) into LM ids:
every placeholder becomes the span ``boi v_1 ... v_K eoi`` of the image's K ids in AR order. On top of
that it builds

- text-to-image prompts, ending at begin-of-image (``return_for_image_generation=True``);
- image-to-text inputs (an image span followed by text), and interleaved sequences;
- training examples: plain sequences (loss on every token, the paper's stage-1 formats) and chat
  examples (``USER: ... ASSISTANT: ...``, the paper's SFT format) whose labels are masked to the answers.

Chat format. Every chat prompt and training example is rendered by the processor's ``chat_template`` (a Jinja
template, as for every transformers processor; saved as ``chat_template.jinja`` by ``save_pretrained`` and read
back by ``from_pretrained``) and tokenised by :meth:`SelftokProcessor.build_chat_example`, the one function that
``chat_prompt`` (text-to-image prompts), ``SelftokPipeline.describe`` and the SFT trainer all go through. Which
template:

- the text tokenizer's own ``chat_template`` when it has one (a chat LM keeps its format; image content items
  become the placeholder first, see below), else
- the Selftok template (:func:`selftok_chat_template`), the layout the paper's SFT stage and every model trained
  here use::

    [bos]USER: {user content} ASSISTANT: {assistant content}[eos]USER: ...

  A text content is preceded by one space; an image at the start of a content follows the tag directly, so a
  text-to-image prompt is ``[bos]USER: {prompt} ASSISTANT:<boi>``.

Contents are strings (with ``<image>`` placeholders) or transformers' lists of items
(``{"type": "text", "text": ...}``, ``{"type": "image"}``), joined with one space, an image item becoming the
placeholder; the rendered text's placeholders become ``boi v_1 ... v_K eoi`` spans when tokenised. So
``processor.apply_chat_template(messages, add_generation_prompt=True)`` gives the prompt text and, with
``tokenize=True``, the same ids as :meth:`~SelftokProcessor.build_chat_example`. Rendered text is tokenised piece
by piece, cut at the placeholders, the bos / eos tokens and (Selftok template) the role tags, which is exactly how
the ids were built before the template existed, so trained models see the same ids.

Images are tokenised through the :class:`~selftok_hf.SelftokModel` attached with
:meth:`SelftokProcessor.attach_image_tokenizer` (its SD3 VAE attached); id arrays need nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from transformers import BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.utils.chat_template_utils import render_jinja_template

from .modeling_selftok import SelftokModel
from .visual_vocabulary import VisualVocabulary

__all__ = ["DEFAULT_QUESTION", "IGNORE_INDEX", "SelftokProcessor", "selftok_chat_template"]

#: Label value that cross-entropy ignores (prompt tokens, padding).
IGNORE_INDEX = -100
#: The question of understanding examples when none is given: what SFT trains with and ``describe`` asks.
DEFAULT_QUESTION = "What is shown?"

# Marks a template this processor built around a tokenizer's own template (see `_with_image_items`).
_ITEMS_PRELUDE_MARK = "{#- selftok: image content items -> placeholder -#}"


def selftok_chat_template(user_tag: str = "USER:", assistant_tag: str = "ASSISTANT:", image_placeholder: str = "<image>") -> str:
    """The Selftok chat template: ``[bos]USER: {content} ASSISTANT: {answer}[eos]USER: ...``, ending with
    `` ASSISTANT:`` when ``add_generation_prompt`` (the layout documented in this module's docstring).

    Roles are ``user`` and ``assistant``; a content is a string or a list of ``text`` / ``image`` items (joined
    with one space, an image item rendered as ``image_placeholder``)."""
    user, assistant, placeholder = (json.dumps(x) for x in (user_tag, " " + assistant_tag, image_placeholder))
    return (
        "{#- Selftok chat format: [bos]USER: {content} ASSISTANT: {answer}[eos]USER: ... -#}\n"
        "{%- set placeholder = " + placeholder + " -%}\n"
        "{{- bos_token if bos_token else '' -}}\n"
        "{%- for message in messages -%}\n"
        "{%- if message['content'] is string -%}{%- set content = message['content'] -%}\n"
        "{%- else -%}{%- set parts = namespace(items=[]) -%}\n"
        "{%- for item in message['content'] -%}\n"
        "{%- if item['type'] == 'image' -%}{%- set parts.items = parts.items + [placeholder] -%}\n"
        "{%- elif item['type'] == 'text' -%}{%- set parts.items = parts.items + [item['text']] -%}\n"
        "{%- else -%}{{- raise_exception('content items must be of type text or image, got ' ~ item['type']) -}}{%- endif -%}\n"
        "{%- endfor -%}{%- set content = parts.items | join(' ') -%}{%- endif -%}\n"
        "{%- set body = ('' if (not content or content.startswith(placeholder)) else ' ') + content -%}\n"
        "{%- if message['role'] == 'user' -%}{{- " + user + " + body -}}\n"
        "{%- elif message['role'] == 'assistant' -%}{{- " + assistant + " + body + (eos_token if eos_token else '') -}}\n"
        "{%- else -%}{{- raise_exception('the Selftok chat format has the roles user and assistant, got ' ~ message['role']) -}}{%- endif -%}\n"
        "{%- endfor -%}\n"
        "{%- if add_generation_prompt -%}{{- " + assistant + " -}}{%- endif -%}\n"
    )


def _with_image_items(template: str, image_placeholder: str) -> str:
    """A text tokenizer's template, preceded by a prelude that turns list contents (``text`` / ``image`` items)
    into strings with ``image_placeholder``, so templates written for string contents render images too."""
    if template.startswith(_ITEMS_PRELUDE_MARK):
        return template
    return (
        _ITEMS_PRELUDE_MARK + "\n"
        "{%- set selftok_messages = namespace(items=[]) -%}\n"
        "{%- for message in messages -%}\n"
        "{%- if message['content'] is string or message['content'] is none -%}{%- set selftok_messages.items = selftok_messages.items + [message] -%}\n"
        "{%- else -%}{%- set parts = namespace(items=[]) -%}\n"
        "{%- for item in message['content'] -%}\n"
        "{%- if item['type'] == 'image' -%}{%- set parts.items = parts.items + [" + json.dumps(image_placeholder) + "] -%}\n"
        "{%- elif item['type'] == 'text' -%}{%- set parts.items = parts.items + [item['text']] -%}{%- endif -%}\n"
        "{%- endfor -%}\n"
        "{%- set selftok_messages.items = selftok_messages.items + [dict(message, content=parts.items | join(' '))] -%}\n"
        "{%- endif -%}\n"
        "{%- endfor -%}\n"
        "{%- set messages = selftok_messages.items -%}\n"
    ) + template


class SelftokProcessor(ProcessorMixin):
    r"""Builds Selftok VLM inputs from text, images and Selftok id arrays.

    Args:
        image_processor ([`SelftokImageProcessorPil`] or [`SelftokImageProcessor`]): images -> pixel values.
        tokenizer: the text tokenizer, already extended by [`add_visual_tokens`].
        visual_vocabulary (`dict` or [`VisualVocabulary`]): the id layout (``model.config.selftok_visual_vocabulary``).
        image_placeholder (`str`, defaults to `"<image>"`): marks where an image goes in a text.
        user_tag / assistant_tag (`str`): chat role tags of the Selftok template (the paper's ``USER:`` /
            ``ASSISTANT:``).
        chat_template (`str`, *optional*): the Jinja chat template. Default: the tokenizer's own template (with
            image items mapped to the placeholder) when it has one, else :func:`selftok_chat_template` built from
            the tags (see the module docstring).
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
        if chat_template is None:
            own = getattr(tokenizer, "chat_template", None)
            default = selftok_chat_template(user_tag, assistant_tag, image_placeholder)
            if isinstance(own, str) and own and own != default:  # (a tokenizer saved with a processor holds its template)
                chat_template = _with_image_items(own, image_placeholder)
            else:
                chat_template = default
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

    @property
    def uses_selftok_chat_template(self) -> bool:
        """Whether the chat template is the Selftok one (:func:`selftok_chat_template` with this processor's tags)."""
        return self.chat_template == selftok_chat_template(self.user_tag, self.assistant_tag, self.image_placeholder)

    def _cut_pattern(self) -> re.Pattern:
        """Where rendered text is cut before tokenising: placeholders, bos / eos, and the Selftok role tags."""
        markers = {self.image_placeholder}
        for token in (self.tokenizer.bos_token, self.tokenizer.eos_token):
            if token:
                markers.add(str(token))
        if self.uses_selftok_chat_template:
            markers |= {self.user_tag, " " + self.assistant_tag}
        return re.compile("|".join(re.escape(m) for m in sorted(markers, key=len, reverse=True)))

    def _tokenize_rendered(
        self, text: str, spans: Iterator[list[int]], label_ranges: Sequence[tuple[int, int]] = ()
    ) -> tuple[list[int], list[bool]]:
        """Rendered text -> (ids, is-label flags). The text is cut at the markers of :meth:`_cut_pattern` and at
        the ``label_ranges`` (character ranges whose ids are labels); each placeholder becomes the next image span
        (callers check the count), bos / eos their ids, every other piece is tokenised on its own."""
        special = {str(t): i for t, i in ((self.tokenizer.bos_token, self.tokenizer.bos_token_id), (self.tokenizer.eos_token, self.tokenizer.eos_token_id)) if t and i is not None}
        cuts = {0, len(text)}
        for match in self._cut_pattern().finditer(text):
            cuts |= {match.start(), match.end()}
        for start, end in label_ranges:
            cuts |= {start, end}
        cuts = sorted(c for c in cuts if 0 <= c <= len(text))
        ids, flags = [], []
        for start, end in zip(cuts, cuts[1:]):
            piece = text[start:end]
            if piece == self.image_placeholder:
                piece_ids = list(next(spans))
            elif piece in special:
                piece_ids = [special[piece]]
            else:
                piece_ids = self._tokenize(piece)
            is_label = any(a <= start and end <= b for a, b in label_ranges)
            ids += piece_ids
            flags += [is_label] * len(piece_ids)
        return ids, flags

    def _render(self, text: str, spans: Iterator[list[int]]) -> list[int]:
        """Text with placeholders -> ids, each placeholder replaced by the next image span."""
        return self._tokenize_rendered(text, spans)[0]

    def render_chat(self, conversation: Sequence[dict[str, Any]], add_generation_prompt: bool = False, chat_template: str | None = None, **template_kwargs) -> str:
        """One conversation as text, through the processor's chat template: what
        ``apply_chat_template(conversation, add_generation_prompt=...)`` returns (an empty conversation is allowed)."""
        template = self._resolve_chat_template(chat_template)
        variables = {**self.tokenizer.special_tokens_map, **template_kwargs}
        rendered, _ = render_jinja_template([list(conversation)], chat_template=template, add_generation_prompt=add_generation_prompt, **variables)
        return rendered[0]

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
            add_bos: start every sequence with the tokenizer's bos token (if it has one); ``add_special_tokens``
                is accepted for it.
            padding_side: ``"left"`` (for generation) or ``"right"``.
            return_tensors: ``"pt"`` or None (lists).
        Returns:
            [`BatchFeature`] with ``input_ids`` and ``attention_mask`` (`(B, T)`).
        """
        if "add_special_tokens" in kwargs:  # transformers' name (apply_chat_template(tokenize=True) passes it)
            add_bos = bool(kwargs.pop("add_special_tokens"))
        for modality in ("videos", "audio"):  # apply_chat_template passes them (None without such items)
            if kwargs.pop(modality, None) is not None:
                raise ValueError(f"SelftokProcessor takes text and images, not {modality}")
        if kwargs:
            raise TypeError(f"unexpected arguments {sorted(kwargs)}")
        if text is None:
            raise ValueError(f"text is required (use the placeholder {self.image_placeholder!r} alone for an image-only sequence)")
        texts = [text] if isinstance(text, str) else list(text)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise TypeError(f"text must be a string or a non-empty list of strings, got {text!r}")
        if isinstance(images, (list, tuple)) and any(isinstance(x, (list, tuple)) for x in images):
            images = [x for group in images for x in (group if isinstance(group, (list, tuple)) else [group])] or None  # per-text lists
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
        conversation = list(conversation)
        roles = ("user", "assistant") if self.uses_selftok_chat_template else ("system", "user", "assistant")
        for i, message in enumerate(conversation):
            role, content = message.get("role"), message.get("content")
            if role not in roles or not isinstance(content, (str, list)):
                raise ValueError(f"message {i} must be {{'role': {' | '.join(map(repr, roles))}, 'content': str or list of items}}, got {message!r}")
        if add_generation_prompt and conversation[-1]["role"] != "user":
            raise ValueError("add_generation_prompt=True needs the conversation to end with a user message")
        if any(m["role"] == "assistant" for m in conversation):
            self._eos()  # every answer ends with eos
        text = self.render_chat(conversation, add_generation_prompt=add_generation_prompt)
        spans = self._image_spans(images, image_token_ids)
        needed = text.count(self.image_placeholder)
        if needed != len(spans):
            raise ValueError(f"the conversation has {needed} {self.image_placeholder!r} placeholder(s) but {len(spans)} image(s) were given")
        # An answer is what its message adds to the text after the generation prompt before it.
        label_ranges = []
        for i, message in enumerate(conversation):
            if message["role"] != "assistant":
                continue
            before = self.render_chat(conversation[:i], add_generation_prompt=True)
            through = self.render_chat(conversation[: i + 1])
            if not (through.startswith(before) and text.startswith(through)):
                raise ValueError("the chat template does not render a conversation as the extension of its prefixes; cannot find the answers to label")
            label_ranges.append((len(before), len(through)))
        input_ids, is_label = self._tokenize_rendered(text, iter(spans), label_ranges)
        return {"input_ids": input_ids, "labels": [t if flag else IGNORE_INDEX for t, flag in zip(input_ids, is_label)]}

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
