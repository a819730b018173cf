"""The `interp` command: each subcommand's main path and its error path (exit status 2)."""

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import interp
from interp.cli import app
from tests.random_clip import random_clip_scorer

runner = CliRunner()
PROMPT = "a red circle in the style of van gogh"


@pytest.fixture(scope="session")
def clip_folder(tmp_path_factory) -> str:
    """A random CLIP saved to a folder, passed as --clip (the dummy model has no CLIP of its own)."""
    folder = tmp_path_factory.mktemp("clip")
    random_clip_scorer(folder)
    return str(folder)


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, words: str) -> None:
    """Exit status 2 and one clear line naming the problem, never a traceback."""
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output


def test_sites_lists_cross_attention_in_order():
    result = invoke("sites", "--model", "dummy", "--kind", "cross-attn")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith("down-0-cross-attn-0") and "cross-attn-0" in lines[0]


def test_sites_finer_names_heads_and_neurons_that_resolve():
    from models.testing import dummy_sd_pipeline

    result = invoke("sites", "--model", "dummy", "--finer")
    assert result.exit_code == 0, result.output
    heads = [line.split()[1] for line in result.output.splitlines() if line.strip().startswith("heads:")]
    neurons = [line.split()[1] for line in result.output.splitlines() if line.strip().startswith("neurons:")]
    assert heads and neurons and any("(+ .k / .v)" in line for line in result.output.splitlines())
    model = interp.load(dummy_sd_pipeline())
    for name in heads + neurons:  # every listed name is a site the model resolves
        assert model.site(name).name == name


def test_sites_unknown_kind_is_one_line_exit_2():
    assert_user_error(invoke("sites", "--model", "dummy", "--kind", "convolution"), "kinds")


def test_missing_model_folder_exit_2(tmp_path):
    assert_user_error(invoke("sites", "--model", tmp_path), "model_index.json")


DEMO_SIZES = ("--steps", 1, "--prompts", 2, "--seeds", 1, "--samples", 1, "--images", 2)


@pytest.fixture(scope="session")
def demo_report(tmp_path_factory, clip_folder) -> Path:
    """`interp demo` on the dummy model at the smallest sizes, a stub judge standing in for the tiny
    world's (so the edit evaluation runs too)."""
    out = tmp_path_factory.mktemp("demo") / "report.html"
    reading = {"object": "circle", "color": "red", "style": "van gogh", "count": 1, "mark": "none"}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("interp.cli._judge", lambda model: lambda images: [reading] * len(images))
        result = invoke("demo", "--model", "dummy", *DEMO_SIZES, "--clip", clip_folder, "--out", out)
    assert result.exit_code == 0, result.output
    assert "the demo took" in result.output
    return out


def test_demo_writes_report_data_and_deltas(demo_report):
    data = demo_report.parent / "report_data"
    assert demo_report.stat().st_size > 1_000_000  # plotly.js is inlined
    for part in ("trace-unet-style-paper", "trace-unet-color-aligned", "trace-text-object", "locogen-style",
                 "evaluation-DiffQuickFix", "evaluation-LoCoEdit"):
        assert (data / part / "result.json").is_file(), part
    assert (data / "DiffQuickFix.safetensors").is_file() and (data / "LoCoEdit.safetensors").is_file()


def test_demo_report_states_sizes_protocols_scorer_verdict_and_time(demo_report):
    page = demo_report.read_text()
    for words in ("2 prompts x 1 seeds x 1 noise samples (2 units)", "UNet trace (aligned)", "clip-score",
                  "units kept / dropped", "text-self-attn-0 at the last subject token", "2 images x 3 groups x 4 "
                  "conditions", "random layer", "<footer>interp demo took"):
        assert words in page, words


def test_demo_sizes_out_of_range_exit_2(tmp_path):
    result = invoke("demo", "--model", "dummy", "--prompts", 5, "--out", tmp_path / "r.html")
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_demo_missing_model_folder_exit_2(tmp_path):
    assert_user_error(invoke("demo", "--model", tmp_path / "nowhere", "--out", tmp_path / "r.html"), "nowhere")


def test_report_redraws_the_same_page_from_data(demo_report, tmp_path):
    result = invoke("report", demo_report.parent / "report_data", "--out", tmp_path / "again.html", "--title", "dummy")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "again.html").read_text() == demo_report.read_text()


def test_report_without_data_exit_2(tmp_path):
    assert_user_error(invoke("report", tmp_path), "demo.json")


RESAVE = """
import sys
from interventions.demo import DemoResults
results = DemoResults.load(sys.argv[1])
print("ready", flush=True)
while True:
    results.save(sys.argv[2])
"""


def test_demo_data_killed_while_written_is_old_absent_or_new_never_mixed(demo_report, tmp_path):
    """SIGKILL a process that writes the demo's data over and over, at 5 random moments; after each
    kill `interp report` either draws the folder or says it is absent (issue 13: never a mix)."""
    import random
    import subprocess
    import sys
    import time

    source, target, rng = demo_report.parent / "report_data", tmp_path / "data", random.Random(0)
    outcomes = []
    for _ in range(5):
        child = subprocess.Popen([sys.executable, "-c", RESAVE, str(source), str(target)], stdout=subprocess.PIPE,
                                 text=True, cwd=Path(__file__).parents[1])
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 1.5))
        child.kill()
        child.wait()
        result = invoke("report", target, "--out", tmp_path / "report.html")
        if result.exit_code == 0:
            outcomes.append("drawn")
        else:
            assert_user_error(result, "demo.json does not exist")
            outcomes.append("absent")
    assert "drawn" in outcomes  # the writes did complete between kills


@pytest.mark.parametrize("target, figure", [("unet", "mid-cross-attn"), ("text", "text-mlp-1")])
def test_trace_prints_table_and_saves(target, figure, clip_folder, tmp_path):
    result = invoke("trace", "--model", "dummy", "--prompt", PROMPT, "--subject", "van gogh", "--target", target,
                    "--steps", 1, "--clip", clip_folder, "--out", tmp_path / "trace")
    assert result.exit_code == 0, result.output
    assert figure in result.output and "clean" in result.output
    assert (tmp_path / "trace" / "result.json").is_file() and figure in (tmp_path / "trace" / "report.html").read_text()


def test_trace_subject_not_in_prompt_exit_2():
    assert_user_error(invoke("trace", "--model", "dummy", "--prompt", PROMPT, "--subject", "monet"), "not in prompt")


def test_trace_unknown_target_exit_2():
    result = invoke("trace", "--model", "dummy", "--prompt", PROMPT, "--subject", "van gogh", "--target", "vae")
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_locogen_prints_best_window(clip_folder, tmp_path):
    result = invoke("locogen", "--model", "dummy", "--prompt", PROMPT, "--prompt", "a blue square in the style of monet",
                    "--window", 2, "--steps", 1, "--clip", clip_folder, "--out", tmp_path / "loc")
    assert result.exit_code == 0, result.output
    assert "best window: " in result.output and (tmp_path / "loc" / "report.html").is_file()


def test_locogen_grows_m_from_one_and_reports_the_controls(clip_folder):
    result = invoke("locogen", "--model", "dummy", "--prompt", PROMPT, "--mode", "highest", "--threshold", "inf",
                    "--steps", 1, "--clip", clip_folder)
    assert result.exit_code == 0, result.output
    assert "m = 4" in result.output and "95% interval" in result.output and "control, random layers" in result.output


def test_locogen_window_too_large_exit_2(clip_folder):
    assert_user_error(invoke("locogen", "--model", "dummy", "--prompt", PROMPT, "--window", 9, "--clip", clip_folder),
                      "cross-attention layers")


@pytest.fixture(scope="module")
def delta(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("edit") / "delta.safetensors"
    result = invoke("edit", "locoedit", "--model", "dummy", "--old", "van gogh", "--new", "painting",
                    "--layer", "cross-attn-2", "--layer", "3", "--save", path)
    assert result.exit_code == 0, result.output
    assert "changes 4 weight(s) of unet" in result.output
    return path


def test_edit_diffquickfix_saves_delta(tmp_path):
    result = invoke("edit", "diffquickfix", "--model", "dummy", "--old", "van gogh", "--old", "monet",
                    "--new", "painting", "--save", tmp_path / "dqf.safetensors")
    assert result.exit_code == 0, result.output
    assert "out_proj.weight" in result.output and (tmp_path / "dqf.safetensors").is_file()


@pytest.mark.parametrize("method", ["diffquickfix", "locoedit"])
def test_edit_options_are_recorded_in_the_saved_edit(method, tmp_path):
    from interp.editing import Edit

    keep = tmp_path / "keep.txt"
    keep.write_text("a red circle\n\n  a blue square  \n")
    layers = ["--layer", "2", "--layer", "3"] if method == "locoedit" else []
    result = invoke("edit", method, "--model", "dummy", "--old", "van gogh", "--new", "painting", *layers,
                    "--template", "a photo of {}", "--template", "{}", "--positions", "subject+eos", "--lam", 0.5,
                    "--preserve", "a green star", "--preserve-file", keep, "--preserve-weight", 3,
                    "--save", tmp_path / "e.safetensors")
    assert result.exit_code == 0, result.output
    metadata = Edit.load(tmp_path / "e.safetensors").metadata
    assert metadata["templates"] == ["a photo of {}", "{}"] and metadata["positions"] == "subject+eos"
    assert metadata["preserve"] == ["a green star", "a red circle", "a blue square"]
    assert metadata["preserve_weight"] == 3.0 and metadata.get("lam", metadata.get("lam_k")) == 0.5


def test_edit_bad_positions_or_preserve_file_exit_2(tmp_path):
    args = ("edit", "diffquickfix", "--model", "dummy", "--old", "van gogh", "--new", "painting",
            "--save", tmp_path / "x.safetensors")
    assert_user_error(invoke(*args, "--positions", "eos"), "positions must be one of subject, subject+eos")
    assert_user_error(invoke(*args, "--preserve-file", tmp_path / "none.txt"), "none.txt")
    assert_user_error(invoke(*args, "--template", "a photo of"), "needs exactly one '{}' slot")
    assert not (tmp_path / "x.safetensors").exists()


def test_edit_unknown_encoder_exit_2(tmp_path):
    result = invoke("edit", "diffquickfix", "--model", "dummy", "--old", "van gogh", "--new", "painting",
                    "--encoder", "text_encoder_2", "--save", tmp_path / "x.safetensors")
    assert_user_error(result, "its text encoders are ['text_encoder']")
    assert not (tmp_path / "x.safetensors").exists()


def test_edit_locoedit_saves_delta(delta):
    assert delta.is_file()


def test_edit_unknown_layer_exit_2(tmp_path):
    result = invoke("edit", "locoedit", "--model", "dummy", "--old", "van gogh", "--new", "painting",
                    "--layer", "cross-attn-7", "--save", tmp_path / "x.safetensors")
    assert_user_error(result, "cross-attn-7")
    assert not (tmp_path / "x.safetensors").exists()


def test_edit_locoedit_takes_a_window_per_concept(tmp_path):
    from interp.editing import Edit

    path = tmp_path / "both.safetensors"
    result = invoke("edit", "locoedit", "--model", "dummy", "--old", "van gogh", "--old", "monet", "--new", "painting",
                    "--layer", "van gogh=3", "--layer", "monet=2", "--layer", "monet=3", "--save", path)
    assert result.exit_code == 0, result.output
    windows = Edit.load(path).metadata["layers"]
    assert list(windows) == ["van gogh", "monet"] and [len(w) for w in windows.values()] == [1, 2]
    half = invoke("edit", "locoedit", "--model", "dummy", "--old", "van gogh", "--old", "monet", "--new", "painting",
                  "--layer", "van gogh=3", "--save", tmp_path / "x.safetensors")
    assert_user_error(half, "no window for ['monet']")
    mixed = invoke("edit", "locoedit", "--model", "dummy", "--old", "monet", "--new", "painting",
                   "--layer", "monet=3", "--layer", "2", "--save", tmp_path / "x.safetensors")
    assert_user_error(mixed, "CONCEPT=LAYER")


def test_edit_unknown_method_exit_2(tmp_path):
    result = invoke("edit", "rome", "--old", "van gogh", "--new", "painting", "--save", tmp_path / "x.safetensors")
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_apply_saves_edited_pipeline(delta, tmp_path):
    out = tmp_path / "edited"
    result = invoke("apply", delta, "--model", "dummy", "--out", out, "--prompt", PROMPT, "--steps", 1)
    assert result.exit_code == 0, result.output
    assert (out / "model_index.json").is_file() and (out / "images" / "00.png").is_file()
    assert invoke("sites", "--model", out, "--kind", "cross-attn").exit_code == 0


def test_apply_missing_delta_exit_2(tmp_path):
    assert_user_error(invoke("apply", tmp_path / "none.safetensors", "--model", "dummy", "--out", tmp_path / "o"),
                      "none.safetensors")


@pytest.fixture
def stub_judge(monkeypatch):
    """The tiny judge replaced by a fixed reading (the command judges with it; tests need no weights)."""
    reading = {"object": "circle", "color": "red", "style": "van gogh", "count": 1, "mark": "none"}
    monkeypatch.setattr("interventions.evaluate.tiny_judge", lambda images: [reading] * len(images))


def test_evaluate_prints_intervals_and_saves(stub_judge, tmp_path):
    edit = tmp_path / "dqf.safetensors"
    assert invoke("edit", "diffquickfix", "--model", "dummy", "--old", "van gogh", "--new", "painting",
                  "--save", edit).exit_code == 0
    result = invoke("evaluate", edit, "--model", "dummy", "--images", 2, "--steps", 1, "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    assert "all layers" in result.output and "van gogh  efficacy        style = van gogh  100.0% [34.2, 100.0] (n=2)" \
        in result.output
    assert (tmp_path / "eval" / "result.json").is_file()


def test_evaluate_errors_exit_2(stub_judge, tmp_path):
    assert_user_error(invoke("evaluate", tmp_path / "none.safetensors", "--model", "dummy"), "none.safetensors")
    edit = tmp_path / "cat.safetensors"
    made = invoke("edit", "diffquickfix", "--model", "dummy", "--old", "cat", "--new", "dog", "--save", edit)
    assert made.exit_code == 0, made.output
    assert_user_error(invoke("evaluate", edit, "--model", "dummy", "--steps", 1), "not a concept the tiny world")


def test_unknown_device_exit_2():
    assert_user_error(invoke("trace", "--model", "dummy", "--prompt", PROMPT, "--subject", "van gogh",
                             "--device", "tpu9"), "not a torch device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_exit_2(tmp_path):
    assert_user_error(invoke("demo", "--model", "dummy", "--device", "cuda", "--out", tmp_path / "r.html"), "no CUDA GPU")
