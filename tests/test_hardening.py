"""Hardening: a run leaves modules exactly as it found them (user forwards, accelerate's offload
hooks), op values are validated before anything runs, and CLI user errors are one line."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import interp
from interp.errors import GraphValidationError
from interp.graph import Add, Graph, Noise, Restore, Run, Scale, Set, Zero
from interp.runner import run
from models.testing import dummy_sd_pipeline
from tests.conftest import PROMPT, STEPS
from tests.reference_hooks import generate


def _slots(module: torch.nn.Module) -> dict[str, dict[str, object]]:
    """Every submodule's instance forward and nnsight state, by path."""
    return {path: {k: m.__dict__.get(k) for k in ("forward", "__nnsight__")} for path, m in module.named_modules()}


def _fail_at_second_step(monkeypatch, scheduler) -> None:
    step, calls = scheduler.step, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated failure")
        return step(*args, **kwargs)

    monkeypatch.setattr(scheduler, "step", failing)


def _every_site_restored() -> Graph:
    model = interp.load(dummy_sd_pipeline())
    restores = [Restore(s.name, source="clean") for s in model.sites() if not s.is_text]
    return Graph([Run("clean", PROMPT, steps=STEPS), Run("x", PROMPT, steps=STEPS, ops=restores)])


def test_run_keeps_a_monkeypatched_forward(monkeypatch):
    model = interp.load(dummy_sd_pipeline())
    block = model.denoiser.mid_block
    calls = []
    original = block.forward

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    block.forward = counting
    before = _slots(model.denoiser)
    run(model, _every_site_restored(), progress=False)
    assert _slots(model.denoiser) == before
    _fail_at_second_step(monkeypatch, model.pipe.scheduler)
    with pytest.raises(RuntimeError, match="simulated"):
        run(model, _every_site_restored(), progress=False)
    monkeypatch.undo()
    assert _slots(model.denoiser) == before
    calls.clear()
    generate(model, [PROMPT], [0], STEPS)
    assert len(calls) == STEPS  # the user's forward still runs, once per step


def test_run_keeps_accelerate_offload_hooks(monkeypatch):
    from accelerate import cpu_offload

    pipe = dummy_sd_pipeline()
    cpu_offload(pipe.unet, execution_device=torch.device("cpu"))
    model = interp.load(pipe)
    plain = generate(model, [PROMPT], [0], STEPS)
    before = _slots(model.denoiser)
    ours = run(model, Graph([Run("a", PROMPT, steps=STEPS)]), progress=False).images["a"]
    assert torch.equal(ours, plain[0])
    _fail_at_second_step(monkeypatch, model.pipe.scheduler)
    with pytest.raises(RuntimeError, match="simulated"):
        run(model, _every_site_restored(), progress=False)
    monkeypatch.undo()
    assert _slots(model.denoiser) == before
    assert hasattr(model.denoiser, "_hf_hook") and model.denoiser.conv_in.weight.device.type == "meta"  # still offloaded
    assert torch.equal(generate(model, [PROMPT], [0], STEPS), plain)


def test_run_keeps_model_offload_hooks():
    """`enable_model_cpu_offload`'s hook (accelerate's `cpu_offload_with_hook`) on the UNet."""
    from accelerate import cpu_offload_with_hook

    model = interp.load(dummy_sd_pipeline())
    plain = generate(model, [PROMPT], [0], STEPS)
    _, hook = cpu_offload_with_hook(model.denoiser, execution_device=torch.device("cpu"))
    before = _slots(model.denoiser)
    assert torch.equal(run(model, Graph([Run("a", PROMPT, steps=STEPS)]), progress=False).images["a"], plain[0])
    assert _slots(model.denoiser) == before
    hook.remove()


# --- atomic results ----------------------------------------------------------------------------------


def _grid(value: float):
    from interp.results import ScoreGrid

    return ScoreGrid(("site",), {"site": ["a", "b"]}, {"clean": [[value, value]]}, [{"seed": 0}], {},
                     {"x": np.zeros((4, 4, 3), np.uint8)})


def test_result_save_is_atomic_and_never_mixes_runs(tmp_path, monkeypatch):
    from interp.results import ScoreGrid

    folder = tmp_path / "result"
    _grid(1.0).save(folder)
    (folder / "images" / "99999.png").write_bytes(b"left over")  # a file the new run does not write
    _grid(2.0).save(folder)
    assert not (folder / "images" / "99999.png").exists()
    assert ScoreGrid.load(folder) == _grid(2.0)

    def interrupted(self, temporary):
        (temporary / "result.json").write_text("{")
        raise KeyboardInterrupt

    monkeypatch.setattr(ScoreGrid, "_write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _grid(3.0).save(folder)
    monkeypatch.undo()
    assert ScoreGrid.load(folder) == _grid(2.0)
    assert [p.name for p in tmp_path.iterdir()] == ["result"]  # no temporary left behind


def test_result_save_refuses_folders_it_did_not_write(tmp_path, monkeypatch):
    from interp.errors import ResultFormatError

    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    (tmp_path / "file").write_text("")
    monkeypatch.chdir(tmp_path)
    for folder, message in (("mine", "not an earlier output"), (".", "current folder"), ("file/out", "is a file")):
        with pytest.raises(ResultFormatError, match=message):
            _grid(1.0).save(folder)
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


# --- the command line: user errors are one line and exit 2 ----------------------------------------------


def _cli_error(*args: str) -> str:
    from typer.testing import CliRunner

    from interp.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, Exception) or \
        isinstance(result.exception, SystemExit), result.exception
    return " ".join(result.output.split())


def test_cli_user_errors_are_one_clear_line(tmp_path):
    (tmp_path / "a-file").write_text("")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{ not json")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00junk" * 20)
    trace = ("trace", "--model", "dummy", "--prompt", PROMPT, "--subject", "van gogh", "--steps", "1")
    assert "is a file" in _cli_error(*trace, "--out", tmp_path / "a-file" / "out")
    assert "current folder" in _cli_error(*trace, "--out", ".")
    assert "cannot generate" in _cli_error(*trace, "--device", "meta")
    assert "no Apple GPU" in _cli_error(*trace, "--device", "mps") or torch.backends.mps.is_available()
    assert "not-cached" in _cli_error("sites", "--model", "nobody/not-cached")
    assert "error:" in _cli_error("sites", "--model", broken)
    assert "not a readable edit file" in _cli_error("apply", tmp_path / "junk.safetensors", "--model", "dummy",
                                                     "--out", tmp_path / "edited")
    assert "--layer" in _cli_error("edit", "locoedit", "--model", "dummy", "--old", "van gogh", "--new", "painting",
                                   "--save", tmp_path / "e.safetensors")


# --- graph validation and the loader ---------------------------------------------------------------------


@pytest.mark.parametrize("run_, message", [
    (Run("x", PROMPT, steps=STEPS, ops=[Set("mid-resnet-0", value=math.nan)]), "finite"),
    (Run("x", PROMPT, steps=STEPS, ops=[Add("mid-resnet-0", value=torch.tensor([1.0, math.inf]))]), "finite"),
    (Run("x", PROMPT, steps=STEPS, ops=[Scale("mid-resnet-0", factor=math.nan)]), "finite"),
    (Run("x", PROMPT, steps=STEPS, guidance_scale=math.nan), "guidance_scale"),
    (Run("x", PROMPT, steps=STEPS, height=0), "height"),
])
def test_bad_values_fail_before_running(model, run_, message):
    with pytest.raises(GraphValidationError, match=message):
        run(model, Graph([run_]))


def test_empty_tokens_and_budget_are_clear_errors(model):
    with pytest.raises(GraphValidationError, match=r"tokens=\(\) selects nothing"):
        Noise("text-embed", tokens=())
    with pytest.raises(GraphValidationError, match="memory_budget_gb"):
        run(model, Graph([Run("x", PROMPT, steps=STEPS)]), memory_budget_gb=0)


def test_load_tiny_passes_its_arguments_on():
    assert interp.load("tiny", torch_dtype=torch.float64).denoiser.dtype == torch.float64


def test_cli_edit_exports_a_lora_adapter(tmp_path):
    from typer.testing import CliRunner

    from interp.cli import app
    from interventions.edits import LORA_FILE

    result = CliRunner().invoke(app, ["edit", "diffquickfix", "--model", "dummy", "--old", "van gogh", "--new",
                                      "painting", "--save", str(tmp_path / "e.safetensors"), "--lora",
                                      str(tmp_path / "lora")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "lora" / LORA_FILE).is_file() and "rank" in result.output
