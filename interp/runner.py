"""Execute an intervention graph with nnsight: one batched pipeline call per chunk of runs.

Rows of a chunk are its runs (targets together with their restore sources). The text encoder runs
once on the chunk's distinct prompts (`interp.text_rows`: runs with the same prompt and text-encoder
operations share a row) and the empty prompt once; the denoiser sees the classifier-free-guidance layout
[uncond rows..., cond rows...] at every step. A restore copies the source row's activation into the
target row inside the same forward pass, so one denoising loop serves many restored sites.

nnsight wraps only the hooked modules (`_outermost` roots them, `_Lazy` leaves their other submodules
unwrapped), so the rest of the pipeline runs untouched. Every read and write happens in a traced
forward in module order: text-encoder sites first, then, at each denoising step, the denoiser's hook
points sorted by their place in a forward pass. Head and neuron sites (and ops with `heads=` /
`units=`) act on columns of the last dim of their hook point (an out projection's input, a key/value
projection's output): the selected rows are read, the columns changed, and the rows written back. A
swapped head's key/value slices are the projections of the target prompt's text, computed before the
trace.
"""

from __future__ import annotations

import math
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import nnsight
import torch
from nnsight import NNsight
from nnsight.intervention.envoy import Envoy
from PIL import Image
from tqdm.auto import tqdm

from interp.budget import CPU_CHUNK_GB, default_cache_gb, on_cpu, runs_per_chunk
from interp.chunks import Chunk, plan_chunks, recomputed
from interp.errors import GraphValidationError, UnsupportedSchedulerError
from interp.heap import retained_heap
from interp.text_rows import first_runs, text_rows
from interp.graph import (
    PRK_STEPS, Add, Capture, Graph, Noise, Operation, Restore, Run, Scale, Set, Swap, Zero, run_size, runge_kutta,
    selected_shape,
)
from interp.model import Model
from interp.sites import HEAD, Site

# Within one module event: local edits, then restores (which overwrite), then captures (which see all).
_PRIORITY = {Noise: 0, Set: 0, Add: 0, Zero: 0, Scale: 0, Restore: 1, Capture: 2}


@dataclass
class GraphResult:
    """Images (3 x H x W floats in [0, 1]) and captured activations, keyed by run name.

    `captures[run][key]` stacks one tensor per traced call: (calls, rows, ...) for denoiser sites
    (rows = the branches the capture asked for), (1, 1, tokens, ...) for text sites.
    `calls[run][key]` names each denoiser capture's (step, call within the step): schedulers such as
    Heun, KDPM2 or PNDM with Runge-Kutta steps call the denoiser several times per step.
    """

    images: dict[str, torch.Tensor] = field(default_factory=dict)
    captures: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    calls: dict[str, dict[str, list[tuple[int, int]]]] = field(default_factory=dict)

    def pil(self, run: str) -> Image.Image:
        array = (self.images[run].clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8)
        return Image.fromarray(array.cpu().numpy())

    def stack(self, runs: list[str]) -> torch.Tensor:
        return torch.stack([self.images[r] for r in runs])


@dataclass
class _Action:
    """One operation of one run on one hook point, with the batch rows it touches."""

    op: Operation
    run: str
    rows: list[int]
    source_rows: list[int] = field(default_factory=list)
    element: int = 0  # which element of a tuple output (`Site.element`)
    context: torch.Tensor | None = None  # Swap: the replacement text embedding (or a head's key/value slice)
    columns: slice | torch.Tensor | None = None  # heads or units: the slice of the last dim acted on
    cached: tuple | None = None  # a restore whose source ran in an earlier chunk: its slice's cache key
    store: tuple | None = None  # a source's slice that later chunks restore: kept under this key


@dataclass
class _HookPoint:
    """A module's input or output in one component, and the actions on it, in forward order."""

    component: str
    path: str
    io: str  # "input" or "output"
    tuple_output: bool
    order: tuple[int, int]
    actions: list[_Action] = field(default_factory=list)

    def active(self, step: int) -> list[_Action]:
        return [a for a in self.actions if a.op.steps is None or step in a.op.steps]


def call_steps(scheduler: Any, steps: int) -> list[int]:
    """The denoising step of each denoiser call a `steps`-step generation makes, in call order.

    Most schedulers call the denoiser once per step. Second-order ones (Heun, KDPM2, KDPM2
    ancestral, flow-matching Heun: those with `state_in_first_order`) call it twice per step and
    once in the last; PNDM with Runge-Kutta steps (`skip_prk_steps=False`) four times in each of
    its first three steps.
    """
    if hasattr(scheduler, "state_in_first_order"):
        return [call // 2 for call in range(2 * steps - 1)]
    if runge_kutta(scheduler):
        return [call // 4 for call in range(4 * PRK_STEPS)] + list(range(PRK_STEPS, steps))
    return list(range(steps))


def run(
    model: Model,
    graph: Graph,
    chunk_size: int | None = None,
    memory_budget_gb: float = 4.0,
    progress: bool = True,
    cache_budget_gb: float | None = None,
    retain_heap: bool = False,
) -> GraphResult:
    """Validate and execute `graph`, batching runs that share a denoising loop.

    At most `chunk_size` runs (sources included) share one pipeline call; by default as many as
    fit `memory_budget_gb` by `interp.budget`'s estimate. A restore source (the clean run) needed by
    several chunks is computed once: the slices later chunks restore are kept on the host, up to
    `cache_budget_gb` (default `interp.budget.default_cache_gb()`; 0 recomputes the source in every
    chunk, and the progress line says how many runs were recomputed). `retain_heap` (CPU, glibc)
    keeps freed memory in the heap during the run (`interp.heap`): 512 px rows about a quarter
    faster, at about twice the peak memory the budget's estimate plans for.
    """
    if chunk_size is not None and chunk_size < 1:
        raise GraphValidationError(f"chunk_size must be >= 1, got {chunk_size}")
    if not memory_budget_gb > 0:  # also NaN
        raise GraphValidationError(f"memory_budget_gb must be > 0, got {memory_budget_gb}; it sizes the batches")
    if cache_budget_gb is not None and not cache_budget_gb >= 0:  # also NaN
        raise GraphValidationError(f"cache_budget_gb must be >= 0, got {cache_budget_gb}; it bounds the host memory "
                                   f"kept for restore sources (0: recompute them in every chunk)")
    graph.validate(model)

    cache_gb = default_cache_gb() if cache_budget_gb is None else cache_budget_gb
    chunks = plan(model, graph, chunk_size, memory_budget_gb, cache_gb)
    stores = _stores(graph, chunks)
    again = recomputed(chunks)
    desc = f"chunks ({again} source runs recomputed: raise cache_budget_gb)" if again else "chunks"
    result, cache = GraphResult(), {}
    with retained_heap(retain_heap and on_cpu(model.denoiser)):  # no page fault per op, at a memory cost
        for chunk, kept in zip(tqdm(chunks, desc=desc, disable=not progress or len(chunks) < 2), stores):
            images, captures, calls = _run_chunk(model, graph, chunk, progress, cache, kept)
            for name, image in zip(chunk, images):
                result.images.setdefault(name, image)
            for name, keyed in captures.items():
                result.captures.setdefault(name, keyed)
                result.calls.setdefault(name, calls[name])
    return result


def plan(model: Model, graph: Graph, chunk_size: int | None, memory_budget_gb: float, cache_gb: float) -> list[Chunk]:
    """`run`'s chunks: at most `chunk_size` runs each, or as many as fit `memory_budget_gb`; on CPU,
    where a UNet row costs more in a large batch, chunks of `CPU_CHUNK_GB` when that recomputes no
    more source runs than the full budget's plan (SD1.5 width, 512 px, 8 sites, one step: 6.5-7.2 s
    a row in one chunk of 9 runs, 5.2-5.5 s in chunks of 3 with the clean run cached)."""

    def chunks_within(budget_gb: float) -> list[Chunk]:
        def limit(first: Run) -> int:
            if chunk_size is not None:
                return chunk_size
            height, width = run_size(model, first)
            return runs_per_chunk(model, height, width, model.adapter.cfg(first.guidance_scale), budget_gb * 2**30)

        return plan_chunks(graph, limit, lambda target, source: cache_needs(model, graph, target, source),
                           cache_gb * 2**30)

    full = chunks_within(memory_budget_gb)
    if chunk_size is not None or memory_budget_gb <= CPU_CHUNK_GB or not on_cpu(model.denoiser):
        return full
    lean = chunks_within(CPU_CHUNK_GB)
    return lean if recomputed(lean) <= recomputed(full) else full


def cache_key(op: Restore, site: Site) -> tuple:
    """What a restore reads from its source: the source, hook point, tokens, columns and branch.
    Targets that read the same slice share one cached copy."""
    columns = _columns(site, op)
    if isinstance(columns, torch.Tensor):
        columns = tuple(columns.tolist())
    elif isinstance(columns, slice):
        columns = (columns.start, columns.stop, "slice")
    return (op.source, site.component, site.path, site.io, site.element, op.tokens, columns, op.branch)


def _op_site(model: Model, op: Restore) -> Site:
    """The site an op acts on: its own, or with `heads=` the first head's (same hook point)."""
    site = model.site(op.site)
    return model.site(f"{site.name}.head-{op.heads[0]}") if op.heads is not None else site


def cache_needs(model: Model, graph: Graph, target: str, source: str) -> dict[tuple, float]:
    """Bytes of each slice `target` restores from `source`, over the denoiser calls it restores at
    (text sites: once); infinite where the slice's shape is not known before running."""
    run_ = graph.runs[target]
    cfg = model.adapter.cfg(run_.guidance_scale)
    calls = call_steps(model.pipe.scheduler, run_.steps)
    size = torch.finfo(model.denoiser.dtype).bits // 8
    needs = {}
    for op in run_.ops:
        if not isinstance(op, Restore) or op.source != source:
            continue
        site = _op_site(model, op)
        shape = selected_shape(model, run_, site, op)
        if not shape:
            return {cache_key(op, site): float("inf")}
        length = model.adapter.token_length(model.pipe, 0)
        per_row = math.prod(length if d is None else d for d in shape)
        rows = len(_rows(0, 1, cfg, op.branch, site.is_text))
        times = 1 if site.is_text else sum(1 for step in calls if op.steps is None or step in op.steps)
        needs[cache_key(op, site)] = float(per_row * rows * times * size)
    return needs


def _stores(graph: Graph, chunks: list[Chunk]) -> list[list[Restore]]:
    """Per chunk, the restores of later chunks whose source it computes: it keeps their slices."""
    first: dict[str, int] = {}
    for i, chunk in enumerate(chunks):
        for name in chunk:
            first.setdefault(name, i)
    stores: list[list[Restore]] = [[] for _ in chunks]
    for chunk in chunks:
        for name in chunk:
            for op in graph.runs[name].ops:
                if isinstance(op, Restore) and op.source in chunk.cached:
                    stores[first[op.source]].append(op)
    return stores


def _rows(run_index: int, n: int, cfg: bool, branch: str, text: bool) -> list[int]:
    """Batch rows of one run: text sites have one row per run; the denoiser [uncond..., cond...]."""
    if text or not cfg:
        return [run_index]
    return {"both": [run_index, n + run_index], "uncond": [run_index], "cond": [n + run_index]}[branch]


def _hook_points(
    model: Model, graph: Graph, chunk: list[str], contexts: dict[tuple[str, str], torch.Tensor],
    stores: list[Restore], shared: list[int],
) -> list[_HookPoint]:
    """Every (module, input/output) the chunk's operations touch, sorted in forward order.

    `contexts[(prompt, site name)]` is what a swapped site's key/value projections read; `stores`
    are later chunks' restores whose source this chunk computes (their slices are kept); `shared`
    is each run's text-encoder row (`interp.text_rows`): only the first
    run of a shared row changes it, every run captures from it."""
    ranks = {name: i for i, name in enumerate(model.components)}
    points: dict[tuple[str, str, str], _HookPoint] = {}
    n, cfg = len(chunk), model.adapter.cfg(graph.runs[chunk[0]].guidance_scale)
    acting = set(first_runs(shared))

    def rows(index: int, op: Operation, site: Site) -> list[int]:
        return [shared[index]] if site.is_text else _rows(index, n, cfg, op.branch, text=False)

    def point(component: str, path: str, io: str, tuple_output: bool) -> _HookPoint:
        key = (component, path, io)
        if key not in points:
            event = model.event(component, path)
            points[key] = _HookPoint(component, path, io, tuple_output,
                                     (ranks[component], event.pre if io == "input" else event.post))
        return points[key]

    for index, name in enumerate(chunk):
        for op in graph.runs[name].ops:
            if isinstance(op, Swap):
                for site in (model.site(s) for s in op.sites):
                    swapped = rows(index, op, site)
                    context = contexts[(op.prompt, swapped_layer(model, site).name)]
                    for kv in site.kv_paths:
                        if site.kind == HEAD:  # the head's slice of the key/value projection's output
                            columns = slice(*site.columns)
                            with torch.no_grad():
                                projected = model.components[site.component].get_submodule(kv)(context)
                            point(site.component, kv, "output", False).actions.append(
                                _Action(op, name, swapped, context=projected[..., columns], columns=columns))
                        else:
                            point(site.component, kv, "input", False).actions.append(_Action(op, name, swapped,
                                                                                             context=context))
                continue
            site = _op_site(model, op)  # with heads=, the heads' slices of the out projection's input
            if site.is_text and index not in acting and not isinstance(op, Capture):
                continue  # the row's first run does it
            action = _Action(op, name, rows(index, op, site), element=site.element, columns=_columns(site, op))
            if isinstance(op, Restore) and op.source in chunk:
                action.source_rows = rows(chunk.index(op.source), op, site)
            elif isinstance(op, Restore):
                action.cached = cache_key(op, site)
            point(site.component, site.path, site.io, site.tuple_output).actions.append(action)
    kept: set[tuple] = set()
    for op in stores:
        site = _op_site(model, op)
        if cache_key(op, site) not in kept:
            kept.add(cache_key(op, site))
            action = _Action(op, op.source, rows(chunk.index(op.source), op, site), element=site.element,
                             columns=_columns(site, op), store=cache_key(op, site))
            point(site.component, site.path, site.io, site.tuple_output).actions.append(action)
    for hook in points.values():
        hook.actions.sort(key=lambda a: _PRIORITY.get(type(a.op), 0))
    return sorted(points.values(), key=lambda h: h.order)


def swapped_layer(model: Model, site: Site) -> Site:
    """The cross-attention layer whose text a swap of `site` (a layer or one of its heads) replaces."""
    return model.site(site.parent) if site.kind == HEAD else site


def _columns(site: Site, op: Operation) -> slice | torch.Tensor | None:
    """The last-dim slice an op acts on: its `heads` (of `site`'s layer), a head site's own columns,
    or its `units`; None for the whole activation."""
    if op.heads is not None:
        return torch.cat([torch.arange(h * site.head_dim, (h + 1) * site.head_dim) for h in op.heads])
    if site.columns is not None:
        return slice(*site.columns)
    return None if op.units is None else torch.tensor(op.units)


def _index(rows: list[int], tokens: tuple[int, ...] | None) -> Any:
    """Index selecting (rows x tokens) of an activation, or whole rows."""
    if tokens is None:
        return rows
    return torch.tensor(rows)[:, None], torch.tensor(tokens)[None, :]


def _noise(op: Noise, like: torch.Tensor) -> torch.Tensor:
    """The op's fixed noise for one row's selected slice (the same for every row and step)."""
    generator = torch.Generator("cpu").manual_seed(op.seed)
    noise = torch.randn(like.shape[1:], generator=generator, dtype=torch.float32)
    return (op.std * noise).to(like.device, like.dtype)


def _read(out: torch.Tensor, rows: list[int], tokens: tuple[int, ...] | None, columns: Any) -> torch.Tensor:
    """A copy of the selected rows (x tokens), narrowed to `columns` of the last dim."""
    selected = out[_index(rows, tokens)]
    return selected if columns is None else selected[..., columns]


def _write(out: torch.Tensor, rows: list[int], tokens: tuple[int, ...] | None, columns: Any, value: Any) -> None:
    """Write `value` (broadcast) into the selected rows (x tokens) and `columns` of `out`, in place."""
    index = _index(rows, tokens)
    if columns is None:
        out[index] = value
        return
    selected = out[index]
    selected[..., columns] = value
    out[index] = selected


def _kept(selected: torch.Tensor) -> torch.Tensor:
    """A read slice as kept on the host: `_read` already copied it out of the activation (advanced
    indexing), so only a column view is compacted, and nothing is copied twice."""
    return selected.detach().to("cpu").contiguous()


def _apply(action: _Action, out: torch.Tensor, captures: _Captures) -> None:
    """Carry out one row-level operation on a module's input or output, in place."""
    op, rows, columns = action.op, action.rows, action.columns
    tokens = None if isinstance(op, Swap) else op.tokens

    def read() -> torch.Tensor:
        return _read(out, rows, tokens, columns)

    def value(raw: Any) -> torch.Tensor:
        return torch.as_tensor(raw, dtype=out.dtype, device=out.device)

    if action.context is not None:  # Swap: the layer (or head) reads another prompt's text
        _write(out, rows, None, columns, value(action.context))
    elif action.store is not None:  # a source's slice, kept for a later chunk's restores
        captures.cache.setdefault(action.store, {})[captures.where] = _kept(read())
    elif action.cached is not None:  # a restore from a source computed in an earlier chunk
        _write(out, rows, tokens, columns, value(captures.cache[action.cached][captures.where]))
    elif isinstance(op, Restore):
        _write(out, rows, tokens, columns, _read(out, action.source_rows, tokens, columns))
    elif isinstance(op, Noise):
        selected = read()
        _write(out, rows, tokens, columns, selected + _noise(op, selected))
    elif isinstance(op, Set):
        _write(out, rows, tokens, columns, value(op.value))
    elif isinstance(op, Add):
        _write(out, rows, tokens, columns, read() + value(op.value))
    elif isinstance(op, Zero):
        _write(out, rows, tokens, columns, 0)
    elif isinstance(op, Scale):
        _write(out, rows, tokens, columns, read() * op.factor)
    elif isinstance(op, Capture):
        captures.keep(action.run, op.key or op.site, _kept(read()))


def _visit(envoy: Any, hook: _HookPoint, actions: list[_Action], captures: _Captures) -> None:
    """Read the hook point once and apply its actions (inputs are replaced, outputs edited in place)."""
    if hook.io == "input":
        value = envoy.input.clone()
        for action in actions:
            _apply(action, value, captures)
        envoy.input = value
        return
    output = envoy.output
    for action in actions:
        _apply(action, output[action.element] if hook.tuple_output else output, captures)


def _envoy(root: Any, where: tuple[int, str]) -> Any:
    """The envoy of a hook point's module: `where` is (index among the root's points, path below it)."""
    index, path = where
    envoy = root.points[index]
    for part in path.split(".") if path else ():
        envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
    return envoy


def _outermost(hooks: list[_HookPoint]) -> tuple[list[tuple[str, str]], dict[tuple[str, str], tuple[int, str]]]:
    """The hooked modules that no other hooked module contains, as (component, path), and where each
    hook point's module lies below them: (index, path below it)."""
    keys = list(dict.fromkeys((h.component, h.path) for h in hooks))

    def inside(key: tuple[str, str], outer: tuple[str, str]) -> bool:
        return key[0] == outer[0] and (not outer[1] or key[1] == outer[1] or key[1].startswith(outer[1] + "."))

    tops = [k for k in keys if not any(o != k and inside(k, o) for o in keys)]
    where = {}
    for key in keys:
        index = next(i for i, top in enumerate(tops) if inside(key, top))
        where[key] = (index, key[1][len(tops[index][1]):].lstrip("."))
    return tops, where


class _Pipeline(torch.nn.Module):
    """The pipeline as one module for nnsight. Only the outermost hooked modules are its children
    (`points`): nnsight instruments those subtrees alone, and every other module of the pipeline
    runs at plain torch speed (instrumenting all of them cost 10% of a tiny-model trace)."""

    def __init__(self, model: Model, points: list[tuple[str, str]]):
        super().__init__()
        # nnsight moves the inputs to its root's first parameter's device: keep that the pipeline's
        # first one, not a hooked module's (which accelerate's offloading keeps on meta)
        first = next(p for module in model.components.values() for p in module.parameters())
        self.anchor = torch.nn.Parameter(torch.empty(0, device=first.device, dtype=first.dtype), requires_grad=False)
        self.points = torch.nn.ModuleList(model.components[c].get_submodule(p) for c, p in points)
        self._model = model

    def forward(self, input_ids: list[torch.Tensor], rows: torch.Tensor, call_kwargs: dict[str, Any]) -> torch.Tensor:
        """Encode the distinct rows of `input_ids` and generate with each run's row (`rows`, per run)."""
        adapter, pipe = self._model.adapter, self._model.pipe
        encoded = adapter.encode(pipe, input_ids)
        return pipe(**{k: v.index_select(0, rows.to(v.device)) for k, v in encoded.items()}, **call_kwargs).images


class _Lazy(Envoy):
    """An envoy that mirrors no submodule until one is asked for (nnsight's `__getattr__` wraps it
    then), so a hooked resnet's convolutions and norms run at plain torch speed. nnsight's own
    envoys mirror, and instrument, every module below the ones a graph hooks."""

    def __init__(self, *args: Any, **kwargs: Any):
        object.__setattr__(self, "_building", True)
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "_building", False)

    def _add_envoy(self, name: str, module: torch.nn.Module) -> Envoy | None:
        return None if self._building else super()._add_envoy(name, module)


_INSTANCE_SLOTS = ("forward", "__nnsight__")  # what nnsight writes into a module's __dict__
_ABSENT = object()


@dataclass
class _Captures:
    """Captured tensors by run and key, each tagged with the (step, call) of the denoiser call
    being traced (text sites: (0, 0), they run once)."""

    where: tuple[int, int] = (0, 0)
    tensors: dict[str, dict[str, list[torch.Tensor]]] = field(default_factory=lambda: defaultdict(dict))
    calls: dict[str, dict[str, list[tuple[int, int]]]] = field(default_factory=lambda: defaultdict(dict))
    cache: dict[tuple, dict[tuple[int, int], torch.Tensor]] = field(default_factory=dict)  # across chunks

    def keep(self, run_: str, key: str, tensor: torch.Tensor) -> None:
        self.tensors[run_].setdefault(key, []).append(tensor)
        self.calls[run_].setdefault(key, []).append(self.where)


@contextmanager
def _instrumented(root: torch.nn.Module) -> Iterator[None]:
    """Put every module's instance `forward` (a user's patch, accelerate's offload hook) and
    nnsight state back exactly as they were, so a run leaves nothing behind, even when it fails."""
    saved = [(m, {k: m.__dict__.get(k, _ABSENT) for k in _INSTANCE_SLOTS}) for m in root.modules()]
    try:
        yield
    finally:
        for module, slots in saved:
            for key, value in slots.items():
                if value is _ABSENT:
                    module.__dict__.pop(key, None)
                else:
                    module.__dict__[key] = value


def _traced_calls(model: Model, first: Run, step_hooks: list[_HookPoint]) -> list[tuple[int, int, int]]:
    """(call index, step, call within the step) of each denoiser call the step hooks act on."""
    steps = call_steps(model.pipe.scheduler, first.steps)
    wanted = {s for h in step_hooks for a in h.actions for s in (a.op.steps or range(first.steps))}
    return [(call, step, call - steps.index(step)) for call, step in enumerate(steps) if step in wanted]


def _check_calls(model: Model, first: Run) -> None:
    """Raise if the pipeline called the denoiser another number of times than `call_steps` said."""
    made, expected = len(model.pipe.scheduler.timesteps), len(call_steps(model.pipe.scheduler, first.steps))
    if made != expected:
        raise UnsupportedSchedulerError(
            f"{type(model.pipe.scheduler).__name__} called the denoiser {made} times for {first.steps} steps, not "
            f"the {expected} interp expected, so per-step operations could miss calls; use a scheduler that "
            f"interp.runner.call_steps knows (DDIM, Euler, DPM-Solver, UniPC, Heun, KDPM2, PNDM)"
        )


def _run_chunk(model: Model, graph: Graph, chunk: list[str], progress: bool, cache: dict, stores: list[Restore]
               ) -> tuple[torch.Tensor, dict, dict]:
    runs: list[Run] = [graph.runs[name] for name in chunk]
    first = runs[0]
    height, width = run_size(model, first)
    pipe, adapter = model.pipe, model.adapter
    shared = text_rows(runs, lambda op: _op_site(model, op))
    with torch.no_grad():
        prompts = [runs[i].prompt for i in first_runs(shared)]
        input_ids = [model.token_ids(prompts, i) for i in range(len(model.tokenizers))]
        call_kwargs: dict[str, Any] = dict(
            generator=model.generators([r.seed for r in runs]),
            num_inference_steps=first.steps, guidance_scale=first.guidance_scale,
            height=height, width=width, output_type="pt", **adapter.call_kwargs(pipe),
        )
        if adapter.cfg(first.guidance_scale):
            call_kwargs.update(adapter.uncond_kwargs(pipe, lambda: _repeated(_encode(model, [""]), len(runs))))
        swaps = {(op.prompt, swapped_layer(model, model.site(s))) for r in runs for op in r.ops if isinstance(op, Swap)
                 for s in op.sites}
        conds = {p: _encode(model, [p]) for p in {p for p, _ in swaps}}
        by_prompt: dict[str, list[Site]] = defaultdict(list)
        for prompt, site in swaps:
            by_prompt[prompt].append(site)
        contexts = {(p, site.name): context for p, sites in by_prompt.items()
                    for site, context in zip(sites, adapter.kv_inputs(pipe, sites, conds[p]))}
    hooks = _hook_points(model, graph, chunk, contexts, stores, shared)
    text_hooks = [h for h in hooks if h.component != adapter.denoiser]
    step_hooks = [h for h in hooks if h.component == adapter.denoiser]
    traced_calls = _traced_calls(model, first, step_hooks)
    where = {call: (step, within) for call, step, within in traced_calls}
    captures = _Captures(cache=cache)

    tops, below = _outermost(hooks)
    root = _Pipeline(model, tops)
    bar_config = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(disable=not progress, leave=False, desc=f"{len(chunk)} runs")
    try:
        with _instrumented(root):
            traced = NNsight(root, envoys=_Lazy)

            def envoy(hook: _HookPoint) -> Any:
                return _envoy(traced, below[(hook.component, hook.path)])

            for hook in hooks:  # wrap (instrument) the hooked modules before the forward starts
                envoy(hook)

            with torch.no_grad(), traced.trace(input_ids, torch.tensor(shared), call_kwargs) as tracer:
                for hook in text_hooks:
                    _visit(envoy(hook), hook, hook.actions, captures)
                if where:
                    for call in tracer.iter[list(where)]:
                        captures.where = where[call]
                        for hook in step_hooks:
                            actions = hook.active(where[call][0])
                            if actions:
                                _visit(envoy(hook), hook, actions, captures)
                images = nnsight.save(traced.output)
    finally:
        pipe._progress_bar_config = bar_config
    _check_calls(model, first)
    stacked = {run_: {k: torch.stack(v) for k, v in keyed.items()} for run_, keyed in captures.tensors.items()}
    return adapter.postprocess(images.cpu()), stacked, dict(captures.calls)




def _repeated(encoded: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """One prompt's conditioning as `n` rows (views: the empty prompt is encoded once per chunk)."""
    return {k: v.expand(n, *v.shape[1:]) for k, v in encoded.items()}


def _encode(model: Model, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Plain (untraced) conditioning for prompts, as the pipeline itself would compute it."""
    ids = [model.token_ids(prompts, i) for i in range(len(model.tokenizers))]
    return model.adapter.encode(model.pipe, ids)
