"""Throughput of Selftok VLM text-to-image: visual tokens/s of the LM and images/s end to end.

    python benchmarks/benchmark_vlm.py                                  # tiny LM, tiny Selftok (K=32), CPU
    python benchmarks/benchmark_vlm.py --vocab release --lm small       # K=512 tokens, 32,768 codes (LM only)
    python benchmarks/benchmark_vlm.py --device cuda --lm 1b --vocab release --dtype bfloat16

For every batch size (prompts per call) it times ``SelftokPipeline(prompts, guidance_scale=5)`` (CFG: the LM runs a
doubled batch) with the KV cache, reports visual tokens/s (= batch x K / LM seconds) and images/s of the LM alone,
and, for ``--vocab tiny``, images/s end to end through the tiny decoder (``--decoder-steps`` Euler steps, or the
one-step renderer). ``--no-cache`` adds the same run without the KV cache for comparison. All weights are random
(speed does not depend on them); ``--vocab release`` has no decoder at that size here, so it is LM only.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from selftok_hf import (
    SelftokConfig,
    SelftokModel,
    SelftokPipeline,
    SelftokProcessor,
    add_visual_tokens,
    generate_image_tokens,
)
from selftok_hf.configuration_selftok import SELFTOK_TINY_CONFIG
from selftok_hf.testing.tiny_vlm import (
    tiny_language_model,
    tiny_selftok_pipeline,
    tiny_text_tokenizer,
)
from selftok_hf.vae import RandomWeightsWarning

PROMPTS = ["a red cube on a wooden table", "two cats sleeping on a sofa", "a photo of a mountain lake at sunrise", "a blue car"]

#: LMs beyond the tiny test configs (random init): a small one for CPUs and a ~1B Llama for accelerators.
LM_SIZES = {
    "small": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 8, "num_key_value_heads": 4, "max_position_embeddings": 2048},
    "1b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "max_position_embeddings": 2048},
}


def build(lm: str, vocab: str, device: str, dtype: torch.dtype):
    """(pipeline or None, LM, processor, vocabulary): the tiny pipeline with its LM swapped for a bigger one and/or
    the release vocabulary (K=512, 32,768 codes; no decoder of that size is built, so no pipeline)."""
    tiny = tiny_selftok_pipeline("llama")
    image_tokenizer = tiny.decoder.image_tokenizer
    if vocab == "release":
        release_like = dict(SELFTOK_TINY_CONFIG, num_image_tokens=512, codebook_size=32768, schedule_tokens_per_stage=[192, 184, 72, 48, 16])
        image_tokenizer = SelftokModel(SelftokConfig(**release_like))
    tokenizer = tiny_text_tokenizer()
    if lm == "tiny":
        language_model = tiny_language_model("llama", len(tokenizer), tokenizer=tokenizer)
    else:
        config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=0, eos_token_id=0, pad_token_id=1, **LM_SIZES[lm])
        language_model = LlamaForCausalLM(config).eval()
    vocabulary = add_visual_tokens(language_model, tokenizer, image_tokenizer)
    processor = SelftokProcessor(tiny.processor.image_processor, tokenizer, vocabulary)
    pipe = SelftokPipeline(language_model, processor, tiny.decoder).to(device, dtype) if vocab == "tiny" else None
    return pipe, language_model.to(device, dtype), processor, vocabulary


def time_call(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def measure(batch: int, pipe, language_model, processor, vocabulary, args) -> dict:
    """Times one batch size: the LM alone (with, optionally without, the KV cache) and, with a pipeline, end to end."""
    K = vocabulary.num_image_tokens
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(batch)]
    cond = processor.pad([processor.chat_prompt(p, generate_image=True) for p in prompts])
    uncond = processor.pad([processor.chat_prompt("", generate_image=True)] * batch)
    generators = [torch.Generator().manual_seed(i) for i in range(batch)]

    def lm_only(use_cache=True):
        return generate_image_tokens(
            language_model, cond["input_ids"], cond["attention_mask"], vocabulary, guidance_scale=args.guidance_scale,
            unconditional_input_ids=uncond["input_ids"], unconditional_attention_mask=uncond["attention_mask"],
            generator=generators, use_cache=use_cache, device=args.device,
        )

    def end_to_end():
        return pipe(prompts, guidance_scale=args.guidance_scale, generator=generators, num_inference_steps=args.decoder_steps, use_renderer=args.renderer, output_type="pt")

    seconds = time_call(lm_only, args.repeats, args.device)
    row = {"batch": batch, "lm_seconds": round(seconds, 4), "visual_tokens_per_s": round(batch * K / seconds, 1), "lm_images_per_s": round(batch / seconds, 3)}
    if args.no_cache:
        uncached = time_call(lambda: lm_only(False), 1, args.device)
        row.update(no_cache_lm_seconds=round(uncached, 4), kv_cache_speedup=round(uncached / seconds, 2))
    if pipe is not None:
        total = time_call(end_to_end, args.repeats, args.device)
        decoder = "renderer" if args.renderer else f"{args.decoder_steps}-step decoder"
        row.update(end_to_end_seconds=round(total, 4), images_per_s=round(batch / total, 3), decoder=decoder)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lm", choices=["tiny", "small", "1b"], default="tiny")
    parser.add_argument("--vocab", choices=["tiny", "release"], default="tiny")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--guidance-scale", type=float, default=5.0)
    parser.add_argument("--decoder-steps", type=int, default=50)
    parser.add_argument("--renderer", action="store_true")
    parser.add_argument("--no-cache", action="store_true", help="also time the LM without the KV cache")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        pipe, language_model, processor, vocabulary = build(args.lm, args.vocab, args.device, dtype)
    if pipe is not None:
        pipe.set_progress_bar_config(disable=True)
    K = vocabulary.num_image_tokens
    params = sum(p.numel() for p in language_model.parameters())
    header = {"lm": args.lm, "lm_params": params, "vocab": args.vocab, "K": K, "codebook": vocabulary.codebook_size, "device": args.device,
                  "dtype": args.dtype, "threads": torch.get_num_threads(), "guidance_scale": args.guidance_scale}
    print(json.dumps(header))

    for batch in args.batch:
        print(json.dumps(measure(batch, pipe, language_model, processor, vocabulary, args)))


if __name__ == "__main__":
    main()
