"""The intervention graph: runs (batch rows) and the operations declared on them.

A graph is a declaration, not code. Each run is one generated image (prompt, seed, guidance,
steps); each operation names a site, the token positions (text sites), the denoising steps and the
classifier-free-guidance branch it touches. `Graph.validate(model)` checks everything against the
model before anything runs, so a bad graph fails fast and never half-runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union

import torch

from interp.errors import GraphValidationError, MissingRunError
from interp.model import Model
from interp.sites import Site

Branch = Literal["both", "cond", "uncond"]
BRANCHES = ("both", "cond", "uncond")
PRK_STEPS = 3  # PNDM's Runge-Kutta warm-up steps (four denoiser calls each)


def runge_kutta(scheduler: object) -> bool:
    """Whether `scheduler` is PNDM with Runge-Kutta warm-up steps (`skip_prk_steps=False`)."""
    from diffusers import PNDMScheduler

    return isinstance(scheduler, PNDMScheduler) and not scheduler.config.skip_prk_steps


def _finite(where: str, what: str, value: object) -> None:
    """Raise unless `value` (a number or tensor) holds only finite numbers."""
    if not bool(torch.isfinite(torch.as_tensor(value, dtype=torch.float64)).all()):
        raise GraphValidationError(f"{where}: {what} must be finite, got {value!r}")


@dataclass(frozen=True)
class Op:
    """Common fields: where (`site`), which positions, which steps, which CFG branch.

    `tokens` are positions in the padded token sequence (text sites only; None = all).
    `steps` are denoising-step indices (denoiser sites only; None = every step).
    """

    site: str
    tokens: tuple[int, ...] | None = None
    steps: tuple[int, ...] | None = None
    branch: Branch = "both"

    def __post_init__(self) -> None:
        for name in ("tokens", "steps"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(int(v) for v in value))
                if not getattr(self, name):
                    raise GraphValidationError(
                        f"{type(self).__name__} at {self.site}: {name}=() selects nothing; pass None for all {name}"
                    )
        if self.branch not in BRANCHES:
            raise GraphValidationError(f"branch {self.branch!r} is not one of {BRANCHES}")


@dataclass(frozen=True)
class Noise(Op):
    """Add Gaussian noise of standard deviation `std` (drawn once from `seed`) at `tokens`."""

    std: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.std >= 0:
            raise GraphValidationError(f"Noise std must be >= 0, got {self.std}")


@dataclass(frozen=True)
class Restore(Op):
    """Copy the activation of run `source` (same site, positions, steps, branch) into this run."""

    source: str = "clean"


@dataclass(frozen=True)
class Set(Op):
    """Overwrite the activation with `value` (broadcast to the selected slice)."""

    value: torch.Tensor | float = 0.0


@dataclass(frozen=True)
class Add(Op):
    """Add `value` to the activation (steering)."""

    value: torch.Tensor | float = 0.0


@dataclass(frozen=True)
class Zero(Op):
    """Ablate: set the activation to zero."""


@dataclass(frozen=True)
class Scale(Op):
    """Multiply the activation by `factor`."""

    factor: float = 1.0


@dataclass(frozen=True)
class Capture(Op):
    """Keep the activation (after this run's other operations on the site), on the CPU."""

    key: str = ""


@dataclass(frozen=True)
class Swap:
    """These cross-attention layers see `prompt`'s text embedding instead of the run's own.

    Their key/value projections read what they would read for `prompt` (`Adapter.kv_input`: IF and
    PixArt project it first; SD3's joint blocks get their text stream averaged over a short
    generation). LoCoGen's operation: the conditional branch by default, as in the paper.
    """

    sites: tuple[str, ...]
    prompt: str
    steps: tuple[int, ...] | None = None
    branch: Branch = "cond"

    def __post_init__(self) -> None:
        object.__setattr__(self, "sites", (self.sites,) if isinstance(self.sites, str) else tuple(self.sites))
        if self.steps is not None:
            object.__setattr__(self, "steps", tuple(int(s) for s in self.steps))
        if self.branch not in BRANCHES:
            raise GraphValidationError(f"branch {self.branch!r} is not one of {BRANCHES}")


Operation = Union[Noise, Restore, Set, Add, Zero, Scale, Capture, Swap]


@dataclass
class Run:
    """One image: prompt, seed (initial noise as `pipe(generator=Generator().manual_seed(seed))`),
    guidance scale, number of denoising steps, size (the model's default when None), operations."""

    name: str
    prompt: str
    seed: int = 0
    guidance_scale: float = 7.5
    steps: int = 25
    height: int | None = None
    width: int | None = None
    ops: list[Operation] = field(default_factory=list)

    @property
    def cfg(self) -> bool:
        """Whether the pipeline runs classifier-free guidance (two UNet rows per image)."""
        return self.guidance_scale > 1.0

    def batch_key(self) -> tuple:
        """Runs with equal keys can share one pipeline call."""
        return (self.guidance_scale, self.steps, self.height, self.width)

    def sources(self) -> set[str]:
        return {op.source for op in self.ops if isinstance(op, Restore)}


class Graph:
    """An ordered set of runs. Build it with `add`, check it with `validate`, run it with `run`."""

    def __init__(self, runs: list[Run] | None = None):
        self.runs: dict[str, Run] = {}
        for run in runs or []:
            self.add(run)

    def add(self, run: Run | None = None, /, **fields) -> Run:
        """Add a run (or build one from keyword fields); names must be unique."""
        run = run if run is not None else Run(**fields)
        if run.name in self.runs:
            raise GraphValidationError(f"a run named {run.name!r} already exists; run names must be unique")
        self.runs[run.name] = run
        return run

    def __len__(self) -> int:
        return len(self.runs)

    def closure(self, name: str) -> list[str]:
        """`name` and every run it restores from, transitively, sources first.

        Runs may restore from each other at different sites (the aligned protocol's shadow row
        takes the target's latent, the target takes the shadow's layer output): a restore reads its
        source's activation as it stands at that point of the forward pass, so they share a batch.
        """
        order: list[str] = []

        def visit(current: str, path: tuple[str, ...]) -> None:
            if current in path or current in order:
                return
            for source in sorted(self.runs[current].sources()):
                visit(source, (*path, current))
            order.append(current)

        visit(name, ())
        return order

    def check_cycles(self, model: Model) -> None:
        """Raise if runs restore one site from each other in a cycle (which value wins would depend
        on the order of the operations, not on the graph)."""
        edges: dict[str, dict[str, set[str]]] = {}  # site -> target run -> its sources at that site
        for run in self.runs.values():
            for op in run.ops:
                if isinstance(op, Restore):
                    edges.setdefault(model.site(op.site).name, {}).setdefault(run.name, set()).add(op.source)
        for site, sources in edges.items():
            for start in sources:
                stack, seen = [(start, (start,))], set()
                while stack:
                    current, path = stack.pop()
                    for source in sources.get(current, ()):
                        if source == start:
                            raise GraphValidationError(
                                f"restore cycle at {site}: {' -> '.join((*path, start))}; a run cannot take "
                                "a site from a run that takes the same site from it"
                            )
                        if source not in seen:
                            seen.add(source)
                            stack.append((source, (*path, source)))

    def validate(self, model: Model) -> None:
        """Raise a specific `InterpError` for the first problem found; return None if runnable."""
        if not self.runs:
            raise GraphValidationError("the graph has no runs; add one with graph.add(name=..., prompt=...)")
        for run in self.runs.values():
            for source in run.sources():
                if source not in self.runs:
                    raise MissingRunError(
                        f"run {run.name!r} restores from {source!r}, which is not in the graph; "
                        f"runs are {list(self.runs)}"
                    )
                if self.runs[source].batch_key() != run.batch_key():
                    raise GraphValidationError(
                        f"run {run.name!r} restores from {source!r} but they differ in guidance, steps "
                        "or size; a source must share its target's denoising loop"
                    )
            _validate_run(model, run)
            for op in run.ops:
                _validate_op(model, run, op)
        self.check_cycles(model)


def _validate_run(model: Model, run: Run) -> None:
    """Raise for a run's own fields: steps, guidance, size."""
    least = PRK_STEPS + 1 if runge_kutta(model.pipe.scheduler) else 1
    if run.steps < least:
        raise GraphValidationError(f"run {run.name!r} has steps={run.steps}; {type(model.pipe.scheduler).__name__} "
                                   f"needs at least {least}")
    _finite(f"run {run.name!r}", "guidance_scale", run.guidance_scale)
    for name in ("height", "width"):
        size = getattr(run, name)
        if size is not None and size <= 0:
            raise GraphValidationError(f"run {run.name!r} has {name}={size}; pass a positive size or None "
                                       "for the model's default")


def _validate_values(where: str, op: Operation) -> None:
    """Raise for non-finite values, factors or noise of an operation."""
    for name in ("value", "factor", "std"):
        if hasattr(op, name):
            _finite(where, name, getattr(op, name))


def _validate_op(model: Model, run: Run, op: Operation) -> None:
    where = f"run {run.name!r}, {type(op).__name__}"
    sites = [model.site(name) for name in (op.sites if isinstance(op, Swap) else (op.site,))]
    if op.steps is not None:
        bad = [s for s in op.steps if not 0 <= s < run.steps]
        if bad:
            raise GraphValidationError(f"{where}: steps {bad} outside 0 .. {run.steps - 1}")
    if op.branch != "both" and not run.cfg:
        raise GraphValidationError(
            f"{where}: branch={op.branch!r} needs classifier-free guidance (guidance_scale > 1)"
        )
    if isinstance(op, Swap):
        for site in sites:
            if not site.kv_paths:
                raise GraphValidationError(
                    f"{where}: {site.name} is not a cross-attention site; swap one of "
                    f"{[s.name for s in model.sites('cross-attn')][:6]}..."
                )
        return
    site = sites[0]
    where = f"{where} at {site.name}"
    _validate_values(where, op)
    _validate_positions(model, where, site, op)
    if site.is_text and op.steps is not None:
        raise GraphValidationError(
            f"{where}: {site.name} runs once per prompt, not per denoising step; drop steps="
        )
    if site.is_text and op.branch == "uncond":
        raise GraphValidationError(
            f"{where}: text-encoder operations act on the prompt's encoding; the unconditional "
            "branch encodes the empty prompt. Use branch='both' or 'cond'."
        )


def _validate_positions(model: Model, where: str, site: Site, op: Op) -> None:
    if op.tokens is None:
        return
    if not site.is_text:
        raise GraphValidationError(f"{where}: token positions apply to text-encoder sites, not {site.name}")
    model.check_positions(op.tokens, site)
