"""Shapes world, pixel-space detector and rewards: ground truth, hand-drawn images, degradations."""

import numpy as np
import PIL.Image
import PIL.ImageDraw
import pytest
import torch
import torch.nn.functional as F

from selftok_hf.rl import (
    CATEGORIES,
    CombinedReward,
    DetectorJudge,
    ObjectSpec,
    ProgramReward,
    PromptSpec,
    QAReward,
    ShapeDetector,
    ShapeInstance,
    ShapesWorld,
    describe_scene,
    dsg_questions,
    parse_prompt,
    program_accuracy,
    render_scene,
    score_description,
)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(np.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).repeat(3, 1, 1, 1)
    out = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="replicate"), kernel.view(3, 1, 1, -1), groups=3)
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="replicate"), kernel.view(3, 1, -1, 1), groups=3)


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def world():
    return ShapesWorld(image_size=32)


@pytest.fixture(scope="module")
def ground_truth(world):
    return world.generate(world.all_prompts(), images_per_prompt=2, seed=1)


def hand_drawn(objects, size=32):
    """Draw shapes with PIL (not the world's renderer), in off-palette shades: (kind, rgb, box)."""
    image = PIL.Image.new("RGB", (size, size), (10, 10, 10))
    draw = PIL.ImageDraw.Draw(image)
    for kind, rgb, (x0, y0, x1, y1) in objects:
        if kind == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=rgb)
        elif kind == "square":
            draw.rectangle((x0, y0, x1, y1), fill=rgb)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=rgb)
    return image


RED, BLUE, GREEN, YELLOW = (230, 25, 35), (30, 40, 220), (20, 200, 40), (235, 220, 30)


# ------------------------------------------------------------------------------------------- world
def test_prompt_grammar_round_trip(world):
    specs = world.all_prompts()
    assert {c: len(world.all_prompts(c)) for c in CATEGORIES} == {
        "single_object": 3, "two_objects": 3, "counting": 6, "colors": 12, "position": 24, "color_attr": 36,
    }
    for spec in specs:
        assert parse_prompt(spec.text()) == spec
    assert parse_prompt("two red circles") == PromptSpec("counting", (ObjectSpec("circle", "red", 2),))
    assert parse_prompt("A blue square left of a green triangle.") == PromptSpec(
        "position", (ObjectSpec("square", "blue"), ObjectSpec("triangle", "green")), "left of"
    )
    with pytest.raises(ValueError, match="unknown shape"):
        parse_prompt("a red hexagon")
    with pytest.raises(ValueError, match="unknown color"):
        parse_prompt("a purple circle")
    with pytest.raises(TypeError):
        parse_prompt(3)


def test_split_is_deterministic_disjoint_and_covers_every_category(world):
    split = world.split(0.5, seed=0)
    assert split == world.split(0.5, seed=0)
    assert split != world.split(0.5, seed=1)
    held_in, held_out = {s.text() for s in split["held_in"]}, {s.text() for s in split["held_out"]}
    assert not held_in & held_out
    assert held_in | held_out == {s.text() for s in world.all_prompts()}
    for category in CATEGORIES:
        assert any(s.category == category for s in split["held_in"])
        assert any(s.category == category for s in split["held_out"])


def test_sampled_sentences_cover_the_grammar_beyond_the_enumerated_prompts(world):
    rng = np.random.default_rng(0)
    enumerated = {s.text() for s in world.all_prompts()}
    for category in CATEGORIES:
        specs = [world.sample_prompt(rng, category=category) for _ in range(200)]
        assert all(s.category == category and parse_prompt(s.text()) == s for s in specs)
        if category not in ("single_object", "colors"):  # those two are enumerated exhaustively
            assert any(s.text() not in enumerated for s in specs)
    assert "a blue square left of a green triangle" in {world.sample_prompt(rng, "position").text() for _ in range(5000)}
    assert "three yellow circles" in {world.sample_prompt(rng, "counting").text() for _ in range(1000)}


def test_grammar_split_is_by_meaning(world):
    split = world.grammar_split(0.5, seed=0, also_held_out=("three yellow circles",))
    assert split == world.grammar_split(0.5, seed=0, also_held_out=("three yellow circles",))
    enumerated = world.split(0.5, seed=0)
    assert all(split.is_held_out(s) for s in enumerated["held_out"])
    assert split.is_held_out(parse_prompt("three yellow circles"))
    # One meaning, one side, whatever the wording.
    for a, b in (("a red circle and a blue square", "a blue square and a red circle"),
                 ("a circle left of a square", "a square right of a circle"),
                 ("a green triangle above a red circle", "a red circle below a green triangle")):
        assert parse_prompt(a).meaning == parse_prompt(b).meaning
        assert split.is_held_out(parse_prompt(a)) == split.is_held_out(parse_prompt(b))
    assert parse_prompt("a circle left of a square").meaning != parse_prompt("a square left of a circle").meaning
    # About half of the sentences outside the enumerated ones are held out; rejection sampling honours the side.
    rng = np.random.default_rng(1)
    others = [s for s in (world.sample_prompt(rng, "position") for _ in range(400)) if s.text() not in {p.text() for p in world.all_prompts()}]
    assert 0.35 < np.mean([split.is_held_out(s) for s in others]) < 0.65
    assert all(split.is_held_out(world.sample_prompt(rng, split=split, held_out=True)) for _ in range(50))
    assert not any(split.is_held_out(world.sample_prompt(rng, split=split, held_out=False)) for _ in range(50))


def test_scene_descriptions_and_their_scores(world):
    red_circle, blue_square = ShapeInstance("circle", "red", 8.0, 16.0, 8.0), ShapeInstance("square", "blue", 24.0, 18.0, 8.0)
    assert describe_scene([blue_square, red_circle]) == "a red circle left of a blue square"
    above = [ShapeInstance("triangle", "green", 16.0, 26.0, 8.0), ShapeInstance("circle", "green", 15.0, 6.0, 8.0)]
    assert describe_scene(above) == "a green circle above a green triangle"
    twins = [ShapeInstance("circle", "yellow", 6.0, 6.0, 8.0), ShapeInstance("circle", "yellow", 24.0, 24.0, 8.0)]
    assert describe_scene(twins) == "two yellow circles"
    mixed = [*twins, ShapeInstance("square", "red", 16.0, 16.0, 8.0)]
    assert describe_scene(mixed) == "two yellow circles and a red square"  # grouped, listed by their leftmost member
    assert describe_scene([*mixed[1:], ShapeInstance("triangle", "blue", 4.0, 28.0, 6.0)]) == "a blue triangle, a red square and a yellow circle"
    # Every description of a random scene scores correct on its own scene.
    rng = np.random.default_rng(0)
    for j in range(300):
        scene = world.sample_scene(world.sample_prompt(rng), seed=j)
        assert score_description(describe_scene(scene), scene, margin=3.2)["correct"]
    scene = [red_circle, blue_square]
    assert score_description("a blue square right of a red circle.", scene, 3.2)["correct"]  # any true wording
    wrong_color = score_description("a red circle left of a green square", scene, 3.2)
    assert wrong_color["shapes"] and wrong_color["counts"] and not wrong_color["colors"] and not wrong_color["correct"]
    assert not score_description("a red circle right of a blue square", scene, 3.2)["relation"]
    assert not score_description("a red circle and a blue square", scene, 3.2)["relation"]  # two shapes need a relation
    assert not any(score_description("a cat on a mat", scene, 3.2).values())
    assert not score_description("two yellow circles left of a square", twins, 3.2)["correct"]


def test_render_exact_pixels():
    # A square of side 8 centred at (16, 16) covers pixels 12..19 exactly; a disc's edge is anti-aliased.
    image = render_scene([ShapeInstance("square", "red", 16.0, 16.0, 8.0)], 32)
    assert image.shape == (3, 32, 32)
    expected = torch.zeros(3, 32, 32)
    expected[0, 12:20, 12:20] = 1.0
    torch.testing.assert_close(image, expected)
    disc = render_scene([ShapeInstance("circle", "blue", 16.0, 16.0, 10.0)], 32)
    assert disc[2].sum().item() == pytest.approx(np.pi * 25, rel=0.02)
    assert 0 < disc[2, 12, 12].item() < 1  # a pixel on the rim (centre 4.95 px from the disc centre) is partially covered
    # The triangle's position is its area centroid.
    tri = render_scene([ShapeInstance("triangle", "green", 13.3, 17.6, 12.0)], 32)[1]
    ys, xs = torch.meshgrid(torch.arange(32) + 0.5, torch.arange(32) + 0.5, indexing="ij")
    assert (tri * xs).sum() / tri.sum() == pytest.approx(13.3, abs=0.1)
    assert (tri * ys).sum() / tri.sum() == pytest.approx(17.6, abs=0.1)  # 4x4 supersampling: ~0.05 px


def test_scenes_are_deterministic_and_satisfy_their_prompts(world, ground_truth):
    spec = parse_prompt("a circle left of a square")
    assert world.sample_scene(spec, seed=3) == world.sample_scene(spec, seed=3)
    assert world.sample_scene(spec, seed=3) != world.sample_scene(spec, seed=4)
    for spec, scene in zip(ground_truth["specs"], ground_truth["scenes"]):
        assert len(scene) == spec.num_shapes
    # The exact checker agrees with the generator on every prompt of every category.
    results = ProgramReward().evaluate(ground_truth["prompts"], ground_truth["images"], [{"spec": s} for s in ground_truth["specs"]])
    assert all(r.correct for r in results)
    with pytest.raises(ValueError, match="at most 3 shapes"):
        world.sample_scene(PromptSpec("counting", (ObjectSpec("circle", None, 3), ObjectSpec("square"))), seed=0)


# ---------------------------------------------------------------------------------------- detector
def test_detector_on_hand_drawn_images():
    image = hand_drawn([("circle", RED, (3, 4, 12, 13)), ("square", BLUE, (20, 3, 28, 11)), ("triangle", YELLOW, (8, 18, 19, 29))])
    (found,) = ShapeDetector()(image)
    assert [(d.shape, d.color) for d in found] == [("circle", "red"), ("triangle", "yellow"), ("square", "blue")]
    circle, triangle, square = found
    assert (circle.cx, circle.cy) == pytest.approx((8.0, 9.0), abs=0.3)
    assert (square.cx, square.cy) == pytest.approx((24.5, 7.5), abs=0.3)
    assert triangle.cy > 23  # centroid two thirds of the way down
    # Two same-coloured shapes, and an empty image.
    two = hand_drawn([("square", GREEN, (2, 2, 9, 9)), ("square", GREEN, (20, 20, 28, 28))])
    empty = PIL.Image.new("RGB", (32, 32))
    assert [[d.shape for d in f] for f in ShapeDetector()([two, empty])] == [["square", "square"], []]


def _read_scene(found):
    return sorted((d.shape, d.color) for d in found)


@pytest.mark.parametrize("sigma,noise", [(0.0, 0.0), (1.25, 0.0), (0.75, 0.1)])
def test_detector_exact_within_documented_tolerance(ground_truth, sigma, noise):
    images = ground_truth["images"]
    if sigma:
        images = gaussian_blur(images, sigma)
    if noise:
        images = (images + noise * torch.randn(images.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    detections = ShapeDetector()(images)
    for scene, found in zip(ground_truth["scenes"], detections):
        assert _read_scene(found) == sorted((s.shape, s.color) for s in scene)
        for s in scene:
            assert min(abs(d.cx - s.cx) + abs(d.cy - s.cy) for d in found) < 1.5


def test_detector_fails_beyond_its_tolerance(ground_truth):
    # Far beyond the documented tolerance (sigma = 3 px on 8-11 px shapes), shapes are no longer read exactly.
    detections = ShapeDetector()(gaussian_blur(ground_truth["images"], 3.0))
    wrong = sum(_read_scene(f) != sorted((s.shape, s.color) for s in sc) for sc, f in zip(ground_truth["scenes"], detections))
    assert wrong > len(detections) // 4


def test_detector_input_validation():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        ShapeDetector()(torch.zeros(2, 4, 8, 8))
    with pytest.raises(TypeError):
        ShapeDetector()("image.png")


# ----------------------------------------------------------------------------------------- rewards
def test_program_reward_on_hand_drawn_images():
    correct = hand_drawn([("circle", RED, (2, 10, 11, 19)), ("square", BLUE, (20, 10, 28, 18))])
    swapped = hand_drawn([("square", BLUE, (2, 10, 10, 18)), ("circle", RED, (20, 10, 29, 19))])
    three = hand_drawn([("circle", RED, (1, 1, 9, 9)), ("circle", BLUE, (20, 2, 28, 10)), ("circle", GREEN, (10, 20, 18, 28))])
    prompts = ["a red circle left of a blue square", "a red circle left of a blue square", "two circles", "three circles", "a green circle"]
    reward = ProgramReward()
    images = [correct, swapped, three, three, three]
    # checks: present circle, red circle, present square, blue square, relation -> 5/5 and 4/5;
    # "two circles" on three circles: present yes, count no -> 1/2.
    assert reward(prompts, None, images, None) == pytest.approx([1.0, 0.8, 0.5, 1.0, 1.0])
    results = reward.evaluate(prompts, images)
    assert [r.correct for r in results] == [True, False, False, True, True]
    assert dict(results[1].checks)["relation: left of"] is False
    accuracy = program_accuracy(results, ["position", "position", "counting", "counting", "colors"])
    assert accuracy == {"position": 0.5, "counting": 0.5, "colors": 1.0, "overall": pytest.approx(2 / 3)}


def test_qa_reward_dsg_dependencies():
    spec = parse_prompt("a red circle left of a square")
    assert [q.text for q in dsg_questions(spec)] == [
        "Is there a circle?", "Is there a red circle?", "Is there a square?", "Is the red circle left of the square?",
    ]
    image = torch.zeros(1, 3, 32, 32)
    # A judge with fixed P(yes): the red-circle question (0.4) fails, so the relation question (its child) scores 0.
    fixed = QAReward(judge=lambda images, questions: [0.9, 0.4, 0.8, 0.7])
    assert fixed([spec.text()], None, image, [{"spec": spec}]) == pytest.approx([(0.9 + 0.4 + 0.8 + 0.0) / 4])
    # The exact detector as judge, on a hand-drawn image with a blue (not red) circle right of the square:
    # circle yes, red circle no, square yes, relation (child of "red circle") 0 -> 2/4.
    drawn = hand_drawn([("square", GREEN, (2, 10, 10, 18)), ("circle", BLUE, (20, 10, 29, 19))])
    qa = QAReward(judge=DetectorJudge())
    assert qa([spec.text()], None, [drawn], None) == [0.5]
    good = hand_drawn([("circle", RED, (2, 10, 11, 19)), ("square", GREEN, (20, 10, 28, 18))])
    assert qa([spec.text(), "two squares"], None, [good, good], None) == [1.0, 0.5]


def test_combined_reward_weights_and_errors():
    image = hand_drawn([("circle", RED, (2, 10, 11, 19))])
    length_bonus = lambda prompts, ids, images, metadata: [float(ids.shape[1]) for _ in prompts]
    combined = CombinedReward({"program": ProgramReward(), "bonus": length_bonus}, weights={"bonus": 0.25})
    ids = torch.zeros(2, 4, dtype=torch.long)
    total, parts = combined.compute(["a red circle", "a square"], ids, [image, image], None)
    torch.testing.assert_close(parts["program"], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(total, torch.tensor([1.0 + 0.25 * 4, 0.0 + 0.25 * 4]))
    assert combined(["a red circle"], ids[:1], [image], None) == [2.0]
    with pytest.raises(ValueError, match="unknown rewards"):
        CombinedReward({"program": ProgramReward()}, weights={"qa": 1.0})
    with pytest.raises(ValueError, match="returned"):
        CombinedReward({"bad": lambda p, i, im, m: [0.0]}).compute(["a", "b"], None, None, None)
    with pytest.raises(ValueError, match="2 images for 1 prompts"):
        ProgramReward()(["a circle"], None, [image, image], None)
