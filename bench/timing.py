"""Shared timing helpers for the benchmarks: medians after a warm-up, interleaved variants."""

from __future__ import annotations

import os
import statistics
import time
from typing import Callable


def timed(fn: Callable[[], object], repeats: int = 5) -> float:
    """Median wall time of `fn` in seconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def timed_interleaved(variants: dict[str, Callable[[], object]], repeats: int = 3,
                      warm_up: bool = True) -> dict[str, float]:
    """Median time of each variant, the variants taking turns (in reverse order every other round, so
    none always follows the same one) so background load hits them alike (`warm_up=False` when the
    caller has already run each once, e.g. to compare their outputs)."""
    for fn in variants.values() if warm_up else ():
        fn()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(repeats):
        for name, fn in list(variants.items())[:: -1 if round_ % 2 else 1]:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def load_note() -> str:
    """The 1-minute load average, so numbers can be read against other work on the machine."""
    return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
