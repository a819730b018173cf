"""The Ray engine: one actor per device slot, each loading the model once; units go to whichever
actor is free (two queued per actor so none waits on the driver). A killed actor is replaced and
its units rescheduled: it loses only the unit it was computing. Ray is an optional extra
(`pip install -e '.[ray]'`)."""

from __future__ import annotations

import logging
import os
import socket
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from interp.errors import SweepEngineError
from interp.sweeps.task import Outcome, Task, UnitSpec, attempt

DEPTH = 2  # units queued per actor: one computing, one waiting
MAX_DEATHS = 3  # a unit whose worker dies this often is recorded as failed (it may be what kills them)


def _ray():
    try:
        import ray
    except ImportError:
        raise SweepEngineError("the ray engine needs Ray: pip install -e '.[ray]' (or use --engine local)") from None
    return ray


class SweepActor:
    """One worker process: sets its torch threads, builds the task's worker (loads the model) once."""

    def __init__(self, task: Task):
        import torch

        torch.set_num_threads(task.threads)
        self.worker = task.setup()
        self.name = f"ray-{socket.gethostname()}-{os.getpid()}"

    def ready(self) -> str:
        return self.name

    def compute(self, unit: UnitSpec) -> Outcome:
        return attempt(self.worker, unit, self.name)


class _RayPool:
    def __init__(self, ray, task: Task, workers: int, gpus: float):
        self.ray, self.task = ray, task
        self.actor_class = ray.remote(num_cpus=1, num_gpus=gpus, max_restarts=0)(SweepActor)
        self.actors = [self.actor_class.remote(task) for _ in range(workers)]
        try:
            ray.get([actor.ready.remote() for actor in self.actors])
        except ray.exceptions.RayError as error:
            self.close()
            cause = getattr(error, "cause", None) or error
            raise SweepEngineError(f"a Ray worker could not set up the sweep: {type(cause).__name__}: {cause}") from None

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)

    def map(self, units: Sequence[UnitSpec]) -> Iterator[Outcome]:
        ray, lost = self.ray, (self.ray.exceptions.RayActorError, self.ray.exceptions.ActorUnavailableError)
        pending, inflight = deque(units), {}  # ref -> (actor slot, actor, unit)
        deaths: Counter[str] = Counter()

        def top_up(slot: int) -> None:
            busy = sum(1 for s, _, _ in inflight.values() if s == slot)
            for _ in range(DEPTH - busy):
                if pending:
                    unit = pending.popleft()
                    inflight[self.actors[slot].compute.remote(unit)] = (slot, self.actors[slot], unit)

        for slot in range(len(self.actors)):
            top_up(slot)
        while inflight:
            [ref], _ = ray.wait(list(inflight), num_returns=1)
            slot, actor, unit = inflight.pop(ref)
            try:
                outcome = ray.get(ref)
            except lost as error:
                if self.actors[slot] is actor:  # the first of its lost units: replace the actor
                    self.actors[slot] = self.actor_class.remote(self.task)
                deaths[unit.key] += 1
                if deaths[unit.key] >= MAX_DEATHS:
                    yield Outcome(unit, None, f"its worker died {MAX_DEATHS} times ({type(error).__name__})", 0.0, "")
                else:
                    pending.appendleft(unit)
                top_up(slot)
                continue
            top_up(slot)
            yield outcome


class RayEngine:
    """Units on Ray actors: a new local Ray instance when `address` is None, else the cluster at
    `address` ('auto' for the one `ray start` runs here, or host:port). `workers`: actors (default
    one per GPU slot where the cluster has GPUs, else one per CPU); `gpus_per_actor`: GPUs each
    actor requests (default 1 where there are GPUs, else 0)."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, gpus_per_actor: float | None = None):
        if workers is not None and workers < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}")
        if gpus_per_actor is not None and gpus_per_actor < 0:
            raise ValueError(f"--gpus-per-actor must be >= 0, got {gpus_per_actor}")
        self.address, self.requested, self.gpus_per_actor = address, workers, gpus_per_actor
        self.workers = workers or 0  # known once connected

    def _connect(self, ray, task: Task) -> bool:
        """Start or join Ray; True if this call started it (and so must shut it down)."""
        if ray.is_initialized():
            return False
        env = {"OMP_NUM_THREADS": str(task.threads), "MKL_NUM_THREADS": str(task.threads), "TOKENIZERS_PARALLELISM": "false"}
        options = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
                       runtime_env={"env_vars": env})
        try:
            if self.address is None:  # "local": never join someone else's instance by accident
                # Ray starts workers at niceness 15; here they are the sweep's compute, as the local
                # engine's process is, so they run at the driver's priority (others keep theirs)
                os.environ.setdefault("RAY_worker_niceness", "0")
                ray.init(address="local", num_cpus=self.requested or os.cpu_count(), **options)
            else:
                ray.init(address=self.address, **options)
        except (ConnectionError, RuntimeError, ValueError) as error:
            where = self.address or "a new local instance"
            raise SweepEngineError(f"cannot start Ray on {where}: {error}; check --address (host:port of the "
                                   f"head, or 'auto' after `ray start --head` here)") from None
        return True

    @contextmanager
    def pool(self, task: Task) -> Iterator[_RayPool]:
        ray = _ray()
        started = self._connect(ray, task)
        pool = None
        try:
            resources = ray.cluster_resources()
            gpus = self.gpus_per_actor if self.gpus_per_actor is not None else (1.0 if resources.get("GPU") else 0.0)
            slots = int(resources.get("GPU", 0) // gpus) if gpus else int(resources.get("CPU", 1))
            self.workers = self.requested or max(1, slots)
            if not gpus and self.workers > resources.get("CPU", 0):
                raise SweepEngineError(f"--workers {self.workers} needs {self.workers} CPUs; the cluster has "
                                       f"{resources.get('CPU', 0):g}. Pass fewer workers, or add nodes")
            if gpus and str(getattr(task, "device", "cuda")).startswith("cpu"):
                raise SweepEngineError(f"each actor gets {gpus:g} GPU but the model runs on the CPU; pass --device cuda, "
                                       f"or --gpus-per-actor 0 to run on CPUs")
            if gpus and resources.get("GPU", 0) < gpus:
                raise SweepEngineError(f"the cluster has {resources.get('GPU', 0):g} GPUs, fewer than --gpus-per-actor "
                                       f"{gpus:g}; lower it, or pass --gpus-per-actor 0 to run on CPUs")
            pool = _RayPool(ray, task, self.workers, gpus)
            yield pool
        finally:
            if pool is not None:
                pool.close()
            if started:
                ray.shutdown()
