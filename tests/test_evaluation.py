"""selftok-eval end to end on a seeded random tiny pipeline: CSV/JSON/PNG outputs, every number recomputed from the
saved PNGs with selftok_hf.evaluation.metrics, seeds independent of batching, pluggable FID extractor, bad arguments."""

import csv
import json
import math
import sys

import numpy as np
import PIL.Image
import pytest
import torch

from selftok_hf import SelftokDecoderPipeline
from selftok_hf.assets import bundled_images
from selftok_hf.evaluation import (
    EvaluationMetrics,
    EvaluationOutputs,
    evaluate_reconstruction,
    main,
)
from selftok_hf.evaluation.metrics import (
    LPIPS,
    FIDAccumulator,
    InceptionFeatureExtractor,
    mean_squared_error,
    psnr,
    psnr_from_mse,
    ssim,
)
from selftok_hf.vae import latents_to_images, latents_to_pixels, to_unit_range

SIZE = 64  # the tiny tokenizer's image size
SETTINGS = ["decoder_2_steps", "decoder_1_steps", "renderer"]


@pytest.fixture(scope="module")
def pipeline_dir(steering_pipeline, tmp_path_factory):
    path = tmp_path_factory.mktemp("pipeline")
    steering_pipeline.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def photos():
    """The bundled photos, downscaled to a non-square size so that the processor's resize + crop matters."""
    return {name.replace(".jpg", ".png"): image.resize((96, 80), PIL.Image.BICUBIC) for name, image in bundled_images().items()}


@pytest.fixture(scope="module")
def image_dir(photos, tmp_path_factory):
    path = tmp_path_factory.mktemp("images")
    for name, image in photos.items():
        image.save(path / name)
    return path


@pytest.fixture(scope="module")
def lpips_file(tmp_path_factory):
    generator = torch.Generator().manual_seed(0)
    state = {k: 0.1 * torch.randn(v.shape, generator=generator).abs() for k, v in LPIPS().state_dict().items()}
    path = tmp_path_factory.mktemp("lpips") / "lpips_alex.pth"
    torch.save(state, path)
    return path


def read_png(path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(PIL.Image.open(path), dtype=np.float32) / 255).permute(2, 0, 1)


def saved(out, folder, count=3) -> torch.Tensor:
    return torch.stack([read_png(out / "images" / folder / f"{i:06d}.png") for i in range(count)])


@pytest.fixture(scope="module")
def cli_run(pipeline_dir, image_dir, lpips_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    code = main([
        "--pipeline", str(pipeline_dir), "--images", str(image_dir), "--steps", "2", "1", "--renderer",
        "--batch-size", "2", "--seed", "5", "--lpips-weights", str(lpips_file), "--save-images",
        "--coarse-to-fine-images", "2", "--prefix-lengths", "0", "8", "32", "--device", "cpu", "--output-dir", str(out), "--no-progress",
    ])  # fmt: skip
    assert code == 0
    return out


def test_csv_rows_and_columns(cli_run, photos):
    with open(cli_run / "per_image.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == [
        "image_index", "image", "setting", "num_inference_steps",
        "psnr_original", "ssim_original", "lpips_original", "psnr_vae", "ssim_vae", "lpips_vae",
    ]  # fmt: skip
    assert len(rows) == 3 * len(SETTINGS)
    names = sorted(photos)
    assert [(r["image_index"], r["image"], r["setting"], r["num_inference_steps"]) for r in rows] == [
        (str(i), names[i], s, n) for i in range(3) for s, n in zip(SETTINGS, ["2", "1", ""])
    ]
    for row in rows:
        for key in ("psnr_original", "psnr_vae"):
            assert 0 < float(row[key]) < 60
        for key in ("ssim_original", "ssim_vae"):
            assert -1 <= float(row[key]) <= 1
        assert float(row["lpips_original"]) > 0 and float(row["lpips_vae"]) > 0


def test_summary_equals_metrics_recomputed_from_the_pngs(cli_run, lpips_file):
    summary = json.loads((cli_run / "summary.json").read_text())
    with open(cli_run / "per_image.csv") as handle:
        rows = list(csv.DictReader(handle))
    lpips = LPIPS.from_pretrained(lpips_file)
    references = {"original": saved(cli_run, "original"), "vae": saved(cli_run, "vae_round_trip")}
    assert summary["num_images"] == 3 and summary["batch_size"] == 2 and summary["num_image_tokens"] == 32
    assert "rfid" not in summary["settings"]["renderer"]["vae"]  # no Inception weights were given

    def check(recon, reference, entry, csv_rows=None, name=""):
        per_image_psnr = psnr(recon, reference)
        per_image_ssim = ssim(recon, reference, data_range="target")
        per_image_lpips = lpips(recon, reference, normalize=True).double()
        # Batches of 2: images (0, 1) and (2,); PSNR of each batch's mean MSE, weighted by batch size.
        mse = mean_squared_error(recon, reference)
        batch_psnr = (2 * psnr_from_mse(mse[:2].mean()) + psnr_from_mse(mse[2])) / 3
        assert entry["psnr"] == pytest.approx(per_image_psnr.mean().item(), rel=1e-12), name
        assert entry["ssim"] == pytest.approx(per_image_ssim.mean().item(), rel=1e-12), name
        assert entry["lpips"] == pytest.approx(per_image_lpips.mean().item(), rel=1e-5), name
        assert entry["psnr_batch_mse"] == pytest.approx(batch_psnr.item(), rel=1e-12), name
        assert entry["psnr_batch_mse"] != pytest.approx(entry["psnr"], rel=1e-6)
        for i, row in enumerate(csv_rows or []):
            assert float(row[f"psnr_{reference_name}"]) == pytest.approx(per_image_psnr[i].item(), rel=1e-12)
            assert float(row[f"ssim_{reference_name}"]) == pytest.approx(per_image_ssim[i].item(), rel=1e-12)

    for setting in SETTINGS:
        recon = saved(cli_run, setting)
        for reference_name, reference in references.items():
            setting_rows = [r for r in rows if r["setting"] == setting]
            check(recon, reference, summary["settings"][setting][reference_name], setting_rows, f"{setting} vs {reference_name}")
    reference_name = "original"
    check(references["vae"], references["original"], summary["vae_round_trip"]["original"], name="VAE round trip")
    # The decoder is not the identity: reconstructions differ from both references and from each other.
    assert not torch.equal(saved(cli_run, "decoder_2_steps"), saved(cli_run, "decoder_1_steps"))


def test_decodes_depend_on_the_image_seed_not_the_batch(cli_run, steering_pipeline, photos):
    image = photos[sorted(photos)[2]]  # decoded in the second batch, alone
    ids = steering_pipeline.encode([image])
    for setting, steps in (("decoder_2_steps", 2), ("decoder_1_steps", 1)):
        decoded = steering_pipeline(ids, num_inference_steps=steps, generator=torch.Generator().manual_seed(5 + 2), output_type="pt").images
        expected = (decoded.clamp(0, 1) * 255).round() / 255
        torch.testing.assert_close(read_png(cli_run / "images" / setting / "000002.png")[None], expected, rtol=0, atol=1 / 255 + 1e-6)
    rendered = steering_pipeline(ids, use_renderer=True, output_type="pt").images
    torch.testing.assert_close(read_png(cli_run / "images" / "renderer" / "000002.png")[None], (rendered * 255).round() / 255, rtol=0, atol=1 / 255 + 1e-6)


def test_pngs_and_coarse_to_fine(cli_run):
    assert PIL.Image.open(cli_run / "reconstructions.png").size == (SIZE * (2 + len(SETTINGS)), SIZE * 3)
    assert PIL.Image.open(cli_run / "psnr_vs_steps.png").size == (600, 400)
    grid = PIL.Image.open(cli_run / "coarse_to_fine.png")
    assert grid.size == (SIZE * 4, SIZE * 2)  # prefixes 0, 8, 32, then the VAE round trip; 2 images
    summary = json.loads((cli_run / "summary.json").read_text())
    coarse = summary["coarse_to_fine"]
    assert coarse["prefix_lengths"] == [0, 8, 32] and coarse["num_inference_steps"] == 2 and coarse["image_indices"] == [0, 1]
    cells = torch.from_numpy(np.asarray(grid, dtype=np.float32) / 255).permute(2, 0, 1)
    cell = lambda r, c: cells[:, r * SIZE : (r + 1) * SIZE, c * SIZE : (c + 1) * SIZE]
    vae = saved(cli_run, "vae_round_trip", count=2)
    for column, value in enumerate(coarse["psnr_vae"]):
        recomputed = psnr(torch.stack([cell(r, column) for r in range(2)]), vae).mean().item()
        assert value == pytest.approx(recomputed, rel=1e-12)
    assert torch.equal(torch.stack([cell(r, 3) for r in range(2)]), vae)
    # All 32 tokens is the 2-step decode itself; no token is a different (unconditional) image.
    assert torch.equal(torch.stack([cell(r, 2) for r in range(2)]), saved(cli_run, "decoder_2_steps", count=2))
    assert not torch.equal(cell(0, 0), cell(0, 2))


def test_api_with_pluggable_fid_extractor_and_dataset_input(steering_pipeline, photos, tmp_path):
    datasets = pytest.importorskip("datasets")
    torch.manual_seed(0)
    extractor = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 8, stride=8), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    images = [photos[name] for name in sorted(photos)]
    from_list = evaluate_reconstruction(
        steering_pipeline, images, steps=[1], renderer=True, metrics=EvaluationMetrics(feature_extractor=extractor), batch_size=3,
        outputs=EvaluationOutputs(output_dir=tmp_path, save_images=True, coarse_to_fine_images=0), show_progress=False,
    )  # fmt: skip
    summary = from_list.summary
    assert json.loads((tmp_path / "summary.json").read_text())["settings"] == summary["settings"]
    assert not (tmp_path / "coarse_to_fine.png").exists() and "coarse_to_fine" not in summary

    def features(folder):
        accumulator = FIDAccumulator(extractor)
        accumulator.update(saved(tmp_path, folder))
        return accumulator

    references = {"original": features("original"), "vae": features("vae_round_trip")}
    for setting in ("decoder_1_steps", "renderer"):
        recon = features(setting)
        for name, reference in references.items():
            # Same pixels, but the PNGs come back as strided tensors (other conv kernels): features agree to float32
            # round-off, which the zero eigenvalues of 3-sample covariances amplify to ~sqrt(eps).
            assert summary["settings"][setting][name]["rfid"] == pytest.approx(recon.frechet_distance(reference), rel=1e-6)
            assert summary["settings"][setting][name]["rfid"] > 0
    assert summary["vae_round_trip"]["original"]["rfid"] == pytest.approx(references["vae"].frechet_distance(references["original"]), rel=1e-6)

    dataset = datasets.Dataset.from_dict({"picture": images}).cast_column("picture", datasets.Image())
    from_dataset = evaluate_reconstruction(
        steering_pipeline, dataset, image_column="picture", steps=[1], renderer=True, batch_size=3,
        outputs=EvaluationOutputs(coarse_to_fine_images=0), show_progress=False,
    )  # fmt: skip
    strip = lambda rows: [{k: v for k, v in r.items() if k != "image"} for r in rows]
    assert strip(from_dataset.rows) == strip(from_list.rows)
    with pytest.raises(ValueError, match="no column 'image'"):
        evaluate_reconstruction(steering_pipeline, dataset, steps=[1])


def test_without_matplotlib_only_the_plot_is_skipped(pipeline_dir, image_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes `from matplotlib.figure import ...` fail
    code = main([
        "--pipeline", str(pipeline_dir), "--images", str(image_dir), "--steps", "1", "--max-images", "1",
        "--coarse-to-fine-images", "1", "--prefix-lengths", "4", "--output-dir", str(tmp_path), "--no-progress",
        "--dtype", "bfloat16",  # decoder, renderer and VAE in bf16; the tokenizer stays float32
    ])  # fmt: skip
    assert code == 0
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert not (tmp_path / "psnr_vs_steps.png").exists()
    for name in ("per_image.csv", "summary.json", "reconstructions.png", "coarse_to_fine.png"):
        assert (tmp_path / name).is_file(), name
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["num_images"] == 1 and 0 < summary["settings"]["decoder_1_steps"]["vae"]["psnr"] < 60
    assert "rfid" not in summary["settings"]["decoder_1_steps"]["original"]  # FID needs >= 2 images (and weights)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--steps", "0"], "--steps must be >= 1"),
        (["--steps"], "nothing to evaluate"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--max-images", "0"], "--max-images must be >= 1"),
        (["--guidance-scale", "0.5"], "--guidance-scale must be >= 1"),
        (["--ssim-data-range", "-1"], "must be 'target' or a positive number"),
        (["--prefix-lengths", "33"], r"must lie in \[0, 32\]"),
        (["--inception-weights", "/nonexistent/pt_inception.pth"], "no such file"),
        (["--lpips-weights", "BAD_LPIPS"], "missing keys"),
        (["--dataset", "x"], "not allowed with argument --images"),
    ],
)
def test_bad_arguments_exit_with_code_2(pipeline_dir, image_dir, tmp_path, capsys, extra, message):
    bad_lpips = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11)}, bad_lpips)
    extra = [str(bad_lpips) if e == "BAD_LPIPS" else e for e in extra]
    argv = ["--pipeline", str(pipeline_dir), "--images", str(image_dir), "--output-dir", str(tmp_path / "out"), "--no-progress", *extra]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert __import__("re").search(message, capsys.readouterr().err), message


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--images", "IMAGES"], "--pipeline"),
        (["--pipeline", "/nonexistent/pipeline", "--images", "IMAGES"], "no such file or folder"),
        (["--pipeline", "PIPE", "--images", "/nonexistent/folder"], "no such image file or folder"),
        (["--pipeline", "PIPE"], "one of the arguments --images --dataset is required"),
        (["--pipeline", "PIPE", "--images", "EMPTY"], "no images"),
    ],
)
def test_bad_inputs_exit_with_code_2(pipeline_dir, image_dir, tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    replace = {"IMAGES": str(image_dir), "PIPE": str(pipeline_dir), "EMPTY": str(tmp_path / "empty")}
    with pytest.raises(SystemExit) as info:
        main([replace.get(a, a) for a in argv])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_former_keyword_arguments_are_deprecated_and_give_the_same_results(steering_pipeline, photos, lpips_file, tmp_path):
    images = [photos[name] for name in sorted(photos)]
    lpips = LPIPS.from_pretrained(lpips_file)
    common = dict(steps=[1], renderer=True, batch_size=2, max_images=2, seed=3, show_progress=False)
    new = evaluate_reconstruction(
        steering_pipeline, images, **common, metrics=EvaluationMetrics(lpips=lpips, ssim_data_range=1.0),
        outputs=EvaluationOutputs(output_dir=tmp_path / "new", save_images=True, grid_images=1, coarse_to_fine_images=1, prefix_lengths=[0, 32]),
    )  # fmt: skip
    with pytest.warns(FutureWarning, match=r"evaluate_reconstruction\(lpips=..., ssim_data_range=...\) is deprecated; pass metrics=EvaluationMetrics\(lpips=..., ssim_data_range=...\)"):
        with pytest.warns(FutureWarning, match=r"pass outputs=EvaluationOutputs\(output_dir=..., save_images=..., grid_images=..., coarse_to_fine_images=..., prefix_lengths=...\)"):
            old = evaluate_reconstruction(
                steering_pipeline, images, **common, lpips=lpips, ssim_data_range=1.0, output_dir=tmp_path / "old",
                save_images=True, grid_images=1, coarse_to_fine_images=1, prefix_lengths=[0, 32],
            )  # fmt: skip
    assert old.rows == new.rows and old.summary == new.summary
    assert (tmp_path / "old" / "per_image.csv").read_text() == (tmp_path / "new" / "per_image.csv").read_text()
    for name in ("reconstructions.png", "coarse_to_fine.png", "images/renderer/000001.png"):
        assert (tmp_path / "old" / name).read_bytes() == (tmp_path / "new" / name).read_bytes(), name
    with pytest.raises(TypeError, match="pass lpips inside metrics=EvaluationMetrics"):
        evaluate_reconstruction(steering_pipeline, images, steps=[1], metrics=EvaluationMetrics(), lpips=lpips)
    with pytest.raises(TypeError, match="unexpected keyword argument 'lpip'"):
        evaluate_reconstruction(steering_pipeline, images, steps=[1], lpip=lpips)
    with pytest.raises(ValueError, match="save_images=True needs an output_dir"):
        evaluate_reconstruction(steering_pipeline, images, steps=[1], outputs=EvaluationOutputs(save_images=True))
    with pytest.raises(ValueError, match="ssim_data_range must be 'target' or a number"):
        evaluate_reconstruction(steering_pipeline, images, steps=[1], metrics=EvaluationMetrics(ssim_data_range="range"))


def test_latents_to_images_is_the_pipelines_decode(steering_pipeline):
    """vae.latents_to_images (what the evaluator's VAE round trip uses) gives the pipeline's images from its latents."""
    ids = steering_pipeline.encode([bundled_images()[sorted(bundled_images())[0]]])
    call = lambda output_type: steering_pipeline(ids, num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type=output_type).images
    latents = call("latent")
    cfg = steering_pipeline.image_tokenizer.config
    images = latents_to_images(steering_pipeline.vae, latents, cfg.vae_scaling_factor, cfg.vae_shift_factor)
    assert images.shape == (1, 3, SIZE, SIZE) and images.dtype == torch.float32
    assert torch.equal(images, call("pt"))
    pixels = latents_to_pixels(steering_pipeline.vae, latents, cfg.vae_scaling_factor, cfg.vae_shift_factor)
    assert torch.equal(to_unit_range(pixels), images) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(to_unit_range(torch.tensor([-3.0, -1.0, 0.0, 0.5, 2.0])), torch.tensor([0.0, 0.0, 0.5, 0.75, 1.0]))


def test_temporary_progress_bar_config_restores_the_settings(steering_pipeline):
    """What the evaluator hides the pipeline's per-decode bars with: the settings from before come back, also after
    an error."""
    before = dict(steering_pipeline._progress_bar_config)
    with steering_pipeline.temporary_progress_bar_config(desc="x", disable=True) as pipe:
        assert pipe is steering_pipeline and pipe._progress_bar_config == {"desc": "x", "disable": True}
    assert steering_pipeline._progress_bar_config == before
    with pytest.raises(RuntimeError, match="inside"), steering_pipeline.temporary_progress_bar_config(disable=False):
        raise RuntimeError("inside")
    assert steering_pipeline._progress_bar_config == before


def test_pipeline_without_renderer(pipeline_dir, image_dir, tmp_path, capsys):
    pipe = SelftokDecoderPipeline.from_pretrained(pipeline_dir)
    pipe.renderer = None
    with pytest.raises(ValueError, match="no renderer"):
        evaluate_reconstruction(pipe, image_dir, steps=[], renderer=True)
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate_reconstruction(pipe, image_dir, steps=[])


@pytest.mark.slow
def test_cli_rfid_with_inception_weights_file(pipeline_dir, image_dir, tmp_path):
    torch.manual_seed(0)
    inception = InceptionFeatureExtractor()
    for module in inception.modules():  # random weights whose activations neither vanish nor explode
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    torch.save(inception.state_dict(), tmp_path / "pt_inception.pth")
    out = tmp_path / "out"
    code = main([
        "--pipeline", str(pipeline_dir), "--images", str(image_dir), "--steps", "1", "--renderer", "--save-images",
        "--inception-weights", str(tmp_path / "pt_inception.pth"), "--coarse-to-fine-images", "0", "--output-dir", str(out), "--no-progress",
    ])  # fmt: skip
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    stats = {}
    for folder in ("original", "vae_round_trip", "decoder_1_steps", "renderer"):
        stats[folder] = FIDAccumulator(inception)
        stats[folder].update(saved(out, folder))
    for setting in ("decoder_1_steps", "renderer"):
        for reference, folder in (("original", "original"), ("vae", "vae_round_trip")):
            value = summary["settings"][setting][reference]["rfid"]
            assert math.isfinite(value) and value > 0
            assert value == pytest.approx(stats[setting].frechet_distance(stats[folder]), rel=1e-4)
