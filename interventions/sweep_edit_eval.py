"""Edit evaluation as a sweep: the (prompt, seed) units of `evaluate_edit`'s groups under each
condition (unedited, edited, and the controls), one judged image per unit, read back into the
`EditEvaluation` that `evaluate_edit` returns.

The planner does what the evaluation decides once: the groups and held-out prompts (from the edit's
metadata) and the controls (rebuilt on its model). The task carries every condition's `Edit`, so a
worker applies it around its unit (reverted bit for bit after) and never rebuilds one. A unit's key
holds its condition and a digest of that condition's edit; a (prompt, seed) several groups share is
computed once per condition.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from interp.editing import Edit
from interp.errors import ResultFormatError
from interp.model import Model
from interp.sweeps import SweepStore, UnitSpec, unit_key
from interventions import edits
from interventions.edit_eval import (
    IMAGES_PER_GROUP, EditEvaluation, Row, chosen_concepts, edit_prompts, edited_concepts, plan_evaluation, plan_groups,
)
from interventions.evaluate import GUIDANCE, STEPS, Judge, judge_units, tiny_judge
from interventions.sweep_recipes import SweepPlan, TraceTask, prepare_model, sweep_settings
from models.tiny.scenes import parse_caption

RECIPE = "edit-eval"


def edit_digest(edit: Edit | None) -> str:
    """A hash of an edit's deltas and base fingerprints ('none' for the unedited condition)."""
    if edit is None:
        return "none"
    digest = hashlib.sha256()
    for name in sorted(edit.deltas):
        digest.update(f"{name}{edit.fingerprints.get(name)}".encode())
        digest.update(edit.deltas[name].dense().detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class EditEvalTask(TraceTask):
    """The evaluation with its resolved arguments, each condition's edit and the judge (a
    module-level callable, so Ray can ship it); loads its model as a trace task does."""

    edits: dict[str, Edit | None] = field(default_factory=dict, hash=False)
    judge: Judge = tiny_judge

    def worker(self, model: Model) -> EditEvalWorker:
        return EditEvalWorker(model, self)


class EditEvalWorker:
    """Judges evaluation units on one loaded model."""

    def __init__(self, model: Model, task: EditEvalTask):
        self.model, self.task = model, task

    def compute(self, spec: UnitSpec) -> dict[str, Any]:
        """One (prompt, seed) under its condition: the judge's reading of the image, as JSON."""
        a, edit = self.task.arguments, self.task.edits[spec.extra["condition"]]
        with edits.applied(self.model, edit) if edit is not None else nullcontext():
            judged = judge_units(self.model, [(spec.prompt, spec.seed)], [parse_caption(spec.prompt)],
                                 self.task.judge, steps=a["steps"], guidance_scale=a["guidance_scale"])
        return {"prediction": json.dumps(judged.predictions[0], sort_keys=True)}


def _groups(manifest: dict[str, Any]) -> list:
    """The evaluation's groups, planned again from the edit's metadata (deterministic)."""
    s = manifest["settings"]
    pairs = chosen_concepts(manifest["edit"], manifest["concepts_chosen"])
    used = edit_prompts(manifest["edit"])
    edited = edited_concepts(manifest["edit"])
    return [g for c in pairs for g in plan_groups(c, used, s["images_per_group"], s["seed"], edited)[0]]


def plan_edit_eval(
    model: Model | str, edit: Edit | str | Path, concepts: str | Sequence[str] | None = None,
    images_per_group: int = IMAGES_PER_GROUP, seed: int = 0, controls: bool = True, control_seed: int = 0,
    judge: Judge = tiny_judge, steps: int = STEPS, guidance_scale: float = GUIDANCE, device: str = "cpu",
    threads: int = 1,
) -> SweepPlan:
    """Resolve an edit-evaluation sweep: arguments as `evaluate_edit` (`edit`: an `Edit` or its
    file); units are every group's (prompt, seed) under every condition that was built. Raises as
    `evaluate_edit` does, before anything is computed."""
    source, loaded, fingerprint = prepare_model(model, device)
    edit = edit if isinstance(edit, Edit) else Edit.load(edit)
    plan = plan_evaluation(loaded, edit, concepts, images_per_group, seed, controls, control_seed)
    runs = plan.runs
    judge_name = f"{judge.__module__}.{judge.__qualname__}"
    arguments = {"steps": steps, "guidance_scale": guidance_scale, "judge": judge_name}
    units = []
    for condition, condition_edit in runs.items():
        inputs = {"condition": condition, "edit": edit_digest(condition_edit)}
        for group in plan.groups:
            for prompt, unit_seed in group.units:
                key = unit_key(RECIPE, arguments, fingerprint, prompt, "", unit_seed, 0, inputs)
                units.append(UnitSpec(key, len(units), prompt, "", int(unit_seed), 0, f"{group.concept} / {group.name}",
                                      {"condition": condition}))
    task = EditEvalTask(RECIPE, source, device, fingerprint, arguments, threads, runs, judge)
    manifest = {"recipe": RECIPE, "arguments": {**arguments, "edits": {c: edit_digest(e) for c, e in runs.items()}},
                "model": source or repr(loaded), "model_fingerprint": fingerprint, "units": len({u.key for u in units}),
                "edit": dict(edit.metadata), "concepts_chosen": [c.old for c in plan.concepts],
                "conditions": plan.conditions, "run": list(runs), "controls": plan.control_records(),
                "excluded": plan.excluded, "notes": plan.notes,
                "settings": {"images_per_group": images_per_group, "seed": seed, "control_seed": control_seed,
                             "steps": steps, "guidance_scale": guidance_scale}}
    return SweepPlan(task, units, manifest)


def aggregate_edit_eval(store: SweepStore) -> EditEvaluation:
    """The sweep in `store` as `evaluate_edit` returns it: per (concept, group, measure) and
    condition, (hits, n) over that group's finished units."""
    manifest, rows = store.manifest(), store.rows()
    if not rows:
        raise ResultFormatError(f"{store.folder} holds no finished unit ({len(store.rows(failed=True))} failed, errors "
                                f"in failed/); run the sweep, or fix what failed and --resume it")
    a = manifest["arguments"]
    arguments = {k: v for k, v in a.items() if k != "edits"}
    read = {r["key"]: json.loads(r["prediction"]) for r in rows}
    groups, conditions = _groups(manifest), manifest["conditions"]
    counts: dict[str, list] = {}
    for condition in manifest["run"]:
        inputs = {"condition": condition, "edit": a["edits"][condition]}
        counts[condition] = []
        for group in groups:
            found = [(read[k], parse_caption(p)) for p, s in group.units
                     if (k := unit_key(RECIPE, arguments, manifest["model_fingerprint"], p, "", s, 0, inputs)) in read]
            predicted, expected = [f for f, _ in found], [e for _, e in found]
            counts[condition].append([m.count(predicted, expected) for m in group.measures])
    table = [Row(g.concept, g.name, m.label, {c: counts[c][i][j] if c in counts else None for c in conditions})
             for i, g in enumerate(groups) for j, m in enumerate(g.measures)]
    notes = list(manifest["notes"])  # the held-out note included (`plan_evaluation`)
    pairs = chosen_concepts(manifest["edit"], manifest["concepts_chosen"])
    return EditEvaluation(manifest["edit"], pairs, conditions, table, manifest["controls"], manifest["excluded"], notes,
                          {**manifest["settings"], "sweep": sweep_settings(store, manifest, len(rows))},
                          {f"{g.concept} / {g.name}": list(g.units) for g in groups})
