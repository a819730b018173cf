"""Benchmark: causal tracing at native resolution (SD1.5 width, 512 px), three ways, in one run.

  batched - one graph of the clean run and N restored runs, executed by `interp.runner.run` with
            its defaults (the chunk plan it chose is printed: on CPU, chunks of 1 GB of activations
            reading the clean run from the cache);
  papers  - for each site, a graph of [clean, corrupted + restore(site)]: the clean generation is
            repeated every time, as the papers' scripts do;
  cached  - the clean run once, capturing every site at every step, then for each site one
            corrupted run that sets the site to the captured clean activation: a per-site loop
            reusing a cached clean run, the honest anchor where a UNet row costs the same in any
            batch size (CPU at 512 px).
`--retain-heap` runs every way with `interp.run(..., retain_heap=True)` (`interp.heap`). After a
warm-up run, the three are timed in order and then in reverse; each way's time is the mean of its
two, so neither the first run's cold start nor drift in the machine's load favours one way.
The pipeline is `bench.overhead`'s: SD1.5's UNet and CLIP ViT-L/14 from their configs, random
weights, a small VAE (decoding is not what is measured). In rows of the UNet, batched computes
N + 1 runs (the runner keeps the clean run's slices across chunks within its default cache; N +
chunks without it), papers 2N, cached N + 1: so on CPU batched can beat papers by up to 2N / (N + 1)
and match cached. Targets (issue 19): batched >= 1.8x papers and >= 1.0x cached at 16 sites.

Run from the repository root: ``python -m bench.native [--sites 16] [--steps 2] [--size 512]``;
each 512 px UNet row costs tens of seconds of one core, so use few sites and steps on a busy machine.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch

import interp
from bench.overhead import sd15_width_pipeline
from bench.timing import load_note
from interp.budget import CPU_CHUNK_GB, default_cache_gb, estimate
from interp.graph import Capture, Graph, Noise, Restore, Run, Set
from interp.chunks import recomputed
from interp.runner import GraphResult, plan, run

PROMPT, SUBJECT = "a photo of a cat in the style of van gogh", "van gogh"
BUDGET_GB = 4.0  # the runner's default memory_budget_gb


def spread(items: list[str], n: int) -> list[str]:
    """`n` items evenly spaced along `items` (every resolution of the UNet gets sites)."""
    if n >= len(items):
        return items
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)] if n > 1 else items[:1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--retain-heap", action="store_true", help="every way with run(..., retain_heap=True)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    model = interp.load(sd15_width_pipeline())
    size, steps = args.size, args.steps
    every = [s.name for s in model.sites() if not s.is_text and s.kind != "latent"]
    sites = spread(every, args.sites)
    noise = Noise("text-embed", tokens=model.locate(PROMPT, SUBJECT).positions, std=3.0)
    clean = Run("clean", PROMPT, steps=steps, height=size, width=size)

    def traced(site: str, ops: list | None = None) -> Run:
        return Run(site, PROMPT, steps=steps, height=size, width=size,
                   ops=[noise, *(ops if ops is not None else [Restore(site, source="clean")])])

    graph = Graph([clean, *map(traced, sites)])
    def planned(g: Graph) -> list:  # the runner's own plan at its defaults
        return plan(model, g, None, BUDGET_GB, default_cache_gb())

    chunks = planned(graph)
    e = estimate(model, size, size, clean.cfg)
    print(f"SD1.5-width UNet, {size} px, {steps} steps, {len(sites)} sites, CFG; torch {torch.get_num_threads()} "
          f"thread(s); retain_heap={args.retain_heap}; {load_note()}")
    print(f"runner's plan at its default {BUDGET_GB} GB budget (on CPU chunks of {CPU_CHUNK_GB} GB where the cache "
          f"keeps the clean run): estimate {e.per_run / 2**20:.0f} MiB a run -> {len(chunks)} chunk(s) of "
          f"{[len(c) for c in chunks]} runs ({sum(map(len, chunks))} runs computed for {len(graph.runs)}; cache "
          f"{default_cache_gb():.1f} GB, {recomputed(chunks)} source runs recomputed)")
    for n in sorted({16, 70} - {len(sites)}):
        other = planned(Graph([clean, *map(traced, spread(every, n))]))
        print(f"  (at {n} sites it would be {len(other)} chunk(s), {sum(map(len, other))} runs for {n + 1})")

    def go(g: Graph) -> GraphResult:  # every run of every way, with the same options
        return run(model, g, progress=False, retain_heap=args.retain_heap)

    def batched() -> dict[str, torch.Tensor]:
        return go(graph).images

    def papers() -> dict[str, torch.Tensor]:
        return {s: go(Graph([clean, traced(s)])).images[s] for s in sites}

    def cached() -> dict[str, torch.Tensor]:
        source = go(Graph([Run("clean", PROMPT, steps=steps, height=size, width=size,
                               ops=[Capture(s) for s in sites])]))
        captured, calls = source.captures["clean"], source.calls["clean"]
        images = {}
        for s in sites:
            sets = [Set(s, value=captured[s][i], steps=(step,)) for i, (step, _) in enumerate(calls[s])]
            images[s] = go(Graph([traced(s, sets)])).images[s]
        return images

    ways = {"batched": batched, "papers": papers, "cached": cached}
    go(Graph([Run("warm-up", PROMPT, steps=1, height=size, width=size)]))  # kernels, pages
    taken, images = defaultdict(list), {}
    for name in [*ways, *reversed(ways)]:  # each way early and late once: the mean cancels drift in the load
        start = time.perf_counter()
        images[name] = ways[name]()
        taken[name].append(time.perf_counter() - start)
        print(f"  {name:8} {taken[name][-1]:8.1f} s   ({load_note()})", flush=True)
    times = {name: sum(t) / len(t) for name, t in taken.items()}
    print("  means: " + ", ".join(f"{name} {t:.1f} s" for name, t in times.items()))
    for name in ("papers", "cached"):
        worst = max((images[name][s] - images["batched"][s]).abs().max().item() for s in sites)
        print(f"  {name} vs batched: max |image difference| {worst:.1e}")
    to_papers, to_cached = times["papers"] / times["batched"], times["cached"] / times["batched"]
    print(f"batched vs papers: {to_papers:.2f}x (target >= 1.8x: {'met' if to_papers >= 1.8 else 'MISSED'}; "
          f"rows computed {2 * len(sites)} vs {sum(map(len, chunks))})")
    print(f"batched vs cached clean loop: {to_cached:.2f}x (target >= 1.0x: {'met' if to_cached >= 1.0 else 'MISSED'}; "
          f"rows computed {len(sites) + 1} vs {sum(map(len, chunks))})")


if __name__ == "__main__":
    main()
