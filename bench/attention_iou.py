"""Cross-attention maps on the bundled tiny model, judged against the objects it draws (issue 15).

Prints, with 95% intervals and n:
  segmentation - how well the chroma segmentation that stands in for the true mask on generated
                 images finds the object on renders, whose masks are known (per style);
  one object   - IoU of the object word's DAAM heatmap (all layers, heads and steps; Otsu
                 threshold, declared before measuring; mean and DAAM's tau = 0.4 beside it) with the
                 object's mask, over generated images the judge reads right; the color and style
                 words' and the end-of-text token's maps; the controls (another image's mask, the
                 mean map as a fixed prior); the peak-inside rate; the same rows for the EOS map;
                 per layer, the map's IoU and its complement's; and by stage of denoising (the maps
                 summed over steps 0-4, 5-14, 15-24 only);
  two copies   - the same on "two red circles" scenes, and whether the map covers at least half of
                 each copy;
  pairs        - "a red circle by a blue square" (two different objects, each found by its color):
                 each object word's map against its own object and the other.

Run: ``python -m bench.attention_iou [--scenes 48] [--seeds 2] [--pairs 48] [--model tiny-grounded]
[--weights DIR]``: the shipped UNet ('tiny') or the grounded one, from the shipped weights or from a
folder a training run wrote (``python -m models.tiny.train --stages grounded_unet --pairs 8
--grounding 0.1 --out DIR``, DIR a copy of the shipped weights). Not a test (about 4 minutes).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import interp
from interp import stats
from interventions.attention_eval import (
    MapCase, generate_cases, generate_pair_cases, iou, map_pairs, map_scenes, score_cases, score_pairs, segmentation_iou,
)
from interventions.attention_maps import binarize
from models import BUNDLED
from models.tiny import ROOT, load_pipeline


STAGES = (range(0, 5), range(5, 15), range(15, 25))  # early, middle and late steps of the 25


def per_layer(cases: list[MapCase], rule: str, role: str) -> list[str]:
    """Per layer: IoU of `role`'s map with the mask, and of the map's complement (a layer whose
    object queries look elsewhere draws the object in negative)."""
    kept = [c for c in cases if c.right and c.mask.any()]
    lines = []
    for layer in kept[0].layer_maps[role]:
        found = [binarize(c.heatmap(role, [layer]), rule).numpy() for c in kept]
        direct = stats.interval(np.array([iou(f, c.mask) for f, c in zip(found, kept)]))
        inverse = stats.interval(np.array([iou(~f, c.mask) for f, c in zip(found, kept)]))
        lines.append(f"  {layer:22s} IoU {direct}   complement {inverse}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=48, help="scenes per count")
    parser.add_argument("--seeds", type=int, default=2, help="generator seeds per scene")
    parser.add_argument("--pairs", type=int, default=48, help="two-object pairs")
    parser.add_argument("--model", default="tiny", choices=BUNDLED, help="the shipped UNet or the grounded one")
    parser.add_argument("--weights", type=Path, default=ROOT, help="the tiny weights folder (default: the shipped one)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = interp.load(load_pipeline(root=args.weights, grounded=args.model == "tiny-grounded"))

    print("segmentation of renders vs their true masks (IoU, 100 renders per style):")
    for style, value in segmentation_iou().items():
        print(f"  {style:9s} {value}")

    for count in (1, 2):
        start = time.perf_counter()
        cases = generate_cases(model, map_scenes(count, args.scenes), seeds=range(args.seeds))
        print(f"\n{'one object' if count == 1 else 'two copies of one object'}: {args.scenes} scenes x {args.seeds} seeds, "
              f"25 steps, guidance 7.5 ({time.perf_counter() - start:.0f} s)")
        for rule in ("otsu", "mean", 0.4):
            print(f" object word, threshold {rule}{' (primary)' if rule == 'otsu' else ''}:")
            print("\n".join(f"  {line}" for line in score_cases(cases, rule).lines()))
        print(" end-of-text token, threshold otsu:")
        print("\n".join(f"  {line}" for line in score_cases(cases, "otsu", role="eos").lines()[-6:]))
        for role in ("object", "eos"):
            print(f" per layer, {role} (otsu):")
            print("\n".join(per_layer(cases, "otsu", role)))
        if count == 1:
            print(" by stage of denoising (otsu; the same images, maps summed over these steps only):")
            for stage in STAGES:
                staged = generate_cases(model, map_scenes(count, args.scenes), seeds=range(args.seeds), map_steps=stage)
                lines = [line for line in score_cases(staged, "otsu").lines()
                         if line.startswith(("IoU(object map", "IoU(eos map"))]
                print(f"  steps {stage[0]}-{stage[-1]}: " + "; ".join(lines))

    start = time.perf_counter()
    pairs = generate_pair_cases(model, map_pairs(args.pairs), seeds=range(args.seeds))
    print(f"\npairs of different objects: {args.pairs} pairs x {args.seeds} seeds ({time.perf_counter() - start:.0f} s)")
    for rule in ("otsu", "mean", 0.4):
        print(f" threshold {rule}{' (primary)' if rule == 'otsu' else ''}:")
        print("\n".join(f"  {line}" for line in score_pairs(pairs, rule).lines()))


if __name__ == "__main__":
    main()
