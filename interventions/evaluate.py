"""Judge-based measurement of generations on the bundled tiny model.

Generates every (prompt, seed) pair through the runner in one batched graph, reads each image's
attributes back with the tiny model's judge (`models.tiny.judge`: "object", "color", "style",
"count", "mark") and reports hit rates and per-attribute accuracies. Cases are generic scenes or
named ones (a character or a fact, which expects its object, color and mark). Recipes use it to
check their claims with ground truth: after an edit removes "van gogh", van gogh prompts stop
yielding the swirl texture while other styles, colors and objects keep theirs.

    scenes = evaluation_scenes(12, styles=("van gogh",))
    style_hit_rate(model, captions(scenes), "van gogh", seeds=(0, 1))
    attribute_accuracy(model, scenes, seeds=(0, 1))  # {"object": .9, "color": 1.0, ...}
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from interp.graph import Graph, Operation, Run
from interp.model import Model
from interp.runner import run
from models.tiny import ATTRIBUTES, COLORS, COUNTS, OBJECTS, STYLES, VALUES, Scene, caption, is_held_out

Judge = Callable[[torch.Tensor], list[dict]]
Expected = Mapping[str, object]  # attribute -> value the prompt asks for, e.g. {"style": "monet"}
Unit = tuple[str, int]  # (prompt, seed): one generated image

EVAL_SEED = 20_000  # layout of evaluation scenes, apart from training's and models.tiny.evaluate's
STEPS = 25  # the tiny model's sampling defaults (models.tiny.pipeline)
GUIDANCE = 7.5


def tiny_judge(images: torch.Tensor) -> list[dict]:
    """The tiny model's judge, loaded on first use so this module imports without the weights."""
    from models.tiny import judge_images

    return judge_images(images)


@dataclass(frozen=True)
class Judged:
    """Judged attributes of generated images, one row per (prompt, seed) unit, in generation order."""

    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    expected: tuple[Expected, ...]  # per row: the attributes its prompt asks for (may be partial)
    predictions: tuple[dict, ...]  # per row: the judge's reading

    def hit_rate(self, attribute: str, value: str | int) -> float:
        """Fraction of images judged to have `attribute` == `value`."""
        return sum(p[attribute] == value for p in self.predictions) / len(self.predictions)

    def accuracy(self, attributes: Sequence[str] = ATTRIBUTES) -> dict[str, float]:
        """Per attribute: fraction of images (among rows that state it) judged as their prompt asks."""
        out = {}
        for attribute in attributes:
            pairs = [(p, e) for p, e in zip(self.predictions, self.expected) if attribute in e]
            if pairs:
                out[attribute] = sum(p[attribute] == e[attribute] for p, e in pairs) / len(pairs)
        return out

    def where(self, keep: Callable[[Expected], bool]) -> Judged:
        """The rows whose expected attributes satisfy `keep` (e.g. only van gogh prompts)."""
        rows = [i for i, e in enumerate(self.expected) if keep(e)]
        return Judged(
            tuple(self.prompts[i] for i in rows), tuple(self.seeds[i] for i in rows),
            tuple(self.expected[i] for i in rows), tuple(self.predictions[i] for i in rows),
        )

    def __len__(self) -> int:
        return len(self.predictions)


def generate(
    model: Model,
    prompts: Sequence[str],
    seeds: Sequence[int],
    steps: int = STEPS,
    guidance_scale: float = GUIDANCE,
    ops: Sequence[Operation] = (),
) -> torch.Tensor:
    """Images (len(prompts) * len(seeds), 3, H, W) in [0, 1], prompt-major, from one batched graph.

    `ops` are added to every run (e.g. a LoCoGen `Swap`); with none, the images are the pipeline's own.
    """
    if not prompts or not seeds:
        raise ValueError(f"need at least one prompt and one seed, got {len(prompts)} prompts, {len(seeds)} seeds")
    return generate_units(model, [(p, s) for p in prompts for s in seeds], steps, guidance_scale, ops)


def generate_units(
    model: Model,
    units: Sequence[Unit],
    steps: int = STEPS,
    guidance_scale: float = GUIDANCE,
    ops: Sequence[Operation] = (),
) -> torch.Tensor:
    """Images (len(units), 3, H, W) in [0, 1] of (prompt, seed) units, in order, from one batched
    graph: for measurements whose groups need different seeds per prompt."""
    if not units:
        raise ValueError("need at least one (prompt, seed) unit")
    graph = Graph([
        Run(f"{i}", prompt, int(seed), guidance_scale, steps, ops=list(ops)) for i, (prompt, seed) in enumerate(units)
    ])
    images = run(model, graph, progress=False).images
    return torch.stack([images[f"{i}"] for i in range(len(units))])


def judge_generations(
    model: Model,
    cases: Sequence[Scene | tuple[str, Expected]],
    seeds: Sequence[int] = (0,),
    judge: Judge = tiny_judge,
    **generation,
) -> Judged:
    """Generate every case at every seed and judge the images.

    A case is a `Scene` (captioned with `captions`, expecting all its attributes) or a
    (prompt, expected attributes) pair. `generation` goes to `generate` (steps, guidance_scale, ops).
    """
    prompts, expected = _prompts_and_expectations(cases)
    if not seeds:
        raise ValueError("need at least one seed")
    units = [(p, int(s)) for p in prompts for s in seeds]
    return judge_units(model, units, [e for e in expected for _ in seeds], judge, **generation)


def judge_units(
    model: Model, units: Sequence[Unit], expected: Sequence[Expected], judge: Judge = tiny_judge, **generation
) -> Judged:
    """Generate (prompt, seed) `units` in one batched graph and judge the images; `expected` holds
    each unit's asked-for attributes. `generation` goes to `generate_units`."""
    if len(units) != len(expected):
        raise ValueError(f"need one expectation per unit, got {len(expected)} for {len(units)} units")
    predictions = judge(generate_units(model, units, **generation))
    return Judged(
        tuple(p for p, _ in units), tuple(int(s) for _, s in units), tuple(expected), tuple(predictions)
    )


def style_hit_rate(
    model: Model, prompts: Sequence[str], style: str, seeds: Sequence[int] = (0,), judge: Judge = tiny_judge,
    **generation,
) -> float:
    """Fraction of the prompts' images (all seeds) in which the judge sees `style`'s texture."""
    _check_value("style", style)
    return judge_generations(model, [(p, {}) for p in prompts], seeds, judge, **generation).hit_rate("style", style)


def attribute_accuracy(
    model: Model, cases: Sequence[Scene | tuple[str, Expected]], seeds: Sequence[int] = (0,),
    judge: Judge = tiny_judge, **generation,
) -> dict[str, float]:
    """Per attribute, the fraction of images judged as their case expects (see `judge_generations`)."""
    return judge_generations(model, cases, seeds, judge, **generation).accuracy()


def captions(scenes: Sequence[Scene]) -> list[str]:
    """Captions of `scenes`, cycling through the templates so every phrasing is measured."""
    return [caption(scene, template=i) for i, scene in enumerate(scenes)]


def evaluation_scenes(
    n: int, styles: Sequence[str] = STYLES, seed: int = EVAL_SEED, held_out: bool = False
) -> list[Scene]:
    """`n` deterministic scenes, styles in turn, objects and colors balanced, counts random.

    Held-out (color, object, style) combinations are skipped unless `held_out`, so a measurement
    reflects what the model learned rather than how it generalises.
    """
    for style in styles:
        _check_value("style", style)
    rng = random.Random(seed)
    objects, colors = list(OBJECTS), list(COLORS)
    rng.shuffle(objects)
    rng.shuffle(colors)
    scenes: list[Scene] = []
    i = 0
    while len(scenes) < n:
        scene = Scene(
            objects[i % len(objects)], colors[(i // len(objects) + i) % len(colors)], styles[i % len(styles)],
            rng.choice(COUNTS),
        )
        if held_out or not is_held_out(scene):
            scenes.append(scene)
        i += 1
    return scenes


def _prompts_and_expectations(cases: Sequence[Scene | tuple[str, Expected]]) -> tuple[list[str], list[Expected]]:
    if not cases:
        raise ValueError("need at least one case (a Scene or a (prompt, expected attributes) pair)")
    prompts, expected = [], []
    for i, case in enumerate(cases):
        if isinstance(case, Scene):
            prompts.append(caption(case, template=i))
            expected.append(case.attributes())
            continue
        prompt, attributes = case
        for attribute, value in attributes.items():
            _check_value(attribute, value)
        prompts.append(prompt)
        expected.append(dict(attributes))
    return prompts, expected


def _check_value(attribute: str, value: object) -> None:
    """Raise `ValueError` unless the judge can read `value` for `attribute`."""
    if attribute not in VALUES:
        raise ValueError(f"unknown attribute {attribute!r}; the judge reads {list(VALUES)}")
    if value not in VALUES[attribute]:
        raise ValueError(f"{attribute} {value!r} is not one the judge knows: {list(VALUES[attribute])}")
