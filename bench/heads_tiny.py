"""Head-level causal tracing and LoCoGen inside one layer of the bundled tiny model: ``python -m bench.heads_tiny``.

In the layer LoCoGen finds for van gogh (`--layer`, `cross-attn-4`), one cell per head:
- trace: the judge's P(style named) restored per head (and for the whole layer), IE with its 95%
  interval over units (prompt x seed x noise sample);
- LoCoGen: each head's key/value slices fed "a painting" (window of one head), the judge's
  P(style = van gogh) with its interval, against no swap and the whole layer swapped.
Prompts are van gogh scenes of the tiny world (seen combinations). Not a test.
"""

from __future__ import annotations

import argparse

import torch

import interp
from interp.sites import head_names
from interventions.causal_trace import trace_unet
from interventions.locogen import localize
from models.tiny import Scene, caption

SCENES = [Scene("circle", "red", "van gogh", 1), Scene("square", "blue", "van gogh", 1),
          Scene("star", "yellow", "van gogh", 1), Scene("heart", "green", "van gogh", 2)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layer", default="cross-attn-4")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--samples", type=int, default=2, help="noise samples per (prompt, seed) in the trace")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = interp.load("tiny")
    layer = model.site(args.layer)
    heads = head_names(layer)
    prompts = [caption(scene) for scene in SCENES]
    seeds = tuple(range(args.seeds))
    trace = trace_unet(model, [(p, "van gogh") for p in prompts], sites=[*heads, layer.name], seeds=seeds,
                       samples=args.samples, progress=False)
    print(f"head-level causal trace in {layer.name} ({layer.heads} heads of {layer.head_dim})")
    print(trace.table())
    found = localize(model, prompts, "a painting", window=1, layers=heads, seeds=seeds, progress=False)
    print(f"\nhead-level LoCoGen in {layer.name}")
    print(found.table())


if __name__ == "__main__":
    main()
