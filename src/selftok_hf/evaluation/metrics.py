"""Reconstruction metrics in plain torch: PSNR, SSIM, LPIPS and FID (Fréchet distance of Inception features).

Every function takes batched images ``(B, C, H, W)`` (a single ``(C, H, W)`` image is also accepted) and
compares ``preds`` against ``target`` image by image. No weights are downloaded and nothing outside torch is
needed at run time; LPIPS and the FID Inception network load *user-supplied* weight files.

Conventions (those of the Selftok evaluators and of the reference implementations named below):

* **PSNR** — :func:`psnr` gives one value per image, ``10 log10(data_range² / MSE)`` with the MSE over all
  pixels and channels of that image; peers average it over images. Selftok's older evaluator instead takes
  the PSNR of the MSE of a whole batch: ``psnr_from_mse(mean_squared_error(x, y).mean())`` (equal-size images).
  An exact match gives ``inf``.
* **SSIM** — :func:`ssim` is ``skimage.metrics.structural_similarity`` with ``channel_axis`` set to the channel
  dimension: SSIM of every channel as a 2-D image, then the mean over channels. The defaults are skimage's
  (7x7 uniform window, sample covariance, K1 = 0.01, K2 = 0.03); ``gaussian_weights=True`` is skimage's
  11-tap Gaussian (σ = 1.5, truncate 3.5). ``data_range`` must be given, as skimage demands for float images:
  a number, a per-image tensor, or ``"target"`` for ``target.max() - target.min()`` of each target image,
  which is what Selftok's evaluators pass (``data_range=ref.max()-ref.min(), channel_axis=0``). LlamaGen's
  ``data_range=2.0`` on [0, 1] images is not interchangeable with it. Everything is computed in float64;
  skimage computes in float32 for float32 inputs, which is the only source of (~1e-6) differences.
* **LPIPS** — :class:`LPIPS` is LPIPS v0.1 with the AlexNet backbone (``lpips.LPIPS(net="alex")``), inputs in
  [-1, 1] like the ``lpips`` package (``normalize=True`` for [0, 1]).
* **FID** — :class:`InceptionFeatureExtractor` is pytorch-fid's FID Inception-v3 (the TF 2015-12-05 graph
  with its three block quirks), giving the 2048-d pool3 features of images in [0, 1] after a bilinear resize
  to 299x299. :class:`FIDAccumulator` gathers mean and covariance of any extractor's features, and
  :func:`frechet_distance` is ``|μ1 - μ2|² + Tr(Σ1 + Σ2 - 2 (Σ1 Σ2)^½)``. Features of the torchvision
  Inception give FIDs about 1.5 lower: never mix the two.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LPIPS",
    "FIDAccumulator",
    "InceptionFeatureExtractor",
    "frechet_distance",
    "load_weights_file",
    "mean_squared_error",
    "psnr",
    "psnr_from_mse",
    "ssim",
]


# ----------------------------------------------------------------------------------------------- helpers
def _as_image_batch(preds: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a pair of image batches and return them as ``(B, C, H, W)``."""
    for name, value in (("preds", preds), ("target", target)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor (images scaled to a known range), got {value.dtype}")
        if value.ndim not in (3, 4):
            raise ValueError(f"{name} must have shape (B, C, H, W) or (C, H, W), got {tuple(value.shape)}")
    if preds.shape != target.shape:
        raise ValueError(f"preds and target must have the same shape, got {tuple(preds.shape)} and {tuple(target.shape)}")
    if preds.ndim == 3:
        preds, target = preds.unsqueeze(0), target.unsqueeze(0)
    return preds, target


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``torch.save`` file (tensors only, ``weights_only=True``)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state_dict = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state_dict, dict):
        raise TypeError(f"{path} does not hold a state dict (a mapping of names to tensors), got {type(state_dict).__name__}")
    return dict(state_dict)


def _load_checked(module: nn.Module, state_dict: dict[str, torch.Tensor], source: str, ignored_prefixes: tuple[str, ...] = ()) -> None:
    """Load ``state_dict`` into ``module`` and raise a ``ValueError`` naming every missing, unexpected or
    mis-shaped key. Keys under ``ignored_prefixes`` (heads the metric does not use) are skipped, and
    BatchNorm's ``num_batches_tracked`` counters may be absent (old checkpoints predate them)."""
    expected = module.state_dict()
    state_dict = {k: v for k, v in state_dict.items() if not k.startswith(ignored_prefixes)}
    missing = sorted(k for k in expected if k not in state_dict and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state_dict if k not in expected)
    mismatched = sorted(
        f"{k}: expected {tuple(expected[k].shape)}, got {tuple(v.shape)}"
        for k, v in state_dict.items()
        if k in expected and tuple(v.shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or mismatched:
        def show(keys):
            return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")

        problems = [f"{label} keys: {show(keys)}" for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape-mismatched", mismatched)) if keys]
        raise ValueError(f"{source} does not fit {type(module).__name__}: " + "; ".join(problems))
    for key in expected:
        if key.endswith("num_batches_tracked") and key not in state_dict:
            state_dict[key] = torch.zeros((), dtype=torch.long)
    module.load_state_dict(state_dict)


# -------------------------------------------------------------------------------------------------- PSNR
def mean_squared_error(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-image MSE over all channels and pixels, in float64.

    Args:
        preds, target: images ``(B, C, H, W)`` or ``(C, H, W)`` on the same scale.
    Returns:
        ``(B,)`` float64.
    """
    preds, target = _as_image_batch(preds, target)
    return (preds.double() - target.double()).square().flatten(1).mean(dim=1)


def psnr_from_mse(mse: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """``10 log10(data_range² / mse)``, elementwise (``inf`` where ``mse == 0``)."""
    if data_range <= 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    mse = torch.as_tensor(mse, dtype=torch.float64)
    return 10.0 * torch.log10(data_range**2 / mse)


def psnr(preds: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio of every image, in dB.

    Args:
        preds, target: images ``(B, C, H, W)`` or ``(C, H, W)``, values in ``[0, data_range]``
            (e.g. 1.0 for images in [0, 1], 255.0 for 8-bit values).
        data_range: the peak value.
    Returns:
        ``(B,)`` float64; average it over images for the usual dataset PSNR.
    """
    return psnr_from_mse(mean_squared_error(preds, target), data_range)


# -------------------------------------------------------------------------------------------------- SSIM
def _ssim_window(win_size: int | None, gaussian_weights: bool, sigma: float) -> torch.Tensor:
    """The 2-D averaging window skimage uses: ``(w, w)`` float64, summing to 1."""
    if gaussian_weights:
        if sigma <= 0:
            raise ValueError(f"sigma must be > 0, got {sigma}")
        radius = int(3.5 * sigma + 0.5)  # skimage's truncate=3.5, radius as in scipy.ndimage.gaussian_filter
        if win_size is not None and win_size != 2 * radius + 1:
            raise ValueError(f"with gaussian_weights the window is fixed by sigma={sigma} to {2 * radius + 1}, got win_size={win_size}")
        x = torch.arange(-radius, radius + 1, dtype=torch.float64)
        taps = torch.exp(-0.5 * (x / sigma) ** 2)
        taps = taps / taps.sum()
        return taps[:, None] * taps[None, :]
    win_size = 7 if win_size is None else win_size
    if win_size < 1 or win_size % 2 != 1:
        raise ValueError(f"win_size must be a positive odd integer, got {win_size}")
    return torch.full((win_size, win_size), 1.0 / win_size**2, dtype=torch.float64)


def ssim(
    preds: torch.Tensor,
    target: torch.Tensor,
    data_range: float | torch.Tensor | Literal["target"],
    *,
    win_size: int | None = None,
    gaussian_weights: bool = False,
    sigma: float = 1.5,
    use_sample_covariance: bool = True,
    K1: float = 0.01,
    K2: float = 0.03,
) -> torch.Tensor:
    """Mean structural similarity of every image, as ``skimage.metrics.structural_similarity(target[i], preds[i],
    data_range=..., channel_axis=0, ...)`` computes it.

    The local statistics use the window only where it lies fully inside the image (skimage filters the whole
    image, then crops ``(win_size - 1) // 2`` pixels from every border before averaging, which is the same).

    Args:
        preds, target: images ``(B, C, H, W)`` or ``(C, H, W)``; H and W at least the window size.
        data_range: the dynamic range R in ``C1 = (K1 R)², C2 = (K2 R)²``: a number, a ``(B,)`` tensor, or
            ``"target"`` for ``max - min`` of each target image (Selftok's evaluators).
        win_size: side of the uniform window (odd, default 7); with ``gaussian_weights`` it is fixed by ``sigma``.
        gaussian_weights: Gaussian-weighted statistics (σ = ``sigma``, 11 taps for σ = 1.5).
        use_sample_covariance: normalise (co)variances by ``N - 1`` (skimage's default) instead of ``N``.
        K1, K2: the SSIM stabilising constants.
    Returns:
        ``(B,)`` float64: the mean SSIM over pixels and channels.
    """
    preds, target = _as_image_batch(preds, target)
    batch, channels, height, width = preds.shape
    window = _ssim_window(win_size, gaussian_weights, sigma).to(preds.device)
    size = window.shape[0]
    if height < size or width < size:
        raise ValueError(f"SSIM's {size}x{size} window does not fit images of {height}x{width}")
    if K1 < 0 or K2 < 0:
        raise ValueError(f"K1 and K2 must be >= 0, got {K1} and {K2}")

    x, y = preds.double(), target.double()
    if isinstance(data_range, str):
        if data_range != "target":
            raise ValueError(f"data_range must be a number, a (B,) tensor or 'target', got {data_range!r}")
        value_range = y.flatten(1).amax(dim=1) - y.flatten(1).amin(dim=1)
    else:
        value_range = torch.as_tensor(data_range, dtype=torch.float64, device=x.device).expand(batch)
    value_range = value_range.view(batch, 1, 1, 1)

    # One grouped convolution computes the local means of x, y, x², y² and xy for every channel.
    planes = torch.stack([x, y, x * x, y * y, x * y], dim=2).flatten(0, 2).unsqueeze(1)  # (B*C*5, 1, H, W)
    local = F.conv2d(planes, window[None, None]).view(batch, channels, 5, height - size + 1, width - size + 1)
    ux, uy, uxx, uyy, uxy = local.unbind(dim=2)
    num_points = size * size
    cov_norm = num_points / (num_points - 1) if use_sample_covariance else 1.0
    vx, vy, vxy = cov_norm * (uxx - ux * ux), cov_norm * (uyy - uy * uy), cov_norm * (uxy - ux * uy)
    c1, c2 = (K1 * value_range) ** 2, (K2 * value_range) ** 2
    ssim_map = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
    return ssim_map.flatten(2).mean(dim=2).mean(dim=1)


# ------------------------------------------------------------------------------------------------- LPIPS
class _LPIPSLinearHead(nn.Module):
    """LPIPS' per-layer weighting: dropout then a bias-free 1x1 convolution to one channel (keys ``model.1.weight``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """LPIPS v0.1 with the AlexNet backbone (Zhang et al. 2018; ``lpips.LPIPS(net="alex", version="0.1")``).

    ``d(x, y) = Σ_l mean_hw( w_l · (f̂_l(x) - f̂_l(y))² )`` where ``f̂_l`` are the five ReLU outputs of
    AlexNet's convolutional layers, each unit-normalised over channels, and ``w_l`` the learned 1x1 heads.
    Inputs are first shifted and scaled by LPIPS' fixed ImageNet constants.

    Weights: a state dict whose keys are torchvision's ``alexnet().features.{0,3,6,8,10}.{weight,bias}``
    plus the ``lpips`` package's ``lin{0..4}.model.1.weight`` (shapes ``(1, C_l, 1, 1)``). Both halves usually
    come as two files — torchvision's ``alexnet-owt-7be5be79.pth`` (its ``classifier.*`` keys are ignored) and
    ``lpips/weights/v0.1/alex.pth`` — which :meth:`from_pretrained` merges. A freshly built module has random
    weights; only the loaded one gives LPIPS values.
    """

    #: Channels of the five tapped AlexNet layers.
    layer_channels = (64, 192, 384, 256, 256)
    #: Indices in ``features`` whose outputs (ReLUs) are compared.
    tap_indices = (1, 4, 7, 9, 11)

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(64, 192, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(192, 384, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(256, 256, kernel_size=3, padding=1),
            nn.ReLU(),
        )
        for index, channels in enumerate(self.layer_channels):
            self.add_module(f"lin{index}", _LPIPSLinearHead(channels))
        # LPIPS' input normalisation, fixed (not part of any weights file).
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.eval()
        self.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, *paths: str | os.PathLike) -> LPIPS:
        """Build and load weights from one or more files (``.pth``/``.pt``/``.safetensors``), merged in order.

        Raises ``ValueError`` naming the missing, unexpected or mis-shaped keys when the files do not fit.
        """
        if not paths:
            raise ValueError("LPIPS.from_pretrained needs at least one weights file")
        state_dict: dict[str, torch.Tensor] = {}
        for path in paths:
            state_dict.update(load_weights_file(path))
        model = cls()
        _load_checked(model, state_dict, f"LPIPS weights {[os.fspath(p) for p in paths]}", ignored_prefixes=("classifier.",))
        return model

    def layer_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The five compared AlexNet activations of images in [-1, 1], each ``(B, C_l, H_l, W_l)``."""
        x = (images - self.shift) / self.scale
        outputs = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.tap_indices:
                outputs.append(x)
        return outputs

    def forward(self, preds: torch.Tensor, target: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """
        Args:
            preds, target: images ``(B, 3, H, W)`` in [-1, 1] (or [0, 1] with ``normalize=True``).
            normalize: rescale [0, 1] inputs to [-1, 1] first.
        Returns:
            ``(B,)`` LPIPS distances (0 for identical images, symmetric).
        """
        preds, target = _as_image_batch(preds, target)
        if preds.shape[1] != 3:
            raise ValueError(f"LPIPS compares RGB images (B, 3, H, W), got {tuple(preds.shape)}")
        if normalize:
            preds, target = 2 * preds - 1, 2 * target - 1
        dtype = self.shift.dtype
        distance = preds.new_zeros(preds.shape[0], dtype=dtype)
        pairs = zip(self.layer_features(preds.to(dtype)), self.layer_features(target.to(dtype)))
        for index, (a, b) in enumerate(pairs):
            a = a / (a.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.square().sum(dim=1, keepdim=True).sqrt() + 1e-10)
            distance = distance + getattr(self, f"lin{index}")((a - b).square()).mean(dim=(1, 2, 3))
        return distance


# --------------------------------------------------------------------------------------- FID Inception-v3
class _ConvBN(nn.Module):
    """Inception's conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU; keys ``conv.*`` and ``bn.*``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 average pool that, like TensorFlow's, leaves the zero padding out of the average."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _InceptionA(nn.Module):
    """35x35 block (Mixed_5b/c/d): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1. Out: 224 + pool_features."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = _ConvBN(in_channels, 64, 1)
        self.branch5x5_1 = _ConvBN(in_channels, 48, 1)
        self.branch5x5_2 = _ConvBN(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, padding=1)
        self.branch_pool = _ConvBN(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_tf_avg_pool(x)),
            ],
            dim=1,
        )


class _InceptionB(nn.Module):
    """35 -> 17 reduction (Mixed_6a): 3x3/2 | 1x1-3x3-3x3/2 | maxpool/2. Out: 480 + in_channels."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = _ConvBN(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = _ConvBN(in_channels, 64, 1)
        self.branch3x3dbl_2 = _ConvBN(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _ConvBN(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                F.max_pool2d(x, kernel_size=3, stride=2),
            ],
            dim=1,
        )


class _InceptionC(nn.Module):
    """17x17 block (Mixed_6b..e) with factorised 7x7 convolutions. Out: 768."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = _ConvBN(in_channels, 192, 1)
        self.branch7x7_1 = _ConvBN(in_channels, c7, 1)
        self.branch7x7_2 = _ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _ConvBN(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _ConvBN(in_channels, c7, 1)
        self.branch7x7dbl_2 = _ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _ConvBN(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _ConvBN(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _ConvBN(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _ConvBN(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch7x7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        branch7x7dbl = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            branch7x7dbl = layer(branch7x7dbl)
        return torch.cat([self.branch1x1(x), branch7x7, branch7x7dbl, self.branch_pool(_tf_avg_pool(x))], dim=1)


class _InceptionD(nn.Module):
    """17 -> 8 reduction (Mixed_7a): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool/2. Out: 512 + in_channels."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = _ConvBN(in_channels, 192, 1)
        self.branch3x3_2 = _ConvBN(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _ConvBN(in_channels, 192, 1)
        self.branch7x7x3_2 = _ConvBN(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _ConvBN(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _ConvBN(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch7x7x3 = x
        for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            branch7x7x3 = layer(branch7x7x3)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), branch7x7x3, F.max_pool2d(x, kernel_size=3, stride=2)], dim=1)


class _InceptionE(nn.Module):
    """8x8 block (Mixed_7b/c) with split 1x3/3x1 branches. Out: 2048.

    ``pool`` is the pooling before the pool branch: ``"avg"`` (Mixed_7b, TF-style average) or ``"max"``
    (Mixed_7c: the FID graph max-pools here, unlike the published architecture).
    """

    def __init__(self, in_channels: int, pool: Literal["avg", "max"]):
        super().__init__()
        self.pool = pool
        self.branch1x1 = _ConvBN(in_channels, 320, 1)
        self.branch3x3_1 = _ConvBN(in_channels, 384, 1)
        self.branch3x3_2a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _ConvBN(in_channels, 448, 1)
        self.branch3x3dbl_2 = _ConvBN(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _ConvBN(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _ConvBN(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _ConvBN(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_1(x)
        branch3x3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = _tf_avg_pool(x) if self.pool == "avg" else F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch3x3_2a(branch3x3),
                self.branch3x3_2b(branch3x3),
                self.branch3x3dbl_3a(branch3x3dbl),
                self.branch3x3dbl_3b(branch3x3dbl),
                self.branch_pool(pooled),
            ],
            dim=1,
        )


class InceptionFeatureExtractor(nn.Module):
    """pytorch-fid's FID Inception-v3 up to pool3: images in [0, 1] ``(B, 3, H, W)`` -> features ``(B, 2048)``.

    Input handling is pytorch-fid's: bilinear resize to 299x299 (``align_corners=False``, no antialiasing),
    then ``2x - 1``. The network is the TF 2015-12-05 Inception graph as pytorch-fid ports it: torchvision's
    Inception-v3 layout, except that the 3x3 average pools exclude padding (TF semantics) and ``Mixed_7c``
    max-pools its pool branch.

    Weights: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``, loaded with :meth:`from_pretrained`.
    Its keys are torchvision's ``Inception3`` names (``Conv2d_1a_3x3.conv.weight``, ``Mixed_5b.branch1x1.bn.running_var``,
    ...): 94 conv+BN units, 470 tensors; its 1008-way ``fc.*`` classifier is not needed for pool3 and is ignored.
    (torch-fidelity's ``weights-inception-2015-12-05`` file uses different names and is not supported.)
    A freshly built extractor has random weights: its FIDs only mean something relative to each other.
    """

    feature_dim = 2048

    def __init__(self, resize_input: bool = True):
        super().__init__()
        self.resize_input = resize_input
        self.Conv2d_1a_3x3 = _ConvBN(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _ConvBN(32, 32, 3)
        self.Conv2d_2b_3x3 = _ConvBN(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = _ConvBN(64, 80, 1)
        self.Conv2d_4a_3x3 = _ConvBN(80, 192, 3)
        self.Mixed_5b = _InceptionA(192, pool_features=32)
        self.Mixed_5c = _InceptionA(256, pool_features=64)
        self.Mixed_5d = _InceptionA(288, pool_features=64)
        self.Mixed_6a = _InceptionB(288)
        self.Mixed_6b = _InceptionC(768, channels_7x7=128)
        self.Mixed_6c = _InceptionC(768, channels_7x7=160)
        self.Mixed_6d = _InceptionC(768, channels_7x7=160)
        self.Mixed_6e = _InceptionC(768, channels_7x7=192)
        self.Mixed_7a = _InceptionD(768)
        self.Mixed_7b = _InceptionE(1280, pool="avg")
        self.Mixed_7c = _InceptionE(2048, pool="max")
        self.eval()
        self.requires_grad_(False)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, resize_input: bool = True) -> InceptionFeatureExtractor:
        """Build and load ``pt_inception-2015-12-05-6726825d.pth`` (or any state dict with the same keys).

        Raises ``ValueError`` naming the missing, unexpected or mis-shaped keys when the file does not fit.
        """
        model = cls(resize_input=resize_input)
        _load_checked(model, load_weights_file(path), f"Inception weights {os.fspath(path)!r}", ignored_prefixes=("fc.",))
        return model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """
        Args:
            images: ``(B, 3, H, W)`` in [0, 1] (at least 75x75 without ``resize_input``).
        Returns:
            pool3 features ``(B, 2048)`` in the model's dtype.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
        x = images.to(self.Conv2d_1a_3x3.conv.weight.dtype)
        if self.resize_input:
            x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e):
            x = block(x)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        return x.mean(dim=(2, 3))


# --------------------------------------------------------------------------------------------------- FID
def _psd_factor(matrix: torch.Tensor) -> torch.Tensor:
    """A factor ``F`` with ``F Fᵀ = matrix`` for a symmetric positive semi-definite matrix: the Cholesky factor
    when it exists (positive definite, the usual case with more images than dimensions), else the symmetric
    square root (eigenvalues below 0 from round-off clamp to 0)."""
    factor, info = torch.linalg.cholesky_ex(matrix)
    if int(info) == 0:
        return factor
    eigenvalues, eigenvectors = torch.linalg.eigh(matrix)
    return (eigenvectors * eigenvalues.clamp(min=0).sqrt()) @ eigenvectors.T


def frechet_distance(
    mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor, sigma1_factor: torch.Tensor | None = None
) -> float:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``:
    ``|μ1 - μ2|² + Tr(Σ1) + Tr(Σ2) - 2 Tr((Σ1 Σ2)^½)``.

    With ``Σ1 = F Fᵀ``, ``Σ1 Σ2`` has the eigenvalues of the symmetric ``Fᵀ Σ2 F``, so ``Tr((Σ1 Σ2)^½)`` is the
    sum of their square roots, computed in float64. This needs no ``scipy.linalg.sqrtm`` and stays real and
    finite for singular covariances (fewer images than feature dimensions), where, as with ``sqrtm``, the
    round-off of the zero eigenvalues leaves an error of order ``sqrt(eps) * Tr(Σ)``.

    Args:
        mu1, mu2: means ``(D,)``.
        sigma1, sigma2: covariances ``(D, D)``, symmetric positive semi-definite.
        sigma1_factor: optionally ``F`` of shape ``(D, r)`` with ``F Fᵀ = sigma1`` (e.g. the centred features of
            ``r + 1`` samples divided by ``sqrt(r)``, transposed); the eigenproblem is then ``r x r`` instead of
            ``D x D``, which is what makes FIDs of small sets fast.
    Returns:
        the distance (a Python float).
    """
    mu1, mu2, sigma1, sigma2 = (torch.as_tensor(t, dtype=torch.float64) for t in (mu1, mu2, sigma1, sigma2))
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"mu1 and mu2 must be vectors of equal length, got {tuple(mu1.shape)} and {tuple(mu2.shape)}")
    dim = mu1.shape[0]
    if sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(f"sigma1 and sigma2 must be ({dim}, {dim}), got {tuple(sigma1.shape)} and {tuple(sigma2.shape)}")
    if sigma1_factor is not None and (sigma1_factor.ndim != 2 or sigma1_factor.shape[0] != dim):
        raise ValueError(f"sigma1_factor must have shape ({dim}, r), got {tuple(sigma1_factor.shape)}")
    factor = _psd_factor(sigma1) if sigma1_factor is None else sigma1_factor.to(torch.float64)
    middle = factor.T @ sigma2 @ factor
    trace_sqrt_product = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + sigma1.trace() + sigma2.trace() - 2 * trace_sqrt_product)


class FIDAccumulator:
    """Streams features of one image set into running sums, for its mean and (unbiased) covariance.

    Args:
        feature_extractor: any callable ``(B, 3, H, W)`` images in [0, 1] -> ``(B, D)`` features, e.g.
            :class:`InceptionFeatureExtractor` (the FID standard) or a custom one; called under ``no_grad``.
            None when only :meth:`update_features` is used.

    Example::

        real, fake = FIDAccumulator(extractor), FIDAccumulator(extractor)
        for x, y in batches:
            real.update(x); fake.update(y)
        fid = real.frechet_distance(fake)
    """

    def __init__(self, feature_extractor: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.feature_extractor = feature_extractor
        self.num_samples = 0
        # Sums of (features - shift), with shift the first batch's mean: keeps the covariance free of
        # cancellation when the mean is large against the spread.
        self._shift: torch.Tensor | None = None
        self._sum: torch.Tensor | None = None
        self._outer_sum: torch.Tensor | None = None
        # The features themselves while there are no more than their dimension: the covariance then has low rank
        # and the features factor it, which keeps the Fréchet distance's eigenproblem small.
        self._kept: list[torch.Tensor] | None = []

    @torch.no_grad()
    def update(self, images: torch.Tensor) -> torch.Tensor:
        """Extract features of a batch of images in [0, 1] ``(B, 3, H, W)``, add them, and return them ``(B, D)``."""
        if self.feature_extractor is None:
            raise ValueError("this FIDAccumulator has no feature_extractor; pass features to update_features instead")
        features = self.feature_extractor(images)
        self.update_features(features)
        return features

    def update_features(self, features: torch.Tensor) -> None:
        """Add precomputed features ``(B, D)``."""
        if not isinstance(features, torch.Tensor) or features.ndim != 2:
            raise ValueError(f"features must be a (batch, dim) tensor, got {getattr(features, 'shape', type(features).__name__)}")
        features = features.detach().to(device="cpu", dtype=torch.float64)
        if self._sum is None:
            self._shift = features.mean(dim=0)
            self._sum = torch.zeros(features.shape[1], dtype=torch.float64)
            self._outer_sum = torch.zeros(features.shape[1], features.shape[1], dtype=torch.float64)
        elif features.shape[1] != self._sum.shape[0]:
            raise ValueError(f"features must have dimension {self._sum.shape[0]} like the earlier ones, got {features.shape[1]}")
        centered = features - self._shift
        self._sum += centered.sum(dim=0)
        self._outer_sum += centered.T @ centered
        self.num_samples += features.shape[0]
        if self._kept is not None and self.num_samples <= features.shape[1]:
            self._kept.append(features)
        else:
            self._kept = None

    def statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean ``(D,)`` and covariance ``(D, D)`` (``N - 1`` normalisation, like ``numpy.cov``), float64."""
        if self.num_samples < 2:
            raise ValueError(f"FID statistics need at least 2 images, got {self.num_samples}")
        n = self.num_samples
        centered_mean = self._sum / n
        covariance = (self._outer_sum - n * torch.outer(centered_mean, centered_mean)) / (n - 1)
        return self._shift + centered_mean, covariance

    def covariance_factor(self) -> torch.Tensor | None:
        """``F`` ``(D, N)`` with ``F Fᵀ`` = the covariance, from the kept features; None once ``N`` exceeds ``D``."""
        if self._kept is None:
            return None
        features = torch.cat(self._kept)
        return (features - features.mean(dim=0)).T / (self.num_samples - 1) ** 0.5

    def frechet_distance(self, other: FIDAccumulator) -> float:
        """FID between this set and ``other`` (symmetric; uses whichever set's low-rank factor exists)."""
        factor = self.covariance_factor()
        if factor is not None:
            return frechet_distance(*self.statistics(), *other.statistics(), sigma1_factor=factor)
        return frechet_distance(*other.statistics(), *self.statistics(), sigma1_factor=other.covariance_factor())

