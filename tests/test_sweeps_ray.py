"""Sweeps on Ray, against a real local cluster (`ray start --head` on free ports and its own temp
dir, joined by address): per-unit results equal the local engine's with 1 and 2 workers; a worker
SIGKILLed mid-sweep loses only its unit; a driver SIGKILLed 5 times at random moments and resumed
each time ends with the uninterrupted sweep's results, no unit lost or duplicated.

The cluster is stopped by ending the process group of its `ray start --block`, not by `ray stop`,
which would stop every Ray instance on the machine (other users' too)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from interp.sweeps import SweepStore  # noqa: E402
from interventions import sweep_recipes  # noqa: E402
from interventions.prompt_sets import load_prompt_set  # noqa: E402
from tests.test_sweeps_kill import (  # noqa: E402
    kill_five_times, other_recipe_plans, reference_sweep, rows_on_file, sweep_command, unit_results,
)

STEPS, SITES = 2, ["down-0-cross-attn-0", "mid-cross-attn"]
RAY_BIN = Path(sys.executable).with_name("ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """A 2-CPU Ray head on this machine; yields its address."""
    temp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must fit 107 characters
    # no token authentication on this private test cluster: a token in ~/.ray, shared with whatever
    # else runs Ray on this machine, would otherwise have to match
    auth, os.environ["RAY_AUTH_MODE"] = os.environ.get("RAY_AUTH_MODE"), "disabled"
    port = _free_port()
    log = open(Path(temp) / "ray_start.log", "w")
    head = subprocess.Popen(
        [str(RAY_BIN), "start", "--head", "--block", f"--port={port}", f"--temp-dir={temp}", "--num-cpus=2",
         "--num-gpus=0", "--include-dashboard=false", f"--dashboard-agent-listen-port={_free_port()}",
         "--disable-usage-stats", "--node-ip-address=127.0.0.1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0",
             "RAY_worker_niceness": "0"})  # Ray's default 15 starves workers on a busy shared machine
    try:
        deadline = time.time() + 120
        while "Ray runtime started" not in (Path(temp) / "ray_start.log").read_text():
            assert head.poll() is None and time.time() < deadline, (Path(temp) / "ray_start.log").read_text()
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for sig, wait in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):  # `ray start --block` may ignore SIGTERM
            try:
                os.killpg(head.pid, sig)
                head.wait(wait)
                break
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue
        log.close()
        shutil.rmtree(temp, ignore_errors=True)
        if auth is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = auth


@pytest.fixture(scope="module")
def rows():
    return load_prompt_set("tiny/style")[:4]


def _plan(rows, samples: int):
    return sweep_recipes.plan("trace-unet", "tiny", rows, seeds=[0], samples=samples, steps=STEPS, sites=SITES)


@pytest.fixture(scope="module")
def reference(rows, tmp_path_factory):
    """An uninterrupted local sweep of 4 prompts x 1 seed x 3 samples (12 units)."""
    folder = tmp_path_factory.mktemp("reference") / "local"
    sweep_recipes.run_sweep(_plan(rows, 3), folder, progress=False)
    return unit_results(folder)


def test_one_ray_worker_gives_the_local_engines_results(cluster, rows, reference, tmp_path):
    folder = tmp_path / "ray1"
    stats = sweep_recipes.run_sweep(_plan(rows, 3), folder, engine="ray", address=cluster, workers=1, progress=False)
    assert (stats.computed, stats.failed) == (12, 0)
    assert unit_results(folder) == reference  # bit-equal, unit by unit
    assert len({r["worker"] for r in SweepStore(folder).rows()}) == 1


@pytest.mark.parametrize("recipe", ["locogen", "edit-eval"])
def test_locogen_and_edit_eval_tasks_rebuilt_in_ray_workers_give_the_local_engines_results(cluster, recipe, tmp_path):
    """The tasks pickle, ship and load the model again in a Ray worker; per-unit rows are bit-equal."""
    plan = other_recipe_plans()[recipe]()
    plan = type(plan)(plan.task, plan.units[:6], {**plan.manifest, "units": 6})  # 6 units are enough here
    sweep_recipes.run_sweep(plan, tmp_path / "local", progress=False)
    stats = sweep_recipes.run_sweep(plan, tmp_path / "ray", engine="ray", address=cluster, workers=2, progress=False)
    assert (stats.computed, stats.failed) == (6, 0)
    assert rows_on_file(tmp_path / "ray") == rows_on_file(tmp_path / "local")
    assert all(r["worker"].startswith("ray-") for r in SweepStore(tmp_path / "ray").rows())


def test_two_ray_workers_one_killed_mid_sweep_give_the_local_engines_results(cluster, rows, reference, tmp_path):
    """Two workers share the units; one is SIGKILLed after the second result: it loses only the
    units it held, which are rescheduled on its replacement; each unit is written once."""
    folder = tmp_path / "ray2"
    plan = _plan(rows, 3)
    store = SweepStore(folder)
    store.open(plan.manifest, resume=False)
    killed, written = [], 0
    with sweep_recipes.make_engine("ray", cluster, 2).pool(plan.task) as pool:
        for outcome in pool.map(plan.units):
            assert outcome.ok, outcome.error
            store.write(outcome, 1)
            written += 1
            if written == 2:  # a worker that has finished a unit and is computing its next one
                pid = int(outcome.worker.rsplit("-", 1)[1])
                os.kill(pid, signal.SIGKILL)
                killed.append(outcome.worker)
    assert written == 12  # every unit once: the lost ones were rescheduled, none written twice
    assert unit_results(folder) == reference  # bit-equal, unit by unit
    workers = {r["worker"] for r in store.rows()}
    assert len(workers) >= 2 and all(w.startswith("ray-") for w in workers)


@pytest.mark.slow  # six driver starts, each starting Ray workers: minutes on a busy 2-core machine
def test_ray_driver_killed_five_times_then_resumed_equals_an_uninterrupted_sweep(cluster, rows, tmp_path):
    reference = tmp_path / "reference"
    unit_seconds = reference_sweep(sweep_recipes.plan("trace-unet", "tiny", rows, seeds=[0, 1], samples=4,
                                                      steps=STEPS, sites=SITES), reference)
    prompts = tmp_path / "set.csv"
    prompts.write_text("prompt,subject,attribute\n" + "".join(f"{r.prompt},{r.subject},{r.attribute}\n" for r in rows))
    out, env = tmp_path / "killed-driver", {**os.environ, "OMP_NUM_THREADS": "1"}
    command = sweep_command(prompts, out, 4, "--engine", "ray", "--address", cluster, "--workers", "2")
    on_file = kill_five_times(lambda: subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                                       stderr=subprocess.DEVNULL), out, unit_seconds)
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert on_file == sorted(on_file)  # nothing on file is ever lost
    assert unit_results(out) == unit_results(reference)  # none lost, none twice, bit-equal
    assert f"{32 - on_file[-1]} units computed, {on_file[-1]} on file before" in finished.stdout
    assert not list(out.rglob("*.tmp"))
