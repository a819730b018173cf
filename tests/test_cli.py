"""The `interp` command: each subcommand's main path and its error path (exit status 2)."""

from typer.testing import CliRunner

from interp.cli import app

runner = CliRunner()


def test_sites_lists_cross_attention_in_order():
    result = runner.invoke(app, ["sites", "--model", "dummy", "--kind", "cross-attn"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 4 and lines[0].startswith("down-0-cross-attn-0") and "cross-attn-0" in lines[0]


def test_sites_unknown_kind_is_one_line_exit_2():
    result = runner.invoke(app, ["sites", "--model", "dummy", "--kind", "convolution"])
    assert result.exit_code == 2 and "kinds" in result.output and "Traceback" not in result.output


def test_missing_model_folder_exit_2(tmp_path):
    result = runner.invoke(app, ["sites", "--model", str(tmp_path)])
    assert result.exit_code == 2 and "model_index.json" in result.output


def test_demo_writes_images(tmp_path):
    result = runner.invoke(app, ["demo", "--model", "dummy", "--steps", "2", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "clean.png").exists() and (tmp_path / "mid-cross-attn.png").exists()


def test_demo_subject_not_in_prompt_exit_2(tmp_path):
    result = runner.invoke(app, ["demo", "--model", "dummy", "--subject", "monet", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "not in prompt" in result.output
