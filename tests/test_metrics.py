"""selftok_hf.evaluation.metrics against hand-computed values, skimage (test-only dependency) and scipy."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from skimage.metrics import structural_similarity

from selftok_hf.assets import bundled_images
from selftok_hf.evaluation.metrics import (
    LPIPS,
    FIDAccumulator,
    InceptionFeatureExtractor,
    frechet_distance,
    mean_squared_error,
    psnr,
    psnr_from_mse,
    ssim,
)
from selftok_hf.evaluation.metrics import _tf_avg_pool as tf_avg_pool


def test_psnr_of_known_mse():
    target = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.5
    offsets = torch.tensor([0.1, 0.01, 0.0]).view(3, 1, 1, 1)
    preds = target + offsets  # MSE = offset², exactly
    torch.testing.assert_close(mean_squared_error(preds, target), torch.tensor([1e-2, 1e-4, 0.0], dtype=torch.float64))
    values = psnr(preds, target)
    torch.testing.assert_close(values[:2], torch.tensor([20.0, 40.0], dtype=torch.float64))
    assert values[2] == math.inf
    # On the 0..255 scale an error of 5 levels everywhere: 10 log10(255² / 25).
    assert psnr(target * 255 + 5, target * 255, data_range=255.0)[0].item() == pytest.approx(10 * math.log10(255**2 / 25))
    # A single (C, H, W) image is a batch of one.
    assert psnr(preds[0], target[0]).shape == (1,)


def test_batch_mse_psnr_is_not_the_mean_psnr():
    target = torch.zeros(2, 3, 4, 4)
    preds = target + torch.tensor([0.1, 0.3]).view(2, 1, 1, 1)
    per_image = psnr(preds, target)
    batch = psnr_from_mse(mean_squared_error(preds, target).mean())
    assert per_image.mean().item() == pytest.approx((20 + -20 * math.log10(0.3)) / 2)
    assert batch.item() == pytest.approx(-10 * math.log10((0.01 + 0.09) / 2))


def reference_ssim(preds, target, data_range, dtype, **kwargs):
    """skimage, image by image, with the channel axis first (as Selftok calls it)."""
    values = []
    for x, y in zip(preds, target):
        ref = y.numpy().astype(dtype)
        dr = float(ref.max() - ref.min()) if data_range == "target" else data_range
        values.append(structural_similarity(ref, x.numpy().astype(dtype), data_range=dr, channel_axis=0, **kwargs))
    return torch.tensor(values, dtype=torch.float64)


def structured_pairs():
    """Bundled photos (downscaled) against a blurred, shifted, noisy copy; plus a gradient and a checkerboard."""
    photos = torch.stack(
        [torch.from_numpy(np.asarray(im.resize((40, 48)), dtype=np.float32) / 255).permute(2, 0, 1) for im in bundled_images().values()]
    )
    generator = torch.Generator().manual_seed(1)
    degraded = (F.avg_pool2d(photos, 3, stride=1, padding=1).roll(1, dims=-1) + 0.05 * torch.randn(photos.shape, generator=generator)).clamp(0, 1)
    ramp = torch.linspace(0, 1, 40).expand(3, 48, 40)
    checker = ((torch.arange(48)[:, None] // 4 + torch.arange(40)[None, :] // 4) % 2).float().expand(3, 48, 40)
    extra_preds = torch.stack([ramp.flip(-1), checker * 0.8 + 0.1])
    return torch.cat([photos, torch.stack([ramp, checker])]), torch.cat([degraded, extra_preds])


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"gaussian_weights": True}, {"use_sample_covariance": False}, {"win_size": 3}, {"gaussian_weights": True, "sigma": 0.8}, {"K1": 0.05, "K2": 0.1}],
)
@pytest.mark.parametrize("data_range", ["target", 1.0, 2.0])
def test_ssim_matches_skimage(kwargs, data_range):
    generator = torch.Generator().manual_seed(0)
    random_target = torch.rand(2, 3, 33, 29, generator=generator)
    random_preds = (random_target + 0.2 * torch.randn(random_target.shape, generator=generator)).clamp(0, 1)
    for target, preds in (structured_pairs(), (random_target, random_preds)):
        ours = ssim(preds, target, data_range=data_range, **kwargs)
        assert ours.dtype == torch.float64 and ours.shape == (target.shape[0],)
        # float64 inputs: skimage computes in float64 too and the two agree to round-off.
        torch.testing.assert_close(ours, reference_ssim(preds, target, data_range, np.float64, **kwargs), rtol=0, atol=1e-12)
        # float32 inputs (what Selftok's evaluators pass): skimage then computes in float32, we stay in float64.
        torch.testing.assert_close(ours, reference_ssim(preds, target, data_range, np.float32, **kwargs), rtol=0, atol=1e-6)


def test_ssim_identity_and_tensor_data_range():
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(ssim(x, x, data_range=1.0), torch.ones(2, dtype=torch.float64))
    y = (x * 0.7).clamp(0, 1)
    per_image = torch.tensor([0.5, 2.0])
    torch.testing.assert_close(
        ssim(y, x, data_range=per_image), torch.cat([ssim(y[:1], x[:1], data_range=0.5), ssim(y[1:], x[1:], data_range=2.0)])
    )


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda x: ssim(x, x[..., :-1], data_range=1.0), ValueError, "same shape"),
        (lambda x: ssim(x[..., :5, :5], x[..., :5, :5], data_range=1.0), ValueError, "window does not fit"),
        (lambda x: ssim(x, x, data_range="max"), ValueError, "'target'"),
        (lambda x: ssim(x, x, data_range=1.0, win_size=4), ValueError, "odd"),
        (lambda x: ssim(x, x, data_range=1.0, gaussian_weights=True, win_size=7), ValueError, "fixed by sigma"),
        (lambda x: psnr((x * 255).byte(), (x * 255).byte()), TypeError, "floating-point"),
        (lambda x: psnr(x[0, 0], x[0, 0]), ValueError, r"\(B, C, H, W\)"),
    ],
)
def test_bad_metric_inputs(call, error, match):
    with pytest.raises(error, match=match):
        call(torch.rand(2, 3, 16, 16))


# ------------------------------------------------------------------------------------------------ FID
def test_frechet_distance_closed_forms():
    # 1-D: N(0, 1) vs N(1, 4): (0 - 1)² + 1 + 4 - 2 sqrt(1 * 4) = 2.
    assert frechet_distance(torch.zeros(1), torch.ones(1, 1), torch.ones(1), torch.full((1, 1), 4.0)) == pytest.approx(2.0, abs=1e-12)
    # Diagonal (commuting) covariances: |μ1 - μ2|² + Σ (sqrt(a) - sqrt(b))², with a singular one among them.
    a, b = torch.tensor([1.0, 4.0, 9.0, 0.0]), torch.tensor([4.0, 1.0, 9.0, 2.0])
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.tensor([1.0, 1.0, 0.0, 3.0])
    expected = 1 + 4 + (1 + 1 + 0 + 2)
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected, abs=1e-10)
    assert frechet_distance(mu2, torch.diag(b), mu1, torch.diag(a)) == pytest.approx(expected, abs=1e-10)
    # Same Gaussian: 0; exact for a full-rank covariance, to sqrt(eps) * trace for a singular one (5 samples, 8-d).
    generator = torch.Generator().manual_seed(0)
    for num_samples, tolerance in ((50, 1e-12), (5, 1e-6)):
        features = torch.randn(num_samples, 8, dtype=torch.float64, generator=generator)
        sigma = torch.cov(features.T)
        assert abs(frechet_distance(features.mean(0), sigma, features.mean(0), sigma)) < tolerance * sigma.trace()


def test_frechet_distance_matches_scipy_sqrtm():
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(200, 16, dtype=torch.float64, generator=generator)
    y = torch.randn(150, 16, dtype=torch.float64, generator=generator) @ torch.randn(16, 16, dtype=torch.float64, generator=generator) * 0.5 + 0.3
    mu1, mu2, s1, s2 = x.mean(0), y.mean(0), torch.cov(x.T), torch.cov(y.T)
    reference = ((mu1 - mu2) @ (mu1 - mu2)).item() + s1.trace().item() + s2.trace().item()
    reference -= 2 * np.trace(scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, rel=1e-10)


def test_fid_accumulator_statistics_over_batches():
    generator = torch.Generator().manual_seed(5)
    features = 1e4 + torch.randn(37, 6, generator=generator, dtype=torch.float64)  # large mean: no cancellation
    accumulator = FIDAccumulator()
    for chunk in features.split(10):
        accumulator.update_features(chunk)
    mean, covariance = accumulator.statistics()
    assert accumulator.num_samples == 37
    torch.testing.assert_close(mean, features.mean(0), rtol=0, atol=1e-9)
    torch.testing.assert_close(covariance, torch.cov(features.T), rtol=0, atol=1e-9)
    with pytest.raises(ValueError, match="dimension 6"):
        accumulator.update_features(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="at least 2 images"):
        FIDAccumulator().statistics()
    with pytest.raises(ValueError, match="no feature_extractor"):
        FIDAccumulator().update(torch.zeros(1, 3, 8, 8))


def test_low_rank_factor_gives_the_dense_result():
    generator = torch.Generator().manual_seed(11)
    few = torch.randn(12, 300, dtype=torch.float64, generator=generator)
    many = torch.randn(400, 300, dtype=torch.float64, generator=generator) * 0.7 + 0.2
    small, large = FIDAccumulator(), FIDAccumulator()
    for chunk in few.split(5):
        small.update_features(chunk)
    large.update_features(many)
    factor = small.covariance_factor()
    assert factor.shape == (300, 12) and large.covariance_factor() is None  # 400 samples > 300 dims: sums only
    torch.testing.assert_close(factor @ factor.T, small.statistics()[1], rtol=0, atol=1e-12)
    # The dense path takes square roots of 288 round-off "zero" eigenvalues (~sqrt(eps) each); the factor has none.
    dense = frechet_distance(*small.statistics(), *large.statistics())
    assert small.frechet_distance(large) == pytest.approx(dense, rel=1e-7)
    assert large.frechet_distance(small) == pytest.approx(small.frechet_distance(large), rel=1e-12)
    with pytest.raises(ValueError, match="sigma1_factor"):
        frechet_distance(*small.statistics(), *large.statistics(), sigma1_factor=factor.T)


def kaiming_inception(resize_input: bool = False) -> InceptionFeatureExtractor:
    """A random FID Inception whose activations neither vanish nor explode (torch's default init shrinks them)."""
    torch.manual_seed(0)
    model = InceptionFeatureExtractor(resize_input=resize_input)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model


def test_fid_of_a_set_with_itself_is_zero_and_sets_differ():
    # Any extractor plugs in; a small random conv net keeps the 64-d Gaussians cheap.
    torch.manual_seed(0)
    extractor = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 4, stride=4), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    generator = torch.Generator().manual_seed(6)
    images = torch.rand(100, 3, 16, 16, generator=generator)
    a, b, c = FIDAccumulator(extractor), FIDAccumulator(extractor), FIDAccumulator(extractor)
    features = torch.cat([a.update(images[:64]), a.update(images[64:])])
    assert features.shape == (100, 64)
    b.update(images.flip(0))  # the same set in another order and batching
    c.update((images * 0.8).clamp(0, 1))
    trace = a.statistics()[1].trace().item()
    assert abs(a.frechet_distance(b)) < 1e-9 * trace
    assert a.frechet_distance(c) > 1e-3 * trace


def test_inception_features_shape_and_scale():
    # Any input size: resized to 299x299 first, as pytorch-fid does.
    features = kaiming_inception(resize_input=True)(torch.rand(1, 3, 64, 48, generator=torch.Generator().manual_seed(6)))
    assert features.shape == (1, 2048) and features.dtype == torch.float32
    assert (features >= 0).all() and features.std() > 0.1  # pool3 of ReLUs


# ------------------------------------------------------------------------------------------- Inception
#: pytorch-fid's pt_inception-2015-12-05-6726825d.pth holds torchvision Inception3 names (aux classifier absent),
#: 94 conv+BN units x 5 tensors = 470, plus its 1008-way fc (2 tensors, unused for pool3 features).
INCEPTION_KEY_COUNT = 470
INCEPTION_PARAMETER_COUNT = 21_785_568  # torchvision inception_v3 (27,161,264) minus AuxLogits and fc
INCEPTION_MANIFEST = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_1a_3x3.bn.running_mean": (32,),
    "Conv2d_2b_3x3.conv.weight": (64, 32, 3, 3),
    "Conv2d_3b_1x1.conv.weight": (80, 64, 1, 1),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5c.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_5d.branch3x3dbl_1.conv.weight": (64, 288, 1, 1),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6a.branch3x3dbl_3.conv.weight": (96, 96, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6c.branch7x7dbl_2.conv.weight": (160, 160, 7, 1),
    "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
    "Mixed_7b.branch3x3_2b.conv.weight": (384, 384, 3, 1),
    "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
    "Mixed_7c.branch3x3dbl_3a.conv.weight": (384, 384, 1, 3),
    "Mixed_7c.branch_pool.bn.running_var": (192,),
    "Mixed_7c.branch1x1.bn.bias": (320,),
}


def test_inception_state_dict_matches_pytorch_fid_layout():
    model = InceptionFeatureExtractor()
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert len(shapes) == INCEPTION_KEY_COUNT
    assert sum(p.numel() for p in model.parameters()) == INCEPTION_PARAMETER_COUNT
    for key, shape in INCEPTION_MANIFEST.items():
        assert shapes[key] == shape, key
    # BatchNorm as in TF's graph: eps 1e-3.
    assert {m.eps for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.001}


def test_inception_loads_a_pytorch_fid_style_file(tmp_path):
    source = kaiming_inception()
    # The file's layout: no num_batches_tracked (it predates them), plus the unused fc head.
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    torch.save(state, tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    loaded = InceptionFeatureExtractor.from_pretrained(tmp_path / "pt_inception-2015-12-05-6726825d.pth", resize_input=False)
    images = torch.rand(2, 3, 80, 80, generator=torch.Generator().manual_seed(7))
    out = loaded(images)
    assert out.shape == (2, 2048)
    torch.testing.assert_close(out, source(images), rtol=0, atol=0)

    del state["Mixed_6b.branch7x7_2.conv.weight"]
    state["Mixed_7c.branch1x1.bn.bias"] = torch.zeros(3)
    state["AuxLogits.fc.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(ValueError) as info:
        InceptionFeatureExtractor.from_pretrained(tmp_path / "broken.pth")
    message = str(info.value)
    assert "missing keys: Mixed_6b.branch7x7_2.conv.weight" in message
    assert "unexpected keys: AuxLogits.fc.weight" in message
    assert "Mixed_7c.branch1x1.bn.bias: expected (320,), got (3,)" in message
    with pytest.raises(FileNotFoundError):
        InceptionFeatureExtractor.from_pretrained(tmp_path / "absent.pth")


def test_tf_average_pool_ignores_padding():
    x = torch.full((1, 1, 4, 4), 2.0)
    assert torch.equal(tf_avg_pool(x), x)  # torch's default (count_include_pad) would give 8/9 at the corners


# ---------------------------------------------------------------------------------------------- LPIPS
def random_lpips_state(seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    state = {k: 0.1 * torch.randn(v.shape, generator=generator) for k, v in LPIPS().state_dict().items()}
    for index in range(5):
        state[f"lin{index}.model.1.weight"] = state[f"lin{index}.model.1.weight"].abs()  # LPIPS heads are >= 0
    return state


def test_lpips_identity_symmetry_and_weights_file(tmp_path):
    features = {k: v for k, v in random_lpips_state().items() if k.startswith("features.")}
    heads = {k: v for k, v in random_lpips_state().items() if k.startswith("lin")}
    # Two files like the real ones: torchvision's AlexNet (with its classifier, ignored) and lpips' heads.
    torch.save({**features, "classifier.1.weight": torch.zeros(4096, 9216)}, tmp_path / "alexnet.pth")
    torch.save(heads, tmp_path / "alex.pth")
    model = LPIPS.from_pretrained(tmp_path / "alexnet.pth", tmp_path / "alex.pth")
    for key, value in {**features, **heads}.items():
        assert torch.equal(model.state_dict()[key], value), key

    generator = torch.Generator().manual_seed(8)
    x, y = torch.rand(2, 3, 64, 64, generator=generator) * 2 - 1, torch.rand(2, 3, 64, 64, generator=generator) * 2 - 1
    torch.testing.assert_close(model(x, x), torch.zeros(2), rtol=0, atol=1e-7)
    torch.testing.assert_close(model(x, y), model(y, x), rtol=0, atol=0)
    assert (model(x, y) > 0).all()
    torch.testing.assert_close(model((x + 1) / 2, (y + 1) / 2, normalize=True), model(x, y), rtol=1e-6, atol=1e-7)


def test_lpips_equals_hand_computation():
    state = random_lpips_state(1)
    model = LPIPS()
    model.load_state_dict(state)
    generator = torch.Generator().manual_seed(9)
    x, y = torch.rand(2, 3, 72, 72, generator=generator) * 2 - 1, torch.rand(2, 3, 72, 72, generator=generator) * 2 - 1

    def alexnet_relus(images):
        # lpips' ScalingLayer constants, then AlexNet's conv1..conv5 ReLU outputs.
        h = (images - torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)) / torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
        h = F.relu(F.conv2d(h, state["features.0.weight"], state["features.0.bias"], stride=4, padding=2))
        relus = [h]
        h = F.relu(F.conv2d(F.max_pool2d(h, 3, 2), state["features.3.weight"], state["features.3.bias"], padding=2))
        relus.append(h)
        h = F.relu(F.conv2d(F.max_pool2d(h, 3, 2), state["features.6.weight"], state["features.6.bias"], padding=1))
        relus.append(h)
        for index in (8, 10):
            h = F.relu(F.conv2d(h, state[f"features.{index}.weight"], state[f"features.{index}.bias"], padding=1))
            relus.append(h)
        return relus

    expected = torch.zeros(2)
    for index, (a, b) in enumerate(zip(alexnet_relus(x), alexnet_relus(y))):
        a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        weights = state[f"lin{index}.model.1.weight"].view(1, -1, 1, 1)
        expected += ((a - b) ** 2 * weights).sum(dim=1).mean(dim=(1, 2))
    torch.testing.assert_close(model(x, y), expected, rtol=1e-5, atol=1e-7)


def test_lpips_weights_errors(tmp_path):
    state = random_lpips_state()
    del state["lin3.model.1.weight"]
    state["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError) as info:
        LPIPS.from_pretrained(tmp_path / "bad.pth")
    assert "missing keys: lin3.model.1.weight" in str(info.value)
    assert "features.0.weight: expected (64, 3, 11, 11), got (64, 3, 5, 5)" in str(info.value)
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(TypeError, match="state dict"):
        LPIPS.from_pretrained(tmp_path / "list.pth")
    with pytest.raises(ValueError, match="at least one"):
        LPIPS.from_pretrained()
