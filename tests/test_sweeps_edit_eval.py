"""Edit evaluation as a sweep with the local engine: the aggregate equals `evaluate_edit` on the same
units (the random-weight dummy model, 3 images per group at 2 steps, a stub judge, as
tests/test_edit_eval.py), resuming computes nothing twice, and `interp sweep edit-eval` then
`interp report` draw it."""

import pytest
import torch
from typer.testing import CliRunner

import interp
from interp.cli import app
from interventions import diffquickfix, sweep_recipes
from interventions.edit_eval import EditEvaluation, evaluate_edit
from interventions.sweep_edit_eval import plan_edit_eval
from models.tiny import STYLES

SMALL = dict(images_per_group=3, steps=2)


def stub_judge(images: torch.Tensor) -> list[dict]:
    """Values read off coarse image statistics: deterministic, and steady under batching's float noise."""
    readings = []
    for image in images:
        k = int(image.mean() * 100)
        readings.append({"object": ("circle", "square")[k % 2], "color": ("red", "blue")[k // 2 % 2],
                         "style": STYLES[k % 5], "count": 1 + k // 3 % 2, "mark": ("none", "eye")[k // 5 % 2]})
    return readings


@pytest.fixture(scope="module")
def edit(model):
    torch.set_num_threads(1)
    return diffquickfix.edit(model, "van gogh", "painting", layer=0)


def test_edit_eval_sweep_aggregates_to_evaluate_edit(model, edit, tmp_path):
    plan = plan_edit_eval(model, edit, judge=stub_judge, **SMALL)
    conditions = plan.manifest["run"]
    assert len(conditions) == 4 and len({u.key for u in plan.units}) == plan.manifest["units"]
    stats = sweep_recipes.run_sweep(plan, tmp_path / "sweep", progress=False)
    assert (stats.computed, stats.failed) == (plan.manifest["units"], 0)
    swept = sweep_recipes.aggregate(tmp_path / "sweep")
    direct = evaluate_edit(model, edit, judge=stub_judge, **SMALL)
    assert isinstance(swept, EditEvaluation) and swept.conditions == direct.conditions
    assert swept.rows == direct.rows and swept.units == {k: list(v) for k, v in direct.units.items()}
    assert swept.controls == direct.controls and swept.notes == direct.notes and swept.excluded == direct.excluded
    assert {k: v for k, v in swept.settings.items() if k != "sweep"} == direct.settings
    assert swept.table().splitlines()[1:] == direct.table().splitlines()[1:]
    again = sweep_recipes.run_sweep(plan, tmp_path / "sweep", resume=True, progress=False)
    assert (again.skipped, again.computed) == (plan.manifest["units"], 0)  # resume computes nothing twice
    report = sweep_recipes.write_report(tmp_path / "sweep")
    assert report.is_file() and EditEvaluation.load(tmp_path / "sweep" / "result").rows == swept.rows


def test_cli_edit_eval_sweep_then_report(tmp_path):
    path = tmp_path / "edit.safetensors"
    diffquickfix.edit(interp.load("tiny"), "van gogh", "painting", layer=0).save(path)
    out = tmp_path / "sweep"
    args = ["sweep", "edit-eval", "--edit", str(path), "--out", str(out), "--images", "1", "--steps", "1"]
    runner = CliRunner()
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "0 failed" in result.output and "efficacy" in result.output
    assert runner.invoke(app, ["report", str(out)]).exit_code == 0 and (out / "report.html").is_file()
    prompted = runner.invoke(app, [*args[:2], "--prompts", "tiny/style", "--out", str(tmp_path / "x")])
    assert prompted.exit_code == 2 and "edit-eval takes --edit" in prompted.output
