"""The report in a real browser: `interp demo` writes it, headless Chromium renders every figure
with its traces and logs no console error. Skipped where Chromium is not installed (CI installs it)."""

import plotly.graph_objects as go
import pytest
from typer.testing import CliRunner

from interp.cli import app
from tests.test_cli import clip_folder  # noqa: F401 - the random CLIP fixture
from viz import Report
from viz.browser import find_chromium, inspect_report

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed (apt-get install chromium)")
FIGURES = 9  # per attribute a UNet map and a text grid, the trace images, LoCoGen, the edit images


def rendered_demo(tmp_path, *options: str):
    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), *options])
    assert result.exit_code == 0, result.output
    return inspect_report(out)


def test_demo_report_renders_every_figure_without_errors(tmp_path, clip_folder):  # noqa: F811
    check = rendered_demo(tmp_path, "--model", "dummy", "--steps", "1", "--clip", clip_folder)
    assert check.errors == []
    assert len(check.figures) == FIGURES
    for figure in check.figures:
        assert figure["rendered"] and figure["traces"] > 0 and figure["drawn"] == figure["traces"], figure
    assert check.ok


@pytest.mark.slow
def test_tiny_demo_report_renders(tmp_path):
    assert rendered_demo(tmp_path, "--model", "tiny").ok


def test_probe_sees_empty_figures_and_console_errors(tmp_path):
    page = Report("broken").figure(go.Figure()).write(tmp_path / "broken.html")
    page.write_text(page.read_text().replace("</body>", "<script>console.error('boom')</script></body>"))
    check = inspect_report(page)
    assert not check.ok and check.figures[0]["traces"] == 0 and any("boom" in e for e in check.errors)
