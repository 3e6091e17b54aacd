"""RL on Selftok visual tokens in the shapes world (Selftok-Zero style): GRPO on held-in prompts with the exact
program reward plus a hand-written dense reward, GenEval-style accuracy on held-out prompts before and after.

    python examples/rl_shapes.py --pipeline sft/pipeline --output-dir rl        # a SelftokPipeline, e.g. fine-tuned on shapes
    python examples/rl_shapes.py --tiny --output-dir /tmp/rl                    # offline: random tiny LM, 4 steps

A reward is any callable ``(prompts, token_ids, images, metadata) -> one float per sample`` on the decoded images;
``CombinedReward`` sums them with weights and logs each. With ``--tiny`` a random tiny LM samples tokens of the
bundled trained tokenizer: the run shows every moving part (sampling, decoding, rewards, GRPO steps, export) in
seconds, not a useful policy. A full miniature study (SFT, then GRPO, Selftok vs a raster VQ) is
``benchmarks/rl_shapes_miniature.py``.
"""

import argparse

import torch

from selftok_hf import SelftokPipeline, SelftokProcessor, add_visual_tokens
from selftok_hf.assets import embedded_pipeline
from selftok_hf.rl import (
    COLORS,
    CombinedReward,
    GRPOArguments,
    ProgramReward,
    SelftokGRPOTrainer,
    ShapesWorld,
    shapes_geneval,
)
from selftok_hf.testing.tiny_vlm import tiny_language_model, tiny_text_tokenizer


def tiny_vlm() -> SelftokPipeline:
    """A seeded random tiny LM given the visual vocabulary of the bundled *trained* 32-px Selftok (32 tokens, 1024
    codes), so that the decoded images, and the rewards, depend on the sampled tokens."""
    decoder = embedded_pipeline()
    tokenizer = tiny_text_tokenizer()
    language_model = tiny_language_model("llama", len(tokenizer), seed=0, tokenizer=tokenizer)
    vocabulary = add_visual_tokens(language_model, tokenizer, decoder.image_tokenizer, init="codebook")
    return SelftokPipeline(language_model, SelftokProcessor(decoder.image_processor, tokenizer, vocabulary), decoder)


def colour_match(prompts, token_ids, images, metadata) -> list[float]:
    """Dense shaping reward: for each colour the prompt names, the image's soft coverage by it (the mean over pixels of
    exp(-|pixel - colour|^2 / 0.1), RGB in [0, 1]), averaged over the named colours; 0 when the prompt names none."""
    scores = []
    for image, row in zip(images, metadata):
        colours = {obj.color for obj in row["spec"].objects if obj.color is not None}
        soft = [torch.exp(-((image - torch.tensor(COLORS[c])[:, None, None]) ** 2).sum(0) / 0.1).mean() for c in colours]
        scores.append(float(sum(soft) / len(soft)) if soft else 0.0)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pipeline", help="a SelftokPipeline folder whose LM is trained")
    source.add_argument("--tiny", action="store_true", help="a seeded random tiny LM on the bundled tokenizer, a few small steps (offline)")
    parser.add_argument("--output-dir", default="selftok-rl")
    parser.add_argument("--max-steps", type=int, default=None, help="GRPO steps (default: 1000; --tiny: 4)")
    parser.add_argument("--images-per-prompt", type=int, default=None, help="held-out evaluation samples per prompt (default: 4; --tiny: 1)")
    args = parser.parse_args()

    pipe = tiny_vlm() if args.tiny else SelftokPipeline.from_pretrained(args.pipeline)
    pipe.set_progress_bar_config(disable=True)
    world = ShapesWorld(image_size=pipe.decoder.image_tokenizer.config.image_size)
    split = world.split(held_out_fraction=0.5, seed=0)  # 84 prompts in 6 GenEval categories, half held out
    images_per_prompt = args.images_per_prompt or (1 if args.tiny else 4)

    def evaluate(when: str) -> None:
        accuracy = shapes_geneval(pipe, split["held_out"], images_per_prompt=images_per_prompt, use_renderer=True)
        print(f"held-out accuracy {when}: overall {accuracy['overall']:.3f}, mean program reward {accuracy['reward']:.3f}")

    evaluate("before RL")
    # The paper's GRPO: G samples per prompt, group-normalised advantages, loss -A log pi + beta k3-KL to the start.
    grpo = (
        {"group_size": 4, "batch_size": 2, "learning_rate": 1e-3, "max_steps": 4}
        if args.tiny
        else {"group_size": 24, "batch_size": 8, "learning_rate": 1.5e-6, "max_steps": 1000}
    )
    if args.max_steps:
        grpo["max_steps"] = args.max_steps
    training_args = GRPOArguments(output_dir=args.output_dir, beta=0.04, use_renderer=True, log_every=1, checkpoint_every=0, **grpo)
    reward = CombinedReward({"program": ProgramReward(), "colour": colour_match}, weights={"program": 1.0, "colour": 0.5})
    trainer = SelftokGRPOTrainer(training_args, pipeline=pipe, prompts=[spec.text() for spec in split["held_in"]], reward=reward)
    history = trainer.run()
    for logs in history:
        print(
            f"step {logs['step']}: reward {logs['reward_mean']:.3f} (program {logs['reward_program']:.3f}, colour {logs['reward_colour']:.3f}), "
            f"kl {logs['kl']:.2e}, entropy {logs['entropy']:.3f}"
        )
    print(f"wrote {trainer.export()}")
    evaluate("after RL")


if __name__ == "__main__":
    main()
