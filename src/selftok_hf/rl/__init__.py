"""RL on Selftok visual tokens (Selftok-Zero style): a synthetic compositional world with exact ground truth,
a pixel-space detector, program / QA rewards, and the simplified GRPO objective and trainer."""

from ..renamed import renamed_names_getattr
from .detector import Detection, ShapeDetector, as_image_batch
from .evaluation import shapes_describe, shapes_geneval
from .grpo import (
    GRPOLossOutput,
    constrained_log_distributions,
    constrained_logprobs,
    group_advantages,
    grpo_loss,
    k3_kl,
)
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
    PromptSplit,
    ShapeInstance,
    ShapesWorld,
    describe_scene,
    parse_prompt,
    render_scene,
    score_description,
)
from .trainer import GRPOArguments, SelftokGRPOTrainer, build_reward, load_prompts

__all__ = [
    "CATEGORIES",
    "COLORS",
    "RELATIONS",
    "SHAPES",
    "CombinedReward",
    "Detection",
    "DetectorJudge",
    "GRPOArguments",
    "GRPOLossOutput",
    "ObjectSpec",
    "ProgramResult",
    "ProgramReward",
    "PromptSpec",
    "PromptSplit",
    "QAReward",
    "Question",
    "RewardFunction",
    "SelftokGRPOTrainer",
    "ShapeDetector",
    "ShapeInstance",
    "ShapesWorld",
    "as_image_batch",
    "build_reward",
    "constrained_log_distributions",
    "constrained_logprobs",
    "describe_scene",
    "dsg_questions",
    "evaluate_prompt",
    "group_advantages",
    "grpo_loss",
    "k3_kl",
    "load_prompts",
    "parse_prompt",
    "program_accuracy",
    "render_scene",
    "score_description",
    "shapes_describe",
    "shapes_geneval",
]

# GRPOTrainer was renamed so as not to share trl's class name with another API (issue 17); the old name warns.
__getattr__ = renamed_names_getattr(__name__, {"GRPOTrainer": "SelftokGRPOTrainer"})
