"""LoRA fine-tuning of a Selftok VLM with trl's ``SFTTrainer``, then the adapter reloaded with ``SelftokPipeline.load_lora``.

    python examples/trl_sft_lora.py --pipeline path/to/selftok-vlm --dataset path/to/pairs --output-dir run
    python examples/trl_sft_lora.py --tiny --output-dir run   # offline: tiny random VLM, the 3 bundled photos

The same LoRA setup as ``selftok-train-lm --lora`` (examples/vlm_lora_finetune.py), trained by trl instead:

1. Examples are pre-tokenised by us. Each (image, caption) row gives a text-to-image and an image-to-text chat example
   (``SFTExampleBuilder``): ``input_ids`` with the image as Selftok visual tokens, and ``labels`` that are -100 outside
   the answers. trl uses a ``labels`` column as it is. ``max_length=None`` because trl's default of 1024 would cut long
   examples, and an image answer cut short is not a valid image (the builder already refuses examples longer than the
   LM's context).
2. We wrap the LM with PEFT ourselves, ``get_peft_model(lm, visual_lora_config(lm))``: LoRA on the attention and MLP
   projections, and ``trainable_token_indices`` on the rows that ``add_visual_tokens`` added to the embedding and the
   head. The ``PeftModel`` goes to ``SFTTrainer``, not a ``peft_config``, so that step 3 comes before training.
3. ``expose_trainable_tokens_head_bias(model)``. trl's ``SFTTrainer`` computes its loss with a fused LM head that reads
   ``lm_head.weight`` and ``lm_head.bias``. PEFT's ``TrainableTokensWrapper`` on the head forwards only ``weight``, so
   without this step the first step fails with ``'TrainableTokensWrapper' object has no attribute 'bias'``. The helper
   sets that bias to ``None``, which matches PEFT's own bias-free forward.
4. ``pipe.save_lora_adapter(dir, save_embedding_layers=False)``: every new row is in the adapter, so the full
   matrices are not written. Reload with ``SelftokPipeline.from_pretrained(base).load_lora(dir)``.

With ``--tiny`` the example builds a seeded random tiny VLM, trains on the 3 bundled photos and their captions for a few
seconds, prints the loss at the first and last step and where the adapter went, and checks that base + reloaded
adapter give the same logits and greedy image ids as the model that was trained.
"""

import argparse
import dataclasses
from pathlib import Path

import datasets
import numpy as np
import torch
from peft import get_peft_model
from trl import SFTConfig, SFTTrainer

from selftok_hf import SelftokPipeline
from selftok_hf.assets import bundled_images
from selftok_hf.generation_selftok import context_length
from selftok_hf.modeling_selftok_lm import (
    expose_trainable_tokens_head_bias,
    visual_lora_config,
)
from selftok_hf.testing.tiny_vlm import tiny_selftok_pipeline
from selftok_hf.training.data import load_image_dataset
from selftok_hf.training.sft import (
    SFTExampleBuilder,
    collate_examples,
    pretokenize_images,
)

# transformers 5.24 renamed TrainingArguments.gradient_checkpointing (the old name warns); older 5.x has the old one only.
CHECKPOINTING = "activation_checkpointing" if "activation_checkpointing" in {f.name for f in dataclasses.fields(SFTConfig)} else "gradient_checkpointing"

CAPTIONS = {"astronaut.jpg": "an astronaut in a white suit", "coffee.jpg": "a cup of coffee", "chelsea.jpg": "a tabby cat"}


def chat_examples(pairs, pipe: SelftokPipeline, text_column: str, caption_dropout: float, seed: int) -> datasets.Dataset:
    """A t2i and an i2t example (``input_ids``, ``labels``) per row of ``pairs`` (images already Selftok ids)."""
    builder = SFTExampleBuilder(
        pipe.processor, text_column=text_column, caption_dropout=caption_dropout, max_length=context_length(pipe.language_model.config)
    )
    rng = np.random.default_rng(seed)
    return datasets.Dataset.from_list([builder(row, task, rng) for row in pairs for task in ("t2i", "i2t")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="offline tiny run on the bundled photos")
    parser.add_argument("--pipeline", help="a SelftokPipeline folder (the base)")
    parser.add_argument("--dataset", help="pairs with 'image' and text columns: a datasets folder or name (see load_image_dataset)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--output-dir", default="selftok-vlm-trl-lora")
    parser.add_argument("--max-steps", type=int, default=None, help="default: 1000, or 30 with --tiny")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--lora-alpha", type=int, default=32)
    parser.add_argument("--caption-dropout", type=float, default=0.1, help="empty captions in t2i examples (for CFG)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    out = Path(args.output_dir)
    if args.tiny:
        print("NOTE: --tiny fine-tunes a SEEDED RANDOM tiny VLM on 3 photos; it memorises them, nothing more.")
        args.pipeline = str(out / "base")
        tiny_selftok_pipeline("llama").save_pretrained(args.pipeline)
        images = bundled_images()
        pairs = datasets.Dataset.from_dict({"image": list(images.values()), args.text_column: [CAPTIONS[n] for n in images]})
        args.batch_size, args.learning_rate, args.lora_rank, args.lora_alpha, args.caption_dropout = 6, 5e-3, 8, 16, 0.0
        args.max_steps = args.max_steps or 30
    elif args.pipeline and args.dataset:
        pairs = load_image_dataset(args.dataset, split=args.split)
    else:
        parser.error("pass --tiny, or --pipeline and --dataset")

    pipe = SelftokPipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    examples = chat_examples(pretokenize_images(pairs, pipe), pipe, args.text_column, args.caption_dropout, args.seed)

    lm = pipe.language_model
    model = expose_trainable_tokens_head_bias(get_peft_model(lm, visual_lora_config(lm, r=args.lora_rank, lora_alpha=args.lora_alpha)))
    config = SFTConfig(
        output_dir=str(out / "trainer"),
        max_steps=args.max_steps or 1000,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        max_length=None,
        seed=args.seed,
        # trl defaults to bf16 autocast and gradient checkpointing; the tiny run is faster and exact without them
        bf16=not args.tiny and torch.cuda.is_available() and torch.cuda.is_bf16_supported(),
        **{CHECKPOINTING: not args.tiny},
        save_strategy="no" if args.tiny else "steps",
        logging_steps=1 if args.tiny else 10,
        logging_first_step=True,  # so a short run still prints the loss of its first step
        report_to="none",
    )
    trainer = SFTTrainer(model=model, args=config, train_dataset=examples, processing_class=pipe.processor.tokenizer)
    trainer.train()
    losses = [(entry["step"], entry["loss"]) for entry in trainer.state.log_history if "loss" in entry]
    print(f"loss: step {losses[0][0]} {losses[0][1]:.4f} -> step {losses[-1][0]} {losses[-1][1]:.4f}")

    pipe.language_model = trainer.model.eval()
    adapter = out / "adapter"
    pipe.save_lora_adapter(adapter, save_embedding_layers=False)
    print(f"adapter: {adapter}")

    reloaded = SelftokPipeline.from_pretrained(args.pipeline).load_lora(adapter).to(pipe.device)
    reloaded.set_progress_bar_config(disable=True)
    batch = {k: v.to(pipe.device) for k, v in collate_examples(examples.select(range(min(4, len(examples)))).to_list(), pipe.processor.pad_token_id).items()}
    with torch.no_grad():
        diff = (pipe.language_model(**batch).logits - reloaded.language_model(**batch).logits).abs().max().item()
    print(f"reloaded adapter: max |logit difference| {diff:.3g}")
    prompts = list(CAPTIONS.values()) if args.tiny else ["a photo"]
    trained_ids, reloaded_ids = (p(prompts, guidance_scale=1.0, do_sample=False, output_type="ids").token_ids for p in (pipe, reloaded))
    print(f"reloaded adapter: greedy image ids {'identical' if torch.equal(trained_ids, reloaded_ids) else 'DIFFER'}")


if __name__ == "__main__":
    main()
