"""Split a graph's runs into chunks (one batched pipeline call each) that carry or cache their
restore sources.

A restore reads its source's activation in the same forward pass, so a chunk normally holds the
source (the clean run) beside its targets, and a source needed by many chunks is recomputed in each.
With a cache budget, a source computed in an earlier chunk is not recomputed: that chunk also keeps
the slices later chunks restore from (on the host, per denoiser call), and they read them back. This
needs the source to depend on no other run (`Graph.closure(source) == [source]`, as a clean run);
runs that restore from each other (the aligned protocol's shadow rows) always share a chunk.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable

from interp.graph import Graph, Run

# bytes each cached slice takes, by key (a key names one source slice that several targets can share)
Needs = Callable[[str, str], dict[Hashable, float]]  # (target run, source run) -> {key: bytes}


class Chunk(list):
    """The names of the runs one pipeline call batches, in order; `cached`: sources computed in an
    earlier chunk whose activations this chunk's restores read from the cache."""

    def __init__(self, runs: list[str], cached: set[str] | None = None):
        super().__init__(runs)
        self.cached = set(cached or ())


def plan_chunks(graph: Graph, limit: Callable[[Run], int], needs: Needs | None = None,
                cache_bytes: float = 0.0) -> list[Chunk]:
    """Batches of runs with equal denoising loops, each holding its targets' sources or reading
    them from the cache.

    `limit(run)` is the most runs per batch for the group of runs like `run`. `needs(target,
    source)` prices the slices `target` restores from `source`; while their sum stays within
    `cache_bytes`, a source already computed in an earlier chunk is read from the cache instead of
    being recomputed.
    """
    groups: dict[tuple, list[str]] = defaultdict(list)
    for run_ in graph.runs.values():
        groups[run_.batch_key()].append(run_.name)
    chunks: list[Chunk] = []
    planned: dict[Hashable, float] = {}  # cached slices, over the whole plan

    def cacheable(source: str, readers: list[str], earlier: set[str]) -> bool:
        if needs is None or source not in earlier or graph.closure(source) != [source]:
            return False
        wanted = {k: v for r in readers for k, v in needs(r, source).items() if k not in planned}
        if sum(planned.values()) + sum(wanted.values()) > cache_bytes:
            return False
        planned.update(wanted)
        return True

    for names in groups.values():
        chunk_size = limit(graph.runs[names[0]])
        current, earlier, done = Chunk([]), set(), set()

        def reduce(need: list[str], name: str) -> list[str]:
            """`need` without the sources this chunk can read from the cache (recorded in `current`);
            a source the chunk already reads from the cache is computed in it after all when the
            new readers' slices do not fit."""
            readers = [n for n in need if graph.runs[n].sources()]
            kept = []
            for n in need:
                if n != name and cacheable(n, readers, earlier):
                    current.cached.add(n)
                else:
                    kept.append(n)
            for source in sorted(current.cached):
                if not cacheable(source, readers, earlier):
                    current.cached.discard(source)
                    kept.insert(0, source)
            return kept

        for name in names:
            if name in done:
                continue
            closure = graph.closure(name)
            need = [n for n in closure if n not in current and n not in current.cached]
            if current and len(current) + len(need) > chunk_size:
                chunks.append(current)
                earlier.update(current)
                current = Chunk([])
                need = closure
            need = reduce(need, name)
            current += need
            done.update(need)
        if current:
            chunks.append(current)
    return chunks


def recomputed(chunks: list[Chunk]) -> int:
    """How many source runs the plan computes again in a later chunk (0 when every one is cached)."""
    seen: set[str] = set()
    again = 0
    for chunk in chunks:
        again += sum(1 for n in chunk if n in seen)
        seen.update(chunk)
    return again
