"""Benchmark: a batched causal trace through the runner against raw torch hooks on the same batch.

One batch of the clean run and N corrupted runs, each restoring one denoiser site from the clean run
at every step (both CFG branches), computed two ways in one pipeline call each:
  runner - the graph executed by `interp.runner.run` in one chunk (nnsight, distinct prompts encoded once);
  hooks  - `pipe(...)` on the same N + 1 prompts and seeds, with forward hooks adding the corruption
           to the text embedding and copying the clean rows into each target's rows.
The images must be bit-equal. Target (issue 19): runner / hooks <= 1.05 on the tiny model.
Run from the repository root: ``python -m bench.batched_hooks [--model tiny] [--sites 16] [--steps 25]``.
"""

from __future__ import annotations

import argparse

import torch

from bench.timing import load_note, timed_interleaved
from interp.cli import _load
from interp.graph import Graph, Noise, Restore, Run
from interp.model import Model
from interp.runner import run
from tests.reference_hooks import first_call, generate, hooks

PROMPT, SUBJECT = "a red circle in the style of van gogh", "van gogh"


def variants(model: Model, sites: list[str], steps: int) -> dict[str, object]:
    """The runner's and the hand-written hooks' version of the trace; each returns (N + 1) images."""
    span = model.locate(PROMPT, SUBJECT)
    noise_op = Noise("text-embed", tokens=span.positions, std=3.0, seed=7)
    graph = Graph([Run("clean", PROMPT, steps=steps)])
    for site in sites:
        graph.add(Run(site, PROMPT, steps=steps, ops=[noise_op, Restore(site, source="clean")]))
    n = len(graph.runs)
    width = model.text_encoders[0].config.hidden_size
    noise = torch.randn(len(span.positions), width, generator=torch.Generator().manual_seed(7)) * 3.0

    def runner() -> torch.Tensor:
        images = run(model, graph, chunk_size=n, progress=False).images
        return torch.stack([images[name] for name in graph.runs])

    def corrupt(out: torch.Tensor) -> None:
        out[1:, list(span.positions)] += noise

    def restore(row: int):
        def edit(out: torch.Tensor) -> None:  # [uncond rows..., cond rows...]; clean is row 0 of each half
            out[[row, n + row]] = out[[0, n]]
        return edit

    def by_hooks() -> torch.Tensor:
        edits = {"text-embed": first_call(corrupt), **{site: restore(i + 1) for i, site in enumerate(sites)}}
        with hooks(model, edits):
            return generate(model, [PROMPT] * n, [0] * n, steps)

    return {"runner": runner, "hooks": by_hooks}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="'tiny', 'dummy', a folder or a hub id")
    parser.add_argument("--sites", type=int, default=16)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model = _load(args.model)
    # whole-module outputs only: what a plain forward hook edits
    sites = [s.name for s in model.sites() if not s.is_text and s.io == "output" and s.columns is None
             and not s.tuple_output][: args.sites]
    fns = variants(model, sites, args.steps)
    ours, theirs = fns["runner"](), fns["hooks"]()
    assert torch.equal(ours, theirs), f"runner and hooks disagree: max |diff| {(ours - theirs).abs().max():.2e}"
    times = timed_interleaved(fns, repeats=args.repeats, warm_up=False)
    ratio = times["runner"] / times["hooks"]
    print(f"{model}: {len(sites)} sites + clean in one batch, {args.steps} steps; {load_note()}")
    print(f"  runner {times['runner']:.2f} s, hooks {times['hooks']:.2f} s (medians of {args.repeats}), images bit-equal")
    print(f"runner / hooks {ratio:.3f} (target <= 1.05: {'met' if ratio <= 1.05 else 'MISSED'})")


if __name__ == "__main__":
    main()
