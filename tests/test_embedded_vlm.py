"""The bundled shapes-world VLM: it loads offline, draws what a prompt says and describes what it sees, and it is
what `selftok generate` / `selftok describe` use without --pipeline."""

import PIL.Image
import pytest
import torch

from selftok_hf.apps.cli import main
from selftok_hf.assets import embedded_vlm
from selftok_hf.rl import (
    ProgramReward,
    ShapesWorld,
    describe_scene,
    parse_prompt,
    score_description,
)
from selftok_hf.rl.evaluation import shapes_geneval

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def vlm():
    pipe = embedded_vlm()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_loads_offline_and_generates_and_describes(vlm):
    assert vlm.vocabulary.num_image_tokens == 32 and vlm.decoder.renderer is not None
    assert next(vlm.language_model.parameters()).dtype == torch.float32  # stored in float16, upcast on load
    prompt = "a red circle left of a blue square"
    out = vlm(prompt, generator=torch.Generator().manual_seed(0), use_renderer=True, guidance_scale=1.0, output_type="pt")
    assert out.images.shape == (1, 3, 32, 32) and out.token_ids.shape == (1, 32)
    again = vlm(prompt, generator=torch.Generator().manual_seed(0), use_renderer=True, guidance_scale=1.0, output_type="pt")
    torch.testing.assert_close(out.images, again.images, rtol=0, atol=0)  # seeded: reproducible
    world = ShapesWorld(image_size=32)
    scene = world.sample_scene(parse_prompt("a green triangle"), seed=1)
    answer = vlm.describe(world.render(scene)[None] * 2 - 1)[0]
    assert isinstance(answer, str) and answer.strip()
    assert set(score_description(answer, scene, margin=3.2)) == {"shapes", "colors", "counts", "relation", "correct"}


def test_cli_generate_and_describe_default_to_it(vlm, tmp_path, capsys):
    path = tmp_path / "out.png"
    assert main(["generate", "a red circle left of a blue square", "-o", str(path), "--renderer", "--guidance-scale", "1", "--seed", "0"]) == 0
    assert PIL.Image.open(path).size == (32, 32)
    expected = vlm("a red circle left of a blue square", guidance_scale=1.0, generator=[torch.Generator().manual_seed(0)], use_renderer=True).images[0]
    assert PIL.Image.open(path).tobytes() == expected.tobytes()
    capsys.readouterr()
    assert main(["describe", str(path)]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == f"{path}: {vlm.describe(PIL.Image.open(path).convert('RGB'))}"


@pytest.mark.slow
def test_accuracy_floor_on_held_out_prompts_and_scenes(vlm):
    """Floors well under the measured numbers (benchmarks/results/shapes_vlm/results.md), on every 5th held-out prompt
    of the training split: they catch a broken export or a regression in generation, decoding or the detector, not a
    change of a few points."""
    world = ShapesWorld(image_size=32)
    split = world.grammar_split(0.5, seed=0, also_held_out=("a blue square left of a green triangle", "three yellow circles"))
    held_out = list(split.held_out[::5])
    accuracy = shapes_geneval(vlm, held_out, images_per_prompt=4, seed=11, use_renderer=True, reward=ProgramReward())
    assert accuracy["overall"] >= FLOORS["t2i"], accuracy
    data = world.generate(held_out, images_per_prompt=4, seed=12)
    answers = vlm.describe(data["images"] * 2 - 1)
    correct = [score_description(a, s, margin=3.2)["correct"] for a, s in zip(answers, data["scenes"])]
    assert sum(correct) / len(correct) >= FLOORS["describe"], list(zip(answers, map(describe_scene, data["scenes"])))


#: Floors of the slow test. On these prompts and scenes (seeded) the shipped model scores 0.925 (text-to-image) and 0.861
#: (describe); the same LM before RL scores 0.50 and 0.861, so the text-to-image floor also catches a lost RL stage.
FLOORS = {"t2i": 0.70, "describe": 0.60}
