"""Engines schedule units and collect outcomes; they never look inside a unit. `local` runs them in
this process, in order; `ray` (interp.sweeps.ray_engine) on one actor per device slot."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

import torch

from interp.sweeps.task import Outcome, Task, UnitSpec, attempt


class Pool(Protocol):
    """Workers ready to compute (models loaded)."""

    def map(self, units: Sequence[UnitSpec]) -> Iterator[Outcome]:
        """Each unit's outcome, in the order they finish."""
        ...


class Engine(Protocol):
    name: str
    workers: int

    def pool(self, task: Task) -> AbstractContextManager[Pool]:
        """Workers for `task`, each built once (`task.setup()`), released on exit."""
        ...


class _LocalPool:
    def __init__(self, task: Task):
        self.worker = task.setup()

    def map(self, units: Sequence[UnitSpec]) -> Iterator[Outcome]:
        for unit in units:
            yield attempt(self.worker, unit, f"local-{os.getpid()}")


class LocalEngine:
    """Units one after another in this process, with `task.threads` torch threads (restored after),
    so a unit computes exactly as it does on a Ray worker with that many threads."""

    name = "local"
    workers = 1

    @contextmanager
    def pool(self, task: Task) -> Iterator[Pool]:
        threads = torch.get_num_threads()
        torch.set_num_threads(task.threads)
        try:
            yield _LocalPool(task)
        finally:
            torch.set_num_threads(threads)


def make_engine(name: str, address: str | None = None, workers: int | None = None,
                gpus_per_actor: float | None = None) -> Engine:
    """The engine `name` ('local' or 'ray'); Ray options are refused for the local engine."""
    if name == "local":
        if address is not None or workers is not None or gpus_per_actor is not None:
            raise ValueError("--address, --workers and --gpus-per-actor are for --engine ray; drop them or pass "
                             "--engine ray")
        return LocalEngine()
    if name == "ray":
        from interp.sweeps.ray_engine import RayEngine

        return RayEngine(address, workers, gpus_per_actor)
    raise ValueError(f"unknown engine {name!r}; use local or ray")
