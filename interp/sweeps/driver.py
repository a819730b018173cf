"""Run a sweep's units on an engine: skip finished ones, record each result as it arrives, retry a
failed unit once, show units done and ETA."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm

from interp.sweeps.engines import Engine
from interp.sweeps.store import SweepStore
from interp.sweeps.task import Task, UnitSpec

RETRIES = 1  # a failed unit is tried once more; then its error stays on file


@dataclass
class SweepStats:
    """What one call of `run_units` did: units planned, skipped as finished, computed, failed; wall
    time, and the time workers spent inside the recipe (the model)."""

    planned: int
    skipped: int
    computed: int
    failed: int
    retried: int
    wall_seconds: float
    compute_seconds: float


def run_units(task: Task, units: Sequence[UnitSpec], store: SweepStore, engine: Engine,
              progress: bool = True) -> SweepStats:
    """Compute every unit of `units` not on file in `store`, with `engine`; write each result as it
    arrives (a kill loses only units in flight). Duplicate keys in `units` are computed once."""
    start = time.perf_counter()
    finished = store.finished_keys()
    todo = list({u.key: u for u in units if u.key not in finished}.values())
    planned, skipped = len({u.key for u in units}), len({u.key for u in units}) - len(todo)
    computed = failed = retried = 0
    compute_seconds = 0.0
    bar = tqdm(total=planned, initial=skipped, desc="units", unit="unit", disable=not progress)
    try:
        if todo:
            with engine.pool(task) as pool:
                for attempt in range(1 + RETRIES):
                    again = []
                    for outcome in pool.map(todo):
                        compute_seconds += outcome.seconds
                        if outcome.ok or attempt == RETRIES:
                            store.write(outcome, attempt + 1)
                            computed += outcome.ok
                            failed += not outcome.ok
                            bar.update(1)
                        else:
                            again.append(outcome.unit)
                    todo, retried = again, retried + len(again)
                    if not todo:
                        break
    finally:
        bar.close()
    return SweepStats(planned, skipped, computed, failed, retried, time.perf_counter() - start, compute_seconds)
