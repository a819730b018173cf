"""Benchmark: causal tracing of N sites, one generation per site vs one batched graph.

  separate - for each site, a graph of [clean, corrupted + restore(site)]: the clean generation is
             repeated every time, as the papers' scripts do;
  batched  - one graph of the clean run and N restored runs, executed by the runner in chunks;
  hooks    - the same batch of N + 1 rows in one `pipe(...)` call with hand-written torch hooks: the
             prompt encoded once clean and once corrupted, the empty prompt once, each restore a
             forward hook copying the clean rows (what a researcher writes without this library).
Targets: batched at least 3x faster than separate on this CPU; batched within 1.05x of hooks with
one chunk (issue 19). Run: ``python -m bench.batched_trace [--model tiny]``.
"""

from __future__ import annotations

import argparse
from typing import Callable

import torch

from bench.timing import load_note, timed_interleaved
from interp.cli import _load
from interp.graph import Graph, Noise, Restore, Run
from interp.model import Model
from interp.runner import run
from tests.reference_hooks import hand_written_trace

PROMPT, SUBJECT = "a red circle in the style of van gogh", "van gogh"


def trace_variants(model: Model, sites: list[str], steps: int, prompt: str = PROMPT, subject: str = SUBJECT,
                   size: int | None = None, hand_written: bool = False,
                   **run_kwargs) -> dict[str, Callable[[], dict[str, torch.Tensor]]]:
    """The ways of the module docstring to trace `sites` (`hooks` with `hand_written`: SD-style
    pipelines, one text encoder); each returns the restored images by site. `run_kwargs`
    (chunk_size, memory_budget_gb) go to the batched call of `interp.runner.run`."""
    noise = Noise("text-embed", tokens=model.locate(prompt, subject).positions, std=3.0)
    clean = Run("clean", prompt, steps=steps, height=size, width=size)

    def traced(site: str) -> Run:
        return Run(site, prompt, steps=steps, height=size, width=size, ops=[noise, Restore(site, source="clean")])

    def separate() -> dict[str, torch.Tensor]:
        return {s: run(model, Graph([clean, traced(s)]), progress=False).images[s] for s in sites}

    def batched() -> dict[str, torch.Tensor]:
        return run(model, Graph([clean, *map(traced, sites)]), progress=False, **run_kwargs).images

    def hooks() -> dict[str, torch.Tensor]:
        return dict(zip(sites, hand_written_trace(model, sites, clean, noise)[1:]))

    return {"separate": separate, "batched": batched, **({"hooks": hooks} if hand_written else {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="'tiny', 'dummy', a folder or a hub id")
    parser.add_argument("--sites", type=int, default=16)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--chunk-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()

    model = _load(args.model)
    sites = [s.name for s in model.sites() if not s.is_text][: args.sites]
    variants = trace_variants(model, sites, args.steps, chunk_size=args.chunk_size, hand_written=True)
    images = {name: way() for name, way in variants.items()}
    worst = {name: max((images[name][s] - images["batched"][s]).abs().max().item() for s in sites)
             for name in ("separate", "hooks")}
    times = timed_interleaved(variants, repeats=args.repeats, warm_up=False)
    speedup, overhead = times["separate"] / times["batched"], times["batched"] / times["hooks"]
    print(f"{model}: {len(sites)} sites, {args.steps} steps, chunk size {args.chunk_size}; {load_note()}")
    print("  " + ", ".join(f"{name} {t:.2f} s" for name, t in times.items())
          + f"; max |diff| against batched: separate {worst['separate']:.2e}, hooks {worst['hooks']:.2e}")
    print(f"speed-up over separate {speedup:.2f}x (target >= 3x: {'met' if speedup >= 3 else 'MISSED'})")
    print(f"batched / hooks on the same batch {overhead:.2f}x (target <= 1.05x: {'met' if overhead <= 1.05 else 'MISSED'})")


if __name__ == "__main__":
    main()
