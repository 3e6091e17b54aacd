"""Turn any transformers causal LM into a Selftok VLM: add one token per codebook entry plus
begin/end-of-image markers to the LM and its text tokenizer.

The LM stays an ordinary ``AutoModelForCausalLM`` (Llama, Qwen2, GPT-2, ...): visual tokens are rows of
its shared input/output vocabulary, as in the paper (Llama3-8B + 32,768 visual words, one head, plain
next-token loss) and as in Emu3. The id layout is recorded in ``config.selftok_visual_vocabulary``
(see :class:`~selftok_hf.visual_vocabulary.VisualVocabulary`), so generation reads ids from the config
and never looks up token strings.

Decision on ``skip_special_tokens``: visual tokens and the markers are added as *special* tokens. So
``tokenizer.decode(ids, skip_special_tokens=True)`` returns the text alone (images are cleanly
separated out, e.g. for trl rewards that read decoded completions), while ``skip_special_tokens=False``
spells every visual token as ``<|visual_00042|>``, which
:meth:`VisualVocabulary.parse_visual_tokens` reads back. Images themselves are always recovered from
ids (:meth:`SelftokProcessor.extract_image_token_ids`), never from strings.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .configuration_selftok import SelftokConfig
from .modeling_selftok import SelftokModel
from .visual_vocabulary import VISUAL_VOCABULARY_CONFIG_KEY, VisualVocabulary

__all__ = [
    "add_visual_tokens",
    "embedding_module_names",
    "expose_trainable_tokens_head_bias",
    "lora_target_modules",
    "visual_embedding_init",
    "visual_lora_config",
]

EmbeddingInit = Literal["mean", "codebook"]


@torch.no_grad()
def visual_embedding_init(
    text_rows: torch.Tensor,
    num_new_rows: int,
    method: EmbeddingInit = "mean",
    codebook_vectors: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Initial values for new embedding (or output-head) rows.

    Args:
        text_rows (`torch.Tensor` of shape `(N, d)`): the existing rows of the text vocabulary.
        num_new_rows: rows to create. With ``"codebook"``, the first ``C = len(codebook_vectors)`` rows are
            the visual tokens and the rest (markers, padding) get the ``"mean"`` initialisation.
        method:
            - ``"mean"``: the mean of the text rows plus Gaussian noise of 1e-3 times their per-dimension
              standard deviation (to break the symmetry). The new tokens start with (almost) equal logits
              and, at the input, look like an average word; training separates them.
            - ``"codebook"``: the Selftok code vectors through a fitted affine map. The map whitens the
              code vectors (their own principal axes, unit variance) and sends them onto the top
              ``r`` principal axes (r = the number of directions the codes span, at most ``min(token_dim, d)``) of the text rows with the text rows' standard
              deviations, around the text mean. So the new rows have the text rows' mean and, within
              those r directions, their covariance, and codes that are close in the codebook start close
              in the LM.
        codebook_vectors (`torch.Tensor` of shape `(C, token_dim)`): needed for ``"codebook"``.
        generator: seeds the noise of ``"mean"``.
    Returns:
        `torch.Tensor` of shape `(num_new_rows, d)` in float32.
    """
    text_rows = text_rows.detach().float()
    mean, std = text_rows.mean(0), text_rows.std(0)
    noise = torch.randn(num_new_rows, text_rows.shape[1], generator=generator, device="cpu").to(text_rows.device)
    rows = mean + 1e-3 * std * noise
    if method == "mean":
        return rows
    if method != "codebook":
        raise ValueError(f"init must be 'mean' or 'codebook', got {method!r}")
    if codebook_vectors is None:
        raise ValueError("init='codebook' needs the codebook vectors: pass the SelftokModel, not only its config")
    codes = codebook_vectors.detach().float().to(text_rows.device)
    if codes.shape[0] > num_new_rows:
        raise ValueError(f"{codes.shape[0]} code vectors do not fit in {num_new_rows} new rows")
    # Principal axes and standard deviations of both clouds (rows of Vh are the axes).
    _, code_s, code_axes = torch.linalg.svd(codes - codes.mean(0), full_matrices=False)
    _, text_s, text_axes = torch.linalg.svd(text_rows - mean, full_matrices=False)
    # Only directions the codes actually vary along (post-norm code vectors, e.g., have zero mean over their
    # features, so one direction is empty): whitening an empty direction would blow up rounding noise.
    code_rank = int((code_s > 1e-5 * code_s[0]).sum())
    rank = min(code_rank, text_s.shape[0])
    code_std = code_s[:rank] / (codes.shape[0] - 1) ** 0.5
    text_std = text_s[:rank] / (text_rows.shape[0] - 1) ** 0.5
    whitened = (codes - codes.mean(0)) @ code_axes[:rank].T / code_std.clamp_min(1e-12)
    rows[: codes.shape[0]] = mean + (whitened * text_std) @ text_axes[:rank]
    return rows


def embedding_module_names(model: nn.Module) -> tuple[str, str | None]:
    """Names (as in ``named_modules``) of the input embedding and of the output head; the head is
    ``None`` when its weight is tied to the input embedding (e.g. GPT-2)."""
    input_embeddings, output_embeddings = model.get_input_embeddings(), model.get_output_embeddings()
    names = {id(module): name for name, module in model.named_modules()}
    input_name = names[id(input_embeddings)]
    if output_embeddings is None or output_embeddings.weight is input_embeddings.weight:
        return input_name, None
    return input_name, names[id(output_embeddings)]


def lora_target_modules(model: nn.Module) -> list[str]:
    """LoRA target modules for a causal LM: the attention and MLP projections of the known architectures
    (Llama/Qwen2/Mistral-style ``*_proj``, GPT-2's ``c_attn``/``c_proj``/``c_fc``), else PEFT's
    ``"all-linear"`` rule spelled out as the names of every ``nn.Linear`` outside the head."""
    llama_style = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    gpt2_style = ["c_attn", "c_proj", "c_fc"]
    leaf_names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    for candidates in (llama_style, gpt2_style):
        found = [n for n in candidates if n in leaf_names]
        if found:
            return found
    _, head = embedding_module_names(model)
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear) and name != head})


def visual_lora_config(model: nn.Module, r: int = 16, lora_alpha: int = 32, lora_dropout: float = 0.0):
    """The PEFT ``LoraConfig`` for a Selftok VLM's LM (extended with :func:`add_visual_tokens`): LoRA on
    :func:`lora_target_modules`, and ``trainable_token_indices`` on every row the extension added (visual
    tokens, markers, padding) of the input embedding and, when untied, of the output head. The adapter then
    holds those rows only, not whole matrices (save it with ``save_embedding_layers=False``)."""
    from peft import LoraConfig

    vocabulary = VisualVocabulary.from_config(model.config)
    new_rows = list(range(vocabulary.first_visual_id, vocabulary.lm_vocab_size))
    input_name, head_name = embedding_module_names(model)
    trainable = {input_name.rsplit(".", 1)[-1]: new_rows}
    if head_name is not None:
        trainable[head_name.rsplit(".", 1)[-1]] = new_rows
    return LoraConfig(
        r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=lora_target_modules(model),
        trainable_token_indices=trainable,
        task_type="CAUSAL_LM",
    )


def expose_trainable_tokens_head_bias(model: nn.Module) -> nn.Module:
    """Let trl's ``SFTTrainer`` train a PEFT model whose output head has ``trainable_token_indices``
    (as :func:`visual_lora_config` sets up); returns ``model``.

    trl's fused LM head (``trl.trainer.utils.add_fused_lm_head``, used by every ``SFTTrainer`` step) reads
    ``lm_head.weight`` and ``lm_head.bias`` directly. PEFT's ``TrainableTokensWrapper`` forwards ``weight``
    (the base rows with the trained ones copied in, so gradients reach them) but no other attribute, so the
    first step raised ``AttributeError: 'TrainableTokensWrapper' object has no attribute 'bias'`` (trl 1.16,
    peft 0.21). This sets the wrapper's ``bias`` to ``None``, which is what PEFT's own forward uses: it
    computes ``F.linear(x, weight)`` without a bias. A head with a bias is refused, since PEFT drops that
    bias (huggingface/peft#3649) and trl would add it, so training and inference would differ.
    """
    from peft.utils.other import TrainableTokensWrapper

    head = model.get_output_embeddings()
    if isinstance(head, TrainableTokensWrapper) and not hasattr(head, "bias"):
        if head.token_adapter.base_layer.bias is not None:
            raise ValueError("the output head has a bias, which PEFT's trainable tokens drop (huggingface/peft#3649)")
        head.bias = None
    return model


@torch.no_grad()
def add_visual_tokens(
    model,
    tokenizer,
    image_tokenizer: SelftokConfig | SelftokModel,
    init: EmbeddingInit = "mean",
    pad_to_multiple_of: int | None = 64,
    visual_token_format: str = "<|visual_{:05d}|>",
    boi_token: str = "<|begin_of_image|>",
    eoi_token: str = "<|end_of_image|>",
    seed: int = 0,
) -> VisualVocabulary:
    """Extend a causal LM and its text tokenizer with Selftok's visual vocabulary, in place.

    Adds ``codebook_size`` visual tokens (codebook id c -> ``visual_token_format.format(c)``) and the
    begin/end-of-image markers to ``tokenizer`` as special tokens (contiguous ids starting at
    ``len(tokenizer)``), resizes the LM's input embedding and output head (rounded up to a multiple of
    ``pad_to_multiple_of`` rows for speed; the padding rows are never produced), initialises the new rows
    (see :func:`visual_embedding_init`) and records the layout in ``model.config``.

    Args:
        model: a transformers causal LM (``LlamaForCausalLM``, ``Qwen2ForCausalLM``, ``GPT2LMHeadModel``, ...).
        tokenizer: its text tokenizer.
        image_tokenizer: the Selftok tokenizer (``SelftokModel``) or its config; gives K and the codebook
            size (and the code vectors for ``init="codebook"``).
        init: ``"mean"`` or ``"codebook"``.
        pad_to_multiple_of: round the embedding rows up to a multiple of this (None: no padding).
        seed: seeds the symmetry-breaking noise.
    Returns:
        The [`VisualVocabulary`] now stored in ``model.config.selftok_visual_vocabulary``.
    Raises:
        ValueError: if the model already has visual tokens, if a token string already exists in the
            tokenizer, or if the LM's embedding is smaller than the tokenizer.
    """
    if getattr(model.config, VISUAL_VOCABULARY_CONFIG_KEY, None) is not None:
        raise ValueError("this language model already has Selftok visual tokens (config.selftok_visual_vocabulary is set)")
    if isinstance(image_tokenizer, SelftokModel):
        image_config, codebook = image_tokenizer.config, image_tokenizer
    elif isinstance(image_tokenizer, SelftokConfig):
        image_config, codebook = image_tokenizer, None
    else:
        raise TypeError(f"image_tokenizer must be a SelftokModel or SelftokConfig, got {type(image_tokenizer).__name__}")
    if init == "codebook" and codebook is None:
        raise ValueError("init='codebook' needs the codebook vectors: pass the SelftokModel, not only its config")

    input_embeddings = model.get_input_embeddings()
    old_rows = input_embeddings.weight.shape[0]
    first_visual_id = len(tokenizer)
    if old_rows < first_visual_id:
        raise ValueError(f"the LM has {old_rows} embedding rows but its tokenizer has {first_visual_id} tokens")
    num_codes = image_config.codebook_size
    new_tokens = [visual_token_format.format(c) for c in range(num_codes)] + [boi_token, eoi_token]
    if len(set(new_tokens)) != len(new_tokens):
        raise ValueError(f"visual_token_format {visual_token_format!r} does not give distinct strings for every code")
    existing = [t for t in new_tokens if t in tokenizer.get_vocab()]
    if existing:
        raise ValueError(f"the tokenizer already has {len(existing)} of the new tokens, e.g. {existing[:3]}")
    tokenizer.add_tokens(new_tokens, special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(new_tokens)
    if ids != list(range(first_visual_id, first_visual_id + num_codes + 2)):
        raise ValueError("the tokenizer did not give the new tokens contiguous ids after its vocabulary")

    needed = first_visual_id + num_codes + 2
    model.resize_token_embeddings(max(needed, old_rows), pad_to_multiple_of=pad_to_multiple_of, mean_resizing=False)
    input_embeddings = model.get_input_embeddings()
    new_rows = input_embeddings.weight.shape[0]
    codebook_vectors = None
    if init == "codebook":
        all_ids = torch.arange(num_codes, device=codebook.device)[None]
        codebook_vectors = codebook.quantizer.embed_ids(all_ids)[0]
    matrices = [input_embeddings.weight]
    output_embeddings = model.get_output_embeddings()
    if output_embeddings is not None and output_embeddings.weight is not input_embeddings.weight:
        matrices.append(output_embeddings.weight)
    generator = torch.Generator().manual_seed(seed)
    for weight in matrices:
        rows = visual_embedding_init(weight[:first_visual_id], new_rows - first_visual_id, init, codebook_vectors, generator)
        weight[first_visual_id:] = rows.to(weight.dtype)
    if output_embeddings is not None and getattr(output_embeddings, "bias", None) is not None:
        bias = output_embeddings.bias
        bias[first_visual_id:] = bias[:first_visual_id].mean()

    vocabulary = VisualVocabulary(
        first_visual_id=first_visual_id,
        codebook_size=num_codes,
        num_image_tokens=image_config.num_image_tokens,
        boi_token_id=first_visual_id + num_codes,
        eoi_token_id=first_visual_id + num_codes + 1,
        lm_vocab_size=new_rows,
        visual_token_format=visual_token_format,
        boi_token=boi_token,
        eoi_token=eoi_token,
    )
    vocabulary.save_to_config(model.config)
    return vocabulary
