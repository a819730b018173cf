"""Measure DiffQuickFix and LoCoEdit on the bundled tiny model with its judge: ``python -m bench.edits_tiny``.

For each edit ("van gogh" -> "painting"; then "van gogh" and "monet" in one edit) the same prompts
and seeds are generated before and after, and the judge reads the images back:
- van gogh hit: share of van gogh prompts' images with van gogh's swirl (target <= 10% after,
  from >= 80% before); monet hit likewise on monet prompts;
- other styles: style accuracy on plain / mondrian / pollock prompts; color, object and count
  accuracy on every prompt (target: within 5 points of before).
DiffQuickFix runs at every text-encoder layer; LoCoEdit on the window of 2 cross-attention layers
whose edit removes van gogh best (a sweep over every window, printed first, unless --window
names one, e.g. LoCoGen's) and on all cross-attention layers.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import torch

import interp
from interp.editing import Edit
from interp.model import Model
from interventions import diffquickfix, edits, locoedit
from interventions.evaluate import Judged, evaluation_scenes, judge_generations
from models.tiny import Scene

REMOVED = ("van gogh", "monet")
# The tiny world's own phrasings of a style ("photo" and "image", in the papers' templates, are not
# words of its vocabulary and tokenize as unknown).
TINY_TEMPLATES = ("{}", "in the style of {}", "a painting by {}", "a {} painting")
COLUMNS = ("van gogh hit", "monet hit", "other styles", "color", "object", "count")


def evaluation_set(per_style: int) -> list[Scene]:
    """`2 * per_style` van gogh scenes (the measured concept), `per_style` monet scenes, and
    `per_style` scenes of each other style; seen attribute combinations only."""
    return (
        evaluation_scenes(2 * per_style, styles=("van gogh",))
        + evaluation_scenes(per_style, styles=("monet",))
        + evaluation_scenes(3 * per_style, styles=("plain", "mondrian", "pollock"))
    )


def judged(model: Model, edit: Edit | None, scenes: Sequence[Scene], seeds: Sequence[int], steps: int) -> Judged:
    """Judged generations of `scenes` with `edit` applied (reverted afterwards), or unedited."""
    if edit is None:
        return judge_generations(model, scenes, seeds, steps=steps)
    with edits.applied(model, edit):
        return judge_generations(model, scenes, seeds, steps=steps)


def metrics(result: Judged) -> dict[str, float]:
    """The table's columns, as fractions."""
    def style_is(*styles: str):
        return lambda expected: expected["style"] in styles

    others = result.where(lambda e: e["style"] not in REMOVED)
    accuracy = result.accuracy(("color", "object", "count"))
    return {
        "van gogh hit": result.where(style_is("van gogh")).hit_rate("style", "van gogh"),
        "monet hit": result.where(style_is("monet")).hit_rate("style", "monet"),
        "other styles": others.accuracy(("style",))["style"],
        **accuracy,
    }


def best_window(
    model: Model, concepts: list[str], scenes: list[Scene], seeds: Sequence[int], steps: int, templates: dict
) -> list[str]:
    """The window of 2 cross-attention layers whose LoCoEdit lowers the first concept's hit rate most."""
    layers = [s.name for s in model.sites("cross-attn")]
    probe = [s for s in scenes if s.style == concepts[0]]
    curve = {}
    for start in range(len(layers) - 1):
        window = layers[start : start + 2]
        edit = locoedit.edit(model, concepts, "painting", layers=window, **templates)
        curve[start] = judged(model, edit, probe, seeds, steps).hit_rate("style", concepts[0])
        print(f"  {window_label(model, window)} ({', '.join(window)}): {concepts[0]} hit {100 * curve[start]:5.1f}%")
    start = min(curve, key=curve.get)
    return layers[start : start + 2]


def window_label(model: Model, window: Sequence[str]) -> str:
    """LoCoGen indices of a window, e.g. "cross-attn-3+4"."""
    order = [s.name for s in model.sites("cross-attn")]
    return "cross-attn-" + "+".join(str(order.index(s.name)) for s in locoedit.cross_attention_layers(model, window))


def print_row(label: str, values: dict[str, float], before: dict[str, float] | None) -> None:
    cells = []
    for column in COLUMNS:
        delta = "" if before is None else f" ({100 * (values[column] - before[column]):+5.1f})"
        cells.append(f"{100 * values[column]:5.1f}{delta}")
    print(f"{label:<48}" + "".join(f"{c:>16}" for c in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-style", type=int, default=8, help="prompts per other style (van gogh gets twice)")
    parser.add_argument("--seeds", type=int, default=2, help="generator seeds per prompt")
    parser.add_argument("--steps", type=int, default=25, help="denoising steps")
    parser.add_argument("--window", nargs="+", help="LoCoEdit window (default: the best of a sweep)")
    parser.add_argument("--tiny-templates", action="store_true", help=f"both recipes use {TINY_TEMPLATES}")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = interp.load("tiny")
    scenes, seeds = evaluation_set(args.per_style), tuple(range(args.seeds))
    text_layers = len(model.sites("text-self-attn"))
    print(f"{len(scenes)} prompts x {len(seeds)} seeds, {args.steps} steps; {text_layers} text layers, "
          f"{len(model.sites('cross-attn'))} cross-attention layers")

    one, two = ["van gogh"], list(REMOVED)
    templates = {"templates": TINY_TEMPLATES} if args.tiny_templates else {}
    print(f"templates: {TINY_TEMPLATES if args.tiny_templates else 'recipe defaults (the papers)'}")
    if args.window:
        window = args.window
    else:
        print("LoCoEdit 'van gogh' -> 'painting', window sweep (m = 2), van gogh prompts:")
        window = best_window(model, one, scenes, seeds, args.steps, templates)
    label = window_label(model, window)
    conditions: list[tuple[str, Edit | None]] = [("unedited", None)]
    for concepts in (one, two):
        name = " + ".join(concepts)
        conditions += [
            (f"DiffQuickFix {name}, text layer {i}", diffquickfix.edit(model, concepts, "painting", i, **templates))
            for i in range(text_layers)
        ]
        conditions += [
            (f"LoCoEdit {name}, {label}", locoedit.edit(model, concepts, "painting", layers=window, **templates)),
            (f"LoCoEdit {name}, all cross-attn", locoedit.edit(model, concepts, "painting", layers="all", **templates)),
        ]

    print(f"\naccuracy / hit rate in % (change vs unedited); {len(seeds)} seeds")
    print(f"{'':<48}" + "".join(f"{c:>16}" for c in COLUMNS))
    before = None
    for label, edit in conditions:
        values = metrics(judged(model, edit, scenes, seeds, args.steps))
        print_row(label, values, before)
        before = before or values
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
