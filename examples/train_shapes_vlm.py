"""Train the embedded shapes-world Selftok VLM (Selftok-Zero in a box): codec, then SFT, then GRPO.

Every stage is one of the library's trainers, on the shapes world of :mod:`selftok_hf.rl` (1-3 flat coloured
shapes, 32 px):

1. **Codec** (``codec/``, :func:`~selftok_hf.training.stack.train_selftok_stack`): a small SD3-shaped VAE, a
   Selftok tokenizer with its diffusion decoder on the VAE's latents (32 tokens x 1024 codes = 320 bits per image,
   the sizes of the embedded photo default), then the one-step renderer, on renders of random sentences of the
   whole grammar (an image codec sees no text, so both sides of the prompt split).
2. **Text tokenizer** (``text-tokenizer/``): a byte-level BPE trained on the held-in sentences and answers, so that
   every word of the world is one token.
3. **SFT** (``sft/``, :class:`~selftok_hf.training.sft.SelftokSFTTrainer`): a small Llama from random init, extended with
   the visual vocabulary, learns text-to-image (held-in sentence -> ids of a scene drawn for it) and understanding
   (ids -> :func:`~selftok_hf.rl.shapes_world.describe_scene`, the question "What is shown?").
4. **RL** (``rl/``, :class:`~selftok_hf.rl.trainer.SelftokGRPOTrainer`): simplified GRPO with the exact program reward on
   held-in sentences.

Held out, by meaning (:class:`~selftok_hf.rl.shapes_world.PromptSplit`, ``split_seed`` 0, half of every category):
no held-out sentence is a prompt in SFT or RL, and no training image's description is a held-out sentence. The
sentences the README quotes (``ALSO_HELD_OUT``) are held out too. ``benchmarks/shapes_vlm.py`` measures the result
on held-out sentences and scenes.

    python examples/train_shapes_vlm.py --output-dir ~/runs/shapes-vlm --resume-from latest   # from scratch
    python examples/train_shapes_vlm.py --output-dir /tmp/smoke --tiny                        # seconds, for CI

Outputs: ``vlm-init`` (the random LM before SFT), ``sft-vlm`` (after SFT), ``rl/pipeline`` (full :class:`~selftok_hf.SelftokPipeline` folders) and
``pipeline-fp16`` (the RL pipeline in float16). The shipped VLM continued an earlier codec
(``--codec-init-from embedded``) and its renderer; ``benchmarks/results/shapes_vlm/README.md`` has its exact commands. Every stage resumes
(``--resume-from latest``) and a finished stage is skipped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import datasets
import numpy as np
import torch

from selftok_hf.image_processing_selftok import postprocess_images
from selftok_hf.rl import ShapesWorld
from selftok_hf.rl.shapes_world import PromptSplit, describe_scene, parse_prompt

CONFIGS = Path(__file__).resolve().parent / "configs"
#: Sentences the README and the issue quote; held out whatever the split's hash says.
ALSO_HELD_OUT = ("a blue square left of a green triangle", "three yellow circles")
QUESTION = "What is shown?"


def prompt_split(world: ShapesWorld) -> PromptSplit:
    """The split every stage and the benchmark use."""
    return world.grammar_split(held_out_fraction=0.5, seed=0, also_held_out=ALSO_HELD_OUT)


def description_is_held_in(description: str, split: PromptSplit) -> bool:
    """Whether an answer may be trained on: not a held-out sentence (lists of three shapes are no prompt at all)."""
    try:
        return not split.is_held_out(parse_prompt(description))
    except ValueError:
        return True


def write_codec_images(path: Path, world: ShapesWorld, count: int, seed: int) -> None:
    """``count`` renders of random sentences of the whole grammar (held in and held out: the codec reads no text)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        spec = world.sample_prompt(rng)
        images.append(world.render(world.sample_scene(spec, seed=int(rng.integers(2**31)))))
    images = postprocess_images(torch.stack(images))
    datasets.Dataset.from_dict({"image": images}).save_to_disk(str(path))


def sample_training_pairs(world: ShapesWorld, split: PromptSplit, count: int, seed: int) -> dict[str, list]:
    """``count`` (held-in sentence, scene) pairs whose scene description is held in too."""
    rng = np.random.default_rng(seed)
    texts, answers, images = [], [], []
    while len(texts) < count:
        spec = world.sample_prompt(rng, split=split, held_out=False)
        scene = world.sample_scene(spec, seed=int(rng.integers(2**31)))
        description = describe_scene(scene)
        if description_is_held_in(description, split):
            texts.append(spec.text())
            answers.append(description)
            images.append(world.render(scene))
    return {"text": texts, "answer": answers, "images": torch.stack(images)}


def train_text_tokenizer(path: Path, world: ShapesWorld, split: PromptSplit, tiny: bool):
    """A byte-level BPE on held-in sentences and answers and the chat tags: one token per word of the world."""
    from selftok_hf.testing.tiny_vlm import train_byte_level_bpe

    if not (path / "tokenizer.json").exists():
        pairs = sample_training_pairs(world, split, 200 if tiny else 4000, seed=3)
        corpus = path / "corpus.txt"
        path.mkdir(parents=True, exist_ok=True)
        lines = [f"USER: {t} ASSISTANT:" for t in pairs["text"]] + [f"USER: {QUESTION} ASSISTANT: {a}" for a in pairs["answer"]]
        corpus.write_text("\n".join(lines) + "\n")
        tokenizer = train_byte_level_bpe([str(corpus)], vocab_size=384, min_frequency=2)
        tokenizer.save_pretrained(str(path))
        corpus.unlink()
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(str(path))


def initial_vlm(codec_dir: Path, tokenizer, hidden_size: int, layers: int, seed: int):
    """A random-init Llama over the BPE, extended with the codec's visual vocabulary, as a SelftokPipeline."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from selftok_hf import SelftokDecoderPipeline, SelftokPipeline
    from selftok_hf.modeling_selftok_lm import add_visual_tokens
    from selftok_hf.processing_selftok import SelftokProcessor

    decoder = SelftokDecoderPipeline.from_pretrained(str(codec_dir))
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.generation_config, name, getattr(config, name))
    vocabulary = add_visual_tokens(model, tokenizer, decoder.image_tokenizer, init="codebook", seed=seed)
    processor = SelftokProcessor(image_processor=decoder.image_processor, tokenizer=tokenizer, visual_vocabulary=vocabulary)
    return SelftokPipeline(model, processor, decoder)


def attach_decoder(pipe, decoder_dir: Path):
    """``pipe`` with the full decoder pipeline at ``decoder_dir`` (renderer included) instead of the one it was trained
    with, which must hold the same image tokenizer and VAE (so the same ids)."""
    from selftok_hf import SelftokDecoderPipeline, SelftokPipeline

    decoder = SelftokDecoderPipeline.from_pretrained(str(decoder_dir))
    for name in ("image_tokenizer", "vae"):
        ours, theirs = getattr(pipe.decoder, name).state_dict(), getattr(decoder, name).state_dict()
        if ours.keys() != theirs.keys() or any(not torch.equal(ours[k], theirs[k]) for k in ours):
            raise ValueError(f"{decoder_dir} has another {name} than the pipeline the LM was trained with")
    return SelftokPipeline(pipe.language_model, pipe.processor, decoder)


def write_sft_pairs(path: Path, pipe, world: ShapesWorld, split: PromptSplit, count: int) -> None:
    """The SFT rows: ``text`` (prompt), ``answer`` (description) and ``image_token_ids`` (the codec's ids)."""
    pairs = sample_training_pairs(world, split, count, seed=4)
    with torch.no_grad():
        ids = torch.cat([pipe.decoder.encode(pairs["images"][i : i + 256] * 2 - 1) for i in range(0, count, 256)])
    datasets.Dataset.from_dict({"text": pairs["text"], "answer": pairs["answer"], "image_token_ids": ids.tolist()}).save_to_disk(str(path))


def write_rl_prompts(path: Path, world: ShapesWorld, split: PromptSplit, count: int) -> None:
    """``count`` distinct held-in sentences, every category, as the ``.jsonl`` GRPO reads."""
    rng = np.random.default_rng(5)
    seen: dict[str, str] = {}
    for _ in range(50 * count):
        spec = world.sample_prompt(rng, split=split, held_out=False)
        seen.setdefault(spec.text(), spec.category)
        if len(seen) >= count:
            break
    path.write_text("".join(json.dumps({"prompt": text, "category": category}) + "\n" for text, category in seen.items()))


def run_and_export(trainer) -> None:
    """Train (or resume) an SFT / GRPO trainer to its last step, write its ``pipeline/`` and close it."""
    trainer.run()
    trainer.export()
    trainer.finish()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="runs/shapes-vlm")
    parser.add_argument("--codec-images", type=int, default=20000)
    parser.add_argument("--codec-steps", type=int, default=6000, help="tokenizer + decoder steps of the codec")
    parser.add_argument("--codec-decay-steps", type=int, default=0, help="cosine LR decay over the last N codec steps (0: constant)")
    parser.add_argument("--renderer-decay-steps", type=int, default=0, help="cosine LR decay over the last N renderer steps")
    parser.add_argument(
        "--codec-tokenizer-config", default=str(CONFIGS / "default32_vae_tokenizer.json"),
        help="the codec tokenizer's JSON (tokens, codebook, schedule); shapes64_vae_tokenizer.json doubles the tokens",
    )
    parser.add_argument(
        "--codec-init-from",
        default=None,
        help="continue a finished codec's VAE, tokenizer and decoder for --codec-steps more steps instead of training "
        "from scratch ('embedded': the shipped VLM's codec); the renderer and the LM are trained anew on its ids",
    )
    parser.add_argument("--until", choices=("codec", "sft", "rl"), default="rl", help="the last stage to run")
    parser.add_argument("--sft-pairs", type=int, default=40000)
    parser.add_argument("--sft-steps", type=int, default=3000)
    parser.add_argument("--sft-batch-size", type=int, default=32)
    parser.add_argument("--sft-lr", type=float, default=1e-3)
    parser.add_argument("--sft-decay-steps", type=int, default=0, help="cosine LR decay over the last N SFT steps (0: constant)")
    parser.add_argument("--lm-hidden-size", type=int, default=256)
    parser.add_argument("--lm-layers", type=int, default=4)
    parser.add_argument("--rl-steps", type=int, default=300)
    parser.add_argument("--rl-prompts", type=int, default=400, help="distinct held-in sentences GRPO samples from")
    parser.add_argument("--rl-batch-size", type=int, default=4, help="prompts per step, each sampled --group-size times")
    parser.add_argument("--group-size", type=int, default=16)
    parser.add_argument("--rl-lr", type=float, default=1e-4, help="a random-init LM this small moves little at the paper's 1.5e-6")
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume-from", default=None, help="'latest' continues every stage from its last checkpoint")
    parser.add_argument("--tiny", action="store_true", help="tiny models and data, a few steps (smoke test)")
    args = parser.parse_args()

    from importlib import resources

    from selftok_hf import SelftokPipeline
    from selftok_hf.assets import EMBEDDED_VLM
    from selftok_hf.rl.trainer import GRPOArguments, SelftokGRPOTrainer
    from selftok_hf.training.sft import SelftokSFTTrainer, SFTArguments
    from selftok_hf.training.stack import StackBudget, resolve_init_from, save_float16_copy, train_selftok_stack

    try:
        codec_init = resolve_init_from(args.codec_init_from, resources.files("selftok_hf.assets") / EMBEDDED_VLM / "decoder")
    except ValueError as error:
        parser.error(f"--codec-init-from {error}")

    tiny = args.tiny
    if tiny:
        args.codec_images, args.sft_pairs, args.sft_steps, args.rl_steps, args.rl_prompts = 64, 64, 2, 2, 8
        args.lm_hidden_size, args.lm_layers, args.group_size, args.rl_batch_size = 64, 1, 2, 2
    out = Path(args.output_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    world = ShapesWorld(image_size=32)
    split = prompt_split(world)

    # 1. The codec: VAE -> tokenizer + decoder -> renderer.
    codec = out / "codec"
    codec.mkdir(exist_ok=True)
    if not (codec / "train-mix").exists():
        write_codec_images(codec / "train-mix", world, args.codec_images, seed=1)
    if not (codec / "validation-crops").exists():
        write_codec_images(codec / "validation-crops", world, 16 if tiny else 256, seed=2)
    if tiny:
        budget = StackBudget(vae_statistics_images=8, vae_steps=2, steps=2, renderer_steps=2, warmup_steps=1, eval_every=1)
    else:
        budget = StackBudget(steps=args.codec_steps, decay_steps=args.codec_decay_steps, renderer_decay_steps=args.renderer_decay_steps)

    def codec_stack(until: str) -> Path:
        return train_selftok_stack(
            codec,
            codec / "train-mix",
            codec / "validation-crops",
            tokenizer_config="tiny" if tiny else args.codec_tokenizer_config,
            decoder_config="tiny" if tiny else str(CONFIGS / "default32_vae_decoder.json"),
            budget=budget,
            image_size=32,
            vae_config="tiny" if tiny else "small",
            resume_from=args.resume_from,
            until=until,
            init_from=codec_init,
        )

    # SFT needs only the codec's ids, final once the tokenizer is trained: the renderer can train meanwhile.
    tokenizer_pipeline = codec_stack(until="tokenizer")
    if args.until == "codec":
        print(f"trained codec: {codec_stack(until='renderer').resolve()}")
        return

    # 2-3. Text tokenizer, initial VLM, SFT pairs, SFT.
    sft_pipeline = out / "sft" / "pipeline"
    if not (sft_pipeline / "config.json").exists():
        tokenizer = train_text_tokenizer(out / "text-tokenizer", world, split, tiny)
        pipe = initial_vlm(tokenizer_pipeline, tokenizer, args.lm_hidden_size, args.lm_layers, args.seed)
        if not (out / "vlm-init" / "config.json").exists():
            pipe.save_pretrained(str(out / "vlm-init"))  # the benchmark's "before SFT" row
        pairs = out / "sft-pairs"
        if not (pairs / "dataset_info.json").exists():
            write_sft_pairs(pairs, pipe, world, split, args.sft_pairs)
        sft_args = SFTArguments(
            output_dir=str(out / "sft"), max_steps=args.sft_steps, batch_size=args.sft_batch_size, learning_rate=args.sft_lr,
            decay_steps=args.sft_decay_steps,
            warmup_steps=min(100, args.sft_steps), task_mix="t2i=0.5,i2t=0.5", answer_column="answer", question=QUESTION,
            caption_dropout=0.1, log_every=max(min(50, args.sft_steps // 4), 1), checkpoint_every=max(args.sft_steps // 6, 1),
            ema_decay=0.0 if tiny else 0.999, seed=args.seed, resume_from=args.resume_from,
        )
        run_and_export(SelftokSFTTrainer(sft_args, pipeline=pipe, dataset=datasets.load_from_disk(str(pairs))))

    if args.until == "sft":
        print(f"trained SFT language model: {sft_pipeline.resolve()}")
        return
    # The VLM proper: the SFT language model with the whole codec (the renderer decodes for the rewards).
    codec_pipeline = codec_stack(until="renderer")
    vlm = out / "sft-vlm"
    if not (vlm / "config.json").exists():
        attach_decoder(SelftokPipeline.from_pretrained(str(sft_pipeline)), codec_pipeline).save_pretrained(str(vlm))

    # 4. GRPO with the program reward on held-in sentences.
    rl_pipeline = out / "rl" / "pipeline"
    if not (rl_pipeline / "config.json").exists():
        prompts = out / "rl-prompts.jsonl"
        if not prompts.exists():
            write_rl_prompts(prompts, world, split, args.rl_prompts)
        rl_args = GRPOArguments(
            output_dir=str(out / "rl"), pipeline=str(vlm), prompts=str(prompts), max_steps=args.rl_steps,
            batch_size=args.rl_batch_size, group_size=args.group_size, learning_rate=args.rl_lr, beta=args.beta,
            log_every=max(min(10, args.rl_steps // 4), 1), checkpoint_every=max(args.rl_steps // 5, 1), seed=args.seed,
            resume_from=args.resume_from,
        )
        run_and_export(SelftokGRPOTrainer(rl_args))

    # The shipped copy: float16 weights (loaded back in float32).
    save_float16_copy(SelftokPipeline.from_pretrained(str(rl_pipeline)), out / "pipeline-fp16")
    print(f"trained VLM: {rl_pipeline.resolve()} (float16 copy: {out / 'pipeline-fp16'})")


if __name__ == "__main__":
    main()
