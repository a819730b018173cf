"""LoCoGen as a sweep with the local engine: the aggregate equals `localize` with the same fixed m
on the same units, resuming computes nothing twice, the random control's candidates cover every
chosen window, and `interp sweep locogen` ends in a report."""

import numpy as np
import pytest
from typer.testing import CliRunner

from interp.cli import app
from interventions import sweep_recipes
from interventions.locogen import LocalizeResult, localize, random_layers, window_starts
from interventions.prompt_sets import load_prompt_set
from interventions.sweep_locogen import plan_locogen, random_candidates
from tests.test_sweeps import rows, tiny  # noqa: F401 - the tiny model and two style prompts, shared

M = 2  # windows of 2 of the tiny model's 7 cross-attention layers: 6 windows per unit
SMALL = dict(window=M, seeds=[0, 1], steps=2)  # 2 prompts x 2 seeds = 4 units


def test_random_candidates_hold_the_control_of_every_chosen_window():
    for layers, m in ((7, 1), (7, 2), (7, 6), (4, 4), (3, 2)):
        for seed in range(30):
            candidates = random_candidates(layers, m, seed)
            for start in window_starts(layers, m):
                assert random_layers(layers, m, range(start, start + m), seed) in candidates


def test_locogen_sweep_aggregates_to_localize_on_the_same_units(tiny, rows, tmp_path):
    plan = plan_locogen(tiny, rows, **SMALL)
    assert len(plan.units) == 4 and len({u.key for u in plan.units}) == 4
    stats = sweep_recipes.run_sweep(plan, tmp_path / "sweep", progress=False)
    assert (stats.planned, stats.computed, stats.failed) == (4, 4, 0)
    swept = sweep_recipes.aggregate(tmp_path / "sweep")
    direct = localize(tiny, [r.prompt for r in rows], [r.target for r in rows], **SMALL, progress=False)
    assert isinstance(swept, LocalizeResult) and swept.axes == direct.axes and swept.coords == direct.coords
    assert set(swept.scores) == set(direct.scores) and "random" in swept.scores
    for name in direct.scores:  # each unit is its own batch: localize batches differently (float32)
        np.testing.assert_allclose(swept.scores[name], direct.scores[name], rtol=0, atol=1e-4)
    assert [{k: v for k, v in u.items() if k != "key"} for u in swept.units] == direct.units
    exact = {k: v for k, v in direct.settings.items() if k != "grown"}
    assert {k: v for k, v in swept.settings.items() if k not in ("grown", "sweep")} == exact
    [grown], [expected] = swept.settings["grown"], direct.settings["grown"]
    assert grown == pytest.approx(expected, abs=1e-4)
    assert swept.best_start == direct.best_start and swept.settings["sweep"]["units_on_file"] == 4
    again = sweep_recipes.run_sweep(plan, tmp_path / "sweep", resume=True, progress=False)
    assert (again.skipped, again.computed) == (4, 0)  # resume computes nothing twice
    more = plan_locogen(tiny, rows, window=M, seeds=[0, 1, 2], steps=2)
    grown_by_a_seed = sweep_recipes.run_sweep(more, tmp_path / "sweep", resume=True, progress=False)
    assert (grown_by_a_seed.skipped, grown_by_a_seed.computed) == (4, 2)  # more seeds reuse the units on file


def test_locogen_sweep_needs_a_fixed_window_that_fits(tiny, rows):
    with pytest.raises(ValueError, match="fixed window"):
        plan_locogen(tiny, rows, window=None)
    with pytest.raises(Exception, match="window=8 does not fit"):
        plan_locogen(tiny, rows, window=8)
    with pytest.raises(ValueError, match="has none; give the prompt set a target column"):
        plan_locogen(tiny, load_prompt_set("tiny/facts")[:1], window=1, mode="highest")


def test_cli_locogen_sweep_then_report(tmp_path):
    runner = CliRunner()
    out = tmp_path / "sweep"
    prompts = tmp_path / "set.csv"
    prompts.write_text("prompt,subject,attribute,target\na red circle in the style of monet,monet,style,painting\n")
    args = ["sweep", "locogen", "--prompts", str(prompts), "--out", str(out), "--window", "3", "--steps", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "1 units computed, 0 on file before, 0 failed" in result.output and "m = 3" in result.output
    assert LocalizeResult.load(out / "result").settings["sweep"]["units_on_file"] == 1
    report = runner.invoke(app, ["report", str(out)])
    assert report.exit_code == 0 and (out / "report.html").is_file()
    unfixed = runner.invoke(app, ["sweep", "locogen", "--prompts", str(prompts), "--out", str(tmp_path / "x")])
    assert unfixed.exit_code == 2 and "--window" in unfixed.output
    traced = runner.invoke(app, [*args[:5], str(tmp_path / "y"), "--window", "3", "--site", "mid-cross-attn"])
    assert traced.exit_code == 2 and "--site and --layer for the traces" in traced.output
    windowed = runner.invoke(app, ["sweep", "trace-unet", *args[2:5], str(tmp_path / "z"), "--window", "3"])
    assert windowed.exit_code == 2 and "--window is for locogen" in windowed.output
