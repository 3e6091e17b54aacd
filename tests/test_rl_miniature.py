"""``benchmarks/rl_shapes_miniature.py`` end to end at toy budgets: every stage runs, caches and reports."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "rl_shapes_miniature.py"


@pytest.mark.slow
def test_miniature_runs_every_stage_and_resumes(tmp_path):
    out = tmp_path / "mini"
    budgets = {
        "tokenizer-images": 64, "tokenizer-steps": 2, "tokenizer-batch": 4, "raster-steps": 2, "renderer-steps": 2, "decoder-steps": 1,
        "lm-hidden": 32, "lm-layers": 1, "sft-images-per-prompt": 1, "sft-steps": 2, "sft-batch": 4,
        "rl-steps": 2, "rl-prompts-per-step": 2, "group-size": 2, "eval-images-per-prompt": 1, "workers": 1,
    }
    flags = [item for name, value in budgets.items() for item in (f"--{name}", str(value))]
    command = [sys.executable, str(SCRIPT), "--output-dir", str(out), *flags, "--seeds", "0", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    first = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, env=env)
    assert first.returncode == 0, first.stderr[-3000:]

    summary = json.loads((out / "results.json").read_text())
    arms = ("selftok", "selftok_renderer", "raster")
    assert set(summary["reconstruction"]) == set(arms)
    assert summary["bits_per_image"] == 16 * 6
    for arm in arms:
        for split in ("held_out", "held_in"):
            for stage in ("before_sft", "after_sft", "after_rl"):
                overall = summary["table"][f"{arm}/{split}/{stage}"]["overall"]
                assert len(overall["per_seed"]) == 2 and 0.0 <= overall["mean"] <= 1.0
            gain = summary["rl_gain"][f"{arm}/{split}"]["overall"]
            after = summary["table"][f"{arm}/{split}/after_rl"]["overall"]["per_seed"]
            before = summary["table"][f"{arm}/{split}/after_sft"]["overall"]["per_seed"]
            assert gain["per_seed"] == pytest.approx([a - b for a, b in zip(after, before)])
    assert set(summary["gain_vs_raster_p"]) == {f"{arm}/{split}" for arm in arms[:2] for split in ("held_out", "held_in")}
    # NaN where the toy runs' gains are constant in both arms (no variance to test).
    assert all(math.isnan(p) or 0.0 <= p <= 1.0 for p in summary["gain_vs_raster_p"].values())
    for name in ("results.md", "results.png", "reconstructions.png"):
        assert (out / name).stat().st_size > 0
    assert "## What RL adds" in (out / "results.md").read_text()

    # A second invocation only reports: every stage is read from the cache.
    results = {path: path.stat().st_mtime_ns for path in out.glob("runs/*/seed*/result.json")}
    assert len(results) == 6
    second = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, env=env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "trained the" not in second.stdout
    assert {path: path.stat().st_mtime_ns for path in results} == results
