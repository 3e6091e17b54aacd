"""An exact pixel-space detector for the shapes world: shapes, colours and positions read from pixels.

The detector is a fixed program, not a learned model:

1. Convert to HSV. A pixel is foreground when it is bright and saturated enough (``value > value_threshold``,
   ``saturation > saturation_threshold``); it takes the palette colour whose hue is nearest, if within
   ``hue_tolerance`` degrees. Blur mixes a shape with the *achromatic* black background, which lowers
   value but keeps hue, so colour decisions survive blur.
2. Connected components (8-connectivity) per colour, by batched label propagation; components smaller
   than ``min_area`` (a fraction of the image area) are discarded as artefacts.
3. Shape from two scale-free central moments of the component's pixels, which do not depend on its
   bounding box (so a stray edge pixel barely moves them): the vertical skewness
   ``E[dy^3] / E[dy^2]^1.5`` (-0.566 for an apex-up triangle, whose width grows downwards; 0 for a circle or
   a square) and the cross-kurtosis ``E[dx^2 dy^2] / (E[dx^2] E[dy^2])`` (1 for a square, whose x and y are
   independent; 2/3 for a disc).

Moments are weighted by pixel value, which makes them nearly blur-invariant: a Gaussian blur adds
sigma^2 to both variances, keeps the third moment, and keeps the cross-kurtosis of a square at exactly 1.

Tolerance (``tests/test_rl_world.py`` checks it on all 84 prompts x 2 random scenes): at 32 px, where
shapes are 8-11 px, every shape, colour and centroid (to 1.5 px) is recovered on clean renders, after
Gaussian blur up to sigma = 1.25 px, and with additive Gaussian noise of std 0.1 on top of blur up to
sigma = 0.75 px (98.8% of images at sigma = 1.0 with that noise). At 64 px it is exact up to
sigma = 1.5 px with the noise. Beyond about 1/6 of the smallest shape's side, blur turns squares into
circles; same-coloured shapes closer than about 3 sigma merge into one component.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

from .shapes_world import COLORS

__all__ = ["Detection", "ShapeDetector", "as_image_batch"]


@dataclass(frozen=True)
class Detection:
    """One detected shape. Coordinates are pixels, ``x`` right and ``y`` down; ``bbox`` is inclusive."""

    shape: str
    color: str
    cx: float
    cy: float
    area: int
    bbox: tuple[int, int, int, int]


def as_image_batch(images: torch.Tensor | np.ndarray | PIL.Image.Image | Sequence) -> torch.Tensor:
    """Images -> float `(B, 3, H, W)` in [0, 1].

    Accepts a tensor `(B, 3, H, W)` or `(3, H, W)` in [0, 1], a NumPy array `(B, H, W, 3)` / `(H, W, 3)` (uint8,
    or float in [0, 1]), a PIL image, or a list of PIL images / arrays.
    """
    if isinstance(images, PIL.Image.Image):
        images = [images]
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("got an empty list of images")
        return torch.cat([as_image_batch(np.asarray(im.convert("RGB")) if isinstance(im, PIL.Image.Image) else im) for im in images])
    if isinstance(images, np.ndarray):
        array = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)
        if array.ndim == 3:
            array = array[None]
        if array.ndim != 4 or array.shape[-1] != 3:
            raise ValueError(f"NumPy images must be (B, H, W, 3) or (H, W, 3), got shape {images.shape}")
        return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()
    if isinstance(images, torch.Tensor):
        images = images.detach().float().cpu()
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"image tensors must be (B, 3, H, W) or (3, H, W) in [0, 1], got shape {tuple(images.shape)}")
        return images
    raise TypeError(f"expected a tensor, array, PIL image or list of them, got {type(images).__name__}")


def _rgb_to_hsv(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(B, 3, H, W)` in [0, 1] -> hue in degrees [0, 360), saturation and value, each `(B, H, W)`."""
    r, g, b = images.unbind(1)
    value, argmax = images.max(1)
    chroma = value - images.min(1).values
    safe = chroma.clamp_min(1e-8)
    hue = torch.where(argmax == 0, ((g - b) / safe) % 6, torch.where(argmax == 1, (b - r) / safe + 2, (r - g) / safe + 4)) * 60.0
    saturation = chroma / value.clamp_min(1e-8)
    return hue, saturation, value


def _label_components(masks: torch.Tensor) -> torch.Tensor:
    """8-connected component labels of boolean masks `(N, H, W)`: 0 outside, else the largest flat pixel index + 1
    in the component (so labels are unique within each mask)."""
    N, H, W = masks.shape
    ids = torch.arange(1, H * W + 1, dtype=torch.float32).view(1, H, W).expand(N, H, W)
    labels = torch.where(masks, ids, torch.zeros(()))
    for _ in range(H * W):
        grown = F.max_pool2d(labels.unsqueeze(1), 3, stride=1, padding=1).squeeze(1) * masks
        if torch.equal(grown, labels):
            break
        labels = grown
    return labels.long()


@dataclass
class ShapeDetector:
    """Reads shapes, colours and centroids from rendered (or reconstructed) shapes-world images.

    Args:
        colors: palette name -> RGB in [0, 1]; classification uses each colour's hue.
        value_threshold / saturation_threshold: foreground test on HSV value and saturation.
        hue_tolerance: maximum hue distance (degrees) to the nearest palette hue.
        min_area: smallest component kept, as a fraction of the image area (0.01 = 10 px at 32 px).
        triangle_skew: components whose vertical skewness is below this are triangles (ideal -0.566 vs 0).
        square_cross_kurtosis: non-triangles whose cross-kurtosis is at least this are squares
            (ideal 1 vs 2/3 for a circle).
    """

    colors: dict[str, tuple[float, float, float]] | None = None
    value_threshold: float = 0.35
    saturation_threshold: float = 0.5
    hue_tolerance: float = 25.0
    min_area: float = 0.01
    triangle_skew: float = -0.18
    square_cross_kurtosis: float = 0.84

    def __post_init__(self):
        self.colors = dict(COLORS if self.colors is None else self.colors)
        palette = torch.tensor(list(self.colors.values()), dtype=torch.float32).view(-1, 3, 1, 1)
        hue, saturation, _ = _rgb_to_hsv(palette)
        if (saturation.flatten() < 0.5).any():
            raise ValueError("every palette colour must be saturated (the detector classifies colours by hue)")
        self._palette_hues = hue.flatten()

    def color_map(self, images: torch.Tensor) -> torch.Tensor:
        """Per-pixel palette index `(B, H, W)` (int64), -1 for background / unclassifiable pixels."""
        hue, saturation, value = _rgb_to_hsv(images)
        distance = (hue.unsqueeze(-1) - self._palette_hues).abs()
        distance = torch.minimum(distance, 360.0 - distance)
        nearest_distance, nearest = distance.min(-1)
        foreground = (value > self.value_threshold) & (saturation > self.saturation_threshold) & (nearest_distance <= self.hue_tolerance)
        return torch.where(foreground, nearest, torch.full_like(nearest, -1))

    @torch.no_grad()
    def __call__(self, images) -> list[list[Detection]]:
        """Detect shapes in images (any format :func:`as_image_batch` accepts).

        Returns:
            one list of :class:`Detection` per image, sorted by (x, y) of the centroid.
        """
        images = as_image_batch(images)
        B, _, H, W = images.shape
        names = list(self.colors)
        C = len(names)
        color_index = self.color_map(images)
        value = images.max(1).values  # (B, H, W)
        masks = color_index.unsqueeze(1) == torch.arange(C).view(1, C, 1, 1)  # (B, C, H, W)
        labels = _label_components(masks.view(B * C, H, W)).view(B * C, H * W)

        # One global id per (image, colour, component), then per-component statistics by bincount.
        plane = torch.arange(B * C).unsqueeze(1).expand_as(labels)
        keep = labels > 0
        component, inverse = torch.unique(plane[keep] * (H * W + 1) + labels[keep], return_inverse=True)
        pixel = torch.arange(H * W).expand_as(labels)[keep]
        ys, xs = pixel // W, pixel % W
        n = component.numel()
        if n == 0:
            return [[] for _ in range(B)]
        area = torch.bincount(inverse, minlength=n)
        weight = value.view(B, 1, H * W).expand(B, C, H * W).reshape(B * C, H * W)[keep].double()
        mass = torch.bincount(inverse, weights=weight, minlength=n)

        def mean(values):
            return torch.bincount(inverse, weights=weight * values, minlength=n) / mass

        cx, cy = mean(xs.double() + 0.5), mean(ys.double() + 0.5)
        x0 = torch.full((n,), W).scatter_reduce(0, inverse, xs, "amin")
        x1 = torch.full((n,), -1).scatter_reduce(0, inverse, xs, "amax")
        y0 = torch.full((n,), H).scatter_reduce(0, inverse, ys, "amin")
        y1 = torch.full((n,), -1).scatter_reduce(0, inverse, ys, "amax")
        # Central moments (pixel centres); scale-free shape features from them.
        dx, dy = xs.double() + 0.5 - cx[inverse], ys.double() + 0.5 - cy[inverse]

        var_x, var_y = mean(dx**2).clamp_min(1e-6), mean(dy**2).clamp_min(1e-6)
        skew_y = mean(dy**3) / var_y**1.5
        cross_kurtosis = mean(dx**2 * dy**2) / (var_x * var_y)

        plane_of = (component // (H * W + 1)).tolist()
        detections: list[list[Detection]] = [[] for _ in range(B)]
        min_pixels = self.min_area * H * W
        for i in range(n):
            if area[i] < min_pixels:
                continue
            if skew_y[i] < self.triangle_skew:
                shape = "triangle"
            elif cross_kurtosis[i] >= self.square_cross_kurtosis:
                shape = "square"
            else:
                shape = "circle"
            b, c = divmod(plane_of[i], C)
            detections[b].append(
                Detection(shape, names[c], float(cx[i]), float(cy[i]), int(area[i]), (int(x0[i]), int(y0[i]), int(x1[i]), int(y1[i])))
            )
        for found in detections:
            found.sort(key=lambda d: (d.cx, d.cy))
        return detections
