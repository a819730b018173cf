"""Sweeps with the local engine: unit keys, the Parquet store, resuming, failures and retries, the
aggregate equal to the in-memory recipe, bundled prompt sets, and the `interp sweep` command."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

import interp
from interp.cli import app
from interp.errors import ResultFormatError, SweepEngineError
from interp.sweeps import SweepStore, model_fingerprint, unit_key
from interventions import sweep_recipes
from interventions.causal_trace import TraceResult, trace_text_encoder, trace_unet
from interventions.prompt_sets import bundled, load_prompt_set
from models.tiny.scenes import parse_caption

SMALL = dict(seeds=[0], samples=2, steps=2)  # a cheap setting: 2 prompts x 1 seed x 2 samples = 4 units
SITES = ["down-0-cross-attn-0", "mid-cross-attn"]


@pytest.fixture(scope="module")
def tiny() -> interp.Model:
    torch.set_num_threads(1)
    return interp.load("tiny")


@pytest.fixture(scope="module")
def rows():
    return load_prompt_set("tiny/style")[:2]


def test_unit_key_changes_with_every_input_and_only_then():
    base = ("trace-unet", {"steps": 2, "sites": ["a"]}, "f" * 16, "a red circle", "red", 0, 1)
    assert unit_key(*base) == unit_key(base[0], {"sites": ["a"], "steps": 2}, *base[2:])  # argument order is free
    variants = [("trace-text",), ({"steps": 3, "sites": ["a"]},), ("e" * 16,), ("a red star",), ("circle",), (1,), (0,)]
    keys = {unit_key(*base[:i], *v, *base[i + 1:]) for i, v in enumerate(variants)}
    assert len(keys | {unit_key(*base)}) == len(variants) + 1


def test_model_fingerprint_follows_the_weights(tiny):
    before = model_fingerprint(tiny.components)
    weight = tiny.denoiser.get_parameter(next(n for n, _ in tiny.denoiser.named_parameters()))
    original = weight.detach().clone()
    with torch.no_grad():
        weight.view(-1)[0] += 1.0
        changed = model_fingerprint(tiny.components)
        weight.copy_(original)
    assert changed != before and model_fingerprint(tiny.components) == before


def test_bundled_prompt_sets_cover_the_attributes_and_locate_their_subjects(tiny):
    names = bundled()
    for name in ("tiny/style", "tiny/object", "tiny/color", "tiny/facts", "real/objects", "real/styles",
                 "real/colors", "real/actions", "real/facts"):
        assert name in names
    for name in names:
        for row in load_prompt_set(name):
            assert row.subject.lower() in row.prompt.lower() and row.attribute
            if name.startswith("tiny/"):
                parse_caption(row.prompt)  # a caption of the tiny world
                tiny.locate(row.prompt, row.subject)


def test_prompt_set_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="bundled: .*tiny/style"):
        load_prompt_set("tiny/nope")
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,subject,colour\na red circle,red,x\n")
    with pytest.raises(ValueError, match="unknown columns \\['colour'\\]"):
        load_prompt_set(bad)
    bad.write_text("prompt,subject\na red circle,\n")
    with pytest.raises(ValueError, match="row 1 has no subject"):
        load_prompt_set(bad)
    jsonl = tmp_path / "set.jsonl"
    jsonl.write_text(json.dumps({"prompt": "a red circle", "subject": "red", "attribute": "color"}) + "\n{oops\n")
    with pytest.raises(ValueError, match="line 2 is not JSON"):
        load_prompt_set(jsonl)
    jsonl.write_text(json.dumps({"prompt": "a red circle", "subject": "red", "attribute": "color"}) + "\n")
    assert load_prompt_set(jsonl)[0].subject == "red"
    with pytest.raises(ValueError, match="neither .csv nor .jsonl"):
        (tmp_path / "set.txt").write_text("x")
        load_prompt_set(tmp_path / "set.txt")


def test_unet_sweep_aggregates_to_the_recipes_own_result(tiny, rows, tmp_path):
    plan = sweep_recipes.plan("trace-unet", tiny, rows, sites=SITES, **SMALL)
    assert len(plan.units) == 4 and len({u.key for u in plan.units}) == 4
    stats = sweep_recipes.run_sweep(plan, tmp_path / "sweep", progress=False)
    assert (stats.planned, stats.computed, stats.failed) == (4, 4, 0)
    swept = sweep_recipes.aggregate(tmp_path / "sweep")
    direct = trace_unet(tiny, [(r.prompt, r.subject) for r in rows], sites=SITES, seeds=[0], samples=2, steps=2,
                        progress=False)
    assert isinstance(swept, TraceResult) and swept.axes == direct.axes and swept.coords == direct.coords
    for name in direct.scores:  # each unit is its own batch: the one-graph recipe batches differently (float32)
        np.testing.assert_allclose(swept.scores[name], direct.scores[name], rtol=0, atol=1e-4)
    assert [{k: v for k, v in u.items() if k != "key"} for u in swept.units] == direct.units
    assert {k: v for k, v in swept.settings.items() if k != "sweep"} == direct.settings
    assert swept.settings["sweep"]["units_on_file"] == 4
    mean, low, high, n = swept.ie_interval()
    assert (n <= 4).all() and np.all(low[n >= 2] <= mean[n >= 2])
    again = sweep_recipes.run_sweep(plan, tmp_path / "sweep", resume=True, progress=False)
    assert (again.skipped, again.computed) == (4, 0)  # resume computes nothing twice
    with pytest.raises(ResultFormatError, match="--resume"):
        sweep_recipes.run_sweep(plan, tmp_path / "sweep", progress=False)


def test_text_sweep_matches_trace_text_encoder_by_role(tiny, rows, tmp_path):
    plan = sweep_recipes.plan("trace-text", tiny, rows, layers=[0], seeds=[0], samples=1, steps=2)
    sweep_recipes.run_sweep(plan, tmp_path / "text", progress=False)
    swept = sweep_recipes.aggregate(tmp_path / "text")
    direct = trace_text_encoder(tiny, [(r.prompt, r.subject) for r in rows], layers=[0], seeds=[0], samples=1,
                                steps=2, progress=False)
    assert swept.coords == direct.coords
    for name in direct.scores:
        np.testing.assert_allclose(swept.scores[name], direct.scores[name], rtol=0, atol=1e-4)


def test_store_rows_are_parquet_files_named_by_key(tiny, rows, tmp_path):
    plan = sweep_recipes.plan("trace-unet", tiny, rows[:1], sites=SITES, seeds=[0], samples=1, steps=2)
    sweep_recipes.run_sweep(plan, tmp_path / "s", progress=False)
    [path] = list((tmp_path / "s" / "units").glob("*.parquet"))
    row = pq.read_table(path).to_pylist()[0]
    assert path.stem == row["key"] == plan.units[0].key
    assert len(row["restored"]) == 2 and row["attempts"] == 1 and row["worker"].startswith("local-")
    assert not list((tmp_path / "s").rglob("*.tmp"))


def test_a_failed_unit_is_retried_once_then_recorded_and_the_rest_finish(tiny, rows, tmp_path, monkeypatch):
    plan = sweep_recipes.plan("trace-unet", tiny, rows, sites=SITES[:1], seeds=[0], samples=2, steps=2)
    flaky, broken = plan.units[1].key, plan.units[2].key
    calls: dict[str, int] = {}
    compute = sweep_recipes.TraceWorker.compute

    def failing(self, spec):
        calls[spec.key] = calls.get(spec.key, 0) + 1
        if spec.key == broken or (spec.key == flaky and calls[spec.key] == 1):
            raise RuntimeError("out of memory (injected)")
        return compute(self, spec)

    monkeypatch.setattr(sweep_recipes.TraceWorker, "compute", failing)
    stats = sweep_recipes.run_sweep(plan, tmp_path / "s", progress=False)
    assert (stats.computed, stats.failed, stats.retried) == (3, 1, 2)
    assert calls[flaky] == 2 and calls[broken] == 2 and calls[plan.units[0].key] == 1
    store = SweepStore(tmp_path / "s")
    [failure] = store.rows(failed=True)
    assert failure["key"] == broken and "RuntimeError: out of memory (injected)" in failure["error"]
    assert failure["attempts"] == 2
    assert sweep_recipes.aggregate(tmp_path / "s").settings["sweep"]["units_failed"] == 1
    monkeypatch.setattr(sweep_recipes.TraceWorker, "compute", compute)
    again = sweep_recipes.run_sweep(plan, tmp_path / "s", resume=True, progress=False)
    assert (again.skipped, again.computed) == (3, 1) and not store.rows(failed=True)  # resume retries failures


def test_resume_refuses_a_folder_of_another_sweep(tiny, rows, tmp_path):
    plan = sweep_recipes.plan("trace-unet", tiny, rows[:1], sites=SITES[:1], seeds=[0], samples=1, steps=2)
    sweep_recipes.run_sweep(plan, tmp_path / "s", progress=False)
    other = sweep_recipes.plan("trace-unet", tiny, rows[:1], sites=SITES[:1], seeds=[0], samples=1, steps=3)
    with pytest.raises(ResultFormatError, match="another sweep \\(arguments differ\\)"):
        sweep_recipes.run_sweep(other, tmp_path / "s", resume=True, progress=False)
    with pytest.raises(SweepEngineError, match="name, folder or hub id"):
        sweep_recipes.run_sweep(plan, tmp_path / "r", engine="ray", progress=False)


def test_cli_sweep_then_report(tmp_path):
    runner = CliRunner()
    out = tmp_path / "sweep"
    prompts = tmp_path / "set.csv"
    prompts.write_text("prompt,subject,attribute\na red circle in the style of monet,monet,style\n")
    args = ["sweep", "trace-unet", "--prompts", str(prompts), "--out", str(out), "--samples", "2", "--steps", "2",
            "--site", "mid-cross-attn"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "2 units computed, 0 on file before, 0 failed" in result.output and "mid-cross-attn" in result.output
    assert TraceResult.load(out / "result").settings["sweep"]["units_on_file"] == 2
    again = runner.invoke(app, [*args, "--resume"])
    assert "0 units computed, 2 on file before" in again.output
    report = runner.invoke(app, ["report", str(out)])
    assert report.exit_code == 0 and (out / "report.html").is_file()
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "--resume" in refused.output
    missing = runner.invoke(app, [*args[:3], "tiny/nope", "--out", str(tmp_path / "x")])
    assert missing.exit_code == 2 and "bundled: " in missing.output
    local_address = runner.invoke(app, [*args[:5], str(tmp_path / "y"), "--address", "auto"])
    assert local_address.exit_code == 2 and "--engine ray" in local_address.output
