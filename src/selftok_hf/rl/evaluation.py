"""Evaluation in the shapes world.

- :func:`shapes_geneval` (text-to-image, GenEval-style): generate images for prompts, read them with the exact
  detector, report per-category accuracy (every check of the prompt passes) and the mean over categories.
- :func:`shapes_describe` (understanding): ask "What is shown?" about scenes, score every answer aspect by aspect
  against the true scene (:func:`~selftok_hf.rl.shapes_world.score_description`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..generation_selftok import generate_image_tokens
from ..renamed import renamed_kwargs
from .rewards import ProgramReward, program_accuracy
from .shapes_world import PromptSpec, ShapeInstance, score_description

__all__ = ["decode_images", "prompt_batch", "shapes_describe", "shapes_geneval"]


def prompt_batch(processor, prompts: Sequence[str], device=None) -> dict[str, torch.Tensor]:
    """Left-padded text-to-image chat prompts ending with begin-of-image: ``{"input_ids", "attention_mask"}`` `(N, P)`."""
    batch = processor.pad([processor.chat_prompt(p, generate_image=True) for p in prompts], padding_side="left")
    return {k: v.to(device) if device is not None else v for k, v in batch.items()}


@torch.no_grad()
@renamed_kwargs(decoder_steps="num_inference_steps")
def decode_images(decoder, token_ids: torch.LongTensor, use_renderer: bool, num_inference_steps: int) -> torch.Tensor:
    """Selftok ids `(N, K)` -> images `(N, 3, H, W)` in [0, 1] through a :class:`SelftokDecoderPipeline`
    (one-step renderer, or ``num_inference_steps`` flow steps)."""
    return decoder(token_ids, num_inference_steps=num_inference_steps, use_renderer=use_renderer, output_type="pt").images


@torch.no_grad()
@renamed_kwargs(decoder_steps="num_inference_steps")
def shapes_geneval(
    pipeline,
    specs: Sequence[PromptSpec],
    images_per_prompt: int = 4,
    seed: int = 0,
    batch_size: int = 64,
    temperature: float = 1.0,
    use_renderer: bool = True,
    num_inference_steps: int = 4,
    reward: ProgramReward | None = None,
    image_decoder: Callable[[torch.LongTensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Per-category accuracy of a :class:`~selftok_hf.SelftokPipeline` on shapes-world prompts.

    Args:
        pipeline: the VLM pipeline (``language_model``, ``processor``, ``vocabulary`` and, without ``image_decoder``,
            ``decoder``).
        specs: the prompts (e.g. ``ShapesWorld.split()["held_out"]``).
        images_per_prompt: samples per prompt (GenEval: 4).
        seed: seeds the token sampling and the decoder noise.
        batch_size: sequences generated at once.
        temperature: sampling temperature (no CFG, no top-k: the policy RL optimises).
        use_renderer / num_inference_steps: how ids become pixels: the one-step renderer, or that many flow steps
            of the decoder (formerly ``decoder_steps``).
        reward: the program checker (default: the exact shapes detector).
        image_decoder: ``ids (N, K) -> images (N, 3, H, W) in [0, 1]`` (default: ``pipeline.decoder`` per
            ``use_renderer`` / ``num_inference_steps``).
    Returns:
        ``{category: accuracy, ..., "overall": mean over categories}`` plus ``"reward"``: the mean program reward.
    """
    reward = reward if reward is not None else ProgramReward()
    prompts = [spec.text() for spec in specs for _ in range(images_per_prompt)]
    metadata = [{"spec": spec} for spec in specs for _ in range(images_per_prompt)]
    model = pipeline.language_model
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    generator = torch.Generator(device="cpu").manual_seed(seed)
    results = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            batch = prompt_batch(pipeline.processor, chunk, device)
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
            ids = generate_image_tokens(model, batch["input_ids"], batch["attention_mask"], pipeline.vocabulary, temperature=temperature)
            if image_decoder is not None:
                images = image_decoder(ids)
            else:
                images = decode_images(pipeline.decoder, ids, use_renderer, num_inference_steps)
            results += reward.evaluate(chunk, images, metadata[start : start + batch_size])
    finally:
        model.train(was_training)
    accuracy = program_accuracy(results, [m["spec"].category for m in metadata])
    accuracy["reward"] = sum(r.score for r in results) / len(results)
    return accuracy


@torch.no_grad()
def shapes_describe(
    pipeline,
    scenes: Sequence[Sequence[ShapeInstance]],
    images: torch.Tensor,
    question: str = "What is shown?",
    batch_size: int = 64,
    relation_margin: float = 0.1,
) -> dict:
    """How often :meth:`~selftok_hf.SelftokPipeline.describe` (greedy) gets a scene right, aspect by aspect.

    Args:
        pipeline: the VLM pipeline.
        scenes: the true scenes.
        images: their renders `(N, 3, H, W)` in [0, 1], tokenised by the pipeline's Selftok tokenizer.
        question: asked about every image.
        batch_size: images answered at once.
        relation_margin: margin of a stated relation, as a fraction of the image width.
    Returns:
        ``{aspect: accuracy}`` for the aspects of :func:`score_description` (``"correct"``: all of them) and
        ``"answers"``: the answers, in the order of ``scenes``.
    """
    if len(scenes) != len(images):
        raise ValueError(f"got {len(images)} images for {len(scenes)} scenes")
    answers: list[str] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size] * 2 - 1
        answers += pipeline.describe(chunk, question=question)
    margin = relation_margin * images.shape[-1]
    scores = [score_description(answer, scene, margin) for answer, scene in zip(answers, scenes)]
    summary: dict = {aspect: sum(s[aspect] for s in scores) / len(scores) for aspect in scores[0]}
    summary["answers"] = answers
    return summary
