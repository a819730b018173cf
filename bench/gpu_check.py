"""The GPU path, checked: every claim that matters, at full size, with random weights, in one table.

For each model (SD1.5 and SDXL built from their configs by `bench.memory.pipeline`: the real UNet and
VAE with their layers' default random initialisation drawn on the device, one-layer text encoders of
the real widths) and dtype (float16, bfloat16), on `--device`:

  1 noop      a graph with no operations, and one that only captures, equal `pipe(...)` bit for bit;
  2 restore   a corrupted run restoring every site equals the clean run bit for bit (and the
              corruption alone changes the image, so the check is not vacuous);
  3 batched   16 sites traced in one batched graph (the runner's memory budget plans the chunks)
              against one generation per site: images equal within the dtype's tolerance
              (`IMAGE_TOLERANCE`); target >= 5x faster;
  4 overhead  a per-step restore by the runner against plain diffusers (`bench.overhead`): the
              runner equals a hand-written hook bit for bit; target runner/plain <= 1.05;
  5 edits     DiffQuickFix (text layer 0's out_proj) and LoCoEdit (to_k/to_v of LoCoGen's style
              window cross-attn-8/9; every layer in the small pipelines) edit time at the model's shapes; their dW against the float64 formula computed on
              the CPU from float64 copies of the same weights and text encoders, relative to the
              update, within `EDIT_TOLERANCE` (or 3x what rounding the exact answer to the dtype
              costs, where that is more);
  6 memory    peak memory of one 4-run trace chunk against `interp.budget`'s estimate: on CUDA
              `torch.cuda.max_memory_allocated` above what was allocated before; on a CPU the
              process's RSS high-water mark above its RSS before (`bench.memory.measure_model`) in a
              process that already ran the other checks, so freed heap it reuses makes it low:
              reported, never a verdict; target within 25%;
  7 attention cross-attention maps (`interventions.attention_maps`) of the first and last
              cross-attention layers, every token position: the image equals a plain run within the
              dtype's tolerance (the captured layers compute softmax explicitly instead of the
              device's SDPA kernel), each query's probabilities sum to 1, and every layer keeps its
              processor object;
  8 offload   `enable_model_cpu_offload()`: plain generations before and after a runner call are
              equal, the runner equals the plain pipeline under offload, and accelerate's hooks are
              still there (last for each model: it moves the pipeline to the CPU).

Exactness and correctness checks (pass / FAIL) and errors set a non-zero exit code; the GPU targets
(met / MISSED) do only with `--strict`. Rows print as they finish, so a run cut short by a timeout
still says what it reached. `--device cpu --small` runs the same checks on the reduced-width test
pipelines (`models.testing`) at 16 px in float32, bfloat16 and float16, CI's smoke run (81 s of
CPU time with one thread, measured on a loaded 2-core machine where it took 255 s of wall time).

On the device machine: a fresh checkout whose python3 has torch, transformers and accelerate but
not diffusers or nnsight, and no network. Fetch their wheels here first (into a folder .whl that
.git/info/exclude ignores; see /work/.library/device/README.md):

  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl diffusers==0.42.1 nnsight==0.8.1 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 greenlet==3.5.6 zstandard==0.25.0

then, in one call carrying `.whl` (SD1.5 at 512 px and SDXL at 1024 px, each in float16 and
bfloat16, 10 steps; not yet timed on a GPU: the timeout keeps the call inside the device's 10-minute
limit and the rows that finished print anyway; `--widths sd15` or `--dtypes float16` halves it):

  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 && set -o pipefail && timeout 540 python3 -m bench.gpu_check --device cuda 2>&1 | tee $OUT/gpu_check.txt

Run here: ``python -m bench.gpu_check --device cpu --small`` (add ``--checks noop restore`` for a subset).
"""

from __future__ import annotations

import argparse
import copy
import gc
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

import interp
from bench import memory
from bench.batched_trace import trace_variants
from bench.edit_speed import errors, locoedit_reference
from bench.native import spread
from bench.overhead import plain_call, restore_variants
from bench.timing import load_note, timed, timed_interleaved
from interp.budget import runs_per_chunk
from interp.editing import solve_closed_form
from interp.graph import Capture, Graph, Noise, Restore, Run
from interp.runner import run
from interventions import diffquickfix, locoedit
from interventions.attention_maps import attention_maps, cross_attention_layers
from models.testing import dummy_sd_pipeline, dummy_sdxl_pipeline

PROMPT, SUBJECT = "a photo of a cat in the style of van gogh", "van gogh"
OLD, NEW = "van gogh", "painting"
CHECKS = ("noop", "restore", "batched", "overhead", "edits", "memory", "attention", "offload")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Largest |pixel difference| (images in [0, 1]) between a batched trace and one generation per
# site: batch size changes the kernels' reduction order, and the steps carry the rounding on.
# About 10 units in the last place at 1.0 for the half types; the project's CPU tests' 1e-4 for float32.
IMAGE_TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
# Largest error of an edit's dW against the float64 formula, relative to the update: keys collected
# by a forward pass in the dtype carry its rounding into the solve.
EDIT_TOLERANCE = {torch.float32: 1e-3, torch.float16: 5e-2, torch.bfloat16: 2e-1}
BATCHED_TARGET, OVERHEAD_TARGET, MEMORY_TARGET = 5.0, 1.05, 0.25
SITES, MEMORY_RUNS = 16, 4
MiB = 2**20


@dataclass(frozen=True)
class Setup:
    """One model under test: which width, dtype, device, image size, steps and timing repeats."""

    width: str  # "sd15" or "sdxl"
    dtype: torch.dtype
    device: torch.device
    size: int
    steps: int
    repeats: int
    small: bool

    @property
    def label(self) -> str:
        return f"{self.width}{'-small' if self.small else ''} {self.size}px"

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


@dataclass(frozen=True)
class Row:
    """One line of the table. `status`: pass / FAIL (correctness), met / MISSED (a GPU target),
    info, skip, ERROR (the check raised)."""

    check: str
    status: str
    result: str


FAILING = {"FAIL", "ERROR"}


class Table:
    """Prints rows as they come; remembers whether any failed."""

    def __init__(self, strict: bool = False, out: Any = None) -> None:
        self.strict, self.out, self.rows = strict, out or sys.stdout, []
        self.last = time.perf_counter()
        print(f"{'model':<16} {'dtype':<9} {'check':<24} {'status':<7} result [seconds since the row above]",
              file=self.out, flush=True)

    def add(self, setup: Setup, row: Row) -> None:
        self.rows.append(row)
        elapsed, self.last = time.perf_counter() - self.last, time.perf_counter()
        print(f"{setup.label:<16} {setup.dtype_name:<9} {row.check:<24} {row.status:<7} {row.result} "
              f"[{elapsed:.1f}]", file=self.out, flush=True)

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.status in FAILING or (self.strict and r.status == "MISSED")]


def verdict(ok: bool) -> str:
    return "pass" if ok else "FAIL"


def target(ok: bool) -> str:
    return "met" if ok else "MISSED"


def largest_difference(a: Tensor, b: Tensor) -> float:
    return float((a.float().cpu() - b.float().cpu()).abs().max())


def synced(device: torch.device, fn: Callable[[], Any]) -> Callable[[], Any]:
    """`fn` that returns only once the device has finished its work (honest wall times on CUDA)."""
    if device.type != "cuda":
        return fn

    def call() -> Any:
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return call


def denoiser_sites(model: interp.Model) -> list[str]:
    return [s.name for s in model.sites() if not s.is_text and s.kind != "latent"]


# --- the checks: each yields its rows ------------------------------------------------------------


def check_noop(model: interp.Model, s: Setup) -> Iterator[Row]:
    plain = plain_call(model, [PROMPT], [0], s.steps, s.size)[0]
    captured = spread(denoiser_sites(model), 3) + [model.sites()[0].name]  # a text site too
    graphs = {"no ops": [], "captures only": [Capture(site) for site in captured]}
    for name, ops in graphs.items():
        image = run(model, Graph([Run("a", PROMPT, steps=s.steps, height=s.size, width=s.size, ops=ops)]),
                    progress=False).images["a"]
        same = torch.equal(image.cpu(), plain.cpu())
        finite = bool(torch.isfinite(image).all())
        yield Row(f"1 noop: {name}", verdict(same and finite),
                  f"max |runner - pipe| {largest_difference(image, plain):.1e}{'' if finite else ', NOT FINITE'}")


def check_restore(model: interp.Model, s: Setup) -> Iterator[Row]:
    noise = Noise("text-embed", tokens=model.locate(PROMPT, SUBJECT).positions, std=3.0, seed=7)

    def corrupted(name: str, *ops: Any) -> Run:
        return Run(name, PROMPT, steps=s.steps, height=s.size, width=s.size, ops=[noise, *ops])

    every = [Restore(site.name, source="clean") for site in model.sites()]
    graph = Graph([Run("clean", PROMPT, steps=s.steps, height=s.size, width=s.size), corrupted("corrupted"),
                   corrupted("restored", *every)])
    images = run(model, graph, chunk_size=len(graph), progress=False).images
    effect = largest_difference(images["corrupted"], images["clean"])
    same = torch.equal(images["restored"], images["clean"])
    yield Row("2 restore every site", verdict(same and effect > 0),
              f"max |restored - clean| {largest_difference(images['restored'], images['clean']):.1e} "
              f"({len(every)} sites; the corruption alone moves pixels by {effect:.1e})")


def check_batched(model: interp.Model, s: Setup) -> Iterator[Row]:
    sites = spread(denoiser_sites(model), SITES)
    budget_gb = device_budget_gb(s.device)
    per_chunk = runs_per_chunk(model, s.size, s.size, True, budget_gb * 2**30)
    variants = {name: synced(s.device, fn) for name, fn in trace_variants(
        model, sites, s.steps, PROMPT, SUBJECT, s.size, memory_budget_gb=budget_gb).items()}
    one, batched = variants["separate"](), variants["batched"]()  # also the warm-up
    worst = max(largest_difference(one[site], batched[site]) for site in sites)
    tolerance = IMAGE_TOLERANCE[s.dtype]
    yield Row("3 batched = per site", verdict(worst <= tolerance),
              f"max |batched - separate| {worst:.1e} (tolerance {tolerance:.0e}, {len(sites)} sites)")
    times = timed_interleaved(variants, repeats=s.repeats, warm_up=False)
    speedup = times["separate"] / times["batched"]
    yield Row("3 batched speed-up", target(speedup >= BATCHED_TARGET),
              f"{speedup:.2f}x (target >= {BATCHED_TARGET:g}x): separate {times['separate']:.2f} s, batched "
              f"{times['batched']:.2f} s, {per_chunk} runs a chunk at {budget_gb:.0f} GB, {s.steps} steps")


def check_overhead(model: interp.Model, s: Setup) -> Iterator[Row]:
    resnets = [site.name for site in model.sites("resnet")]
    site = resnets[len(resnets) // 2]
    variants = {name: synced(s.device, fn) for name, fn in restore_variants(model, site, s.size, s.steps, PROMPT).items()}
    ours, reference = variants["runner"](), variants["hooks"]()
    yield Row("4 restore = torch hook", verdict(torch.equal(ours.cpu(), reference.cpu())),
              f"max |runner - hook| {largest_difference(ours, reference):.1e} ({site}, every step)")
    variants["plain"]()
    times = timed_interleaved(variants, repeats=s.repeats, warm_up=False)
    ratio = times["runner"] / times["plain"]
    yield Row("4 overhead", target(ratio <= OVERHEAD_TARGET),
              f"runner/plain {ratio:.3f} (target <= {OVERHEAD_TARGET}); plain {times['plain']:.3f} s, hooks "
              f"{times['hooks']:.3f} s, runner {times['runner']:.3f} s, {s.steps} steps, batch 2 + CFG")


def float64_reference(model: interp.Model) -> interp.Model:
    """The model with float64 CPU copies of its text encoders (the same weights, upcast), for the
    editors' reference: their keys come from a float64 forward pass. The denoiser is shared."""
    pipe = copy.copy(model.pipe)
    for name in model.adapter.text_encoders:
        encoder = getattr(model.pipe, name)
        pipe.__dict__[name] = copy.deepcopy(encoder).to("cpu", torch.float64)  # not registered: config untouched
    return interp.Model(pipe, model.adapter)


def edit_row(name: str, shapes: str, edit: Any, module: torch.nn.Module, reference: dict[str, Tensor],
             seconds: float, dtype: torch.dtype) -> Row:
    """A row for one edit: its dW against `reference` (float64 edited weights), and the floor that
    rounding the reference to `dtype` alone gives."""
    base = {n: module.get_parameter(n).detach().cpu().double() for n in reference}
    solved = {n: base[n] + edit.deltas[n].dense() for n in reference}
    update, _ = errors(solved, reference, base)
    floor, _ = errors({n: r.to(dtype) for n, r in reference.items()}, reference, base)
    tolerance = max(EDIT_TOLERANCE[dtype], 3 * floor)
    finite = all(bool(torch.isfinite(d.dense()).all()) for d in edit.deltas.values())
    return Row(f"5 {name}", verdict(finite and update <= tolerance),
               f"dW error {update:.1e} of the update vs float64 (tolerance {tolerance:.0e}; rounding alone "
               f"{floor:.1e}); edit {seconds * 1000:.0f} ms; {shapes}")


def check_edits(model: interp.Model, s: Setup) -> Iterator[Row]:
    reference_model = float64_reference(model)
    component, path = diffquickfix.out_proj(model, 0)
    name = f"{path}.weight"
    edit = diffquickfix.edit(model, OLD, NEW, layer=0)
    seconds = timed(synced(s.device, lambda: diffquickfix.edit(model, OLD, NEW, layer=0)), s.repeats)
    keys, values = diffquickfix.collect_pairs(reference_model, OLD, NEW, 0)
    weight = reference_model.components[component].get_parameter(name)
    reference = {name: solve_closed_form(weight, keys, values, diffquickfix.LAM)}
    yield edit_row("DiffQuickFix", f"{component} layer 0 out_proj {'x'.join(map(str, weight.shape))}", edit,
                   model.components[component], reference, seconds, s.dtype)

    layers = "all" if s.small else None  # the test pipelines have no LoCoGen style window
    edit = locoedit.edit(model, OLD, NEW, layers=layers)
    seconds = timed(synced(s.device, lambda: locoedit.edit(model, OLD, NEW, layers=layers)), s.repeats)
    pairs = locoedit.collect(reference_model, OLD, NEW, layers=layers)
    groups: list[tuple[Tensor, Tensor, dict[str, Tensor]]] = []  # one float64 solve per distinct pair
    for site in locoedit.cross_attention_layers(model, layers):
        keys, targets = pairs[site.name]
        weights = {f"{p}.weight": model.denoiser.get_parameter(f"{p}.weight").detach().cpu().double()
                   for p in site.kv_paths}
        same = [g for g in groups if torch.equal(g[0], keys) and torch.equal(g[1], targets)]
        if same:
            same[0][2].update(weights)
        else:
            groups.append((keys, targets, weights))
    reference = {n: w for keys, targets, weights in groups
                 for n, w in locoedit_reference(weights, keys, targets, locoedit.LAM).items()}
    shapes = ", ".join(sorted({"x".join(map(str, model.denoiser.get_parameter(n).shape)) for n in reference}))
    where = ", ".join(pairs) if len(pairs) <= 2 else f"{len(pairs)} cross-attention layers"
    yield edit_row("LoCoEdit", f"{len(reference)} to_k/to_v of {where} ({shapes})", edit, model.denoiser, reference,
                   seconds, s.dtype)


def check_memory(model: interp.Model, s: Setup) -> Iterator[Row]:
    point = memory.measure_model(model, s.size, MEMORY_RUNS, warm_up=s.size // 2 if s.small else 64)
    estimate = point["estimate"]
    if "cuda_measured" in point:
        measured = point["cuda_measured"]
        ratio = estimate / measured
        yield Row(f"6 memory ({MEMORY_RUNS} runs)", target(abs(ratio - 1) <= MEMORY_TARGET),
                  f"estimate/measured {ratio:.2f} (target within {MEMORY_TARGET:.0%}): estimate "
                  f"{estimate / MiB:.0f} MiB, max_memory_allocated +{measured / MiB:.0f} MiB (denoising: "
                  f"{point['denoise_estimate'] / MiB:.0f} vs {point['cuda_denoise_measured'] / MiB:.0f} MiB)")
        return
    if "measured" not in point:
        yield Row(f"6 memory ({MEMORY_RUNS} runs)", "skip", "no CUDA and no resettable RSS high-water mark here")
        return
    ratio = f"{estimate / point['measured']:.2f}" if point["measured"] > 0 else "-"
    yield Row(f"6 memory ({MEMORY_RUNS} runs)", "info",
              f"estimate/measured {ratio}: estimate {estimate / MiB:.1f} MiB, RSS "
              f"high-water mark +{point['measured'] / MiB:.1f} MiB (CPU, in-process: freed heap is reused, so "
              f"not a verdict; bench.memory measures in fresh processes)")


def check_attention(model: interp.Model, s: Setup) -> Iterator[Row]:
    readers = cross_attention_layers(model)
    layers = [readers[0].name, readers[-1].name]
    processors = {site.name: model.denoiser.get_submodule(site.path).processor for site in readers}
    maps = attention_maps(model, PROMPT, list(range(model.max_length)), layers=layers, steps=s.steps)
    plain = run(model, Graph([Run("plain", PROMPT, steps=s.steps)]), progress=False).images["plain"]
    worst = largest_difference(maps.images[0], plain)
    mass = max((probs.sum(-1) - 1).abs().max().item() for probs in maps.probs.values())
    kept = all(model.denoiser.get_submodule(site.path).processor is processors[site.name] for site in readers)
    tolerance = IMAGE_TOLERANCE[s.dtype]
    yield Row("7 attention maps", verdict(worst <= tolerance and mass <= 1e-2 and kept),
              f"max |captured - plain| {worst:.1e} (tolerance {tolerance:.0e}); largest |sum of a query's "
              f"probabilities - 1| {mass:.1e}; processors kept: {kept}; layers {', '.join(layers)}")


def check_offload(model: interp.Model, s: Setup) -> Iterator[Row]:
    pipe = model.pipe

    def plain() -> Tensor:  # a batch of two, as the runner lays out the graph below
        return plain_call(model, [PROMPT, PROMPT], [0, 0], s.steps, s.size).cpu()

    before = plain()
    pipe.enable_model_cpu_offload(device=s.device)
    offloaded = plain()
    site = spread(denoiser_sites(model), 3)[1]
    graph = Graph([Run("clean", PROMPT, steps=s.steps, height=s.size, width=s.size),
                   Run("restored", PROMPT, steps=s.steps, height=s.size, width=s.size,
                       ops=[Restore(site, source="clean")])])
    ours = run(model, graph, progress=False).images
    after = plain()
    hooked = all(hasattr(module, "_hf_hook") for module in model.components.values())
    home = {p.device.type for p in model.denoiser.parameters()}
    ours = torch.stack([ours["clean"], ours["restored"]]).cpu()
    ok = (torch.equal(before, offloaded) and torch.equal(offloaded, after) and torch.equal(ours, after)
          and hooked and home == {"cpu"})
    yield Row("8 cpu offload", verdict(ok),
              f"max |offloaded - plain| {largest_difference(offloaded, before):.1e}, |after - before run| "
              f"{largest_difference(after, offloaded):.1e}, |runner - pipe| {largest_difference(ours, after):.1e}"
              f"; hooks kept: {hooked}; denoiser weights on {sorted(home)} after the run"
              + ("" if s.device.type == "cuda" else " (execution device cpu)"))


CHECK_FUNCTIONS: dict[str, Callable[[interp.Model, Setup], Iterator[Row]]] = {
    "noop": check_noop, "restore": check_restore, "batched": check_batched, "overhead": check_overhead,
    "edits": check_edits, "memory": check_memory, "attention": check_attention, "offload": check_offload,
}


# --- building and running ------------------------------------------------------------------------


def device_budget_gb(device: torch.device) -> float:
    """The runner's memory budget for the batched trace: half the free device memory on CUDA, the
    runner's default (4 GB) elsewhere."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return 0.5 * free / 2**30
    return 4.0


def words() -> list[str]:
    """Every word the prompt and the editors' templates use (the full-size tokenizers' vocabulary)."""
    texts = (PROMPT, OLD, NEW, *diffquickfix.TEMPLATES, *locoedit.TEMPLATES, locoedit.TARGET_PROMPT)
    return sorted({w for text in texts for w in text.replace("{}", " ").split()})


def build(setup: Setup) -> interp.Model:
    """The pipeline under test on its device and in its dtype."""
    if setup.small:
        pipe = (dummy_sd_pipeline if setup.width == "sd15" else dummy_sdxl_pipeline)(max_length=77)
    else:
        pipe = memory.pipeline(setup.width, words(), setup.device)
    pipe.to(setup.device, setup.dtype)
    return interp.load(pipe)


def setups(args: argparse.Namespace) -> Iterator[Setup]:
    device = torch.device(args.device)
    for width in args.widths:
        if args.small:
            size = 16
        elif width == "sdxl":
            big = device.type == "cuda" and torch.cuda.get_device_properties(device).total_memory >= 40 * 2**30
            size = args.sdxl_size or (1024 if big else 512)
        else:
            size = args.size
        for dtype in args.dtypes:
            yield Setup(width, DTYPES[dtype], device, size, args.steps, args.repeats, args.small)


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="the reduced-width test pipelines at 16 px (CPU smoke)")
    parser.add_argument("--widths", nargs="+", default=["sd15", "sdxl"], choices=["sd15", "sdxl"])
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), help="default: float16 bfloat16 "
                        "(with --small: float32 bfloat16 float16)")
    parser.add_argument("--checks", nargs="+", default=list(CHECKS), choices=CHECKS)
    parser.add_argument("--size", type=int, default=512, help="SD1.5's image side in pixels")
    parser.add_argument("--sdxl-size", type=int, default=None, help="default 1024 on a GPU of 40 GiB or more, else 512")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 10; 3 with --small)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3; 1 with --small)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--strict", action="store_true", help="a missed GPU target also fails the exit code")
    args = parser.parse_args(argv)
    args.dtypes = args.dtypes or (["float32", "bfloat16", "float16"] if args.small else ["float16", "bfloat16"])
    args.steps = args.steps or (3 if args.small else 10)
    args.repeats = args.repeats or (1 if args.small else 3)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA device; use --device cpu --small")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the checks; print the table; return the exit code (1 if any check failed)."""
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # dtype casts and CPU float16 warnings on every build
    try:
        return run_checks(args)
    finally:
        diffusers_logging.set_verbosity(verbosity)


def run_checks(args: argparse.Namespace) -> int:
    """Every check of `args.checks` on every model of `setups(args)`, printed as one table."""
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} thread(s)"
    print(f"gpu_check: torch {torch.__version__} on {name}; {'small' if args.small else 'full'} widths, "
          f"{args.steps} steps; {load_note()}", flush=True)
    start, cpu = time.perf_counter(), time.process_time()
    table = Table(args.strict)
    for setup in setups(args):
        try:
            model = build(setup)
        except Exception as error:  # noqa: BLE001 - report it, go on with the next model
            table.add(setup, Row("build", "ERROR", f"{type(error).__name__}: {error}"))
            continue
        for check in args.checks:
            try:
                for row in CHECK_FUNCTIONS[check](model, setup):
                    table.add(setup, row)
            except Exception as error:  # noqa: BLE001 - one broken check must not hide the others
                table.add(setup, Row(check, "ERROR", f"{type(error).__name__}: {error}"))
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    failed, missed = table.failed, [r for r in table.rows if r.status == "MISSED"]
    print(f"{len(table.rows)} rows, {len(failed)} failed, {len(missed)} GPU target(s) missed"
          f"{'' if args.strict else ' (failures only with --strict)'}, in {time.perf_counter() - start:.0f} s "
          f"({time.process_time() - cpu:.0f} s of CPU time); {load_note()}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
