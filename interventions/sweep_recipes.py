"""Causal traces as sweeps: a trace of the UNet or the text encoder over a prompt set, split into
(prompt, seed, noise sample) units that every engine computes alike, and read back from the
sweep's folder into the `TraceResult` the recipes return (so `interp report` draws it).

A unit is one graph: the clean run, one corrupted run and its restored runs, batched in fixed
chunks, so its scores do not depend on which other units share a process or a device. What the
in-memory recipes compute from the whole unit set is resolved once, when the sweep is planned, and
becomes part of every unit's key: the corruption's std (pooled over the set's subjects, as
`trace_unet` pools it), the scorer and the attributes it judges.

`run_sweep`, `aggregate` and `write_report` serve every recipe: LoCoGen's units live in
`interventions.sweep_locogen`, the edit evaluation's in `interventions.sweep_edit_eval`; their
tasks load the model as `TraceTask` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import interp
from interp.errors import SweepEngineError
from interp.graph import Graph, Restore, Run
from interp.model import Model
from interp.scoring import CLIPScore, Scorer
from interp.sweeps import SweepStats, SweepStore, UnitSpec, make_engine, model_fingerprint, run_units, unit_key
from interventions.causal_trace import (
    ROLES, TraceResult, Unit, add_sample_runs, corruption, embedding_std, make_units, restored_scores, role_positions,
    text_sites,
)
from interventions.edit_eval import EditEvaluation
from interventions.locogen import LocalizeResult
from interventions.prompt_sets import PromptRow, load_prompt_set
from interventions.sweep import default_scorer, run_and_score, subject_attributes

RECIPES = {"trace-unet": "trace_unet", "trace-text": "trace_text_encoder"}
CHUNK_SIZE = 64  # runs per pipeline call within a unit: fixed, so a unit batches alike on every machine
_LOADED: dict[tuple[str, str], Model] = {}  # (fingerprint, device) -> a model this process already holds


def _load(source: str, device: str) -> Model:
    """The model `source` names (as the CLI's --model: 'tiny', 'dummy', a folder or a hub id) on `device`."""
    if source == "dummy":
        from models.testing import dummy_sd_pipeline

        return interp.load(dummy_sd_pipeline().to(device))
    model = interp.load(source)
    model.pipe.to(device)
    return model


def _fingerprint(model: Model) -> str:
    return model_fingerprint(model.components)


@dataclass(frozen=True)
class TraceTask:
    """A trace recipe with its resolved arguments; picklable, so a Ray actor rebuilds its worker.
    `model` is what a worker loads (a name, folder or hub id); None only for a model passed in.
    Other recipes' tasks (`interventions.sweep_locogen`) load alike and override `worker`."""

    recipe: str
    model: str | None
    device: str
    fingerprint: str
    arguments: dict[str, Any] = field(hash=False)
    threads: int = 1

    def setup(self) -> TraceWorker:
        """Load the model (once per process; reused where this process planned the sweep), check it
        is the one the sweep was planned on, and build the scorer."""
        model = _LOADED.get((self.fingerprint, self.device))
        if model is None:
            if self.model is None:
                raise SweepEngineError("this sweep was planned on a model object, which other processes cannot load; "
                                       "pass the model's name, folder or hub id instead")
            model = _load(self.model, self.device)
        found = _fingerprint(model)
        if found != self.fingerprint:
            raise SweepEngineError(f"the model {self.model!r} loaded here has other weights ({found}) than the sweep "
                                   f"was planned on ({self.fingerprint}); give every worker the same model")
        _LOADED[(self.fingerprint, self.device)] = model
        return self.worker(model)

    def worker(self, model: Model) -> Any:
        """The worker computing this recipe's units on the loaded `model`."""
        return TraceWorker(model, self)


def _scorer(model: Model, arguments: dict[str, Any], device: str) -> Scorer:
    """The sweep's scorer: a CLIP given by id, else the recipes' default (the tiny model's judge)."""
    if arguments["clip"]:
        return CLIPScore.from_pretrained(arguments["clip"], device=device)
    return default_scorer(model, None, arguments["judged"])


class TraceWorker:
    """Computes trace units on one loaded model."""

    def __init__(self, model: Model, task: TraceTask):
        self.model, self.task, self.arguments = model, task, task.arguments
        self.scorer = _scorer(model, task.arguments, task.device)

    def _cell_runs(self, unit: Unit, index: tuple[int, ...], source: str) -> list[list[Restore]]:
        """A cell's restored runs (each a list of Restore ops), as trace_unet / trace_text_encoder
        build them; none where the cell does not apply to the unit (a token role it lacks)."""
        a = self.arguments
        if self.task.recipe == "trace-unet":
            return [[Restore(name, branch=a["branch"], source=source) for name in a["groups"][index[0]]]]
        site = a["sites"][index[0]]
        chosen = role_positions(unit, self.model.tokenizer_index(site), ROLES[index[1]])
        return [[Restore(site, tokens=(p,), source=source)] for p in chosen]

    def compute(self, spec: UnitSpec) -> dict[str, Any]:
        """Clean, corrupted and restored scores (restored flattened over the grid, NaN where a cell
        does not apply) of one (prompt, seed, noise sample): the runs `_trace` builds for it."""
        a = self.arguments
        [unit] = make_units(self.model, [(spec.prompt, spec.subject)], None, [spec.seed])
        graph, texts = Graph(), {}

        def add(name: str, ops: list) -> str:
            graph.add(Run(name, unit.prompt, unit.seed, a["guidance_scale"], a["steps"], ops=ops))
            texts[name] = unit.prompt
            return name

        add("clean", [])
        shape = tuple(a["shape"])
        cells = add_sample_runs(add, "", corruption(self.model, unit, a["noise_std"], spec.sample),
                                [(index, "/".join(map(str, index))) for index in np.ndindex(*shape)],
                                lambda index: self._cell_runs(unit, index, "clean"), a["protocol"])
        scores, _ = run_and_score(self.model, graph, texts, self.scorer, a["chunk_size"], progress=False)
        restored = restored_scores(cells, scores, shape).ravel().tolist()
        return {"clean": float(scores["clean"]), "corrupted": float(scores["corrupted"]), "restored": restored}


@dataclass
class SweepPlan:
    """What `plan` resolved: the task engines ship, the units in sweep order, the manifest on file."""

    task: TraceTask
    units: list[UnitSpec]
    manifest: dict[str, Any]


def plan(
    recipe: str, model: Model | str, prompts: str | Path | Sequence[PromptRow], seeds: Sequence[int] = (0,),
    samples: int = 10, steps: int = 25, guidance_scale: float = 7.5, noise: float = 3.0,
    sites: Sequence[str | Sequence[str]] | None = None, branch: str = "both", protocol: str = "paper",
    layers: Sequence[int] | None = None, kinds: Sequence[str] = ("text-self-attn", "text-mlp", "text-hidden"),
    clip: str | None = None, min_effect: float | None = None, chunk_size: int = CHUNK_SIZE,
    device: str = "cpu", threads: int = 1,
) -> SweepPlan:
    """Resolve a trace sweep: the model's fingerprint, the corruption std over the set's subjects,
    the scorer, the grid, and every unit's key. Arguments as `trace_unet` / `trace_text_encoder`
    (`sites`: denoiser site names, kinds such as 'cross-attn', or groups; `layers`, `kinds`: text
    sites); the text trace's token axis is ROME's token roles. Raises on a subject not in its
    prompt, an unknown site, or bad counts, before anything is computed."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; sweeps run {', '.join(RECIPES)}")
    if samples < 1 or steps < 1 or not seeds or chunk_size < 1 or threads < 1:
        raise ValueError("samples, steps, chunk_size and threads must be >= 1, and seeds not empty")
    if protocol not in ("paper", "aligned") or (recipe == "trace-text" and protocol != "paper"):
        raise ValueError(f"protocol {protocol!r} does not apply to {recipe}; use paper"
                         + (" or aligned" if recipe == "trace-unet" else ""))
    source, loaded, fingerprint = prepare_model(model, device)
    rows = list(prompts) if not isinstance(prompts, (str, Path)) else load_prompt_set(prompts)
    trace_units = make_units(loaded, [(r.prompt, r.subject) for r in rows], None, [0])  # checks every subject
    judged = subject_attributes([r.subject for r in rows])
    scorer = CLIPScore if clip else default_scorer(loaded, None, judged)
    stds = {s.name: noise * embedding_std(loaded, trace_units, s) for s in loaded.sites("text-embed")}
    arguments: dict[str, Any] = {
        "steps": steps, "guidance_scale": guidance_scale, "noise": noise, "noise_std": stds,
        "clip": clip, "judged": list(judged) if judged else None, "scorer": scorer.name, "chunk_size": chunk_size,
        "protocol": protocol,
    }  # everything a unit's scores depend on, hence in its key; more seeds or samples reuse the units on file
    if recipe == "trace-unet":
        arguments.update(_unet_grid(loaded, sites), branch=branch)
    else:
        names = [s.name for s in text_sites(loaded, kinds, layers)]
        arguments.update(sites=names, kinds=list(kinds), axes=["site", "token"],
                         coords={"site": names, "token": list(ROLES)}, shape=[len(names), len(ROLES)])
    units = []
    for row, unit in zip(rows, trace_units):
        extra = {"positions": list(unit.span.positions), "tokens": list(unit.tokens)}
        for seed in seeds:
            for sample in range(samples):
                key = unit_key(recipe, arguments, fingerprint, row.prompt, row.subject, seed, sample)
                units.append(UnitSpec(key, len(units), row.prompt, row.subject, int(seed), sample, row.attribute, extra))
    task = TraceTask(recipe, source, device, fingerprint, arguments, threads)
    manifest = {"recipe": recipe, "arguments": arguments, "model": source or repr(loaded),
                "model_fingerprint": fingerprint, "seeds": [int(s) for s in seeds], "samples": samples,
                "min_effect": getattr(scorer, "min_effect", 0.0) if min_effect is None else min_effect, "units": len(units),
                "prompts": [r.__dict__ for r in rows]}
    return SweepPlan(task, units, manifest)


def prepare_model(model: Model | str, device: str) -> tuple[str | None, Model, str]:
    """What a sweep's workers load (the name, folder or hub id; None for a model object), the loaded
    model and its fingerprint; kept so workers in this process reuse it instead of loading again."""
    loaded = _load(model, device) if isinstance(model, str) else model
    fingerprint = _fingerprint(loaded)
    _LOADED[(fingerprint, device)] = loaded
    return (model if isinstance(model, str) else None), loaded, fingerprint


def _unet_grid(model: Model, sites: Sequence[str | Sequence[str]] | None) -> dict[str, Any]:
    """The denoiser grid: site groups (a name, or a kind such as 'cross-attn' expanding to its
    sites) and their labels, as `trace_unet` labels them."""
    denoiser = tuple(s.name for s in model.sites() if not s.is_text)
    kinds = {s.kind for s in model.sites() if not s.is_text}
    groups: list[tuple[str, ...]] = []
    for item in (list(denoiser) if not sites else sites):
        if isinstance(item, str) and item in kinds:
            groups += [(s.name,) for s in model.sites(item)]
        elif isinstance(item, str):
            groups.append((model.site(item).name,))
        else:
            groups.append(tuple(model.site(s).name for s in item))
    labels = [{(): "none", denoiser: "all"}.get(g) or "+".join(g) for g in groups]
    return {"groups": [list(g) for g in groups], "axes": ["site"], "coords": {"site": labels}, "shape": [len(labels)]}


def run_sweep(sweep: SweepPlan, out: str | Path, engine: str = "local", address: str | None = None,
              workers: int | None = None, gpus_per_actor: float | None = None, resume: bool = False,
              progress: bool = True) -> SweepStats:
    """Compute the plan's units not yet in `out` on `engine` ('local' or 'ray'), writing each as it
    finishes. Without `resume` a folder that already holds units is refused."""
    chosen = make_engine(engine, address, workers, gpus_per_actor)
    if engine == "ray" and sweep.task.model is None:
        raise SweepEngineError("the ray engine loads the model in its workers: pass its name, folder or hub id, "
                               "not a loaded model")
    store = SweepStore(out)
    store.open(sweep.manifest, resume)
    return run_units(sweep.task, sweep.units, store, chosen, progress)


def sweep_settings(store: SweepStore, manifest: dict[str, Any], on_file: int) -> dict[str, Any]:
    """What an aggregate's `settings["sweep"]` records: units planned, on file and failed, the model."""
    return {"units_planned": manifest["units"], "units_on_file": on_file, "units_failed": len(store.rows(failed=True)),
            "model": manifest["model"], "model_fingerprint": manifest["model_fingerprint"]}


def aggregate(folder: str | Path) -> TraceResult | LocalizeResult | EditEvaluation:
    """The sweep in `folder` as the result its recipe returns (a `TraceResult`, LoCoGen's
    `LocalizeResult`, or an `EditEvaluation`): finished units in sweep order, with intervals over
    them; settings say how many units were planned, on file and failed."""
    store = SweepStore(folder)
    manifest = store.manifest()
    if manifest["recipe"] == "locogen":
        from interventions.sweep_locogen import aggregate_locogen

        return aggregate_locogen(store)
    if manifest["recipe"] == "edit-eval":
        from interventions.sweep_edit_eval import aggregate_edit_eval

        return aggregate_edit_eval(store)
    a, rows = manifest["arguments"], store.rows()
    min_effect = manifest["min_effect"]
    shape = tuple(a["shape"])
    clean = np.array([r["clean"] for r in rows], dtype=np.float64)
    corrupted = np.array([r["corrupted"] for r in rows], dtype=np.float64)
    restored = np.array([r["restored"] for r in rows], dtype=np.float64).reshape(len(rows), *shape)
    records = [{"prompt": r["prompt"], "subject": r["subject"], "seed": r["seed"], "positions": r["extra_positions"],
                "tokens": r["extra_tokens"], "sample": r["sample"], "dropped": bool(c - x < min_effect),
                "key": r["key"]} for r, c, x in zip(rows, clean, corrupted)]
    settings = {"recipe": RECIPES[manifest["recipe"]], "noise": a["noise"], "noise_std": a["noise_std"],
                "samples": manifest["samples"], "steps": a["steps"], "guidance_scale": a["guidance_scale"],
                "scorer": a["scorer"], "protocol": a["protocol"], "min_effect": min_effect, "method": "exact",
                "sweep": sweep_settings(store, manifest, len(rows))}
    if manifest["recipe"] == "trace-unet":
        settings["branch"] = a["branch"]
    else:
        settings.update(kinds=a["kinds"], tokens="roles")
    return TraceResult(tuple(a["axes"]), a["coords"],
                       {"clean": clean, "corrupted": corrupted, "restored": restored}, records, settings)


def write_report(folder: str | Path, out: str | Path | None = None) -> Path:
    """Aggregate the sweep in `folder`, save it as `folder/result/` (a result its class's `load`
    reads) and draw its report (default `folder/report.html`; an edit evaluation's is its table);
    returns the report's path."""
    from viz.locogen import locogen_curve
    from viz.report import Report
    from viz.traces import denoiser_site_map, text_encoder_grid

    result = aggregate(folder)
    result.save(Path(folder) / "result")
    sweep = result.settings["sweep"]
    if isinstance(result, EditEvaluation):
        recipe, text, figure = "evaluate_edit", result.table(), None
    elif isinstance(result, LocalizeResult):
        recipe, text, figure = result.settings["recipe"], result.table(), locogen_curve(result)
    else:
        recipe, text = result.settings["recipe"], result.summary()
        figure = denoiser_site_map(result) if result.axes == ("site",) else text_encoder_grid(result)
    report = Report(f"Sweep: {recipe}",
                    f"{sweep['units_on_file']} of {sweep['units_planned']} units on file, {sweep['units_failed']} failed; "
                    f"model {sweep['model']} ({sweep['model_fingerprint']})")
    report.text(text)
    if figure is not None:
        report.figure(figure)
    return report.write(Path(out) if out is not None else Path(folder) / "report.html")
