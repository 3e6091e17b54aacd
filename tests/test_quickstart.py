import json
import subprocess
import sys


def test_main_job_runs_offline_and_is_deterministic(tmp_path):
    outputs = []
    for run in range(2):
        path = tmp_path / f"tokens{run}.json"
        result = subprocess.run(
            [sys.executable, "-m", "selftok_hf.quickstart", "--output", str(path), "--png", str(tmp_path / f"r{run}.png"), "--steps", "4"],
            capture_output=True, text=True, timeout=300,
            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        )
        assert result.returncode == 0, result.stderr
        assert "SEEDED RANDOM" in result.stdout
        outputs.append(json.loads(path.read_text()))
    assert outputs[0] == outputs[1]
    ids = outputs[0]["token_ids"]
    assert set(ids) == {"astronaut.jpg", "coffee.jpg", "chelsea.jpg"}
    assert all(len(v) == outputs[0]["num_tokens"] for v in ids.values())
    assert len({tuple(v) for v in ids.values()}) == 3  # different photos, different ids
    import PIL.Image

    png = PIL.Image.open(tmp_path / "r0.png")
    assert png.size == (3 * 64, 3 * 64)  # 3 photos x (input, decoder, renderer) at the tiny 64 px
    assert (tmp_path / "r0.png").read_bytes() == (tmp_path / "r1.png").read_bytes()


def test_bad_image_path_exit_code_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "selftok_hf.quickstart", "--images", str(tmp_path / "nope.png"), "--output", str(tmp_path / "o.json")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2 and "cannot read image" in result.stderr
