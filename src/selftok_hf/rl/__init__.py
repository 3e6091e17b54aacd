"""RL on Selftok visual tokens (Selftok-Zero style): a synthetic compositional world with exact ground truth,
a pixel-space detector, program / QA rewards, and the simplified GRPO objective and trainer."""

from .detector import Detection, ShapeDetector, as_image_batch
from .rewards import (
    CombinedReward,
    DetectorJudge,
    ProgramResult,
    ProgramReward,
    QAReward,
    Question,
    RewardFunction,
    dsg_questions,
    evaluate_prompt,
    program_accuracy,
)
from .shapes_world import (
    CATEGORIES,
    COLORS,
    RELATIONS,
    SHAPES,
    ObjectSpec,
    PromptSpec,
    ShapeInstance,
    ShapesWorld,
    parse_prompt,
    render_scene,
)

__all__ = [
    "CATEGORIES",
    "COLORS",
    "RELATIONS",
    "SHAPES",
    "CombinedReward",
    "Detection",
    "DetectorJudge",
    "ObjectSpec",
    "ProgramResult",
    "ProgramReward",
    "PromptSpec",
    "QAReward",
    "Question",
    "RewardFunction",
    "ShapeDetector",
    "ShapeInstance",
    "ShapesWorld",
    "as_image_batch",
    "dsg_questions",
    "evaluate_prompt",
    "parse_prompt",
    "program_accuracy",
    "render_scene",
]
