"""The intervention graph: runs (batch rows) and the operations declared on them.

A graph is a declaration, not code. Each run is one generated image (prompt, seed, guidance,
steps); each operation names a site, the token positions (text sites), the denoising steps and the
classifier-free-guidance branch it touches. `Graph.validate(model)` checks everything against the
model before anything runs, so a bad graph fails fast and never half-runs.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Literal, Union

import torch

from interp.errors import GraphValidationError, MissingRunError
from interp.model import Model
from interp.sites import NEURON, Event, Site, forward_events, meta_twin

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
    `heads` (keyword only; attention sites) act on those heads' slices of the attention output
    before the out projection, as the sites `<site>.head-H` do one by one. `units` (keyword only;
    `<feed-forward site>.neuron` sites) pick hidden units; None = all.
    """

    site: str
    tokens: tuple[int, ...] | None = None
    steps: tuple[int, ...] | None = None
    branch: Branch = "both"
    heads: tuple[int, ...] | None = field(default=None, kw_only=True)
    units: tuple[int, ...] | None = field(default=None, kw_only=True)

    def __post_init__(self) -> None:
        for name in ("tokens", "steps", "heads", "units"):
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
    """Overwrite the activation with `value`, broadcast to the selected slice.

    The slice is (rows, *per-row shape): rows are 2 for a denoiser op on both guidance branches
    (uncond, cond), else 1; the per-row shape is the site's activation for one image (channels x
    height x width for resnets, image tokens x features for attention; tokens x features, or the
    selected tokens, for text sites), its last dim narrowed to the selected heads or units
    (`graph.selected_shape`). A value broadcasts by torch's rules (a feature vector of shape
    (features,) for token sites; (channels, 1, 1) for resnets); `validate` checks it, and that it is
    finite, before the first step.
    """

    value: torch.Tensor | float = 0.0


@dataclass(frozen=True)
class Add(Op):
    """Add `value` to the activation (steering); `value` broadcasts as `Set`'s does."""

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
        """Whether the pipeline runs classifier-free guidance (two UNet rows per image) by the usual rule;
        the runner asks the model's `Adapter.cfg` (FLUX.1 embeds its guidance and has no such rows)."""
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


def run_size(model: Model, run: Run) -> tuple[int, int]:
    """The run's (height, width) in pixels, the model's default where unset."""
    default_h, default_w = model.default_size()
    return run.height or default_h, run.width or default_w


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
    if op.branch != "both" and not model.adapter.cfg(run.guidance_scale):
        raise GraphValidationError(
            f"{where}: branch={op.branch!r} needs classifier-free guidance (guidance_scale > 1)"
            + (f"; {model.adapter.family} embeds its guidance and runs one row per image: use branch='both'"
               if model.adapter.embedded_guidance else "")
        )
    if isinstance(op, Swap):
        for site in sites:
            if not site.kv_paths:
                raise GraphValidationError(
                    f"{where}: {site.name} is not a cross-attention site or head; swap one of "
                    f"{[s.name for s in model.sites('cross-attn')][:6]}... or one of their heads "
                    "(`<site>.head-H` swaps the head's key and value slices)"
                )
        return
    site = sites[0]
    where = f"{where} at {site.name}"
    _validate_values(where, op)
    _validate_positions(model, where, site, op)
    _validate_columns(where, site, op)
    if isinstance(op, (Set, Add)):
        _validate_shape(model, run, where, site, op)
    if site.is_text and op.steps is not None:
        raise GraphValidationError(
            f"{where}: {site.name} runs once per prompt, not per denoising step; drop steps="
        )
    if site.is_text and op.branch == "uncond":
        raise GraphValidationError(
            f"{where}: text-encoder operations act on the prompt's encoding; the unconditional "
            "branch encodes the empty prompt. Use branch='both' or 'cond'."
        )


def _validate_columns(where: str, site: Site, op: Op) -> None:
    """Raise for `heads=` on a site without heads (or already one head) and `units=` off a neuron site,
    or indices out of range."""
    if op.heads is not None:
        if not site.heads or site.parent:
            raise GraphValidationError(
                f"{where}: heads= applies to attention sites (e.g. {site.parent or 'mid-cross-attn'}); "
                f"{site.name} is {'already one head' if site.parent else f'a {site.kind} site without heads'}"
            )
        _in_range(where, "heads", op.heads, site.heads)
    if op.units is not None:
        if site.kind != NEURON:
            raise GraphValidationError(f"{where}: units= applies to neuron sites (`<feed-forward site>.neuron`), "
                                       f"not {site.name}")
        _in_range(where, "units", op.units, site.units)


def _in_range(where: str, name: str, indices: tuple[int, ...], count: int) -> None:
    bad = [i for i in indices if not 0 <= i < count]
    if bad:
        raise GraphValidationError(f"{where}: {name} {bad} out of range; this site has {name} 0 .. {count - 1}")


def selected_shape(model: Model, run: Run, site: Site, op: Op) -> tuple[int | None, ...]:
    """Per-row shape of the slice `op` selects at `site` in `run` (None where a size is not fixed
    before running: the text-token axis of denoiser sites that read the prompt; () where the meta pass
    saw no tensor there, e.g. an input passed by keyword).

    Text sites: (padded tokens, or the selected ones, ...). Denoiser sites: from meta-device passes
    at the run's latent size (a size that also changes at twice the latent size is the run's image
    size; one that does not is fixed, except a sequence axis, which then counts text tokens). The
    last dim is narrowed to the selected heads (or head) and units.
    """
    if site.is_text:
        shape: list[int | None] = list(model.event(site.component, site.path).shape(site.io, site.element))
        if shape:
            shape[0] = len(op.tokens) if op.tokens is not None else model.adapter.token_length(
                model.pipe, model.tokenizer_index(site))
    else:
        height, width = run_size(model, run)
        at_size = _denoiser_events(model, height, width, required=True)
        doubled = _denoiser_events(model, 2 * height, 2 * width, required=False)
        event = at_size.get(site.path)
        shape = list(event.shape(site.io, site.element)) if event is not None else []
        if doubled is not None and site.path in doubled and len(shape) == 2:  # (sequence, features): image or text?
            other = doubled[site.path].shape(site.io, site.element)
            shape[0] = shape[0] if other[0] != shape[0] else None
    if shape:
        if site.columns is not None:
            shape[-1] = site.head_dim
        if op.heads is not None:
            shape[-1] = len(op.heads) * site.head_dim
        if op.units is not None:
            shape[-1] = len(op.units)
    return tuple(shape)


_EVENTS: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple[int, int], dict | None]] = weakref.WeakKeyDictionary()


def _denoiser_events(model: Model, height: int, width: int, required: bool) -> dict[str, Event] | None:
    """The denoiser's forward events (with shapes) of one meta pass at this image size; cached. None
    where the denoiser does not accept the size and it is not `required` (twice a DiT's largest
    position embedding)."""
    cache = _EVENTS.setdefault(model.denoiser, {})
    if (height, width) not in cache:
        latent_hw = tuple(model.adapter.latent_shape(model.pipe, height, width)[1:])
        twin = meta_twin(model.denoiser)
        try:
            cache[(height, width)] = forward_events(twin, model.adapter.meta_forward(model.adapter.denoiser, twin,
                                                                                     latent_hw))
        except Exception:  # noqa: BLE001  (any failure of an optional size only skips a check)
            if required:
                raise
            cache[(height, width)] = None
    return cache[(height, width)]


def _validate_shape(model: Model, run: Run, where: str, site: Site, op: Set | Add) -> None:
    """Raise unless `op.value` broadcasts to the selected slice: (rows, *selected_shape), where rows
    is 2 for a denoiser op on both guidance branches, else 1. A value may leave out leading dims."""
    value = torch.as_tensor(op.value)
    if value.ndim == 0:
        return
    rows = 2 if model.adapter.cfg(run.guidance_scale) and op.branch == "both" and not site.is_text else 1
    per_row = selected_shape(model, run, site, op)
    if not per_row:  # nothing known to check against
        return
    target = (rows, *per_row)
    fits = value.ndim <= len(target) and all(
        v == 1 or t is None or v == t for v, t in zip(reversed(value.shape), reversed(target)))
    if not fits:
        shown = "(" + ", ".join("any" if t is None else str(t) for t in target) + ")"
        raise GraphValidationError(
            f"{where}: value of shape {tuple(value.shape)} does not broadcast to the selected slice {shown} "
            f"(rows, then the site's per-row shape{_size_note(model, run, site)}); pass a value broadcastable "
            f"to it, e.g. of shape {tuple(t or 1 for t in target[1:])}"
        )


def _size_note(model: Model, run: Run, site: Site) -> str:
    """' at HxW px' for denoiser sites, whose shape depends on the run's image size."""
    if site.is_text:
        return ""
    height, width = run_size(model, run)
    return f" at {height}x{width} px"


def _validate_positions(model: Model, where: str, site: Site, op: Op) -> None:
    if op.tokens is None:
        return
    if not site.is_text:
        raise GraphValidationError(f"{where}: token positions apply to text-encoder sites, not {site.name}")
    model.check_positions(op.tokens, site)
