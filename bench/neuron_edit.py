"""Neuron-level LoCoEdit on the bundled tiny model (van gogh -> painting): ``python -m bench.neuron_edit``.

The layer-level edit (LoCoEdit of W_K, W_V at `--layer`, the tiny world's key templates,
preservation and positions) against `locoedit.neuron_edit` keeping the update on the top
`--fraction` of output rows (or heads) by attribution. Each edit is judged by
`interventions.edit_eval.evaluate_edit` (no controls) on the same held-out prompts and seeds.
Printed: each group's rates with Wilson 95% intervals and n, the share of the layer-level edit's
efficacy kept, (unedited - neuron) / (unedited - layer), with a 95% parametric-bootstrap interval
over the three binomial counts (independent draws, so wider than a paired interval), the fraction
of W_K and W_V entries changed (and of the whole attention layer's weights), and each neighbour
measure's change from unedited in points. `--random` adds the control: the same number of rows per
matrix drawn at random (seed 0) instead of by attribution; `--heads 1` edits named heads (e.g. the
head a head-level trace finds, `bench.heads_tiny`).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import interp
from interventions import locoedit
from interp.editing import Edit
from interventions.edit_eval import EDITED, UNEDITED, evaluate_edit
from models.tiny import edit_defaults

BOOTSTRAP = 10_000


def kept_interval(unedited: tuple[int, int], layer: tuple[int, int], neuron: tuple[int, int],
                  seed: int = 0) -> tuple[float, float, float]:
    """(kept, low, high): (u - n) / (u - l) of the hit rates, with a 95% parametric bootstrap."""
    rng = np.random.default_rng(seed)
    rates = [h / n for h, n in (unedited, layer, neuron)]
    draws = [rng.binomial(n, r, BOOTSTRAP) / n for (_, n), r in zip((unedited, layer, neuron), rates)]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (draws[0] - draws[2]) / (draws[0] - draws[1])
    point = (rates[0] - rates[2]) / (rates[0] - rates[1])
    low, high = np.nanpercentile(ratio, [2.5, 97.5])
    return float(point), float(low), float(high)


def random_rows(model: interp.Model, layer: Edit, fraction: float, seed: int = 0) -> Edit:
    """The control: `layer`'s update kept on `fraction` of each matrix's rows drawn at random."""
    generator = torch.Generator().manual_seed(seed)
    weights, base, selected = {}, {}, {}
    for name, edited in layer.weights.items():
        original = model.denoiser.get_parameter(name).detach()
        rows = torch.randperm(len(original), generator=generator)[: round(fraction * len(original))].sort().values
        weights[name], base[name], selected[name] = original.clone(), original, rows.tolist()
        weights[name][rows] = edited[rows]
    return Edit(weights, {**layer.metadata, "rows": {"random": fraction, "selected": selected}}, base=base)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", default="up-0-cross-attn-1", help="the layer-level edit's layer (docs/edits)")
    parser.add_argument("--fraction", type=float, nargs="*", default=[0.25, 0.125])
    parser.add_argument("--by", default="row", choices=locoedit.ROW_GROUPS)
    parser.add_argument("--images", type=int, default=128, help="images per group")
    parser.add_argument("--random", action="store_true", help="also the random-rows control at each fraction")
    parser.add_argument("--heads", type=int, nargs="*", default=[], help="also: edit these heads (from a trace)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = interp.load("tiny")
    options = edit_defaults.options("locoedit", ["van gogh"], "painting")
    layer = locoedit.edit(model, "van gogh", "painting", [args.layer], **options)
    entries = sum(w.numel() for w in layer.weights.values())
    attention = model.denoiser.get_submodule(model.site(args.layer).path)
    layer_entries = sum(p.numel() for n, p in attention.named_parameters() if n.endswith("weight"))
    started = time.time()
    base = evaluate_edit(model, layer, controls=False, images_per_group=args.images)
    print(f"layer-level edit at {args.layer} ({time.time() - started:.0f} s)\n{base.table()}\n")
    variants = [(f"top {f:.3f} of rows by {args.by}", lambda f=f: locoedit.neuron_edit(
        model, "van gogh", "painting", [args.layer], fraction=f, by=args.by, **options)) for f in args.fraction]
    if args.heads:
        variants.append((f"heads {args.heads} (chosen by a trace)", lambda: locoedit.neuron_edit(
            model, "van gogh", "painting", [args.layer], heads=args.heads, **options)))
    if args.random:
        variants += [(f"control: {f:.3f} of rows at random", lambda f=f: random_rows(model, layer, f))
                     for f in args.fraction]
    for label, build in variants:
        part = build()
        changed = sum(int((w != model.denoiser.get_parameter(n).detach()).sum()) for n, w in part.weights.items())
        result = evaluate_edit(model, part, controls=False, images_per_group=args.images)
        print(f"neuron-level edit, {label}: {changed}/{entries} W_K,W_V entries "
              f"changed ({changed / entries:.1%}; {changed / layer_entries:.1%} of the attention layer's weights)")
        for row, neuron_row in zip(base.rows, result.rows):
            u, l, n = row.counts[UNEDITED], row.counts[EDITED], neuron_row.counts[EDITED]
            line = (f"  {row.group:<15}{row.measure:<18} unedited {row.interval(UNEDITED)}  "
                    f"layer {row.interval(EDITED)}  neuron {neuron_row.interval(EDITED)}")
            if row.group in ("efficacy", "generalization"):
                kept, low, high = kept_interval(u, l, n)
                line += f"  kept {kept:.3f} [{low:.3f}, {high:.3f}]"
            else:
                line += f"  change {100 * (n[0] / n[1] - u[0] / u[1]):+.1f} points"
            print(line)


if __name__ == "__main__":
    main()
