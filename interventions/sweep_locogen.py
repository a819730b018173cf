"""LoCoGen as a sweep: every window of one fixed m over a prompt set, split into (prompt, seed)
units that every engine computes alike, read back into the `LocalizeResult` that `localize`
returns (so `interp report` draws its curve).

m is fixed for a sweep (`window`): `localize`'s growing of m decides from the whole set's means
whether to try the next m, so it cannot be split into independent units; sweep each m you want in
its own folder. A unit is one graph: the unswapped run, every layer swapped, each window of m
swapped, and the random control's candidates. Which window wins, and so which random layers and
which window's collateral count, is decided over all units; a unit therefore computes what every
outcome needs (each window's collateral, and the random control's second draw where its first draw
is a window itself, `random_candidates`), and the aggregation picks as `localize` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from interp.errors import ResultFormatError
from interp.model import Model
from interp.sweeps import SweepStore, UnitSpec, unit_key
from interventions.locogen import (
    JUDGED, LocalizeResult, WindowSweep, assess_windows, best_window, collateral_attributes, collateral_scores,
    random_layers, window_starts,
)
from interventions.prompt_sets import PromptRow, load_prompt_set
from interventions.sweep_recipes import CHUNK_SIZE, SweepPlan, TraceTask, _scorer, prepare_model, sweep_settings

RECIPE = "locogen"
TARGET = "a painting"  # a row's target where the prompt set gives none, as `localize`'s default


def random_candidates(layers: int, m: int, seed: int) -> list[list[int]]:
    """Every set of layers `random_layers(layers, m, chosen window, seed)` can return, whichever
    window is chosen: its first draw, and where that draw is a window itself, the draw after it."""
    first = random_layers(layers, m, (), seed)
    is_window = first == list(range(first[0], first[0] + m))
    return [first, random_layers(layers, m, first, seed)] if is_window and math.comb(layers, m) > 1 else [first]


@dataclass(frozen=True)
class LocoGenTask(TraceTask):
    """The LoCoGen recipe with its resolved arguments; loads its model as a trace task does."""

    def worker(self, model: Model) -> LocoGenWorker:
        return LocoGenWorker(model, self)


class LocoGenWorker:
    """Computes LoCoGen units on one loaded model."""

    def __init__(self, model: Model, task: LocoGenTask):
        self.model, self.arguments = model, task.arguments
        self.scorer = _scorer(model, task.arguments, task.device)

    def compute(self, spec: UnitSpec) -> dict[str, Any]:
        """One (prompt, seed): scores of no swap, every layer, each window and each random
        candidate; per collateral attribute the judge's P of the unswapped image and of each window's."""
        a = self.arguments
        target, text = spec.extra["target"], spec.extra["text"]
        sweep = WindowSweep(self.model, a["layers"], [(spec.prompt, target, spec.seed)], [text], self.scorer, a["steps"],
                       a["guidance_scale"], a["chunk_size"], False)
        starts = window_starts(len(a["layers"]), a["m"])
        candidates = a["random_candidates"]

        def runs(t: str) -> dict[str, list]:
            return {"baseline": [], "full": sweep.swap(range(len(a["layers"])), t), **sweep.windows(a["m"])(t),
                    **{f"random{i}": sweep.swap(c, t) for i, c in enumerate(candidates)}}

        scores, images = sweep.generate(runs)
        windows = [images[f"u0/w{s}"] for s in starts]
        payload: dict[str, Any] = {"baseline": scores["baseline"][0], "full": scores["full"][0],
                                   "window": [scores[f"w{s}"][0] for s in starts],
                                   "random": [scores[f"random{i}"][0] for i in range(len(candidates))]}
        side = collateral_scores(a["collateral"], [spec.prompt] * len(starts), windows,
                                  [images["u0/baseline"]] * len(starts))
        for attribute in a["collateral"]:
            payload[f"collateral:{attribute}"] = side[f"collateral:{attribute}"]
            payload[f"collateral baseline:{attribute}"] = side[f"collateral baseline:{attribute}"][0]
        return payload


def plan_locogen(
    model: Model | str, prompts: str | Path | Sequence[PromptRow], window: int, seeds: Sequence[int] = (0,),
    steps: int = 25, guidance_scale: float = 7.5, mode: str = "lowest", attribute: str | None = None,
    judged: str | Sequence[str] | None = None, collateral: Sequence[str] | None = None, threshold: float = 0.5,
    control_seed: int = 0, clip: str | None = None, chunk_size: int = CHUNK_SIZE, device: str = "cpu",
    threads: int = 1,
) -> SweepPlan:
    """Resolve a LoCoGen sweep: windows of `window` (m, fixed) cross-attention layers, each row's
    prompt fed its `target` (TARGET where the set gives none) in the windows' layers, for every
    seed. Other arguments as `localize`. Raises on a window that does not fit, an unknown mode or
    bad counts, before anything is computed."""
    if window is None:
        raise ValueError("a LoCoGen sweep needs a fixed window: pass window=m (--window M); growing m "
                         "decides from the whole set, so sweep each m in its own folder")
    if mode not in JUDGED:
        raise ValueError(f"mode must be 'lowest' (objects, style) or 'highest' (facts), got {mode!r}")
    if steps < 1 or not seeds or chunk_size < 1 or threads < 1:
        raise ValueError("steps, chunk_size and threads must be >= 1, and seeds not empty")
    source, loaded, fingerprint = prepare_model(model, device)
    rows = list(prompts) if not isinstance(prompts, (str, Path)) else load_prompt_set(prompts)
    if not rows:
        raise ValueError("the prompt set is empty; give it at least one row")
    untargeted = [r.prompt for r in rows if not r.target]
    if mode == "highest" and attribute is None and untargeted:
        raise ValueError(f"mode 'highest' scores each image against its row's target, and {untargeted[0]!r} has none; "
                         f"give the prompt set a target column (e.g. 'the king of vardo')")
    layers = [s.name for s in loaded.sites("cross-attn")]
    window_starts(len(layers), window)
    judged = JUDGED[mode] if judged is None else ((judged,) if isinstance(judged, str) else tuple(judged))
    scorer = _scorer(loaded, {"clip": clip, "judged": list(judged)}, device)
    arguments: dict[str, Any] = {
        "m": window, "layers": layers, "mode": mode, "attribute": attribute, "steps": steps,
        "guidance_scale": guidance_scale, "clip": clip, "judged": list(judged), "scorer": scorer.name,
        "collateral": collateral_attributes(loaded, collateral, judged, [r.prompt for r in rows]),
        "random_candidates": random_candidates(len(layers), window, control_seed), "chunk_size": chunk_size,
    }  # everything a unit's scores depend on, hence in its key; threshold and control_seed only pick
    units = []
    for row in rows:
        target = row.target or TARGET
        text = attribute or (row.prompt if mode == "lowest" else target)
        for seed in seeds:
            key = unit_key(RECIPE, arguments, fingerprint, row.prompt, row.subject, seed, 0, {"target": target})
            units.append(UnitSpec(key, len(units), row.prompt, row.subject, int(seed), 0, row.attribute,
                                  {"target": target, "text": text}))
    task = LocoGenTask(RECIPE, source, device, fingerprint, arguments, threads)
    manifest = {"recipe": RECIPE, "arguments": arguments, "model": source or repr(loaded),
                "model_fingerprint": fingerprint, "seeds": [int(s) for s in seeds], "samples": 1,
                "threshold": threshold, "control_seed": control_seed, "units": len(units),
                "prompts": [r.__dict__ for r in rows]}
    return SweepPlan(task, units, manifest)


def aggregate_locogen(store: SweepStore) -> LocalizeResult:
    """The LoCoGen sweep in `store` as `localize(..., window=m)` returns it: the finished units in
    sweep order; the winning window, the random control and the collateral chosen over them."""
    manifest, rows = store.manifest(), store.rows()
    if not rows:
        raise ResultFormatError(f"{store.folder} holds no finished unit ({len(store.rows(failed=True))} failed, errors "
                                f"in failed/); run the sweep, or fix what failed and --resume it")
    a, seed = manifest["arguments"], manifest["control_seed"]
    m, mode, count = a["m"], a["mode"], len(a["layers"])
    starts = window_starts(count, m)
    grid = np.array([r["window"] for r in rows], dtype=np.float64)
    reference = {"baseline": [r["baseline"] for r in rows], "full": [r["full"] for r in rows]}
    grown, met = assess_windows(m, starts, grid, mode, reference, manifest["threshold"])
    start = starts[best_window(grid.mean(0), mode)]
    picked = random_layers(count, m, range(start, start + m), seed)
    candidate = a["random_candidates"].index(picked)
    scores = {"window": grid, **reference, "random": [r["random"][candidate] for r in rows]}
    for attribute in a["collateral"]:
        scores[f"collateral:{attribute}"] = [r[f"collateral:{attribute}"][starts.index(start)] for r in rows]
        scores[f"collateral baseline:{attribute}"] = [r[f"collateral baseline:{attribute}"] for r in rows]
    settings = {"recipe": "localize", "m": m, "layers": a["layers"], "mode": mode, "scorer": a["scorer"],
                "attribute": a["attribute"], "steps": a["steps"], "guidance_scale": a["guidance_scale"],
                "threshold": manifest["threshold"], "met": met, "grown": [grown], "random layers": picked,
                "control seed": seed, "collateral": a["collateral"],
                "sweep": sweep_settings(store, manifest, len(rows))}
    units = [{"prompt": r["prompt"], "target": r["extra_target"], "seed": r["seed"], "text": r["extra_text"],
              "key": r["key"]} for r in rows]
    return LocalizeResult(("window start",), {"window start": starts}, scores, units, settings)
