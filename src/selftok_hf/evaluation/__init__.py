"""Measuring Selftok: reconstruction quality (``reconstruction``, the ``selftok-eval`` tool), the image metrics
(``metrics``: PSNR, SSIM, LPIPS, rFID), and the baselines its numbers are read against (``baselines``: the best
bicubic thumbnail within the same bits; ``raster_vq``: a raster-order spatial VQ autoencoder). None of it travels
with the weights."""

from .reconstruction import (
    DecodeSetting,
    EvaluationMetrics,
    EvaluationOutputs,
    EvaluationResult,
    decode_settings,
    default_prefix_lengths,
    evaluate_reconstruction,
    main,
    side_by_side,
)

__all__ = [
    "DecodeSetting",
    "EvaluationMetrics",
    "EvaluationOutputs",
    "EvaluationResult",
    "decode_settings",
    "default_prefix_lengths",
    "evaluate_reconstruction",
    "main",
    "side_by_side",
]
