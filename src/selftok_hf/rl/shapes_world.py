"""A synthetic compositional world with exact ground truth, for rewards and for a miniature GenEval.

Images are 1-3 flat coloured shapes (circle, square, upward triangle) on a black background, at
32-64 px. Prompts follow a small grammar whose every sentence maps to one :class:`PromptSpec`::

    single_object   "a circle"
    two_objects     "a circle and a square"
    counting        "two triangles"              (also "two red circles": colour is optional everywhere)
    colors          "a red circle"
    position        "a circle left of a square"  (also "a blue square left of a green triangle")
    color_attr      "a red circle and a blue square"

:meth:`ShapesWorld.sample_scene` draws a scene that satisfies a spec (deterministically from a seed),
:func:`render_scene` rasterises it with 4x4 supersampled anti-aliasing, and :meth:`ShapesWorld.split`
divides the enumerated prompts of every category into held-in and held-out sets.

Geometry conventions (shared with the detector and the reward programs): ``x`` grows to the right,
``y`` grows downwards, positions are in pixels of the rendered image, and a shape's position is the
centroid of its area. "A left of B" means ``x_B - x_A >= relation_margin * image_size`` (likewise
right of / above / below on the other axis).
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "CATEGORIES",
    "COLORS",
    "RELATIONS",
    "SHAPES",
    "ObjectSpec",
    "PromptSpec",
    "ShapeInstance",
    "PromptSplit",
    "ShapesWorld",
    "describe_scene",
    "parse_prompt",
    "relation_holds",
    "render_scene",
    "score_description",
]

SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
#: Saturated primaries and yellow: hue 0, 60, 120, 240 degrees, far apart for a hue-based detector.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "yellow": (1.0, 1.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
CATEGORIES: tuple[str, ...] = ("single_object", "two_objects", "counting", "colors", "position", "color_attr")
_NUMBER_WORDS = {1: "a", 2: "two", 3: "three"}
_WORD_NUMBERS = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3}
# Shape centroid relative to the centre of its bounding box, in units of the shape size (the triangle's
# centroid sits at 2/3 of its height, measured from the apex).
_CENTROID_OFFSET_Y = {"circle": 0.0, "square": 0.0, "triangle": 1.0 / 6.0}


@dataclass(frozen=True)
class ObjectSpec:
    """One noun phrase of a prompt: ``count`` objects of ``shape``, optionally all of ``color``."""

    shape: str
    color: str | None = None
    count: int = 1

    def text(self) -> str:
        words = [_NUMBER_WORDS[self.count]]
        if self.color is not None:
            words.append(self.color)
        words.append(self.shape + ("s" if self.count > 1 else ""))
        return " ".join(words)


@dataclass(frozen=True)
class PromptSpec:
    """A parsed prompt: its GenEval-style category, its objects and an optional relation.

    ``relation`` relates ``objects[0]`` (the subject) to ``objects[1]``.
    """

    category: str
    objects: tuple[ObjectSpec, ...]
    relation: str | None = None

    def text(self) -> str:
        if self.relation is not None:
            return f"{self.objects[0].text()} {self.relation} {self.objects[1].text()}"
        return " and ".join(o.text() for o in self.objects)

    @property
    def num_shapes(self) -> int:
        return sum(o.count for o in self.objects)

    @property
    def meaning(self) -> tuple:
        """What the sentence asks for, independent of its wording: the objects of an "and" in any order, and a
        relation with its direction normalised ("B right of A" = "A left of B", "B below A" = "A above B").
        Two sentences with one meaning are held in or held out together (:class:`PromptSplit`)."""
        if self.relation is None:
            return (None, *sorted(self.objects, key=repr))
        subject, obj = self.objects
        if self.relation in ("right of", "below"):
            return ("left of" if self.relation == "right of" else "above", obj, subject)
        return (self.relation, subject, obj)


@dataclass(frozen=True)
class ShapeInstance:
    """A shape in a scene: ``size`` is the side of its bounding box, ``(cx, cy)`` its area centroid (pixels)."""

    shape: str
    color: str
    cx: float
    cy: float
    size: float

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """``(x0, y0, x1, y1)`` of the bounding box in pixels (continuous coordinates)."""
        top = self.cy - self.size / 2 - _CENTROID_OFFSET_Y[self.shape] * self.size
        return (self.cx - self.size / 2, top, self.cx + self.size / 2, top + self.size)


def _category_of(objects: Sequence[ObjectSpec], relation: str | None) -> str:
    if relation is not None:
        return "position"
    if len(objects) == 2:
        return "color_attr" if all(o.color is not None for o in objects) else "two_objects"
    (obj,) = objects
    if obj.count > 1:
        return "counting"
    return "colors" if obj.color is not None else "single_object"


def _parse_object(words: list[str], prompt: str) -> ObjectSpec:
    if len(words) not in (2, 3) or words[0] not in _WORD_NUMBERS:
        raise ValueError(f"cannot parse {' '.join(words)!r} in prompt {prompt!r}: expected '<a|two|three> [color] <shape>'")
    count = _WORD_NUMBERS[words[0]]
    color = words[1] if len(words) == 3 else None
    noun = words[-1]
    shape = noun[:-1] if count > 1 and noun.endswith("s") else noun
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {noun!r} in prompt {prompt!r}; shapes are {SHAPES}")
    if color is not None and color not in COLORS:
        raise ValueError(f"unknown color {color!r} in prompt {prompt!r}; colors are {tuple(COLORS)}")
    return ObjectSpec(shape, color, count)


def parse_prompt(prompt: str) -> PromptSpec:
    """Parse a prompt of the world's grammar (see the module docstring) into a :class:`PromptSpec`.

    Raises:
        ValueError: if the prompt is not in the grammar.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    text = " " + " ".join(prompt.lower().strip().rstrip(".").split()) + " "
    for relation in RELATIONS:
        if f" {relation} " in text:
            left, right = text.split(f" {relation} ", 1)
            objects = (_parse_object(left.split(), prompt), _parse_object(right.split(), prompt))
            return PromptSpec("position", objects, relation)
    parts = text.split(" and ")
    if len(parts) > 2:
        raise ValueError(f"prompt {prompt!r} names more than two objects")
    objects = tuple(_parse_object(part.split(), prompt) for part in parts)
    if len(objects) == 2 and any(o.count > 1 for o in objects):
        raise ValueError(f"prompt {prompt!r}: counts are only supported for a single noun phrase")
    return PromptSpec(_category_of(objects, None), objects)


def relation_holds(subject_xy: tuple[float, float], object_xy: tuple[float, float], relation: str, margin: float) -> bool:
    """Whether the subject at ``subject_xy`` is ``relation`` the object at ``object_xy`` by at least ``margin`` pixels."""
    (sx, sy), (ox, oy) = subject_xy, object_xy
    if relation == "left of":
        return ox - sx >= margin
    if relation == "right of":
        return sx - ox >= margin
    if relation == "above":
        return oy - sy >= margin
    if relation == "below":
        return sy - oy >= margin
    raise ValueError(f"unknown relation {relation!r}; expected one of {RELATIONS}")


def _shape_coverage(shape: str, x: np.ndarray, y: np.ndarray, cx: float, cy: float, size: float) -> np.ndarray:
    """Boolean inside-mask of one shape at sample points ``(x, y)`` (pixel units)."""
    half = size / 2
    if shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= half**2
    if shape == "square":
        return (np.abs(x - cx) <= half) & (np.abs(y - cy) <= half)
    if shape == "triangle":
        # Isosceles, apex up, base = height = size; the centroid is 2/3 of the height below the apex.
        apex_y = cy - 2.0 * size / 3.0
        depth = y - apex_y
        return (depth >= 0) & (depth <= size) & (np.abs(x - cx) <= depth / 2)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render_scene(scene: Sequence[ShapeInstance], image_size: int, supersample: int = 4) -> torch.Tensor:
    """Rasterise a scene on a black background.

    Args:
        scene: the shapes; later ones are painted over earlier ones.
        image_size: side of the square image in pixels.
        supersample: anti-aliasing factor (``supersample**2`` samples per pixel, box-filtered).

    Returns:
        `torch.Tensor` of shape `(3, image_size, image_size)`, float32 in [0, 1].
    """
    # NumPy, single-threaded: these small arrays are slower with a contended torch thread pool.
    n = image_size * supersample
    coords = (np.arange(n, dtype=np.float32) + 0.5) / supersample
    canvas = np.zeros((n, n, 3), dtype=np.float32)
    for inst in scene:
        if inst.color not in COLORS:
            raise ValueError(f"unknown color {inst.color!r}; expected one of {tuple(COLORS)}")
        # Only the samples inside the (clipped) bounding box can be covered.
        x0, y0, x1, y1 = (min(max(int(v * supersample), 0), n) for v in inst.bbox)
        y, x = np.meshgrid(coords[y0 : y1 + 1], coords[x0 : x1 + 1], indexing="ij")
        inside = _shape_coverage(inst.shape, x, y, inst.cx, inst.cy, inst.size)
        canvas[y0 : y1 + 1, x0 : x1 + 1][inside] = COLORS[inst.color]
    image = canvas.reshape(image_size, supersample, image_size, supersample, 3).mean(axis=(1, 3))
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def _stable_seed(*parts) -> int:
    return zlib.crc32("|".join(map(str, parts)).encode())


@dataclass(frozen=True)
class PromptSplit:
    """Held-in / held-out sides for every sentence of the grammar, decided by meaning (:attr:`PromptSpec.meaning`).

    - A meaning shared with an enumerated prompt (:meth:`ShapesWorld.all_prompts`) is held out when one of those
      prompts is on the held-out side of :meth:`ShapesWorld.split` (so "a square right of a circle" is held out
      with "a circle left of a square", even if the split put one wording in each side).
    - So is the meaning of every sentence of ``also_held_out`` (sentences a report quotes, held out by decree).
    - Any other meaning (colours on both sides of a relation, coloured counts, ...) is held out with probability
      ``held_out_fraction``, by a hash of the meaning and ``seed``.

    Training on ``is_held_out(spec) == False`` only keeps every held-out evaluation sentence new in meaning, not
    only in wording.
    """

    held_in: tuple[PromptSpec, ...]
    held_out: tuple[PromptSpec, ...]
    held_out_fraction: float
    seed: int
    also_held_out: tuple[PromptSpec, ...] = ()

    def __post_init__(self):
        enumerated = {}
        for spec in self.held_in:
            enumerated.setdefault(spec.meaning, False)
        for spec in (*self.held_out, *self.also_held_out):
            enumerated[spec.meaning] = True
        object.__setattr__(self, "_enumerated_sides", enumerated)

    def is_held_out(self, spec: PromptSpec) -> bool:
        """Whether ``spec``'s meaning is on the held-out side (see the class docstring)."""
        side = self._enumerated_sides.get(spec.meaning)
        if side is not None:
            return side
        return _stable_seed("grammar-split", self.seed, repr(spec.meaning)) / 2**32 < self.held_out_fraction


_SCENE_NUMBER_WORDS = {1: "a", 2: "two", 3: "three"}


def describe_scene(scene: Sequence[ShapeInstance]) -> str:
    """The canonical answer to "What is shown?": every shape with its colour, counted, and where two single shapes
    are shown, where one is relative to the other along the axis on which they are further apart.

    Examples: ``"a red circle left of a blue square"``, ``"a green triangle above a green circle"``,
    ``"two yellow circles"``, ``"two red squares and a blue triangle"``, ``"a red circle, a blue circle and a green
    square"``. Groups of one colour and shape are listed by the x of their leftmost member.
    """
    if not scene:
        return "nothing"
    groups: dict[tuple[str, str], list[ShapeInstance]] = {}
    for inst in sorted(scene, key=lambda i: (i.cx, i.cy)):
        groups.setdefault((inst.color, inst.shape), []).append(inst)

    def phrase(color: str, shape: str, n: int) -> str:
        return f"{_SCENE_NUMBER_WORDS[n]} {color} {shape}{'s' if n > 1 else ''}"

    if len(scene) == 2 and len(groups) == 2:
        a, b = sorted(scene, key=lambda i: i.cx)
        if abs(b.cx - a.cx) >= abs(b.cy - a.cy):
            return f"{phrase(a.color, a.shape, 1)} left of {phrase(b.color, b.shape, 1)}"
        a, b = sorted(scene, key=lambda i: i.cy)
        return f"{phrase(a.color, a.shape, 1)} above {phrase(b.color, b.shape, 1)}"
    phrases = [phrase(color, shape, len(members)) for (color, shape), members in groups.items()]
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def score_description(answer: str, scene: Sequence[ShapeInstance], margin: float) -> dict[str, bool]:
    """Check an answer to "What is shown?" against the true scene, aspect by aspect.

    The answer is read in the grammar of :func:`describe_scene` (phrases ``"<a|two|three> <color> <shape>"`` joined
    by ", " / " and ", or two single phrases joined by a relation). Aspects:

    - ``shapes``: the multiset of shapes is right; ``colors``: the multiset of (colour, shape) is right;
    - ``counts``: the number of shapes is right;
    - ``relation``: with two single shapes of different colour or kind, a relation is stated and holds between the true
      shapes by ``margin`` pixels; otherwise none is stated;
    - ``correct``: all of them (an answer outside the grammar is wrong in every aspect).
    """
    wrong = {"shapes": False, "colors": False, "counts": False, "relation": False, "correct": False}
    text = " " + " ".join(answer.lower().strip().rstrip(".").split()) + " "
    relation = next((r for r in RELATIONS if f" {r} " in text), None)
    parts = text.split(f" {relation} ") if relation else text.replace(",", " and ").split(" and ")
    try:
        objects = [_parse_object(part.split(), answer) for part in parts]
    except ValueError:
        return wrong
    if relation is not None and (len(objects) != 2 or any(o.count != 1 for o in objects)):
        return wrong
    said = sorted((o.color, o.shape) for o in objects for _ in range(o.count))
    truth = sorted((i.color, i.shape) for i in scene)
    needs_relation = len(scene) == 2 and truth[0] != truth[1]
    relation_ok = relation is None and not needs_relation
    if relation is not None and needs_relation and said == truth:
        subject = next(i for i in scene if (i.color, i.shape) == (objects[0].color, objects[0].shape))
        obj = next(i for i in scene if i is not subject)
        relation_ok = relation_holds((subject.cx, subject.cy), (obj.cx, obj.cy), relation, margin)
    result = {
        "shapes": sorted(s for _, s in said) == sorted(s for _, s in truth),
        "colors": said == truth,
        "counts": len(said) == len(truth),
        "relation": relation_ok,
    }
    result["correct"] = all(result.values())
    return result


@dataclass
class ShapesWorld:
    """The shapes world: prompt enumeration, held-in / held-out splits, scene sampling and rendering.

    Args:
        image_size: image side in pixels (32-64 recommended; the detector's defaults are tuned in units of it).
        shapes / colors: the vocabulary (names must exist in :data:`SHAPES` / :data:`COLORS`).
        size_range: shape size (bounding-box side) as a fraction of ``image_size``.
        min_gap: minimum empty space between the bounding boxes of two shapes, as a fraction of ``image_size``
            (keeps same-coloured shapes separable after blur).
        relation_margin: the margin of "left of" etc., as a fraction of ``image_size``.
        max_attempts: rejection-sampling attempts per scene before giving up with an error.
    """

    image_size: int = 32
    shapes: tuple[str, ...] = SHAPES
    colors: tuple[str, ...] = tuple(COLORS)
    size_range: tuple[float, float] = (0.25, 0.34)
    min_gap: float = 0.1
    relation_margin: float = 0.1
    max_attempts: int = 1000

    def __post_init__(self):
        unknown = [s for s in self.shapes if s not in SHAPES] + [c for c in self.colors if c not in COLORS]
        if unknown:
            raise ValueError(f"unknown shapes/colors {unknown}; available: {SHAPES} and {tuple(COLORS)}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16 pixels, got {self.image_size}")

    # ---------------------------------------------------------------------------------- prompts
    def all_prompts(self, category: str | None = None) -> list[PromptSpec]:
        """Every prompt of a category (or of all categories, in :data:`CATEGORIES` order), in a fixed order."""
        if category is None:
            return [spec for c in CATEGORIES for spec in self.all_prompts(c)]
        S, C = self.shapes, self.colors
        if category == "single_object":
            return [PromptSpec(category, (ObjectSpec(s),)) for s in S]
        if category == "two_objects":
            return [PromptSpec(category, (ObjectSpec(a), ObjectSpec(b))) for a, b in itertools.combinations(S, 2)]
        if category == "counting":
            return [PromptSpec(category, (ObjectSpec(s, None, n),)) for n in (2, 3) for s in S]
        if category == "colors":
            return [PromptSpec(category, (ObjectSpec(s, c),)) for c in C for s in S]
        if category == "position":
            return [
                PromptSpec(category, (ObjectSpec(a), ObjectSpec(b)), r) for a, b in itertools.permutations(S, 2) for r in RELATIONS
            ]
        if category == "color_attr":
            return [
                PromptSpec(category, (ObjectSpec(a, ca), ObjectSpec(b, cb)))
                for a, b in itertools.combinations(S, 2)
                for ca, cb in itertools.permutations(C, 2)
            ]
        raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")

    def grammar_split(self, held_out_fraction: float = 0.5, seed: int = 0, also_held_out: Sequence[str] = ()) -> PromptSplit:
        """The :class:`PromptSplit` of the whole grammar built on :meth:`split` of the enumerated prompts;
        ``also_held_out``: sentences whose meaning is held out whatever the hash says."""
        split = self.split(held_out_fraction, seed)
        extra = tuple(parse_prompt(text) for text in also_held_out)
        return PromptSplit(tuple(split["held_in"]), tuple(split["held_out"]), held_out_fraction, seed, extra)

    def sample_prompt(
        self, rng: np.random.Generator, category: str | None = None, split: PromptSplit | None = None, held_out: bool = False
    ) -> PromptSpec:
        """A random sentence of the full grammar (not only the enumerated prompts): every category, colours
        optional wherever the grammar allows them (both sides of a relation, coloured counts).

        ``category`` fixes the category of the result (drawn uniformly from :data:`CATEGORIES` otherwise). Two-object
        sentences name two different shapes, as the enumerated prompts do. With ``split``, only sentences on the
        ``held_out`` side of it are returned (by rejection).
        """
        for _ in range(self.max_attempts):
            spec = self._sample_sentence(rng, category)
            if split is None or split.is_held_out(spec) == held_out:
                return spec
        raise RuntimeError(f"no {'held-out' if held_out else 'held-in'} sentence of category {category!r} in {self.max_attempts} draws")

    def _sample_sentence(self, rng: np.random.Generator, category: str | None) -> PromptSpec:
        category = CATEGORIES[rng.integers(len(CATEGORIES))] if category is None else category
        if category not in CATEGORIES:
            raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")
        first, second = (self.shapes[i] for i in rng.permutation(len(self.shapes))[:2])

        def color() -> str:
            return self.colors[rng.integers(len(self.colors))]

        def maybe_color() -> str | None:
            return color() if rng.random() < 0.5 else None

        if category == "single_object":
            return PromptSpec(category, (ObjectSpec(first),))
        if category == "colors":
            return PromptSpec(category, (ObjectSpec(first, color()),))
        if category == "counting":
            return PromptSpec(category, (ObjectSpec(first, maybe_color(), int(rng.integers(2, 4))),))
        if category == "position":
            relation = RELATIONS[rng.integers(len(RELATIONS))]
            return PromptSpec(category, (ObjectSpec(first, maybe_color()), ObjectSpec(second, maybe_color())), relation)
        if category == "color_attr":
            return PromptSpec(category, (ObjectSpec(first, color()), ObjectSpec(second, color())))
        # two_objects: at most one of the two is coloured (both coloured is color_attr).
        colored = ObjectSpec(first, maybe_color())
        return PromptSpec(category, (colored, ObjectSpec(second)) if rng.random() < 0.5 else (ObjectSpec(second), colored))

    def split(self, held_out_fraction: float = 0.5, seed: int = 0) -> dict[str, list[PromptSpec]]:
        """Split every category's prompts into ``{"held_in": [...], "held_out": [...]}``.

        Deterministic in ``seed``; each category keeps at least one prompt on each side (every category
        has >= 3 prompts), and ``round(held_out_fraction * n)`` otherwise.
        """
        if not 0 < held_out_fraction < 1:
            raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
        held_in, held_out = [], []
        for category in CATEGORIES:
            prompts = self.all_prompts(category)
            order = np.random.default_rng(_stable_seed("split", seed, category)).permutation(len(prompts))
            n_out = min(max(round(held_out_fraction * len(prompts)), 1), len(prompts) - 1)
            held_out += [prompts[i] for i in sorted(order[:n_out])]
            held_in += [prompts[i] for i in sorted(order[n_out:])]
        return {"held_in": held_in, "held_out": held_out}

    # ----------------------------------------------------------------------------------- scenes
    def sample_scene(self, spec: PromptSpec, seed: int) -> list[ShapeInstance]:
        """A random scene that satisfies ``spec`` exactly (deterministic in ``(spec, seed)``).

        Unspecified colours are drawn uniformly; shapes do not overlap (``min_gap``); relations hold with
        at least twice ``relation_margin``, so that small localisation errors never flip them.
        """
        if not isinstance(spec, PromptSpec):
            raise TypeError(f"spec must be a PromptSpec (see parse_prompt), got {type(spec).__name__}")
        for obj in spec.objects:
            if obj.shape not in self.shapes or (obj.color is not None and obj.color not in self.colors):
                raise ValueError(f"{obj} is outside this world's shapes {self.shapes} / colors {self.colors}")
        if spec.num_shapes > 3:
            raise ValueError(f"scenes hold at most 3 shapes, {spec.text()!r} needs {spec.num_shapes}")
        rng = np.random.default_rng(_stable_seed("scene", seed, spec.text()))
        W = self.image_size
        for _ in range(self.max_attempts):
            scene: list[ShapeInstance] = []
            for obj in spec.objects:
                for _ in range(obj.count):
                    color = obj.color if obj.color is not None else self.colors[rng.integers(len(self.colors))]
                    size = float(rng.uniform(*self.size_range)) * W
                    # Keep the bounding box inside the image with a one-pixel border.
                    dy = _CENTROID_OFFSET_Y[obj.shape] * size
                    cx = float(rng.uniform(size / 2 + 1, W - size / 2 - 1))
                    cy = float(rng.uniform(size / 2 + dy + 1, W - size / 2 + dy - 1))
                    scene.append(ShapeInstance(obj.shape, color, cx, cy, size))
            if self._valid(scene, spec):
                return scene
        raise RuntimeError(f"no valid scene for {spec.text()!r} in {self.max_attempts} attempts at {W} px")

    def _valid(self, scene: list[ShapeInstance], spec: PromptSpec) -> bool:
        gap = self.min_gap * self.image_size
        for a, b in itertools.combinations(scene, 2):
            ax0, ay0, ax1, ay1 = a.bbox
            bx0, by0, bx1, by1 = b.bbox
            if max(bx0 - ax1, ax0 - bx1, by0 - ay1, ay0 - by1) < gap:
                return False
        if spec.relation is not None:
            subject, obj = scene[0], scene[spec.objects[0].count]
            margin = 2 * self.relation_margin * self.image_size
            if not relation_holds((subject.cx, subject.cy), (obj.cx, obj.cy), spec.relation, margin):
                return False
        return True

    def render(self, scene: Sequence[ShapeInstance]) -> torch.Tensor:
        """`(3, H, W)` float image in [0, 1]; see :func:`render_scene`."""
        return render_scene(scene, self.image_size)

    def generate(self, specs: Sequence[PromptSpec], images_per_prompt: int = 1, seed: int = 0) -> dict:
        """Render ``images_per_prompt`` ground-truth scenes per prompt.

        Returns:
            dict with ``"prompts"`` (list of str, prompt-major), ``"specs"``, ``"scenes"`` and ``"images"``
            (`torch.Tensor` of shape `(len(specs) * images_per_prompt, 3, H, W)` in [0, 1]).
        """
        prompts, out_specs, scenes = [], [], []
        for spec in specs:
            for j in range(images_per_prompt):
                prompts.append(spec.text())
                out_specs.append(spec)
                scenes.append(self.sample_scene(spec, seed=_stable_seed(seed, j)))
        images = torch.stack([self.render(s) for s in scenes]) if scenes else torch.zeros(0, 3, self.image_size, self.image_size)
        return {"prompts": prompts, "specs": out_specs, "scenes": scenes, "images": images}
