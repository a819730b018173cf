"""The main job as a recipe: trace, localize and edit one model; every result saved as data.

`run_demo` runs, on `Sizes.prompts` prompts per attribute (style, object, color) x `Sizes.seeds`
seeds x `Sizes.samples` noise samples: the UNet trace under both protocols (paper, aligned) and
the text-encoder trace by token role; LoCoGen for style (m grown from 1, with its random-layer
control and, on the tiny model, the collateral); DiffQuickFix and LoCoEdit (at LoCoGen's window)
removing "van gogh", each measured by `evaluate_edit` against its controls where a judge of the
tiny world is given. It times every stage. `DemoResults.save` writes the results as JSON + PNG
and the edits as safetensors deltas; `DemoResults.load` reads them back for `viz.demo.build_report`.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from interp.editing import Edit
from interp.errors import ResultFormatError
from interp.model import Model
from interp.results import atomic_folder
from interp.scoring import Scorer
from interventions import diffquickfix, locoedit
from interventions.causal_trace import PROTOCOLS, TraceResult, trace_text_encoder, trace_unet
from interventions.edit_eval import EditEvaluation, evaluate_edit
from interventions.evaluate import Judge
from interventions.locogen import LocalizeResult, localize

# (prompt, subject) per attribute: seen combinations of the tiny world, in words the dummy test
# pipeline knows too (so the demo runs on it). Subjects of one attribute decide that attribute, so
# the tiny model's judge scores it.
PROMPTS: dict[str, tuple[tuple[str, str], ...]] = {
    "style": (("a red circle in the style of van gogh", "van gogh"), ("a blue square in the style of monet", "monet"),
              ("a green star in the style of van gogh", "van gogh"), ("a blue circle in the style of monet", "monet")),
    "object": (("a green star", "star"), ("a blue square", "square"), ("a green circle", "circle"),
               ("a red star in the style of van gogh", "star")),
    "color": (("a blue star", "blue"), ("a red square", "red"), ("a green square", "green"),
              ("a green circle in the style of van gogh", "green")),
}
OLD, NEW, TARGET = "van gogh", "painting", "a painting"
TEXT_KINDS = ("text-self-attn", "text-mlp")  # the layers' own outputs; hidden states are their residual sums
# DiffQuickFix's key templates, in words the tiny model knows (the papers' "a photo of {}" is not one of
# them, and its keys on unknown words spill the edit onto every prompt). LoCoEdit keeps the paper's.
EDIT_TEMPLATES = ("{}", "in the style of {}", "a painting by {}", "a {} painting")
# The paper's single causal state in the text encoder: layer 0's self-attention at the last subject token.
CAUSAL_STATE = ("text-self-attn-0", "last subject")
INDEX = "demo.json"


@dataclass(frozen=True)
class Sizes:
    """How much the demo runs: every trace has prompts x seeds x samples units, LoCoGen prompts x
    seeds, each edit evaluation `images_per_group` images per group and condition. `chunk_size`
    runs share one batched pipeline call: on a CPU, larger batches of the tiny model only add time
    allocating memory (a trace of 952 runs in one batch spends 40% more CPU time than in batches of 128).
    The defaults ran in 117 s on an otherwise idle 2-core CPU (two torch threads), the tiny model."""

    steps: int = 10
    prompts: int = 4
    seeds: int = 2
    samples: int = 2
    images_per_group: int = 16
    chunk_size: int = 128

    def __post_init__(self) -> None:
        low = {k: v for k, v in asdict(self).items() if v < 1}
        if low:
            raise ValueError(f"demo sizes must be >= 1, got {low}")
        if self.prompts > min(map(len, PROMPTS.values())):
            raise ValueError(f"prompts={self.prompts}: the demo has {min(map(len, PROMPTS.values()))} per attribute")

    def units(self) -> str:
        """'4 prompts x 2 seeds x 2 noise samples = 16 units'."""
        return (f"{self.prompts} prompts x {self.seeds} seeds x {self.samples} noise samples = "
                f"{self.prompts * self.seeds * self.samples} units")


@dataclass
class DemoResults:
    """Everything the report shows, with the sizes that made it and each stage's wall seconds."""

    unet: dict[str, dict[str, TraceResult]]  # attribute -> protocol -> trace
    text: dict[str, TraceResult]  # attribute -> trace by token role
    locogen: dict[str, LocalizeResult]
    evaluations: dict[str, EditEvaluation]  # editor -> evaluation; empty without a judge
    deltas: dict[str, Edit]  # editor -> its edit
    sizes: Sizes
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall seconds ("total": the whole command)
    machine: str = ""  # where it ran: device, torch threads, CPU count

    def save(self, folder: str | Path) -> Path:
        """Every result under `folder` (JSON + PNG, edits as safetensors), indexed by `demo.json`.
        Written atomically (`interp.results.atomic_folder`): a reader, or a kill, sees the previous
        data, no folder, or the new data, never a mix; an existing `folder` must be earlier demo data."""
        with atomic_folder(folder, INDEX) as written:
            for attribute, traces in self.unet.items():
                for protocol, result in traces.items():
                    result.save(written / f"trace-unet-{attribute}-{protocol}")
                self.text[attribute].save(written / f"trace-text-{attribute}")
            for attribute, result in self.locogen.items():
                result.save(written / f"locogen-{attribute}")
            for name, evaluation in self.evaluations.items():
                evaluation.save(written / f"evaluation-{name}")
            for name, edit in self.deltas.items():
                edit.save(written / f"{name}.safetensors")
            self._write_index(written)
        return Path(folder).resolve()

    def _write_index(self, folder: Path) -> None:
        """`demo.json`: what `save` wrote, the sizes, the timings and the machine."""
        index = {"attributes": list(self.unet), "protocols": list(next(iter(self.unet.values()))),
                 "localized": list(self.locogen), "evaluated": list(self.evaluations), "edits": list(self.deltas),
                 "sizes": asdict(self.sizes), "seconds": self.seconds, "machine": self.machine}
        (folder / INDEX).write_text(json.dumps(index, indent=1))

    @classmethod
    def load(cls, folder: str | Path) -> DemoResults:
        """Read what `save` wrote; raises `ResultFormatError` if `folder` holds no demo results."""
        folder = Path(folder)
        if not (folder / INDEX).is_file():
            raise ResultFormatError(f"{folder / INDEX} does not exist; pass the data folder `interp demo` wrote")
        index = json.loads((folder / INDEX).read_text())
        return cls(
            {a: {p: TraceResult.load(folder / f"trace-unet-{a}-{p}") for p in index["protocols"]}
             for a in index["attributes"]},
            {a: TraceResult.load(folder / f"trace-text-{a}") for a in index["attributes"]},
            {a: LocalizeResult.load(folder / f"locogen-{a}") for a in index["localized"]},
            {n: EditEvaluation.load(folder / f"evaluation-{n}") for n in index["evaluated"]},
            {n: Edit.load(folder / f"{n}.safetensors") for n in index["edits"]},
            Sizes(**index["sizes"]),
            index["seconds"],
            index["machine"],
        )


def run_demo(
    model: Model,
    scorer: Scorer | None = None,
    sizes: Sizes = Sizes(),
    judge: Judge | None = None,
    progress: bool = True,
) -> DemoResults:
    """Run every recipe of the report on `model` (see the module docstring).

    `scorer` scores traces and LoCoGen (default: the tiny model's judge on the bundled model,
    CLIP-score elsewhere); `judge` (the tiny world's) adds the edit evaluations.
    """
    seconds: dict[str, float] = {}
    stages = tqdm(total=4 + bool(judge), desc="demo", disable=not progress, position=0)
    seeds = tuple(range(sizes.seeds))
    common = dict(seeds=seeds, steps=sizes.steps, scorer=scorer, chunk_size=sizes.chunk_size, progress=progress)
    prompts = {a: list(pairs[: sizes.prompts]) for a, pairs in PROMPTS.items()}

    with _stage("UNet traces", stages, seconds):
        unet = {a: {p: trace_unet(model, pairs, samples=sizes.samples, protocol=p, **common) for p in PROTOCOLS}
                for a, pairs in prompts.items()}
    with _stage("text-encoder traces", stages, seconds):
        text = {a: trace_text_encoder(model, pairs, kinds=TEXT_KINDS, samples=sizes.samples, **common)
                for a, pairs in prompts.items()}
    with _stage("LoCoGen", stages, seconds):
        style = localize(model, [p for p, _ in prompts["style"]], TARGET, **common)
    with _stage("edits", stages, seconds):
        edits = {"DiffQuickFix": diffquickfix.edit(model, OLD, NEW, templates=EDIT_TEMPLATES),
                 "LoCoEdit": locoedit.edit(model, OLD, NEW, layers=style.best_sites)}
    evaluations = {}
    if judge is not None:
        with _stage("edit evaluation", stages, seconds):
            evaluations = {name: evaluate_edit(model, edit, images_per_group=sizes.images_per_group, judge=judge,
                                               steps=sizes.steps) for name, edit in edits.items()}
    stages.close()
    machine = f"{model.pipe.device} · {torch.get_num_threads()} torch threads · {os.cpu_count()} CPU cores"
    return DemoResults(unet, text, {"style": style}, evaluations, edits, sizes, seconds, machine)


@contextmanager
def _stage(name: str, stages: tqdm, seconds: dict[str, float]) -> Iterator[None]:
    """Show `name` on the progress bar and record its wall seconds in `seconds`."""
    stages.set_description(name)
    start = time.perf_counter()
    yield
    seconds[name] = time.perf_counter() - start
    stages.update()


def causal_state_verdict(result: TraceResult, state: tuple[str, str] = CAUSAL_STATE) -> str:
    """One sentence on whether `state` (the paper's single causal state) holds in a text-encoder
    trace: it holds where the state has the largest mean IE and its 95% interval lies above every
    other state's; otherwise the sentence says which state leads and where `state` stands."""
    mean, low, high, n = (a.ravel() for a in result.ie_interval())
    cells = result.cells()
    where = state_name(*state)
    if state not in cells:
        return f"{where} was not traced, so the paper's single causal state cannot be checked here."
    i = cells.index(state)
    if n[i] < 2:
        return f"{where} has {int(n[i])} kept unit(s), too few for an interval; the claim cannot be checked here."
    traced = sorted((j for j in range(len(cells)) if not math.isnan(mean[j])), key=lambda j: -mean[j])
    overlapping = [j for j in traced if j != i and high[j] >= low[i]]
    own = f"{mean[i]:+.3f} [{low[i]:+.3f}, {high[i]:+.3f}] (n={int(n[i])})"

    def described(j: int) -> str:
        return f"{state_name(*cells[j])}, {mean[j]:+.3f} [{low[j]:+.3f}, {high[j]:+.3f}]"

    if traced[0] == i and not overlapping:
        return (f"Holds: {where} has the largest indirect effect, {own}, and its 95% interval lies above "
                f"those of all {len(traced) - 1} other states.")
    if traced[0] == i:
        return (f"Not established: {where} has the largest indirect effect, {own}, but its 95% interval "
                f"overlaps those of {len(overlapping)} other state(s), the closest {described(overlapping[0])}.")
    return (f"Does not hold: the largest indirect effect is {described(traced[0])}; {where} ranks "
            f"{traced.index(i) + 1} of {len(traced)} with {own}.")


def state_name(site: str, token: str) -> str:
    """'text-self-attn-0 at the last subject token'; ROME's role "last" is the prompt's final token (EOS)."""
    return f"{site} at the {'final token (EOS)' if token == 'last' else f'{token} token'}"
