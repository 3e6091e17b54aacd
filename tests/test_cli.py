"""The ``selftok`` command: real subprocess runs of the console script on seeded random tiny pipelines."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest
import torch

from selftok_hf.apps.cli import DELEGATED_COMMANDS, main
from selftok_hf.evaluation.metrics import psnr
from selftok_hf.pipeline_selftok_decoder import SelftokDecoderPipeline
from selftok_hf.testing.tiny_vlm import tiny_selftok_pipeline

ASSETS = os.path.join(os.path.dirname(sys.modules["selftok_hf"].__file__), "assets")
PHOTOS = [os.path.join(ASSETS, name) for name in ("astronaut.jpg", "coffee.jpg")]


def run_selftok(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "selftok_hf.apps.cli", *map(str, args)], check=False, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_vlm")
    tiny_selftok_pipeline("llama", seed=0).save_pretrained(path)
    return path


def test_encode_decode_round_trip(tiny_pipeline_dir, tmp_path, capsys):
    pipe = SelftokDecoderPipeline.from_pretrained(tiny_pipeline_dir)
    cfg = pipe.image_tokenizer.config
    images = [PIL.Image.open(p).convert("RGB") for p in PHOTOS]

    result = run_selftok("encode", *PHOTOS, "--pipeline", tiny_pipeline_dir, "-o", "ids.npy", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ids = np.load(tmp_path / "ids.npy")
    assert ids.shape == (2, cfg.num_image_tokens) and ids.dtype == np.int64
    np.testing.assert_array_equal(ids, pipe.encode(images).numpy())

    # The JSON form carries the same ids, the image names and the codebook size.
    assert main(["encode", *PHOTOS, "--pipeline", str(tiny_pipeline_dir), "-o", str(tmp_path / "ids.json")]) == 0
    record = json.loads((tmp_path / "ids.json").read_text())
    assert record["images"] == PHOTOS and record["codebook_size"] == cfg.codebook_size and record["num_image_tokens"] == cfg.num_image_tokens
    np.testing.assert_array_equal(np.asarray(record["token_ids"]), ids)

    result = run_selftok("decode", "ids.npy", "--pipeline", tiny_pipeline_dir, "-o", "decoded", "--steps", 3, "--seed", 7, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    pngs = sorted((tmp_path / "decoded").iterdir())
    assert [p.name for p in pngs] == ["image_0000.png", "image_0001.png"]
    decoded = [np.asarray(PIL.Image.open(p)) for p in pngs]
    assert all(d.shape == (cfg.image_size, cfg.image_size, 3) for d in decoded)
    expected = pipe(torch.from_numpy(ids), num_inference_steps=3, generator=torch.Generator().manual_seed(7), output_type="np").images
    for got, want in zip(decoded, expected):
        np.testing.assert_array_equal(got, np.round(want * 255).astype(np.uint8))

    # Same ids from the JSON file and the same seed: the same pixels.
    assert main(["decode", str(tmp_path / "ids.json"), "--pipeline", str(tiny_pipeline_dir), "-o", str(tmp_path / "from_json"), "--steps", "3", "--seed", "7"]) == 0
    for a, b in zip(pngs, sorted((tmp_path / "from_json").iterdir())):
        np.testing.assert_array_equal(np.asarray(PIL.Image.open(a)), np.asarray(PIL.Image.open(b)))


def test_reconstruct_prints_psnr(tiny_pipeline_dir, tmp_path):
    result = run_selftok("reconstruct", PHOTOS[1], "--pipeline", tiny_pipeline_dir, "-o", "recon.png", "--renderer", "--zoom", 2, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = float(re.search(r"PSNR \(one-step renderer\): mean ([0-9.]+) dB", result.stdout).group(1))

    pipe = SelftokDecoderPipeline.from_pretrained(tiny_pipeline_dir)
    pixel_values = pipe.image_processor([PIL.Image.open(PHOTOS[1]).convert("RGB")], return_tensors="pt").pixel_values
    decoded = pipe(pipe.encode(pixel_values), use_renderer=True, output_type="pt").images
    assert printed == pytest.approx(psnr(decoded, (pixel_values + 1) / 2).item(), abs=0.006)
    size = pipe.image_tokenizer.config.image_size
    assert PIL.Image.open(tmp_path / "recon.png").size == (2 * size * 2, size * 2)  # input | renderer, zoom 2


def test_generate_and_describe(vlm_dir, tmp_path, capsys):
    from selftok_hf.pipeline_selftok import SelftokPipeline

    assert main(["generate", "a red circle", "--pipeline", str(vlm_dir), "-o", str(tmp_path / "out.png"), "--num-images", "2", "--steps", "2", "--guidance-scale", "2", "--seed", "3"]) == 0
    generated = [PIL.Image.open(tmp_path / f"out_{i}.png") for i in range(2)]
    pipe = SelftokPipeline.from_pretrained(vlm_dir)
    size = pipe.decoder.image_tokenizer.config.image_size
    assert all(image.size == (size, size) for image in generated)
    expected = pipe("a red circle", guidance_scale=2.0, num_images_per_prompt=2, generator=[torch.Generator().manual_seed(s) for s in (3, 4)], num_inference_steps=2, output_type="np").images
    for got, want in zip(generated, expected):
        np.testing.assert_array_equal(np.asarray(got), np.round(want * 255).astype(np.uint8))

    capsys.readouterr()
    assert main(["describe", PHOTOS[0], "--pipeline", str(vlm_dir), "--question", "What is it?", "--max-new-tokens", "6"]) == 0
    answer = pipe.describe(PIL.Image.open(PHOTOS[0]).convert("RGB"), question="What is it?", max_new_tokens=6)
    assert capsys.readouterr().out.splitlines()[-1] == f"{PHOTOS[0]}: {answer}"


def test_help_lists_every_subcommand():
    result = subprocess.run(["selftok", "--help"], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for name in ["encode", "decode", "reconstruct", "generate", "describe", "push", "demo", *DELEGATED_COMMANDS]:
        assert re.search(rf"^\s+{re.escape(name)}\s+\S", result.stdout, re.MULTILINE), f"{name} missing from selftok --help"
    assert "examples:" in result.stdout


@pytest.mark.parametrize("command", ["encode", "decode", "reconstruct", "generate", "describe", "push", "demo", *DELEGATED_COMMANDS])
def test_subcommand_help_exits_zero(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    # The delegated entry points too name the command the way it was called, not their selftok-* script.
    assert out.startswith(f"usage: selftok {command} ") and "selftok-" not in out.split("\n\n")[0]
    assert options_without_help(out) == []


def options_without_help(help_text: str) -> list[str]:
    """The options of an argparse --help text that have no help string (their entry is the invocation alone)."""
    lines = help_text.split("\n")
    missing = []
    for line, next_line in zip(lines, lines[1:] + [""]):
        entry = re.match(r"^  (-\S.*?)(?:\s{2,}\S.*)?$", line)
        if entry and line.strip() == entry.group(1) and not re.match(r"^\s{20,}\S", next_line):
            missing.append(entry.group(1))
    return missing


def test_options_without_help_finds_them():
    import argparse

    parser = argparse.ArgumentParser(prog="p")
    parser.add_argument("--documented-long-option-name", metavar="VALUE", help="explained on the next line")
    parser.add_argument("--seed", help="explained on the same line")
    parser.add_argument("--bare", metavar="VALUE")
    parser.add_argument("--flag", action="store_true")
    assert options_without_help(parser.format_help()) == ["--bare VALUE", "--flag"]


def test_demo_arguments_and_missing_gradio(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--tiny", "--vlm", str(tmp_path)])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio now raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        main(["demo"])
    assert exit_info.value.code == 1 and "pip install 'selftok-hf[demo]'" in capsys.readouterr().err


def test_delegated_commands_bad_arguments_exit_2(tmp_path, capsys):
    def exit_code(*argv):
        with pytest.raises(SystemExit) as exit_info:
            main(list(map(str, argv)))
        return exit_info.value.code, capsys.readouterr().err

    code, err = exit_code("train-lm", "--dataset", "pairs")
    assert code == 2 and "selftok train-lm: error: the following arguments are required: --pipeline" in err
    code, err = exit_code("train-lm", "--pipeline", tmp_path, "--dataset", "pairs", "--task-mix", "t2i=1,cats=2")
    assert code == 2 and "selftok train-lm: error: task mix items" in err
    code, err = exit_code("rl", "--pipeline", tmp_path / "missing")
    assert code == 2 and "selftok rl: error: --pipeline: no such file or folder" in err
    code, err = exit_code("rl", "--pipeline", tmp_path, "--group-size", "1")
    assert code == 2 and "group_size must be >= 2" in err
    code, err = exit_code("train-tokenizer", "--max-steps", "0")
    assert code == 2 and "selftok train-tokenizer: error: max_steps must be >= 1" in err
    code, err = exit_code("train-renderer", "--pipeline", tmp_path / "missing")
    assert code == 2 and "selftok train-renderer: error: --pipeline: no such file or folder" in err
    code, err = exit_code("eval", "--pipeline", tmp_path / "missing", "--images", tmp_path)
    assert code == 2 and "selftok eval: error: no such file or folder" in err
    code, err = exit_code("quickstart", "--steps", "0")
    assert code == 2 and "selftok quickstart: error:" in err
    assert main(["convert", "--config", str(tmp_path / "missing.yml"), "--checkpoint", "x.pth", "--output", str(tmp_path / "o")]) == 2
    assert "selftok convert: error: config" in capsys.readouterr().err


def test_bad_arguments_exit_2(tiny_pipeline_dir, tmp_path, capsys):
    result = run_selftok("decode", "ids.txt", "-o", "out", cwd=tmp_path)
    assert result.returncode == 2 and "must end in .npy or .json" in result.stderr

    def exit_code(*argv):
        with pytest.raises(SystemExit) as exit_info:
            main(list(map(str, argv)))
        return exit_info.value.code, capsys.readouterr().err

    assert exit_code("frobnicate")[0] == 2
    code, err = exit_code("decode", "ids.npy", "-o", tmp_path, "--steps", "0")
    assert code == 2 and "--steps: must be an integer >= 1" in err
    code, err = exit_code("encode", tmp_path / "missing.jpg", "-o", tmp_path / "ids.npy", "--pipeline", tiny_pipeline_dir)
    assert code == 2 and "cannot read image" in err
    np.save(tmp_path / "short.npy", np.zeros((1, 5), dtype=np.int64))
    code, err = exit_code("decode", tmp_path / "short.npy", "-o", tmp_path / "out", "--pipeline", tiny_pipeline_dir)
    assert code == 2 and "takes 32 ids per image" in err
    code, err = exit_code("generate", "a cat", "--pipeline", tiny_pipeline_dir, "-o", tmp_path / "x.png")
    assert code == 2 and "is not a SelftokPipeline folder" in err



def test_default_is_the_embedded_pipeline(tmp_path):
    from selftok_hf.assets import embedded_pipeline

    pipe = embedded_pipeline()
    assert main(["encode", *PHOTOS, "-o", str(tmp_path / "ids.npy")]) == 0
    ids = np.load(tmp_path / "ids.npy")
    np.testing.assert_array_equal(ids, pipe.encode([PIL.Image.open(p).convert("RGB") for p in PHOTOS]).numpy())
    assert main(["decode", str(tmp_path / "ids.npy"), "-o", str(tmp_path / "out"), "--renderer"]) == 0
    expected = pipe(torch.from_numpy(ids), use_renderer=True, output_type="np").images
    for index, want in enumerate(expected):
        got = np.asarray(PIL.Image.open(tmp_path / "out" / f"image_{index:04d}.png"))
        assert got.shape == (32, 32, 3)
        np.testing.assert_array_equal(got, np.round(want * 255).astype(np.uint8))
