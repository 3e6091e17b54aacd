"""Rewards for RL on visual tokens: a common callable interface, weighted combination, program-based
rewards for compositional prompts (GenEval-style), and a QA-based reward with a pluggable judge.

Every reward is a callable

    reward(prompts: list[str], token_ids: LongTensor (N, K), images: Tensor (N, 3, H, W) in [0, 1],
           metadata: list[dict]) -> list[float]            # one float per sample

where ``token_ids`` are the generated visual ids (AR order), ``images`` the decoded pixels and
``metadata[i]`` whatever the prompt dataset carries (the shapes world puts its :class:`PromptSpec` under
``"spec"``). :class:`CombinedReward` sums rewards with weights and keeps the components for logging.

Program reward (the paper's "program-based" reward): a detector reads the image, the prompt becomes a
list of 0/1 checks (object present, colour, exact count, relative position), and the reward is their
mean; the sample is *correct* (GenEval accuracy) when every check passes.

QA reward (the paper's DSG-style reward): the prompt becomes yes/no questions with dependencies; a
judge (a VLM in the paper; any ``judge(images, questions) -> P(yes)`` here) answers them; a question
whose parent is answered "no" scores 0 (the DSG rule); the reward is the mean score.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from .detector import Detection, ShapeDetector, as_image_batch
from .shapes_world import ObjectSpec, PromptSpec, parse_prompt, relation_holds

__all__ = [
    "CombinedReward",
    "DetectorJudge",
    "ProgramResult",
    "ProgramReward",
    "QAReward",
    "Question",
    "RewardFunction",
    "dsg_questions",
    "evaluate_prompt",
    "program_accuracy",
]


class RewardFunction(Protocol):
    """The reward interface: one float per sample (see the module docstring for the arguments)."""

    def __call__(
        self, prompts: Sequence[str], token_ids: torch.LongTensor, images: torch.Tensor, metadata: Sequence[Mapping]
    ) -> Sequence[float]: ...


def _check_batch(prompts, token_ids, images, metadata) -> None:
    n = len(prompts)
    if token_ids is not None and token_ids.shape[0] != n:
        raise ValueError(f"token_ids has {token_ids.shape[0]} rows for {n} prompts")
    if images is not None and len(images) != n:
        raise ValueError(f"got {len(images)} images for {n} prompts")
    if metadata is not None and len(metadata) != n:
        raise ValueError(f"got {len(metadata)} metadata entries for {n} prompts")


class CombinedReward:
    """A weighted sum of named rewards: ``total = sum_k weights[k] * rewards[k](...)``.

    Args:
        rewards: name -> reward callable.
        weights: name -> weight (default 1 for every reward).
    """

    def __init__(self, rewards: Mapping[str, RewardFunction], weights: Mapping[str, float] | None = None):
        if not rewards:
            raise ValueError("CombinedReward needs at least one reward")
        weights = dict(weights or {})
        unknown = set(weights) - set(rewards)
        if unknown:
            raise ValueError(f"weights given for unknown rewards {sorted(unknown)}; rewards are {sorted(rewards)}")
        self.rewards = dict(rewards)
        self.weights = {name: float(weights.get(name, 1.0)) for name in rewards}

    def compute(self, prompts, token_ids, images, metadata) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Returns ``(total, components)``: float32 tensors of shape `(N,)`; components are unweighted."""
        _check_batch(prompts, token_ids, images, metadata)
        components = {}
        for name, fn in self.rewards.items():
            values = torch.as_tensor([float(v) for v in fn(prompts, token_ids, images, metadata)], dtype=torch.float32)
            if values.shape != (len(prompts),):
                raise ValueError(f"reward {name!r} returned {tuple(values.shape)} values for {len(prompts)} samples")
            components[name] = values
        total = sum(self.weights[name] * values for name, values in components.items())
        return total, components

    def __call__(self, prompts, token_ids, images, metadata) -> list[float]:
        return self.compute(prompts, token_ids, images, metadata)[0].tolist()


# ------------------------------------------------------------------------------------------ programs
@dataclass(frozen=True)
class ProgramResult:
    """The 0/1 checks of one prompt on one image, by name (e.g. ``"present: circle"``)."""

    checks: tuple[tuple[str, bool], ...]

    @property
    def correct(self) -> bool:
        """GenEval-style accuracy: every check passes."""
        return all(ok for _, ok in self.checks)

    @property
    def score(self) -> float:
        """The program reward: the fraction of checks that pass."""
        return sum(ok for _, ok in self.checks) / len(self.checks)


def _matching(detections: Sequence[Detection], obj: ObjectSpec) -> list[Detection]:
    return [d for d in detections if d.shape == obj.shape and (obj.color is None or d.color == obj.color)]


def evaluate_prompt(spec: PromptSpec, detections: Sequence[Detection], margin: float) -> ProgramResult:
    """Check a prompt against the detections of one image.

    For each object: ``present`` (a shape of that kind exists), ``color`` (one of them has the colour, if
    the prompt names one), ``count`` (exactly ``n`` matching shapes, if ``n > 1``); for a relation,
    ``relation`` (some matching subject and object satisfy it by ``margin`` pixels).
    """
    checks = []
    for obj in spec.objects:
        checks.append((f"present: {obj.shape}", any(d.shape == obj.shape for d in detections)))
        if obj.color is not None:
            checks.append((f"color: {obj.color} {obj.shape}", bool(_matching(detections, obj))))
        if obj.count > 1:
            checks.append((f"count: {obj.text()}", len(_matching(detections, obj)) == obj.count))
    if spec.relation is not None:
        subjects, objects = _matching(detections, spec.objects[0]), _matching(detections, spec.objects[1])
        holds = any(relation_holds((s.cx, s.cy), (o.cx, o.cy), spec.relation, margin) for s in subjects for o in objects if s is not o)
        checks.append((f"relation: {spec.relation}", holds))
    return ProgramResult(tuple(checks))


def _specs(prompts: Sequence[str], metadata: Sequence[Mapping] | None) -> list[PromptSpec]:
    specs = []
    for i, prompt in enumerate(prompts):
        spec = metadata[i].get("spec") if metadata is not None else None
        specs.append(spec if spec is not None else parse_prompt(prompt))
    return specs


class ProgramReward:
    """The program-based reward: mean of the 0/1 checks of :func:`evaluate_prompt` on detected shapes.

    Args:
        detector: ``images (N, 3, H, W) in [0, 1] -> list of lists of Detection``; default a
            :class:`ShapeDetector` for the shapes world. Any detector producing :class:`Detection` objects fits.
        relation_margin: margin of relative positions as a fraction of the image width.
    """

    def __init__(self, detector: Callable[[torch.Tensor], list[list[Detection]]] | None = None, relation_margin: float = 0.1):
        self.detector = detector if detector is not None else ShapeDetector()
        self.relation_margin = relation_margin

    def evaluate(self, prompts: Sequence[str], images, metadata: Sequence[Mapping] | None = None) -> list[ProgramResult]:
        """Per-sample :class:`ProgramResult` (use ``.correct`` for accuracy, ``.score`` for the reward)."""
        images = as_image_batch(images)
        _check_batch(prompts, None, images, metadata)
        detections = self.detector(images)
        margin = self.relation_margin * images.shape[-1]
        return [evaluate_prompt(spec, found, margin) for spec, found in zip(_specs(prompts, metadata), detections)]

    def __call__(self, prompts, token_ids, images, metadata) -> list[float]:
        _check_batch(prompts, token_ids, images, metadata)
        return [result.score for result in self.evaluate(prompts, images, metadata)]


# ---------------------------------------------------------------------------------------------- QA
@dataclass(frozen=True)
class Question:
    """A yes/no question; ``parents`` index earlier questions that must be answered "yes" for it to count."""

    text: str
    parents: tuple[int, ...] = ()


def dsg_questions(spec: PromptSpec) -> list[Question]:
    """DSG-style questions for a shapes-world prompt: existence first, then colour / count, then relation.

    >>> [q.text for q in dsg_questions(parse_prompt("a red circle left of a square"))]
    ['Is there a circle?', 'Is there a red circle?', 'Is there a square?', 'Is the red circle left of the square?']
    """
    questions: list[Question] = []
    roots = []
    for obj in spec.objects:
        root = len(questions)
        questions.append(Question(f"Is there a {obj.shape}?"))
        roots.append(root)
        if obj.color is not None:
            roots.append(len(questions))
            questions.append(Question(f"Is there a {obj.color} {obj.shape}?", (root,)))
        if obj.count > 1:
            roots.append(len(questions))
            questions.append(Question(f"Are there exactly {obj.text()}?", (root,)))
    if spec.relation is not None:
        subject, obj = (ObjectSpec(o.shape, o.color).text().replace("a ", "the ", 1) for o in spec.objects)
        questions.append(Question(f"Is {subject} {spec.relation} {obj}?", tuple(roots)))
    return questions


class QAReward:
    """A DSG-style QA reward.

    Args:
        judge: ``judge(images (M, 3, H, W) in [0, 1], questions: list[str]) -> M floats in [0, 1]``, the
            probability that the answer to ``questions[m]`` about ``images[m]`` is "yes" (a VLM in the paper;
            :class:`DetectorJudge` for the shapes world).
        questions_fn: prompt spec -> list of :class:`Question` (default :func:`dsg_questions`).
    """

    def __init__(self, judge: Callable[[torch.Tensor, list[str]], Sequence[float]], questions_fn: Callable[[PromptSpec], list[Question]] = dsg_questions):
        self.judge = judge
        self.questions_fn = questions_fn

    def __call__(self, prompts, token_ids, images, metadata) -> list[float]:
        _check_batch(prompts, token_ids, images, metadata)
        images = as_image_batch(images)
        per_sample = [self.questions_fn(spec) for spec in _specs(prompts, metadata)]
        flat_images = torch.stack([images[i] for i, qs in enumerate(per_sample) for _ in qs])
        answers = [float(a) for a in self.judge(flat_images, [q.text for qs in per_sample for q in qs])]
        if len(answers) != len(flat_images):
            raise ValueError(f"judge returned {len(answers)} answers for {len(flat_images)} questions")
        rewards, start = [], 0
        for questions in per_sample:
            scores = answers[start : start + len(questions)]
            start += len(questions)
            # DSG dependency rule: a question whose parent was answered "no" scores 0.
            final = [0.0 if any(scores[p] < 0.5 for p in q.parents) else s for q, s in zip(questions, scores)]
            rewards.append(sum(final) / len(final))
        return rewards


class DetectorJudge:
    """A judge that answers :func:`dsg_questions`' questions exactly, with a detector (a stand-in for a VLM
    in the shapes world, and a reference for testing QA rewards). Answers are 0 or 1."""

    _PATTERNS = (
        (re.compile(r"^is there (.+)\?$"), "{}"),
        (re.compile(r"^are there exactly (.+)\?$"), "{}"),
        (re.compile(r"^is the (.+) (left of|right of|above|below) the (.+)\?$"), "a {} {} a {}"),
    )

    def __init__(self, detector: Callable | None = None, relation_margin: float = 0.1):
        self.program = ProgramReward(detector, relation_margin)

    def __call__(self, images: torch.Tensor, questions: list[str]) -> list[float]:
        claims = []
        for question in questions:
            text = question.lower().strip()
            for pattern, template in self._PATTERNS:
                match = pattern.match(text)
                if match:
                    claims.append(template.format(*match.groups()))
                    break
            else:
                raise ValueError(f"DetectorJudge cannot parse question {question!r}")
        return [float(r.correct) for r in self.program.evaluate(claims, images)]


def program_accuracy(results: Sequence[ProgramResult], categories: Sequence[str]) -> dict[str, float]:
    """Per-category accuracy (fraction of correct samples) plus ``"overall"``, the mean over categories (GenEval)."""
    by_category: dict[str, list[bool]] = {}
    for result, category in zip(results, categories):
        by_category.setdefault(category, []).append(result.correct)
    accuracy = {c: sum(v) / len(v) for c, v in by_category.items()}
    if accuracy:
        accuracy["overall"] = sum(accuracy.values()) / len(accuracy)
    return accuracy

