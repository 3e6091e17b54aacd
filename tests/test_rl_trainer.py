"""The GRPO trainer end to end on a seeded random tiny Selftok VLM: rewards on decoded pixels, learning,
logging, exact resume, the selftok-rl console entry point and prompt loading."""

import copy
import json

import pytest
import torch

from selftok_hf.pipeline_selftok import SelftokPipeline
from selftok_hf.rl import ProgramReward, ShapeInstance, ShapesWorld, program_accuracy
from selftok_hf.rl.evaluation import shapes_geneval
from selftok_hf.rl.trainer import (
    GRPOArguments,
    SelftokGRPOTrainer,
    build_reward,
    load_prompts,
    main,
)
from selftok_hf.testing.tiny_vlm import tiny_selftok_pipeline

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def tiny_pipeline():
    return tiny_selftok_pipeline("llama", seed=0)


def low_codes(prompts, token_ids, images, metadata):
    """Reward: the fraction of visual tokens drawn from the lower half of the codebook (64 codes)."""
    assert images.shape == (len(prompts), 3, 64, 64) and 0 <= images.min() and images.max() <= 1  # decoded pixels
    return (token_ids < 32).float().mean(1).tolist()


def args_for(tmp_path, **overrides):
    base = {"output_dir": str(tmp_path), "batch_size": 2, "group_size": 4, "learning_rate": 1e-2, "log_every": 1, "checkpoint_every": 0, "seed": 0}
    return GRPOArguments(**{**base, **overrides})


def test_training_raises_the_reward_and_logs_per_category(tiny_pipeline, tmp_path):
    pipeline = copy.deepcopy(tiny_pipeline)
    trainer = SelftokGRPOTrainer(args_for(tmp_path, max_steps=12), pipeline=pipeline, reward=low_codes)
    history = trainer.run()
    first, last = history[0], history[-1]
    assert [h["step"] for h in history] == list(range(1, 13))
    for key in ("loss", "policy_loss", "kl", "entropy", "reward_mean", "reward_std", "flat_groups"):
        assert key in last
    assert first["kl"] == 0.0 < last["kl"]  # the reference is the initial policy
    categories = {k.split("/")[1] for h in history for k in h if k.startswith("reward/")}
    assert categories and categories <= {"single_object", "two_objects", "counting", "colors", "position", "color_attr"}
    # A policy-gradient signal that the decoded images never see still gets learnt through the ids.
    early = sum(h["reward_mean"] for h in history[:2]) / 2
    late = sum(h["reward_mean"] for h in history[-2:]) / 2
    assert late > early + 0.2, (early, late)
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, 13))


def test_resume_reproduces_the_uninterrupted_run(tiny_pipeline, tmp_path):
    straight = SelftokGRPOTrainer(args_for(tmp_path / "a", max_steps=2, reference_sync_steps=1), pipeline=copy.deepcopy(tiny_pipeline), reward=low_codes)
    straight_history = straight.run()
    first = SelftokGRPOTrainer(args_for(tmp_path / "b", max_steps=1, reference_sync_steps=1), pipeline=copy.deepcopy(tiny_pipeline), reward=low_codes)
    first.run()
    resumed = SelftokGRPOTrainer(
        args_for(tmp_path / "b", max_steps=2, reference_sync_steps=1, resume_from="latest"), pipeline=copy.deepcopy(tiny_pipeline), reward=low_codes
    )
    resumed_history = resumed.run()
    assert resumed_history[-1]["step"] == 2
    for key in ("loss", "reward_mean", "kl", "entropy"):
        assert resumed_history[-1][key] == pytest.approx(straight_history[-1][key], abs=1e-6)
    for name, p in straight.models["language_model"].state_dict().items():
        torch.testing.assert_close(resumed.models["language_model"].state_dict()[name], p)
    # The reference (here re-synced to the policy every step) is checkpointed too.
    for name, p in straight.reference.state_dict().items():
        torch.testing.assert_close(resumed.reference.state_dict()[name], p)


def test_console_script_trains_and_exports(tiny_pipeline, tmp_path, capsys):
    source = tmp_path / "vlm"
    tiny_pipeline.save_pretrained(source)
    out = tmp_path / "rl"
    argv = ["--pipeline", str(source), "--output-dir", str(out), "--max-steps", "1", "--batch-size", "1", "--group-size", "2"]
    assert main(argv + ["--rewards", "program=1,qa=0.5", "--no-use-renderer", "--num-inference-steps", "2"]) == 0
    assert "wrote pipeline" in capsys.readouterr().out
    log = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert {"reward_program", "reward_qa"} <= set(log)
    reloaded = SelftokPipeline.from_pretrained(out / "pipeline")
    assert reloaded.vocabulary == tiny_pipeline.vocabulary


def test_prompt_sources_and_argument_errors(tmp_path):
    held_in = load_prompts("shapes:held_in")
    held_out = load_prompts("shapes:held_out")
    assert not {r["prompt"] for r in held_in} & {r["prompt"] for r in held_out}
    assert len(held_in) + len(held_out) == len(load_prompts("shapes:all")) == 84
    (tmp_path / "p.txt").write_text("a red circle\n\na photo of a cat\n")
    rows = load_prompts(str(tmp_path / "p.txt"))
    assert [(r["prompt"], r["category"]) for r in rows] == [("a red circle", "colors"), ("a photo of a cat", "all")]
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "two squares", "source": "x"}) + "\n")
    assert load_prompts(str(tmp_path / "p.jsonl"))[0]["category"] == "counting"
    with pytest.raises(ValueError, match="unknown prompt set"):
        load_prompts("shapes:train")
    with pytest.raises(FileNotFoundError):
        load_prompts(str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="unknown reward 'clip'"):
        build_reward("program=1,clip=2")
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        GRPOArguments(group_size=1)


def test_shapes_geneval_aggregates_the_detector_verdicts(tiny_pipeline):
    # An image decoder that ignores the ids and always draws one fixed scene: every prompt's verdict is then known.
    world = ShapesWorld(image_size=32)
    scene = [ShapeInstance("circle", "red", 8.0, 16.0, 9.0), ShapeInstance("square", "blue", 24.0, 16.0, 9.0)]
    image = world.render(scene)
    specs = world.split()["held_out"]
    calls = []

    def fixed_scene(ids):
        calls.append(ids.shape)
        return image.expand(ids.shape[0], -1, -1, -1)

    tiny_pipeline.language_model.train()
    accuracy = shapes_geneval(tiny_pipeline, specs, images_per_prompt=2, batch_size=5, image_decoder=fixed_scene)
    assert tiny_pipeline.language_model.training  # restored
    tiny_pipeline.language_model.eval()
    assert sum(shape[0] for shape in calls) == 2 * len(specs) and max(shape[0] for shape in calls) == 5
    verdicts = ProgramReward().evaluate([s.text() for s in specs], image.expand(len(specs), -1, -1, -1), [{"spec": s} for s in specs])
    expected = program_accuracy(verdicts, [s.category for s in specs])
    assert accuracy == {**expected, "reward": pytest.approx(sum(v.score for v in verdicts) / len(verdicts))}
    assert accuracy["single_object"] > 0 and accuracy["counting"] == 0  # e.g. "a circle" passes, "three squares" fails
