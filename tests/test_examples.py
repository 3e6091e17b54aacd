"""Every script in examples/ runs offline at tiny size in a fresh process (nothing downloaded), and its outputs hold
what it says it wrote."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from selftok_hf import SelftokDecoderPipeline, SelftokPipeline
from selftok_hf.assets import bundled_fashion_images, bundled_images, embedded_pipeline

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

pytestmark = pytest.mark.slow  # each starts a Python process and loads torch, transformers and diffusers (~10 s)


def run_example(script: str, *args, cwd: Path) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd, timeout=600, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def assert_float16_weights(folder: Path) -> None:
    """Every floating tensor of the shipped form is stored in float16, the image tokenizer's too."""
    from safetensors import safe_open

    files = list(folder.rglob("*.safetensors"))
    assert any("image_tokenizer" in str(path) for path in files)
    for path in files:
        with safe_open(str(path), "pt") as f:
            dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
        assert dtypes <= {"F16", "BOOL", "I64", "I32", "U8"}, (path, dtypes)


def test_every_example_is_tested():
    tested = set(re.findall(r'run_example\(\s*"([a-z_0-9]+\.py)"', Path(__file__).read_text()))
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


def test_quickstart(tmp_path):
    out = run_example("quickstart.py", "--steps", "2", "--output", "qs", cwd=tmp_path)
    assert re.search(r"^PSNR decoder: \d+\.\d\d dB$", out, re.MULTILINE) and re.search(r"^PSNR renderer: \d+\.\d\d dB$", out, re.MULTILINE)
    ids = json.loads((tmp_path / "qs.json").read_text())
    images = {**bundled_images(), **bundled_fashion_images()}
    assert list(ids) == list(images)
    np.testing.assert_array_equal(np.asarray(list(ids.values())), embedded_pipeline().encode(list(images.values())).numpy())
    # Six rows of 32-px images zoomed 4x; columns: input, decoder, renderer, prefixes 1, 2, 4, 8, 16 of K = 32.
    assert "input | decoder | renderer | 1 tokens | 2 tokens | 4 tokens | 8 tokens | 16 tokens" in out
    assert PIL.Image.open(tmp_path / "qs.png").size == (8 * 128, 6 * 128)


def test_train_tokenizer_imagefolder(tmp_path):
    out = run_example("train_tokenizer_imagefolder.py", "--tiny", "--output-dir", tmp_path / "run", cwd=tmp_path)
    assert len(list((tmp_path / "run" / "images").glob("*.png"))) == 6
    assert re.search(r"^PSNR 10-step decoder: -?\d+\.\d\d dB$", out, re.MULTILINE) and re.search(r"^PSNR renderer: -?\d+\.\d\d dB$", out, re.MULTILINE)
    pipe = SelftokDecoderPipeline.from_pretrained(tmp_path / "run" / "pipeline")
    assert pipe.renderer is not None
    # The tokenizer trained on the folder for 4 steps and the renderer for 2, as logged.
    for stage, steps in (("tokenizer", 4), ("renderer", 2)):
        log = [json.loads(line) for line in (tmp_path / "run" / stage / "log.jsonl").read_text().splitlines()]
        assert log[-1]["step"] == steps


@pytest.mark.parametrize("latent_space", ["vae", "pixel"])
def test_train_default_tokenizer(tmp_path, latent_space):
    out = run_example("train_default_tokenizer.py", "--tiny", "--latent-space", latent_space, "--output-dir", tmp_path / "run", cwd=tmp_path)
    assert "trained pipeline:" in out
    for folder in ("pipeline", "pipeline-fp16"):
        pipe = SelftokDecoderPipeline.from_pretrained(tmp_path / "run" / folder)
        assert pipe.renderer is not None
        assert type(pipe.vae).__name__ == ("AutoencoderKL" if latent_space == "vae" else "PixelSpaceAutoencoder")
    assert_float16_weights(tmp_path / "run" / "pipeline-fp16")
    # Every stage is finished and resumable: the same command again trains nothing and rewrites the same weights.
    again = run_example("train_default_tokenizer.py", "--tiny", "--latent-space", latent_space, "--output-dir", tmp_path / "run",
                        "--resume-from", "latest", cwd=tmp_path)
    assert "trained pipeline:" in again
    if latent_space == "vae":
        # --init-from continues a finished pipeline, here its float16 copy (as the embedded default is shipped), in
        # float32: its VAE is kept (no VAE stage), the tokenizer trains on.
        run_example("train_default_tokenizer.py", "--tiny", "--init-from", tmp_path / "run" / "pipeline-fp16",
                    "--output-dir", tmp_path / "continued", cwd=tmp_path)
        assert not (tmp_path / "continued" / "vae-run").exists()
        start = SelftokDecoderPipeline.from_pretrained(tmp_path / "run" / "pipeline-fp16", dtype=torch.float32)
        continued = SelftokDecoderPipeline.from_pretrained(tmp_path / "continued" / "pipeline")
        torch.testing.assert_close(continued.vae.state_dict(), start.vae.state_dict(), rtol=0, atol=0)
        sizes = [{k: v for k, v in p.image_tokenizer.config.to_dict().items() if k != "_name_or_path"} for p in (start, continued)]
        assert sizes[0] == sizes[1]
        log = [json.loads(line) for line in (tmp_path / "continued" / "tokenizer" / "log.jsonl").read_text().splitlines()]
        assert log[-1]["step"] == 2
        moved = [not torch.equal(a, b) for a, b in zip(continued.transformer.state_dict().values(), start.transformer.state_dict().values())]
        assert any(moved)


def assert_refuses_a_missing_init_from(tmp_path, script: str, flag: str) -> None:
    """``script FLAG <missing folder>`` exits 2 with the reason, before building any data."""
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), flag, str(tmp_path / "nope"), "--output-dir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 2 and f"{flag} {tmp_path / 'nope'}: not a pipeline folder" in result.stderr
    assert not (tmp_path / "run").exists()


def test_train_default_tokenizer_rejects_a_missing_init_from(tmp_path):
    assert_refuses_a_missing_init_from(tmp_path, "train_default_tokenizer.py", "--init-from")


def test_train_shapes_vlm(tmp_path):
    out = run_example("train_shapes_vlm.py", "--tiny", "--output-dir", tmp_path / "run", cwd=tmp_path)
    assert "trained VLM:" in out
    run = tmp_path / "run"
    for folder in ("sft-vlm", "rl/pipeline", "pipeline-fp16"):
        pipe = SelftokPipeline.from_pretrained(run / folder)
        assert pipe.decoder.renderer is not None and type(pipe.decoder.vae).__name__ == "AutoencoderKL"
    assert_float16_weights(run / "pipeline-fp16")
    assert SelftokPipeline.from_pretrained(run / "vlm-init").decoder.renderer is None  # saved before the renderer trained
    # Every word of the world is one token of the trained BPE.
    assert len(pipe.processor.tokenizer(" a blue square left of a green triangle")["input_ids"]) == 8
    # No SFT prompt or answer and no GRPO prompt is held out.
    import datasets

    from selftok_hf.rl import ShapesWorld
    from selftok_hf.rl.shapes_world import parse_prompt

    world = ShapesWorld(image_size=32)
    split = world.grammar_split(0.5, 0, also_held_out=("a blue square left of a green triangle", "three yellow circles"))
    pairs = datasets.load_from_disk(str(run / "sft-pairs"))
    prompts = [json.loads(line)["prompt"] for line in (run / "rl-prompts.jsonl").read_text().splitlines()]
    assert not any(split.is_held_out(parse_prompt(t)) for t in list(pairs["text"]) + prompts)
    for answer in pairs["answer"]:
        try:
            spec = parse_prompt(answer)
        except ValueError:
            continue  # a list of three shapes is no sentence of the prompt grammar
        assert not split.is_held_out(spec), answer


def test_rl_shapes(tmp_path):
    out = run_example("rl_shapes.py", "--tiny", "--max-steps", "2", "--output-dir", tmp_path / "rl", cwd=tmp_path)
    steps = re.findall(r"^step (\d+): reward [0-9.]+ \(program [0-9.]+, colour [0-9.]+\), kl ([0-9.e+-]+)", out, re.MULTILINE)
    assert [s for s, _ in steps] == ["1", "2"]
    assert float(steps[0][1]) == 0.0 < float(steps[1][1])  # the policy moved away from the reference after one update
    for when in ("before", "after"):
        assert re.search(rf"^held-out accuracy {when} RL: overall [0-9.]+, mean program reward [0-9.]+$", out, re.MULTILINE)
    assert SelftokPipeline.from_pretrained(tmp_path / "rl" / "pipeline").vocabulary.num_image_tokens == 32


def test_convert_official_weights(tmp_path):
    out = run_example("convert_official_weights.py", "--tiny", "--output", tmp_path / "converted", "--steps", "2", cwd=tmp_path)
    assert "(components: image_tokenizer, renderer, scheduler, transformer, vae)" in out
    pipe = SelftokDecoderPipeline.from_pretrained(tmp_path / "converted")
    ids = pipe.encode([bundled_images()["coffee.jpg"]])[0].tolist()
    assert f"coffee.jpg ids (AR order): {ids[:8]} ...; official order: {ids[::-1][:8]} ..." in out
    assert re.search(r"^PSNR 2-step decoder: \d+\.\d\d dB$", out, re.MULTILINE) and "PSNR renderer:" in out

    # Run again: refused before any work, with a clear message, the folder untouched ...
    (tmp_path / "converted" / "stale.txt").write_text("from an older conversion")
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "converted").rglob("*"))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    again = subprocess.run(
        [sys.executable, str(EXAMPLES / "convert_official_weights.py"), "--tiny", "--output", str(tmp_path / "converted")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600, check=False,
    )
    assert again.returncode == 2, again.stderr[-3000:]
    assert "the folder exists and is not empty (a previous run?); pass --overwrite to replace it" in again.stderr
    assert "Traceback" not in again.stderr and "wrote" not in again.stdout
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "converted").rglob("*")) == before
    # ... and with --overwrite the folder is replaced whole (the stale file is gone) and loads.
    out = run_example("convert_official_weights.py", "--tiny", "--output", tmp_path / "converted", "--steps", "2", "--overwrite", cwd=tmp_path)
    assert "(components: image_tokenizer, renderer, scheduler, transformer, vae)" in out and "PSNR renderer:" in out
    assert not (tmp_path / "converted" / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no scratch folder left beside it
    assert SelftokDecoderPipeline.from_pretrained(tmp_path / "converted").encode([bundled_images()["coffee.jpg"]])[0].tolist() == ids


def test_vlm_text_to_image(tmp_path):
    run_example("vlm_text_to_image.py", "--tiny", "--steps", "2", "--output", tmp_path / "t2i.png", cwd=tmp_path)
    assert PIL.Image.open(tmp_path / "t2i.png").size == (2 * 64, 64)  # one prompt, two 64-px images


def test_vlm_understanding(tmp_path):
    out = run_example("vlm_understanding.py", "--tiny", "--max-new-tokens", "4", cwd=tmp_path)
    assert out.count(".jpg: ") == 3


def test_vlm_lora_finetune(tmp_path):
    out = run_example("vlm_lora_finetune.py", "--tiny", "--output-dir", tmp_path / "lora", cwd=tmp_path)
    assert out.count("reproduces its photo's ids") == 3
    answers = re.findall(r"^I2T expected (.+), got (.+)$", out, re.MULTILINE)
    assert len(answers) == 3 and all(expected == got for expected, got in answers)


def test_trl_sft_lora(tmp_path):
    pytest.importorskip("trl")
    out = run_example("trl_sft_lora.py", "--tiny", "--output-dir", tmp_path / "trl", cwd=tmp_path)
    first, last = map(float, re.search(r"^loss: step 1 ([0-9.]+) -> step 30 ([0-9.]+)$", out, re.MULTILINE).groups())
    assert last < first - 1  # trl trained the LoRA and the new token rows (about 7.0 -> 3.7)
    adapter = tmp_path / "trl" / "adapter"
    assert f"adapter: {adapter}" in out
    # Base + reloaded adapter is the trained model: same logits, same greedy images.
    assert float(re.search(r"^reloaded adapter: max \|logit difference\| (\S+)$", out, re.MULTILINE).group(1)) == 0
    assert "reloaded adapter: greedy image ids identical" in out
    # The adapter holds the new rows of the embedding and the head, not whole matrices.
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert sorted(config["trainable_token_indices"]) == ["embed_tokens", "lm_head"]
    from safetensors import safe_open

    with safe_open(adapter / "adapter_model.safetensors", "pt") as weights:
        assert not [k for k in weights.keys() if "lora_" not in k and "trainable_tokens_delta" not in k]


def test_train_shapes_vlm_continues_the_embedded_codec(tmp_path):
    assert_refuses_a_missing_init_from(tmp_path, "train_shapes_vlm.py", "--codec-init-from")
    # 'embedded': the shipped VLM's codec (float16 on disk), continued in float32 with its own sizes and its VAE kept.
    out = run_example("train_shapes_vlm.py", "--tiny", "--codec-init-from", "embedded", "--until", "codec",
                      "--output-dir", tmp_path / "run", cwd=tmp_path)
    assert "trained codec:" in out
    from selftok_hf.assets import embedded_vlm

    start = embedded_vlm().decoder
    continued = SelftokDecoderPipeline.from_pretrained(tmp_path / "run" / "codec" / "pipeline")
    assert not (tmp_path / "run" / "codec" / "vae-run").exists()
    torch.testing.assert_close(continued.vae.state_dict(), start.vae.state_dict(), rtol=0, atol=0)
    assert continued.image_tokenizer.config.num_image_tokens == start.image_tokenizer.config.num_image_tokens
    assert any(not torch.equal(a, b) for a, b in zip(continued.transformer.state_dict().values(), start.transformer.state_dict().values()))
