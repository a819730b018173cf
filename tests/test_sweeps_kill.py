"""A sweep's driver SIGKILLed at 5 random moments, resumed each time, ends with the results of an
uninterrupted sweep: nothing on file is lost, no unit is on file twice, no half-written file stays.
Here with the local engine (the driver computes); tests/test_sweeps_ray.py kills Ray's driver."""

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import pytest
import torch
from tqdm import tqdm

from interp.sweeps import SweepStore
from interventions import sweep_recipes
from interventions.prompt_sets import load_prompt_set

SITES = ["down-0-cross-attn-0", "mid-cross-attn"]


def rows_on_file(folder: Path) -> dict[str, dict]:
    """Every unit row on file by key, without how it was computed (seconds, worker, attempts);
    asserts none is twice. Recipe-independent: a row holds the unit and the recipe's payload."""
    rows = SweepStore(folder).rows()
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)) and len({r["index"] for r in rows}) == len(rows)
    return {r["key"]: {k: v for k, v in r.items() if k not in ("seconds", "worker", "attempts")} for r in rows}


def unit_results(folder: Path) -> dict[str, tuple]:
    """Per-unit trace results on file: key -> (index, clean, corrupted, restored); asserts none is twice."""
    return {k: (r["index"], r["clean"], r["corrupted"], tuple(r["restored"])) for k, r in rows_on_file(folder).items()}


class Driver(Protocol):
    """A started sweep driver: a subprocess.Popen or a multiprocessing.Process."""

    pid: int


def _running(driver) -> bool:
    return driver.poll() is None if isinstance(driver, subprocess.Popen) else driver.is_alive()


def reference_sweep(plan, folder: Path) -> float:
    """Runs `plan` uninterrupted into `folder`; returns its seconds per unit on this machine."""
    start = time.perf_counter()
    sweep_recipes.run_sweep(plan, folder, progress=False)
    return (time.perf_counter() - start) / len(plan.units)


def kill_five_times(start: Callable[[], Driver], out: Path, unit_seconds: float, seed: int = 0) -> list[int]:
    """Start a sweep driver with `start` (a sweep with --resume into `out`) and SIGKILL it 5 times at
    random moments: after 0 to 2 more units are on file, plus up to one unit's time (`unit_seconds`, measured
    by the reference sweep, so that a kill lands anywhere within a unit on a fast machine as on a slow one).
    Each kill lets at most 3 more units on file. Returns the units on file after each kill."""
    rng, on_file = random.Random(seed), []
    for _ in range(5):
        before, wanted = len(SweepStore(out).finished_keys()), rng.randint(0, 2)
        driver = start()
        deadline = time.time() + 300
        while len(SweepStore(out).finished_keys()) < before + wanted and _running(driver) and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, unit_seconds))
        assert _running(driver), "the sweep finished before it could be killed; give it more units"
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait() if isinstance(driver, subprocess.Popen) else driver.join()
        on_file.append(len(SweepStore(out).finished_keys()))
    return on_file


def sweep_command(prompts: Path, out: Path, samples: int, *options: str) -> list[str]:
    return [sys.executable, "-m", "interp.cli", "sweep", "trace-unet", "--prompts", str(prompts), "--out", str(out),
            "--seeds", "2", "--samples", str(samples), "--steps", "2", *[a for s in SITES for a in ("--site", s)],
            "--resume", *options]


def _reference(tmp_path: Path):
    torch.set_num_threads(1)
    rows = load_prompt_set("tiny/style")[:4]
    plan = sweep_recipes.plan("trace-unet", "tiny", rows, seeds=[0, 1], samples=4, steps=2, sites=SITES)
    unit_seconds = reference_sweep(plan, tmp_path / "reference")
    return rows, plan, unit_results(tmp_path / "reference"), unit_seconds


def _resume_in_fork(plan, out: Path) -> None:
    """A forked driver's body: its own tqdm locks first. tqdm's write lock includes a semaphore the fork
    shares with this process, so a driver SIGKILLed while holding it (in any progress bar, even a
    disabled one) would leave every later bar here waiting for good; its thread lock, copied while
    tqdm's monitor thread holds it, would stay locked in the child too."""
    lock, classes = threading.RLock(), [tqdm]
    while classes:  # every bar class that keeps a lock of its own (tqdm.auto's, huggingface_hub's, ...)
        cls = classes.pop()
        classes += cls.__subclasses__()
        if cls is tqdm or "_lock" in cls.__dict__:
            cls.set_lock(lock)
    sweep_recipes.run_sweep(plan, out, resume=True, progress=False)


def fork_driver(plan, out: Path) -> Callable[[], multiprocessing.Process]:
    """Starts a forked copy of this process (no start-up cost) that resumes `plan` into `out`."""

    def start() -> multiprocessing.Process:
        driver = multiprocessing.get_context("fork").Process(target=_resume_in_fork, args=(plan, out))
        driver.start()
        return driver

    return start


def test_driver_process_killed_five_times_then_resumed_equals_an_uninterrupted_sweep(tmp_path):
    """The driver is a forked copy of this process (no start-up cost), SIGKILLed mid-sweep."""
    _, plan, reference, unit_seconds = _reference(tmp_path)
    out = tmp_path / "killed"
    on_file = kill_five_times(fork_driver(plan, out), out, unit_seconds)
    stats = sweep_recipes.run_sweep(plan, out, resume=True, progress=False)
    assert on_file == sorted(on_file) and on_file[-1] > 0  # nothing on file is ever lost
    assert (stats.skipped, stats.computed) == (on_file[-1], 32 - on_file[-1])  # no finished unit computed again
    assert unit_results(out) == reference  # none lost, none twice, bit-equal
    assert not list(out.rglob("*.tmp"))


@pytest.mark.slow  # six `interp sweep` processes, each importing torch and loading the model
def test_cli_driver_killed_five_times_then_resumed_equals_an_uninterrupted_sweep(tmp_path):
    rows, _, reference, unit_seconds = _reference(tmp_path)
    prompts = tmp_path / "set.csv"
    prompts.write_text("prompt,subject,attribute\n" + "".join(f"{r.prompt},{r.subject},{r.attribute}\n" for r in rows))
    out, env = tmp_path / "killed", {**os.environ, "OMP_NUM_THREADS": "1"}
    command = sweep_command(prompts, out, 4)
    on_file = kill_five_times(lambda: subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                                       stderr=subprocess.DEVNULL), out, unit_seconds)
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert on_file == sorted(on_file) and on_file[-1] > 0  # nothing on file is ever lost
    assert unit_results(out) == reference  # none lost, none twice, bit-equal
    assert f"{32 - on_file[-1]} units computed, {on_file[-1]} on file before" in finished.stdout
    assert not list(out.rglob("*.tmp"))


def other_recipe_plans() -> dict[str, Callable[[], object]]:
    """Plans of the LoCoGen and edit-evaluation sweeps on the tiny model (24 units each), built lazily."""
    from interventions import diffquickfix
    from interventions.sweep_edit_eval import plan_edit_eval
    from interventions.sweep_locogen import plan_locogen

    def locogen():
        return plan_locogen("tiny", load_prompt_set("tiny/style")[:2], window=2, seeds=range(12), steps=2)

    def edit_eval():
        edit = diffquickfix.edit(sweep_recipes.prepare_model("tiny", "cpu")[1], "van gogh", "painting", layer=0)
        return plan_edit_eval("tiny", edit, images_per_group=4, controls=False, steps=2)

    return {"locogen": locogen, "edit-eval": edit_eval}


@pytest.mark.parametrize("recipe", ["locogen", "edit-eval"])
def test_locogen_and_edit_eval_drivers_killed_five_times_then_resumed_equal_an_uninterrupted_sweep(recipe, tmp_path):
    torch.set_num_threads(1)
    plan = other_recipe_plans()[recipe]()
    unit_seconds = reference_sweep(plan, tmp_path / "reference")
    out = tmp_path / "killed"
    on_file = kill_five_times(fork_driver(plan, out), out, unit_seconds)
    stats = sweep_recipes.run_sweep(plan, out, resume=True, progress=False)
    units = len(plan.units)
    assert on_file == sorted(on_file) and on_file[-1] > 0  # nothing on file is ever lost
    assert (stats.skipped, stats.computed) == (on_file[-1], units - on_file[-1])  # nothing computed twice
    assert rows_on_file(out) == rows_on_file(tmp_path / "reference")  # none lost, none twice, bit-equal
    assert type(sweep_recipes.aggregate(out)) is type(sweep_recipes.aggregate(tmp_path / "reference"))
    assert not list(out.rglob("*.tmp"))
