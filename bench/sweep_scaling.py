"""Benchmark: one trace sweep on the tiny model with the local engine, Ray on 1 worker and Ray on 2
workers (each a new local Ray instance), measured in one run.

Prints per engine: engine start (Ray, actors, model loading), the units phase (first unit submitted
to last result written), throughput, and the share of the workers' time not spent in the model
(1 - time inside the recipe's compute / (workers x wall)). Then the ratios the sweeps issue sets:
  - Ray 2 workers vs 1 worker, units-phase throughput: target >= 1.6x;
  - Ray 1 worker vs local, time: target <= 1.10x (units phase, and whole wall with Ray's start);
and whether every unit's scores are bit-equal across the three (max |difference| otherwise).
Each worker uses 1 torch thread. The machine's load average is printed with the numbers, since
on a shared 2-core machine other work takes cores from the workers.

Run: ``OMP_NUM_THREADS=1 python -m bench.sweep_scaling [--prompts 10 --seeds 2 --samples 10 --steps 5]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from interp.sweeps import SweepStore, make_engine
from interventions import sweep_recipes
from interventions.prompt_sets import load_prompt_set


def measure(plan: sweep_recipes.SweepPlan, engine_name: str, workers: int | None, folder: Path) -> dict:
    """Run every unit of `plan` on one engine, as `run_units` does, timing its phases."""
    engine = make_engine(engine_name, None, workers)
    store = SweepStore(folder)
    store.open(plan.manifest, resume=False)
    compute = 0.0
    start = time.perf_counter()
    with engine.pool(plan.task) as pool:
        ready = time.perf_counter()
        for outcome in pool.map(plan.units):
            assert outcome.ok, outcome.error
            store.write(outcome, 1)
            compute += outcome.seconds
        end = time.perf_counter()
    n, used = len(plan.units), engine.workers
    return {"engine": f"{engine_name}-{used}" if engine_name == "ray" else engine_name, "workers": used,
            "start": ready - start, "units_wall": end - ready, "wall": end - start, "throughput": n / (end - ready),
            "outside_units": 1 - compute / (used * (end - ready)), "outside_wall": 1 - compute / (used * (end - start)),
            "results": {r["key"]: np.array([r["clean"], r["corrupted"], *r["restored"]]) for r in store.rows()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=10, help="first N prompts of tiny/style")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--site", action="append", default=None, help="denoiser site or kind (default cross-attn)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = load_prompt_set("tiny/style")[: args.prompts]
    plan = sweep_recipes.plan("trace-unet", "tiny", rows, range(args.seeds), args.samples, args.steps,
                              sites=args.site or ["cross-attn"])
    print(f"{len(plan.units)} units: {len(rows)} tiny/style prompts x {args.seeds} seeds x {args.samples} samples, "
          f"{args.steps} steps, {len(plan.task.arguments['groups'])} sites; load average before "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    runs = []
    with tempfile.TemporaryDirectory() as temporary:
        for name, workers in (("local", None), ("ray", 1), ("ray", 2)):
            runs.append(measure(plan, name, workers, Path(temporary) / f"{name}{workers}"))
            r = runs[-1]
            print(f"{r['engine']:>6}: start {r['start']:6.1f} s  units {r['units_wall']:6.1f} s  "
                  f"{r['throughput']:5.2f} units/s  not in the model: {r['outside_units']:.1%} of the units phase, "
                  f"{r['outside_wall']:.1%} with the start  (load {os.getloadavg()[0]:.2f})")
    local, ray1, ray2 = runs
    print(f"ray 2 workers vs 1, throughput: {ray2['throughput'] / ray1['throughput']:.2f}x (target >= 1.6x)")
    print(f"ray 1 worker vs local, time: {ray1['units_wall'] / local['units_wall']:.2f}x units phase, "
          f"{ray1['wall'] / local['wall']:.2f}x with Ray's start (target <= 1.10x)")
    keys = local["results"].keys()
    assert keys == ray1["results"].keys() == ray2["results"].keys()
    worst = max(float(np.nanmax(np.abs(run["results"][k] - local["results"][k]), initial=0.0))
                for run in (ray1, ray2) for k in keys)
    equal = all(np.array_equal(run["results"][k], local["results"][k], equal_nan=True) for run in (ray1, ray2) for k in keys)
    print(f"per-unit scores, {len(keys)} units: {'bit-equal' if equal else f'max |difference| {worst:.3g}'} "
          f"across local, ray-1 and ray-2")


if __name__ == "__main__":
    main()
