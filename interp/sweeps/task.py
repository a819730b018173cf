"""What an engine schedules: a picklable `Task` that builds a `Worker` once per process (loading the
model), and `UnitSpec`s that the worker turns into `Outcome`s. Engines only move these around."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class UnitSpec:
    """One unit of a sweep: its key, its place in the sweep's order, and the recipe's inputs
    (prompt, subject, seed, sample and whatever else the recipe planned, in `extra`)."""

    key: str
    index: int
    prompt: str
    subject: str
    seed: int
    sample: int
    attribute: str = ""
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass
class Outcome:
    """A unit's result (`payload`, JSON-able columns) or its `error`; `seconds` spent in the
    recipe's compute (the model), `worker` that ran it."""

    unit: UnitSpec
    payload: dict[str, Any] | None
    error: str | None
    seconds: float
    worker: str

    @property
    def ok(self) -> bool:
        return self.error is None


class Worker(Protocol):
    """Computes units; built once per process by `Task.setup` (holding the loaded model)."""

    def compute(self, unit: UnitSpec) -> dict[str, Any]: ...


class Task(Protocol):
    """A recipe with its arguments, picklable so a Ray actor can rebuild its worker."""

    threads: int

    def setup(self) -> Worker: ...


def attempt(worker: Worker, unit: UnitSpec, name: str) -> Outcome:
    """Run one unit, turning an exception into a recorded error (the sweep goes on)."""
    start = time.perf_counter()
    try:
        payload = worker.compute(unit)
        return Outcome(unit, payload, None, time.perf_counter() - start, name)
    except Exception as error:  # noqa: BLE001 - any recipe failure is recorded, the sweep finishes the rest
        last = traceback.extract_tb(error.__traceback__)[-1]
        where = f" (at {last.filename.rsplit('/', 1)[-1]}:{last.lineno})"
        return Outcome(unit, None, f"{type(error).__name__}: {error}{where}", time.perf_counter() - start, name)
