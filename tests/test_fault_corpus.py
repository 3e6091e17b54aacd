"""The project's own corpus of bad inputs and faults: every case that once failed badly (a crash deep inside, a
silent wrong result, data loss, a race) gets a test here, so it stays fixed."""

import json
import re
import threading
import warnings

import numpy as np
import PIL.Image
import pytest
import torch

from selftok_hf.apps.cli import main as selftok_main
from selftok_hf.pipeline_selftok_decoder import SelftokDecoderPipeline
from selftok_hf.testing import random_tiny_pipeline
from selftok_hf.vae import RandomWeightsWarning


@pytest.fixture(scope="module")
def loaded_tiny_pipeline(tiny_pipeline_dir):
    pipe = SelftokDecoderPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_cli(capsys, *argv):
    """``selftok ARGV`` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        code = selftok_main([str(a) for a in argv])
    except SystemExit as exit_info:
        code = exit_info.code
    out, err = capsys.readouterr()
    return code, out, err


def _token_ids(pipe, rows=2, seed=0):
    cfg = pipe.image_tokenizer.config
    return torch.randint(0, cfg.codebook_size, (rows, cfg.num_image_tokens), generator=torch.Generator().manual_seed(seed))


def _photo_like(mode: str, size=(40, 36)) -> PIL.Image.Image:
    """A seeded image in ``mode`` whose pixels matter: an alpha channel with transparent areas, 16-bit values above 255."""
    rng = np.random.default_rng(0)
    h, w = size[1], size[0]
    if mode == "I;16":
        return PIL.Image.fromarray(rng.integers(0, 65536, (h, w)).astype(np.uint16))
    alpha = np.where(np.arange(h)[:, None] < h // 2, 0, 255).astype(np.uint8) * np.ones((1, w), np.uint8)
    if mode == "LA":
        return PIL.Image.fromarray(np.stack([rng.integers(0, 256, (h, w)).astype(np.uint8), alpha], -1), mode="LA")
    return PIL.Image.fromarray(np.concatenate([rng.integers(0, 256, (h, w, 3)).astype(np.uint8), alpha[..., None]], -1), mode="RGBA")


# --------------------------------------------------------------------------------------------- concurrency
def test_one_decoder_pipeline_shared_by_threads_gives_the_single_threaded_results(tiny_pipeline):
    """Servers share one pipeline between request threads: 4 threads (started together, and staggered) must get
    bitwise the outputs of one thread. It used to fail on every call (the scheduler's step index was shared)."""
    K, C = tiny_pipeline.image_tokenizer.config.num_image_tokens, tiny_pipeline.image_tokenizer.config.codebook_size
    requests = [
        dict(token_ids=torch.randint(0, C, (1, K), generator=torch.Generator().manual_seed(i)), num_inference_steps=3 + i,
             guidance_scale=1.0 + (i % 2), prefix_length=None if i < 2 else K // 2)
        for i in range(4)
    ]

    def decode(request, seed):
        return tiny_pipeline(**request, generator=torch.Generator().manual_seed(seed), output_type="pt").images

    expected = [decode(r, i) for i, r in enumerate(requests)]
    for stagger in (False, True):
        results, errors = [None] * 4, []
        barrier = threading.Barrier(4)

        def worker(i):
            try:
                if not stagger:
                    barrier.wait()
                for _ in range(2):
                    results[i] = decode(requests[i], i)
            except Exception as error:  # noqa: BLE001 (reported below)
                errors.append(error)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
            if stagger:
                threading.Event().wait(0.01)
        for thread in threads:
            thread.join()
        assert not errors, errors
        for got, want in zip(results, expected):
            assert torch.equal(got, want)
    # No sampling loop leaves a cache behind (it would go stale when the weights change).
    assert tiny_pipeline.transformer._token_modulation_caches == {}


# --------------------------------------------------------------------------------------------- checkpoints
class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path(__import__('os').environ['SELFTOK_PWNED']).write_text('ran')",))


def test_resuming_sft_never_unpickles_code_from_the_checkpoint_folder(tmp_path, monkeypatch):
    """accelerate loads ``custom_checkpoint_*.pkl`` with ``weights_only=False``; the SFT trainer used to register its
    LR scheduler there. The warm-up is now a pure function of the step, so nothing is registered, and a checkpoint
    holding such a pickle is refused with a clear error before accelerate sees it (every other file accelerate
    loads with ``weights_only=True``)."""
    import pickle

    import datasets

    from selftok_hf import SelftokPipeline
    from selftok_hf.assets import bundled_images
    from selftok_hf.testing.tiny_vlm import tiny_selftok_pipeline
    from selftok_hf.training.loop import latest_checkpoint
    from selftok_hf.training.sft import SelftokSFTTrainer, SFTArguments

    torch.set_num_threads(1)
    base = tmp_path / "base"
    tiny_selftok_pipeline("llama").save_pretrained(base)
    images = list(bundled_images().values())
    pairs = datasets.Dataset.from_dict({"image": images, "text": ["a", "b", "c"]})

    def args(steps):
        return SFTArguments(output_dir=str(tmp_path / "run"), max_steps=steps, batch_size=2, learning_rate=1e-3, warmup_steps=4,
                            log_every=1, checkpoint_every=2, resume_from="latest")

    first = SelftokSFTTrainer(args(2), SelftokPipeline.from_pretrained(base), pairs)
    history = first.run()
    assert [h["lr/language_model"] for h in history] == pytest.approx([1e-3 / 4, 2e-3 / 4])
    assert first.accelerator._custom_objects == []
    checkpoint = latest_checkpoint(tmp_path / "run")
    assert not list(checkpoint.glob("custom_checkpoint_*"))
    with open(checkpoint / "custom_checkpoint_0.pkl", "wb") as f:
        pickle.dump(_RunsCodeWhenUnpickled(), f)
    marker = tmp_path / "pwned"
    monkeypatch.setenv("SELFTOK_PWNED", str(marker))
    with pytest.raises(ValueError, match="refusing to load"):
        SelftokSFTTrainer(args(4), SelftokPipeline.from_pretrained(base), pairs).run()
    assert not marker.exists()
    (checkpoint / "custom_checkpoint_0.pkl").unlink()
    resumed = SelftokSFTTrainer(args(4), SelftokPipeline.from_pretrained(base), pairs)
    history = resumed.run()
    # The warm-up continues where it stopped: a resumed run needs no scheduler state.
    assert [h["step"] for h in history] == [3, 4]
    assert [h["lr/language_model"] for h in history] == pytest.approx([3e-3 / 4, 1e-3])


# ------------------------------------------------------------------------- image loading: one path for CLI and API
@pytest.mark.parametrize("mode", ["RGBA", "LA", "I;16"])
def test_cli_and_api_give_the_same_ids_for_alpha_and_16_bit_files(mode, tiny_pipeline_dir, loaded_tiny_pipeline, tmp_path, capsys):
    """The CLI used to load with ``.convert("RGB")`` (alpha -> black, 16-bit clipped to white) while the processor
    composites on white and rescales: different ids for the same file. Both now use the processor's path."""
    path = tmp_path / f"image_{mode.replace(';', '')}.png"
    _photo_like(mode).save(path)
    assert PIL.Image.open(path).mode == mode
    code, _, err = run_cli(capsys, "encode", path, "--pipeline", tiny_pipeline_dir, "-o", tmp_path / "ids.npy")
    assert code == 0, err
    api = loaded_tiny_pipeline.encode(PIL.Image.open(path))
    np.testing.assert_array_equal(np.load(tmp_path / "ids.npy"), api.numpy())
    # The same pixels too (ids of a random tiny model could agree by chance): what the old loader gave differs.
    processor = loaded_tiny_pipeline.image_processor
    ours = processor(PIL.Image.open(path), return_tensors="pt").pixel_values
    from selftok_hf.image_processing_selftok import load_image_file

    assert torch.equal(processor(load_image_file(path), return_tensors="pt").pixel_values, ours)
    assert not torch.equal(processor(PIL.Image.open(path).convert("RGB"), return_tensors="pt").pixel_values, ours)


def test_reconstruct_shows_transparent_areas_white(tiny_pipeline_dir, tmp_path, capsys):
    path = tmp_path / "rgba.png"
    _photo_like("RGBA", size=(32, 32)).save(path)
    code, _, err = run_cli(capsys, "reconstruct", path, "--pipeline", tiny_pipeline_dir, "-o", tmp_path / "r.png", "--renderer")
    assert code == 0, err
    grid = np.asarray(PIL.Image.open(tmp_path / "r.png"))
    assert grid[:16, :32].min() == 255  # the input column's transparent top half (was black)


# ------------------------------------------------------------------------------------ image processor inputs
def _pixels(images, **kwargs):
    from selftok_hf.image_processing_selftok import SelftokImageProcessorPil

    processor = SelftokImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return processor(images, return_tensors="pt", **kwargs).pixel_values


_UINT8 = np.random.default_rng(1).integers(0, 256, (36, 40, 3)).astype(np.uint8)


@pytest.mark.parametrize(
    "image",
    [_UINT8.astype(np.float32) / 255, torch.from_numpy(_UINT8.astype(np.float32) / 255).permute(2, 0, 1), _UINT8.astype(np.float64)],
    ids=["float32 in [0, 1]", "float tensor in [0, 1]", "float64 in [0, 255]"],
)
def test_float_arrays_are_not_rescaled_twice(image):
    """Float pixels already in [0, 1] were divided by 255 again (a near-black image, no warning); floats in [0, 255]
    crashed in resize. Both now give the uint8 image's pixel values."""
    assert torch.allclose(_pixels(image), _pixels(_UINT8), atol=1e-6)


def test_bool_arrays_are_black_and_white():
    mask = np.zeros((36, 40), bool)
    mask[:, 20:] = True
    assert torch.equal(_pixels(mask), _pixels(mask.astype(np.uint8) * 255))
    assert _pixels(np.ones((32, 32, 3), bool)).min() == 1


@pytest.mark.parametrize("value, match", [(float("nan"), "NaN"), (float("inf"), "NaN or infinite"), (-0.5, r"must lie in \[0, 1\]"), (300.0, r"\[0, 255\]")])
def test_bad_float_pixels_are_refused(value, match):
    image = np.full((8, 8, 3), 0.5, np.float32)
    image[0, 0, 0] = value
    with pytest.raises(ValueError, match=match):
        _pixels(image)


def test_a_2d_greyscale_array_is_one_image():
    grey = _UINT8[..., 0]
    expected = _pixels(PIL.Image.fromarray(grey, mode="L"))
    assert torch.equal(_pixels(grey), expected)
    assert torch.equal(_pixels(torch.from_numpy(grey)), expected)
    assert torch.equal(_pixels([grey, grey]), torch.cat([expected, expected]))


@pytest.mark.parametrize(
    "images", [[], (), PIL.Image.new("RGB", (0, 0)), PIL.Image.new("L", (5, 0)), np.zeros((0, 0, 3), np.uint8), torch.zeros(3, 0, 4)],
    ids=["empty list", "empty tuple", "PIL 0x0", "PIL 5x0", "array 0x0", "tensor 0x4"],
)
def test_empty_batches_and_zero_size_images_are_refused(images):
    """``processor([])`` returned a (0,) tensor; a 0x0 image raised ZeroDivisionError deep inside."""
    with pytest.raises(ValueError, match="no images given|zero-size"):
        _pixels(images)


def test_a_constant_float_image_keeps_its_value():
    """Mode F was min-max normalised: a constant image became black. Floats in [0, 1] are read as [0, 1], floats
    in [0, 255] as 8-bit values."""
    for value, level in ((0.7, 0.7), (178.5, 0.7), (0.0, 0.0)):
        image = PIL.Image.fromarray(np.full((32, 32), value, np.float32), mode="F")
        assert torch.allclose(_pixels(image), torch.full((1, 3, 32, 32), round(level * 255) / 127.5 - 1), atol=1e-6), value
    ramp = np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32)
    as_l = PIL.Image.fromarray(np.round(ramp * 255).astype(np.uint8), mode="L")
    assert torch.allclose(_pixels(PIL.Image.fromarray(ramp, mode="F")), _pixels(as_l), atol=1e-6)
    with pytest.raises(ValueError, match="NaN"):
        _pixels(PIL.Image.fromarray(np.full((8, 8), np.nan, np.float32), mode="F"))


def test_a_missing_image_path_is_reported_as_a_missing_file(tmp_path, tiny_pipeline_dir, capsys):
    """It used to say 'Incorrect image source ... URL ... base64'."""
    missing = tmp_path / "nope.png"
    with pytest.raises(FileNotFoundError, match="nope.png.*no such file"):
        _pixels(str(missing))
    with pytest.raises(FileNotFoundError, match="no such file"):
        _pixels([missing])
    code, _, err = run_cli(capsys, "encode", missing, "--pipeline", tiny_pipeline_dir, "-o", tmp_path / "ids.npy")
    assert code == 2 and "nope.png" in err and "no such file" in err and "URL" not in err


def test_a_path_and_an_opened_file_give_the_same_pixels(tmp_path):
    path = tmp_path / "la.png"
    _photo_like("LA").save(path)
    assert torch.equal(_pixels(str(path)), _pixels(PIL.Image.open(path)))


def test_a_decompression_bomb_is_refused_naming_the_file(tmp_path, tiny_pipeline_dir, monkeypatch, capsys):
    path = tmp_path / "bomb.png"
    PIL.Image.new("RGB", (64, 64)).save(path)
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 px > 2 x the limit: PIL's DecompressionBombError
    with pytest.raises(ValueError, match="bomb.png.*decompression bomb"):
        _pixels(str(path))
    code, _, err = run_cli(capsys, "encode", path, "--pipeline", tiny_pipeline_dir, "-o", tmp_path / "ids.npy")
    assert code == 2 and "bomb.png" in err and "decompression bomb" in err
    assert not (tmp_path / "ids.npy").exists()


# ------------------------------------------------------------------------------------------- encode() inputs
@pytest.mark.parametrize(
    "pixels, match",
    [
        (torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8), "floating-point tensor in \\[-1, 1\\]"),
        (torch.rand(1, 3, 32, 32) * 255, "must lie in \\[-1, 1\\]"),
        (torch.full((1, 3, 32, 32), float("nan")), "NaN"),
        (torch.zeros(1, 3, 32, 32).index_fill_(3, torch.tensor([0]), float("inf")), "NaN or infinite"),
        (torch.zeros(1, 1, 32, 32), "shape"),
    ],
    ids=["uint8", "float in [0, 255]", "NaN", "inf", "one channel"],
)
def test_encode_refuses_tensors_that_are_not_pixels_in_minus_one_one(tiny_pipeline, pixels, match):
    """``pipe.encode(tensor)`` accepted any dtype and range, and NaN pixels gave all-zero ids."""
    with pytest.raises(ValueError, match=match):
        tiny_pipeline.encode(pixels)
    with pytest.raises(ValueError, match=match):
        tiny_pipeline.image_tokenizer.encode(pixel_values=pixels)


def test_encode_accepts_pixels_within_the_tolerance(tiny_pipeline):
    pixels = torch.rand(1, 3, 32, 32) * 2 - 1
    pixels[0, 0, 0, 0] = 1.001
    assert tiny_pipeline.encode(pixels).shape == (1, tiny_pipeline.image_tokenizer.config.num_image_tokens)


def test_encode_refuses_non_finite_latents(tiny_pipeline):
    latents = torch.zeros(tiny_pipeline._latent_shape(1))
    latents[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="latents contain NaN"):
        tiny_pipeline.image_tokenizer.encode(latents=latents)


# ------------------------------------------------------------------------------------- decoder call arguments
@pytest.mark.parametrize("scale", [float("nan"), float("inf"), 0.5, True, "2"], ids=["nan", "inf", "0.5", "bool", "str"])
def test_guidance_scale_must_be_a_finite_number_at_least_one(tiny_pipeline, scale):
    """NaN was treated as 1 and inf gave all-black images."""
    with pytest.raises(ValueError, match="guidance_scale must be a finite number >= 1"):
        tiny_pipeline(_token_ids(tiny_pipeline), num_inference_steps=2, guidance_scale=scale)


def test_latents_with_one_nan_are_refused(tiny_pipeline):
    latents = torch.randn(tiny_pipeline._latent_shape(2))
    latents[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="latents contain NaN"):
        tiny_pipeline(_token_ids(tiny_pipeline), num_inference_steps=2, latents=latents)


@pytest.mark.parametrize("output_type", ["pil", "latent"])
def test_non_finite_results_from_corrupt_weights_raise(output_type):
    """A NaN in the weights gave black PNGs with no error; one check at the end of the call reports it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        pipe = random_tiny_pipeline(seed=1)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        pipe.transformer.proj_out.weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN or infinite"):
        pipe(_token_ids(pipe), num_inference_steps=2, output_type=output_type)


@pytest.mark.parametrize("count", [0, 1, 3], ids=["empty", "short", "extra"])
def test_a_generator_list_must_have_one_entry_per_image(tiny_pipeline, count):
    """Extra generators were ignored silently; a short or empty list crashed inside diffusers."""
    generators = [torch.Generator().manual_seed(i) for i in range(count)]
    with pytest.raises(ValueError, match=f"got {count} generators for 2 images"):
        tiny_pipeline(_token_ids(tiny_pipeline), num_inference_steps=2, generator=generators)
    with pytest.raises(ValueError, match="generators for 4 images"):
        tiny_pipeline(_token_ids(tiny_pipeline), num_inference_steps=2, generator=generators + [torch.Generator()] * 5 if count == 3 else generators, num_images_per_prompt=2)


@pytest.mark.parametrize("steps", [True, 0, 1001, 10**9, 2.0], ids=["True", "0", "1001", "1e9", "float"])
def test_num_inference_steps_must_be_an_integer_in_range(tiny_pipeline, steps):
    """``steps=True`` ran one step; 10**9 steps tried to allocate 4 GB."""
    with pytest.raises(ValueError, match=r"num_inference_steps must be an integer in \[1, 1000\]"):
        tiny_pipeline(_token_ids(tiny_pipeline), num_inference_steps=steps)


def test_numpy_integers_are_accepted_for_integer_arguments(tiny_pipeline):
    ids = _token_ids(tiny_pipeline, rows=1)
    K = ids.shape[1]
    want = tiny_pipeline(ids, num_inference_steps=2, prefix_length=K // 2, num_images_per_prompt=2, generator=torch.Generator().manual_seed(0), output_type="pt").images
    got = tiny_pipeline(ids, num_inference_steps=np.int64(2), prefix_length=np.int32(K // 2), num_images_per_prompt=np.int64(2), generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="num_images_per_prompt"):
        tiny_pipeline(ids, num_inference_steps=2, num_images_per_prompt=np.bool_(True))


# ----------------------------------------------------------------------------------- the selftok command's arguments
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--guidance-scale", "0.5"], "--guidance-scale: must be a finite number >= 1"),
        (["--guidance-scale", "inf"], "--guidance-scale: must be a finite number >= 1"),
        (["--guidance-scale", "nan"], "--guidance-scale: must be a finite number >= 1"),
        (["--device", "nope"], "--device: not a torch device: 'nope'"),
        (["--steps", "1000000"], "--steps: must be an integer >= 1 and <= 1000"),
    ],
    ids=["guidance 0.5", "guidance inf", "guidance nan", "device nope", "steps 1e6"],
)
def test_bad_decoding_arguments_exit_2(argv, message, tiny_pipeline_dir, tmp_path, capsys):
    np.save(tmp_path / "ids.npy", np.zeros((1, 32), np.int64))
    code, _, err = run_cli(capsys, "decode", tmp_path / "ids.npy", "-o", tmp_path / "out", "--pipeline", tiny_pipeline_dir, *argv)
    assert code == 2 and message in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_exits_2(tmp_path, capsys):
    code, _, err = run_cli(capsys, "encode", "x.png", "-o", tmp_path / "ids.npy", "--device", "cuda")
    assert code == 2 and "device 'cuda' is not available" in err


@pytest.fixture()
def photo(tmp_path):
    path = tmp_path / "photo.png"
    PIL.Image.fromarray(_UINT8).save(path)
    return path


@pytest.mark.parametrize("command", ["encode", "reconstruct", "decode"])
def test_outputs_into_a_missing_folder_or_onto_an_existing_file_are_refused_before_any_work(command, photo, tiny_pipeline_dir, tmp_path, capsys, monkeypatch):
    from selftok_hf.apps import cli

    monkeypatch.setattr(cli, "_load_decoder_pipeline", lambda args: pytest.fail("loaded the pipeline before checking the output"))
    np.save(tmp_path / "ids.npy", np.zeros((2, 32), np.int64))
    source = tmp_path / "ids.npy" if command == "decode" else photo
    name = {"encode": "out.npy", "reconstruct": "out.png", "decode": "decoded"}[command]
    if command != "decode":  # decode creates its folder
        code, _, err = run_cli(capsys, command, source, "-o", tmp_path / "missing" / name, "--pipeline", tiny_pipeline_dir)
        assert code == 2 and "does not exist" in err, err
        (tmp_path / name).write_bytes(b"precious")
    else:
        (tmp_path / name).mkdir()
        (tmp_path / name / "image_0001.png").write_bytes(b"precious")
    code, _, err = run_cli(capsys, command, source, "-o", tmp_path / name, "--pipeline", tiny_pipeline_dir)
    assert code == 2 and "--overwrite" in err, err
    kept = tmp_path / name if command != "decode" else tmp_path / name / "image_0001.png"
    assert kept.read_bytes() == b"precious"
    monkeypatch.undo()
    code, _, err = run_cli(capsys, command, source, "-o", tmp_path / name, "--pipeline", tiny_pipeline_dir, "--overwrite", *(["--renderer"] if command != "encode" else []))
    assert code == 0, err
    assert kept.read_bytes() != b"precious"


def test_a_corrupt_or_pickled_npy_is_named(tiny_pipeline_dir, tmp_path, capsys):
    """A corrupt file was reported as 'pickled data' without its name; object arrays are never unpickled."""
    (tmp_path / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    np.save(tmp_path / "objects.npy", np.array([[1, 2], [3, None]], dtype=object), allow_pickle=True)
    (tmp_path / "bad.json").write_text("{not json")
    for name in ("corrupt.npy", "objects.npy", "bad.json"):
        code, _, err = run_cli(capsys, "decode", tmp_path / name, "-o", tmp_path / "out", "--pipeline", tiny_pipeline_dir)
        assert code == 2 and name in err and "not a readable" in err, err


# ------------------------------------------------------------------------------ CLI outputs are written atomically
@pytest.mark.parametrize("suffix", [".npy", ".json"])
def test_a_failed_write_keeps_the_previous_ids_file(suffix, photo, tiny_pipeline_dir, tmp_path, capsys, monkeypatch):
    """``selftok encode -o ids.npy`` on a full disk destroyed the previous ids.npy (written in place)."""
    from pathlib import Path

    target = tmp_path / f"ids{suffix}"
    code, _, err = run_cli(capsys, "encode", photo, "--pipeline", tiny_pipeline_dir, "-o", target)
    assert code == 0, err
    before = target.read_bytes()

    def full_disk(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"\x93NUMPY half")  # part of the file is written, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk)
    monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: full_disk(self))
    code, _, err = run_cli(capsys, "encode", photo, photo, "--pipeline", tiny_pipeline_dir, "-o", target, "--overwrite")
    assert code == 1 and "No space left on device" in err and "unchanged" in err
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["photo.png", target.name])  # no temporary left


def test_a_failed_png_write_keeps_the_previous_png(photo, tiny_pipeline_dir, tmp_path, capsys, monkeypatch):
    target = tmp_path / "recon.png"
    target.write_bytes(b"old picture")
    original_save = PIL.Image.Image.save

    def failing_save(self, fp, *args, **kwargs):
        original_save(self, fp, *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(PIL.Image.Image, "save", failing_save)
    code, _, err = run_cli(capsys, "reconstruct", photo, "--pipeline", tiny_pipeline_dir, "-o", target, "--overwrite", "--renderer")
    assert code == 1 and "cannot write" in err
    assert target.read_bytes() == b"old picture"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.png", "recon.png"]


# ------------------------------------------------------------------------------- config and weights must agree
def _edit_json(path, **changes):
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.fixture()
def pipeline_copy(tiny_pipeline_dir, tmp_path):
    import shutil

    return shutil.copytree(tiny_pipeline_dir, tmp_path / "copy")


def test_a_config_shallower_than_the_weights_is_refused_naming_the_keys(pipeline_copy):
    """An ``encoder_depth`` lower than the weights' loaded with a warning table only, and gave different ids."""
    from selftok_hf import SelftokModel

    config_path = pipeline_copy / "image_tokenizer" / "config.json"
    depth = json.loads(config_path.read_text())["encoder_depth"]
    _edit_json(config_path, encoder_depth=depth - 1)
    with pytest.raises(ValueError, match=rf"unexpected keys: encoder\.blocks\.{depth - 1}\..*strict=False"):
        SelftokModel.from_pretrained(pipeline_copy, subfolder="image_tokenizer")
    with pytest.raises(ValueError, match="SelftokModel from .*image_tokenizer: the weights do not match the config"):
        SelftokDecoderPipeline.from_pretrained(pipeline_copy)
    model, info = SelftokModel.from_pretrained(pipeline_copy, subfolder="image_tokenizer", strict=False, output_loading_info=True)
    assert model.config.encoder_depth == depth - 1 and info["unexpected_keys"]


def test_missing_tokenizer_weights_are_refused(pipeline_copy):
    from safetensors.torch import load_file, save_file

    from selftok_hf import SelftokModel

    weights = pipeline_copy / "image_tokenizer" / "model.safetensors"
    state = load_file(weights)
    removed = sorted(state)[0]
    del state[removed]
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"missing keys: {removed}"):
        SelftokModel.from_pretrained(pipeline_copy, subfolder="image_tokenizer")


@pytest.mark.parametrize("component, cls_name", [("transformer", "SelftokDecoderTransformer"), ("renderer", "SelftokRenderer")])
@pytest.mark.parametrize("fault", ["extra key", "missing key"])
def test_decoder_and_renderer_weights_must_match_their_config(pipeline_copy, component, cls_name, fault):
    from safetensors.torch import load_file, save_file

    from selftok_hf import modeling_selftok_decoder

    cls = getattr(modeling_selftok_decoder, cls_name)
    weights = pipeline_copy / component / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    if fault == "extra key":
        state["stale_head.weight"] = torch.zeros(2)
        match = "unexpected keys: stale_head.weight"
    else:
        removed = sorted(state)[-1]
        del state[removed]
        match = f"missing keys: {removed}"
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=match):
        cls.from_pretrained(pipeline_copy, subfolder=component)
    with pytest.raises(ValueError, match=f"{cls_name} from .*{component}"):
        SelftokDecoderPipeline.from_pretrained(pipeline_copy)
    cls.from_pretrained(pipeline_copy, subfolder=component, strict=False)  # the libraries' lenient load, on request


def test_a_pipeline_without_its_renderer_folder_loads_without_a_renderer(pipeline_copy):
    """Deleting the optional renderer/ blocked loading (model_index.json still lists it), with an error naming the
    pipeline root instead of the missing folder."""
    import shutil

    shutil.rmtree(pipeline_copy / "renderer")
    assert "renderer" in json.loads((pipeline_copy / "model_index.json").read_text())
    pipe = SelftokDecoderPipeline.from_pretrained(pipeline_copy)
    assert pipe.renderer is None
    with pytest.raises(ValueError, match="no renderer"):
        pipe(_token_ids(pipe), use_renderer=True)
    shutil.rmtree(pipeline_copy / "transformer")
    with pytest.raises(FileNotFoundError, match=r"'transformer'.*copy/transformer' is missing"):
        SelftokDecoderPipeline.from_pretrained(pipeline_copy)


# ------------------------------------------------------------------------------------------- selftok-convert
def _snapshot(folder):
    """Every file under ``folder`` (relative path -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _convert(reference_dir, output, *extra, renderer=False):
    from selftok_hf.conversion.convert_selftok_checkpoint import main as convert_main

    renderer_args = ["--renderer-config", reference_dir / "renderer_config.yaml", "--renderer-checkpoint", reference_dir / "official_renderer_state_dict.safetensors"]
    argv = ["--config", reference_dir / "config.yaml", "--checkpoint", reference_dir / "official_tokenizer_state_dict.safetensors", "--output", output]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        return convert_main([str(a) for a in argv + (renderer_args if renderer else []) + list(extra)])


def test_converting_over_a_conversion_replaces_it_whole_or_not_at_all(reference_dir, tmp_path, capsys, monkeypatch):
    """A conversion that failed half-way left a folder that loaded without error and paired the new tokenizer with
    the old decoder; converting into a folder holding another conversion merged into it, keeping stale files."""
    from selftok_hf.conversion import convert_selftok_checkpoint
    from selftok_hf.modeling_selftok_decoder import SelftokDecoderTransformer

    out = tmp_path / "converted"
    assert _convert(reference_dir, out) == 0
    (out / "stale.txt").write_text("from an older conversion")
    before = _snapshot(out)

    # A non-empty folder is refused before any work, and kept.
    with monkeypatch.context() as patch:
        patch.setattr(convert_selftok_checkpoint, "load_official_state_dict", lambda path: pytest.fail("read a checkpoint before checking --output"))
        with pytest.raises(SystemExit) as exit_info:
            _convert(reference_dir, out, renderer=True)
    assert exit_info.value.code == 2 and "--overwrite" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(SystemExit) as exit_info:
        _convert(reference_dir, tmp_path / "a-file")
    assert exit_info.value.code == 2 and "is a file" in capsys.readouterr().err

    # --overwrite failing half-way (the tokenizer written, then the disk is full): the old folder is untouched.
    def full_disk(self, save_directory, *args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(SelftokDecoderTransformer, "save_pretrained", full_disk)
        assert _convert(reference_dir, out, "--overwrite", renderer=True) == 1
    err = capsys.readouterr().err
    assert "No space left on device" in err and "unchanged" in err
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "converted"]  # nothing half-written beside it

    # --overwrite that succeeds: exactly the new conversion, no stale file, and it loads with its renderer.
    assert _convert(reference_dir, out, "--overwrite", renderer=True) == 0
    assert not (out / "stale.txt").exists() and (out / "renderer").is_dir()
    assert ".tmp-" not in (out / "README.md").read_text()  # the card names the folder, not the temporary one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "converted"]
    assert SelftokDecoderPipeline.from_pretrained(out).renderer is not None


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda text: text + "tokenizer: [unclosed\n", "is not valid YAML"),
        (lambda text: text.replace("    k: 32\n", ""), "tokenizer.params has no `k`"),
        (lambda text: text.replace("    k: 32\n", "    k: many\n"), "tokenizer.params.k: expected a positive integer, got 'many'"),
        (lambda text: text.replace("k_per_stage: 12,12,4,3,1", "k_per_stage: 12,12,x,3,1"), "tokenizer.params.k_per_stage: expected comma-separated integers"),
        (lambda text: text.replace("k_per_stage: 12,12,4,3,1", "k_per_stage: 12,12,4,3,2"), "tokenizer.params.k_per_stage: '12,12,4,3,2' must be token counts >= 0 adding up to k=32 (they add up to 33)"),
        (lambda text: text.replace("k_per_stage: 12,12,4,3,1", "k_per_stage: 16,16"), "`stages` / `k_per_stage`: stages (200, 400, 600, 800, 1000) and tokens_per_stage (16, 16) must be non-empty and of equal length"),
        (lambda text: text.replace("    k_per_stage: 12,12,4,3,1\n", ""), "has `stages` but no `k_per_stage`"),
        (lambda text: text.replace("stages: 200,400,600,800,1000", "stages: 200,400,400,800,1000"), "stages must be strictly increasing"),
    ],
    ids=["yaml syntax", "no k", "k not a number", "k_per_stage not numbers", "k_per_stage sum", "lengths differ", "no k_per_stage", "stages not increasing"],
)
def test_bad_official_configs_exit_2_naming_the_file_and_the_key(edit, message, reference_dir, tmp_path, capsys):
    """These gave a traceback (yaml.ScannerError, KeyError: 'k') or a message naming neither the file nor the key."""
    config = tmp_path / "256-eval.yml"
    config.write_text(edit((reference_dir / "config.yaml").read_text()))
    from selftok_hf.conversion.convert_selftok_checkpoint import main as convert_main

    code = convert_main(["--config", str(config), "--checkpoint", str(reference_dir / "official_tokenizer_state_dict.safetensors"), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("selftok-convert: error: ") and str(config) in err and message in err, err
    assert "Traceback" not in err and not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [config.name]


# ------------------------------------------------------------------------------------------- trainer exports
def _tokenizer_args(output_dir, image_dir, **overrides):
    from selftok_hf.training.tokenizer import TokenizerTrainingArguments

    return TokenizerTrainingArguments(**{"output_dir": str(output_dir), "dataset": image_dir, "max_steps": 2, "batch_size": 2, "log_every": 1, "checkpoint_every": 1, **overrides})


def test_a_killed_export_leaves_the_previous_export_or_none(image_dir, tmp_path, monkeypatch, capsys):
    """A kill during the trainer's export left a half-written ``pipeline/`` (``model_index.json`` is written
    first), which ``training.stack`` then skipped as done. Exports are written beside the target and renamed in."""
    from selftok_hf.modeling_selftok_decoder import SelftokDecoderTransformer
    from selftok_hf.training.tokenizer import TokenizerTrainer
    from selftok_hf.training.tokenizer import main as tokenizer_main

    trainer = TokenizerTrainer(_tokenizer_args(tmp_path / "run", image_dir))
    trainer.run()
    export = tmp_path / "run" / "pipeline"
    trainer.export(export)
    before = _snapshot(export)

    def killed(self, *args, **kwargs):
        raise KeyboardInterrupt("killed while exporting")

    monkeypatch.setattr(SelftokDecoderTransformer, "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        trainer.export(export)  # a re-export (e.g. a finished run resumed) that dies half-way
    assert _snapshot(export) == before
    with pytest.raises(KeyboardInterrupt):
        trainer.export(tmp_path / "fresh" / "pipeline")
    assert list((tmp_path / "fresh").iterdir()) == []  # no folder at all, rather than half a pipeline
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoints", "log.jsonl", "pipeline"]
    monkeypatch.undo()

    trainer.export(export)  # a complete re-export replaces the old one: no stale files survive
    (export / "stale.txt").write_text("x")
    trainer.export(export)
    assert not (export / "stale.txt").exists() and SelftokDecoderPipeline.from_pretrained(export) is not None

    # A folder of other files given as --export-dir is refused (it would be replaced), before training.
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(FileExistsError, match="not a previous export"):
        trainer.export(precious)
    with pytest.raises(SystemExit) as exit_info:
        tokenizer_main(["--dataset", image_dir, "--output-dir", str(tmp_path / "run2"), "--export-dir", str(precious)])
    assert exit_info.value.code == 2 and "--export-dir" in capsys.readouterr().err
    assert not (tmp_path / "run2").exists() and (precious / "holiday.jpg").read_bytes() == b"precious"


# ------------------------------------------------------------------------------------- resuming and full disks
@pytest.fixture()
def checkpointed_run(image_dir, tmp_path):
    """A 2-step tokenizer run with checkpoints at steps 1 and 2."""
    from selftok_hf.training.tokenizer import TokenizerTrainer

    TokenizerTrainer(_tokenizer_args(tmp_path / "run", image_dir)).run()
    return tmp_path / "run"


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda c: _truncate(c / "model.safetensors"), r"model\.safetensors has \d+ bytes, \d+ were written"),
        (lambda c: (c / "optimizer.bin").unlink(), "optimizer.bin is missing"),
        (lambda c: (c / "trainer_state.json").write_text("{"), "trainer_state.json is unreadable"),
        (lambda c: (c / "trainer_state.json").unlink(), r"not a complete checkpoint \(no trainer_state.json\)"),
    ],
    ids=["truncated weights", "missing optimizer", "corrupt trainer state", "no trainer state"],
)
def test_a_damaged_checkpoint_is_named_with_its_file(damage, message, checkpointed_run, image_dir, capsys):
    """A truncated model.safetensors said 'incomplete metadata, file not fully covered', a truncated optimizer.bin
    'failed finding central directory', a deleted model.safetensors 'No such file ... pytorch_model.bin': none
    named the checkpoint. The console scripts exit 2 before any work; the API raises naming folder and file."""
    from selftok_hf.training.tokenizer import TokenizerTrainer
    from selftok_hf.training.tokenizer import main as tokenizer_main

    checkpoint = checkpointed_run / "checkpoints" / "step-00000002"
    damage(checkpoint)
    for resume_from in (str(checkpoint), "latest"):
        with pytest.raises(SystemExit) as exit_info:
            tokenizer_main(["--dataset", image_dir, "--output-dir", str(checkpointed_run), "--max-steps", "3", "--resume-from", resume_from])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and str(checkpoint) in err, err
        assert re.search(message, err), err
    with pytest.raises((ValueError, FileNotFoundError), match=f"{re.escape(str(checkpoint))}.*{message}"):
        TokenizerTrainer(_tokenizer_args(checkpointed_run, image_dir, max_steps=3, resume_from="latest")).run()


def test_an_unrecorded_checkpoint_that_fails_to_load_is_named(checkpointed_run, image_dir):
    """Checkpoints written before the file list was recorded are still loaded, and a load failure names them."""
    from selftok_hf.training.tokenizer import TokenizerTrainer

    checkpoint = checkpointed_run / "checkpoints" / "step-00000002"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    del state["files"]
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    _truncate(checkpoint / "optimizer.bin")
    with pytest.raises(ValueError, match=f"checkpoint {re.escape(str(checkpoint))} could not be loaded: it is damaged.*central directory"):
        TokenizerTrainer(_tokenizer_args(checkpointed_run, image_dir, max_steps=3, resume_from="latest")).run()


def test_a_missing_resume_from_exits_2_before_any_work(checkpointed_run, image_dir, tmp_path, capsys, monkeypatch):
    """``--resume-from`` naming no checkpoint raised FileNotFoundError with a traceback after the models were built."""
    from selftok_hf.rl.trainer import main as rl_main
    from selftok_hf.training.loop import TrainingLoop
    from selftok_hf.training.tokenizer import main as tokenizer_main

    monkeypatch.setattr(TrainingLoop, "run", lambda self: pytest.fail("started before checking --resume-from"))
    for main, argv in (
        (tokenizer_main, ["--dataset", image_dir, "--output-dir", str(tmp_path / "new")]),
        (rl_main, ["--pipeline", str(tmp_path), "--output-dir", str(tmp_path / "new")]),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--resume-from", str(tmp_path / "no-such-checkpoint")])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and "--resume-from" in err and "no-such-checkpoint not found" in err, err
    (checkpointed_run / "checkpoints" / "latest").write_text("step-00000099")
    with pytest.raises(SystemExit) as exit_info:
        tokenizer_main(["--dataset", image_dir, "--output-dir", str(checkpointed_run), "--resume-from", "latest"])
    assert exit_info.value.code == 2 and "'step-00000099', which is missing" in capsys.readouterr().err


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing file data/3: file write failed"),
        RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 1534464 vs 1534352"),
        OSError(28, "No space left on device"),
    ],
    ids=["torch stream writer", "torch unexpected pos", "ENOSPC"],
)
def test_a_full_disk_while_checkpointing_says_so_and_keeps_the_previous_checkpoint(error, image_dir, tmp_path, monkeypatch):
    """torch.save on a full disk raises '[enforce fail at inline_container.cc] ... file write failed' (no errno);
    it surfaced as that bare message, and the partial checkpoint stayed on the full disk."""
    import errno

    from selftok_hf.training.loop import latest_checkpoint
    from selftok_hf.training.tokenizer import TokenizerTrainer

    run = tmp_path / "run"
    TokenizerTrainer(_tokenizer_args(run, image_dir, max_steps=1)).run()
    previous = latest_checkpoint(run)
    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as handle:
            handle.truncate(10)  # part of the file is written ...
        raise error  # ... then the disk is full

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="the disk is full") as info:
        TokenizerTrainer(_tokenizer_args(run, image_dir, max_steps=2, resume_from="latest")).run()
    assert info.value.errno == errno.ENOSPC
    assert f"previous checkpoint ({previous}) is intact" in str(info.value) and "step-00000002" in str(info.value)
    assert latest_checkpoint(run) == previous
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", previous.name]  # the partial copy is gone
    monkeypatch.undo()
    resumed = TokenizerTrainer(_tokenizer_args(run, image_dir, max_steps=2, resume_from="latest"))
    assert [h["step"] for h in resumed.run()] == [2]


def test_other_checkpoint_write_errors_are_not_called_a_full_disk(image_dir, tmp_path, monkeypatch):
    from selftok_hf.training.tokenizer import TokenizerTrainer

    trainer = TokenizerTrainer(_tokenizer_args(tmp_path / "run", image_dir, max_steps=1))
    monkeypatch.setattr(trainer.accelerator, "save_state", lambda path: (_ for _ in ()).throw(PermissionError(13, "Permission denied")))
    with pytest.raises(PermissionError, match="Permission denied"):
        trainer.run()


def test_a_failed_single_file_write_keeps_the_previous_file(tmp_path):
    """selftok_hf.utils.atomic.atomic_write (the checkpoints' state and ``latest`` pointer, the training log): a write that
    fails leaves the previous content and no temporary file; a replaced file keeps its permissions."""
    import os

    from selftok_hf.utils.atomic import atomic_write, atomic_write_text

    target = tmp_path / "latest"
    atomic_write_text(target, "step-00000001")
    os.chmod(target, 0o640)

    def fails(temporary):
        with open(temporary, "w") as f:
            f.write("step-0000")  # a partial write ...
        raise OSError(28, "No space left on device")  # ... then the disk is full

    with pytest.raises(OSError, match="No space left"):
        atomic_write(target, fails)
    assert target.read_text() == "step-00000001" and sorted(p.name for p in tmp_path.iterdir()) == ["latest"]
    atomic_write_text(target, "step-00000002")
    assert target.read_text() == "step-00000002" and (target.stat().st_mode & 0o777) == 0o640
    # The temporary file has the target's suffix: np.save would otherwise append ".npy" and write another file.
    atomic_write(tmp_path / "ids.npy", lambda temporary: np.save(temporary, np.arange(3)))
    np.testing.assert_array_equal(np.load(tmp_path / "ids.npy"), np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.npy", "latest"]


# --------------------------------------------------------------------------------- strict loading, pixel space
@pytest.mark.parametrize("fault", ["extra key", "missing key"])
def test_pixel_space_weights_must_match_its_config(fault, tmp_path):
    """A ``pixel_space`` config over other weights (e.g. a real VAE's) loaded with a warning table only."""
    from safetensors.torch import save_file

    from selftok_hf.pixel_space import PixelSpaceAutoencoder

    PixelSpaceAutoencoder(patch_size=2).save_pretrained(tmp_path / "vae")
    weights = tmp_path / "vae" / "diffusion_pytorch_model.safetensors"
    state = {"device_dtype_anchor": torch.empty(0)}
    if fault == "extra key":
        state["encoder.conv_in.weight"] = torch.zeros(3)
        match = "unexpected keys: encoder.conv_in.weight"
    else:
        del state["device_dtype_anchor"]
        match = "missing keys: device_dtype_anchor"
    save_file(state, weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"PixelSpaceAutoencoder from {re.escape(str(tmp_path / 'vae'))}: the weights do not match the config \\({match}"):
        PixelSpaceAutoencoder.from_pretrained(tmp_path / "vae")
    model, info = PixelSpaceAutoencoder.from_pretrained(tmp_path / "vae", strict=False, output_loading_info=True)
    assert model.config.patch_size == 2 and (info["unexpected_keys"] or info["missing_keys"])


def test_a_pixel_space_pipeline_with_foreign_vae_weights_is_refused(image_dir, tmp_path):
    from safetensors.torch import save_file

    from selftok_hf.training.tokenizer import TokenizerTrainer

    trainer = TokenizerTrainer(_tokenizer_args(tmp_path / "run", image_dir, max_steps=1))
    trainer.run()
    trainer.export(tmp_path / "pipeline")
    save_file({"device_dtype_anchor": torch.empty(0), "decoder.conv_out.weight": torch.zeros(3)}, tmp_path / "pipeline" / "vae" / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"PixelSpaceAutoencoder from .*pipeline/vae: .*unexpected keys: decoder.conv_out.weight"):
        SelftokDecoderPipeline.from_pretrained(tmp_path / "pipeline")
