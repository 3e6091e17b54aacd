"""Generation with Selftok visual tokens: the grammar as a `LogitsProcessor`, and the image-token sampler.

- :class:`SelftokVisualGrammarLogitsProcessor` plugs the image-span grammar of
  :mod:`selftok_hf.visual_vocabulary` into ``model.generate`` (batched, vectorised, any dtype): inside a
  span only visual tokens for exactly K steps, then end-of-image; outside, no stray visual token.
- :func:`generate_image_tokens` samples the K tokens of one image per prompt with classifier-free
  guidance (conditional and unconditional prompts in one doubled batch, as Janus does), temperature /
  top-k / top-p, a KV cache and per-prompt ``torch.Generator``\\ s. It is a dedicated loop rather than
  ``model.generate`` because ``generate`` neither batches CFG for decoder-only LMs (its
  ``guidance_scale`` runs an unbatched second pass) nor takes a ``torch.Generator``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from transformers import (
    DynamicCache,
    LogitsProcessor,
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from .visual_vocabulary import VisualVocabulary, mask_logits

__all__ = ["SelftokVisualGrammarLogitsProcessor", "classifier_free_guidance", "context_length", "generate_image_tokens"]


def _forward_parameters(model) -> set[str]:
    """The keyword arguments of the LM's forward (a PEFT wrapper's forward takes ``**kwargs``: read its base model's)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(base.forward).parameters)


def _cache_argument(parameters: set[str]) -> str:
    """The forward's KV-cache argument: ``cache`` since transformers 5.24 (``past_key_values`` is deprecated there,
    with a FutureWarning per call), ``past_key_values`` before."""
    return "cache" if "cache" in parameters else "past_key_values"


class SelftokVisualGrammarLogitsProcessor(LogitsProcessor):
    """Constrains ``model.generate`` to well-formed image spans (see :func:`~selftok_hf.visual_vocabulary.allowed_next_tokens`).

    Args:
        vocabulary: the LM's [`VisualVocabulary`].
        allow_image_start: whether the model may open an image outside a span (False for text-only answers).
    """

    def __init__(self, vocabulary: VisualVocabulary, allow_image_start: bool = True):
        self.vocabulary = vocabulary
        self.allow_image_start = allow_image_start

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """``scores`` `(B, V)` for the token after ``input_ids`` `(B, T)` -> masked scores (forbidden: -inf)."""
        return mask_logits(scores, input_ids, self.vocabulary, self.allow_image_start)


def classifier_free_guidance(conditional: torch.Tensor, unconditional: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """``uncond + s (cond - uncond)`` on logits, in float32."""
    conditional, unconditional = conditional.float(), unconditional.float()
    return unconditional + guidance_scale * (conditional - unconditional)


def context_length(config) -> int | None:
    """The LM's maximum sequence length from its config (``max_position_embeddings`` or GPT-2's ``n_positions``)."""
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def _left_pad(input_ids: torch.Tensor, attention_mask: torch.Tensor, length: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    extra = length - input_ids.shape[1]
    if extra == 0:
        return input_ids, attention_mask
    return (
        torch.cat([input_ids.new_full((input_ids.shape[0], extra), pad_id), input_ids], dim=1),
        torch.cat([attention_mask.new_zeros((attention_mask.shape[0], extra)), attention_mask], dim=1),
    )


def _sample(probs: torch.Tensor, generator: torch.Generator | list[torch.Generator] | None) -> torch.Tensor:
    """One token per row of ``probs`` `(B, V)`; a list of generators draws row b with generator b, so a
    batch samples exactly what its rows would sample one by one."""
    if isinstance(generator, list):
        return torch.cat([torch.multinomial(p[None], 1, generator=g) for p, g in zip(probs, generator)])
    return torch.multinomial(probs, 1, generator=generator)


@torch.no_grad()
def generate_image_tokens(
    model,
    input_ids: torch.LongTensor,
    attention_mask: torch.LongTensor,
    vocabulary: VisualVocabulary,
    guidance_scale: float = 1.0,
    unconditional_input_ids: torch.LongTensor | None = None,
    unconditional_attention_mask: torch.LongTensor | None = None,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    use_cache: bool = True,
    device: torch.device | str | None = None,
    callback: Callable[[int], None] | None = None,
    streamer=None,
    step_end_callback: Callable[[int, dict[str, torch.Tensor]], dict[str, torch.Tensor] | None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> torch.LongTensor:
    """Generate one image (K visual tokens) per prompt.

    Args:
        model: a causal LM extended with [`add_visual_tokens`].
        input_ids (`torch.LongTensor` of shape `(B, T)`): left-padded prompts, each ending with begin-of-image.
        attention_mask (`torch.LongTensor` of shape `(B, T)`).
        vocabulary: the LM's [`VisualVocabulary`].
        guidance_scale: classifier-free guidance scale on the logits; 1 disables it.
        unconditional_input_ids / unconditional_attention_mask (`(B, T')`): the unconditional (or negative)
            prompts, also ending with begin-of-image; needed when ``guidance_scale != 1``.
        do_sample: sample (True) or take the arg-max (False).
        temperature / top_k / top_p: applied to the guided, grammar-masked logits when sampling.
        generator: a ``torch.Generator`` or one per prompt.
        use_cache: reuse keys/values (False recomputes the whole sequence every step; same result).
        device: where the LM runs (default: the device of its parameters; pass the accelerator under CPU offload).
        callback: called with the step index after every token.
        streamer: a transformers ``BaseStreamer``, fed as ``model.generate(streamer=...)`` feeds it: ``put`` of the
            (conditional, left-padded) prompt ids first, then ``put`` of each sampled token's LM ids `(B,)`, then
            ``end()`` (also when stopped early).
        step_end_callback: ``fn(step, {"token_ids": (B, step + 1) codebook ids so far, "logits": (B, V) the
            scores the token was drawn from}) -> dict | None``, after every sampled token (step = its position in
            the image, AR order). A returned ``"token_ids"`` replaces the token just sampled by its last column
            (the earlier columns are already in the KV cache and must be unchanged).
        should_stop: checked after every token (after ``step_end_callback``); True ends the loop there.
    Returns:
        `torch.LongTensor` of shape `(B, K)`: codebook ids in AR order (the closing end-of-image is implied); `(B, p)`
        with p < K when ``should_stop`` ended the loop after p tokens.
    """
    if input_ids.ndim != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(f"input_ids and attention_mask must both be (batch, length), got {tuple(input_ids.shape)} and {tuple(attention_mask.shape)}")
    if not bool((input_ids[:, -1] == vocabulary.boi_token_id).all()):
        raise ValueError("every prompt must end with the begin-of-image token (left padding; build it with return_for_image_generation=True)")
    batch_size = input_ids.shape[0]
    do_cfg = guidance_scale != 1.0
    if do_cfg:
        if unconditional_input_ids is None or unconditional_attention_mask is None:
            raise ValueError("guidance_scale != 1 needs unconditional_input_ids and unconditional_attention_mask")
        if unconditional_input_ids.shape[0] != batch_size:
            raise ValueError(f"{unconditional_input_ids.shape[0]} unconditional prompts for {batch_size} prompts")
        if not bool((unconditional_input_ids[:, -1] == vocabulary.boi_token_id).all()):
            raise ValueError("every unconditional prompt must end with the begin-of-image token")
        # One doubled batch: rows [0, B) conditional, [B, 2B) unconditional, left-padded to a common length.
        length = max(input_ids.shape[1], unconditional_input_ids.shape[1])
        pad_id = vocabulary.boi_token_id  # any id: padded positions are masked out
        cond = _left_pad(input_ids, attention_mask, length, pad_id)
        uncond = _left_pad(unconditional_input_ids.to(input_ids.device), unconditional_attention_mask.to(input_ids.device), length, pad_id)
        input_ids, attention_mask = torch.cat([cond[0], uncond[0]]), torch.cat([cond[1], uncond[1]])
    if isinstance(generator, list) and len(generator) != batch_size:
        raise ValueError(f"got {len(generator)} generators for {batch_size} prompts")
    limit = context_length(model.config)
    if limit is not None and input_ids.shape[1] + vocabulary.num_image_tokens > limit:
        raise ValueError(
            f"prompt length {input_ids.shape[1]} + {vocabulary.num_image_tokens} image tokens exceeds the model's context of {limit}"
        )
    warpers = LogitsProcessorList()
    if do_sample:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
        if temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(temperature))
        if top_k is not None and top_k > 0:
            warpers.append(TopKLogitsWarper(top_k))
        if top_p is not None and top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))

    device = torch.device(device) if device is not None else next(model.parameters()).device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device).long()
    position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
    sequence = input_ids[:batch_size]  # the conditional rows: what the grammar reads
    model_input, model_positions = input_ids, position_ids
    parameters = _forward_parameters(model)
    # Only the last position's logits are used: skip the head on the rest of the prompt where the model allows it.
    head_kwargs = {"logits_to_keep": 1} if "logits_to_keep" in parameters else {}
    # One KV cache for the whole loop, passed under the forward's own name for it and filled in place by the model.
    cache_argument = _cache_argument(parameters)
    if use_cache:
        head_kwargs[cache_argument] = DynamicCache(config=getattr(model, "config", None))
    tokens = []
    if streamer is not None:
        streamer.put(sequence.cpu())
    for step in range(vocabulary.num_image_tokens):
        outputs = model(
            input_ids=model_input,
            attention_mask=attention_mask,
            position_ids=model_positions,
            use_cache=use_cache,
            **head_kwargs,
        )
        logits = outputs.logits[:, -1].float()
        if do_cfg:
            logits = classifier_free_guidance(logits[:batch_size], logits[batch_size:], guidance_scale)
        logits = mask_logits(logits, sequence, vocabulary)
        if do_sample:
            logits = warpers(sequence, logits)
            next_token = _sample(logits.softmax(-1), generator)
        else:
            next_token = logits.argmax(-1, keepdim=True)
        if step_end_callback is not None:
            so_far = vocabulary.to_codebook_ids(torch.cat([*tokens, next_token], dim=1))
            returned = step_end_callback(step, {"token_ids": so_far, "logits": logits}) or {}
            if "token_ids" in returned:
                next_token = _replacement_token(returned["token_ids"], so_far, vocabulary)
        tokens.append(next_token)
        sequence = torch.cat([sequence, next_token], dim=1)
        if streamer is not None:
            streamer.put(next_token[:, 0].cpu())
        if callback is not None:
            callback(step)
        if step == vocabulary.num_image_tokens - 1 or (should_stop is not None and should_stop()):
            break
        # Next step's input: the new token, fed to both halves of a CFG batch.
        step_token = torch.cat([next_token, next_token]) if do_cfg else next_token
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(attention_mask.shape[0], 1)], dim=1)
        position_ids = torch.cat([position_ids, position_ids[:, -1:] + 1], dim=1)
        if use_cache:
            returned = outputs.get(cache_argument)  # the same object for transformers' own models
            if returned is not None:
                head_kwargs[cache_argument] = returned
            model_input, model_positions = step_token, position_ids[:, -1:]
        else:
            input_ids = torch.cat([input_ids, step_token], dim=1)
            model_input, model_positions = input_ids, position_ids
    if streamer is not None:
        streamer.end()
    return vocabulary.to_codebook_ids(torch.cat(tokens, dim=1))


def _replacement_token(token_ids: torch.Tensor, so_far: torch.LongTensor, vocabulary: VisualVocabulary) -> torch.LongTensor:
    """The LM ids `(B, 1)` of a callback's replacement ``token_ids`` (codebook ids so far, last column new)."""
    token_ids = torch.as_tensor(token_ids, device=so_far.device)
    if token_ids.shape != so_far.shape or token_ids.is_floating_point():
        raise ValueError(f"a callback's token_ids must be integer codebook ids of shape {tuple(so_far.shape)}, got {token_ids.dtype} {tuple(token_ids.shape)}")
    if not torch.equal(token_ids[:, :-1].long(), so_far[:, :-1]):
        raise ValueError("a callback may only replace the token just sampled (the last column of token_ids): the earlier ones are already fed to the model")
    last = token_ids[:, -1:].long()
    if int(last.min()) < 0 or int(last.max()) >= vocabulary.codebook_size:
        raise ValueError(f"a callback's token_ids must lie in [0, {vocabulary.codebook_size}), got {last.flatten().tolist()}")
    return vocabulary.to_lm_ids(last)
