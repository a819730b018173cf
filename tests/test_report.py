"""The report in a real browser: `interp demo` writes it, headless Chromium renders every figure
with its traces and logs no console error. Skipped where Chromium is not installed (CI installs it)."""

import plotly.graph_objects as go
import pytest
from typer.testing import CliRunner

from interp.cli import app
from tests.test_cli import clip_folder, demo_report  # noqa: F401 - the random CLIP and the dummy demo's report
from viz import Report
from viz.browser import find_chromium, inspect_report

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed (apt-get install chromium)")
# per attribute: the UNet maps (both protocols), their largest effects, the text grid and its largest
# effects; then the trace images, LoCoGen and the edit evaluation
FIGURES = 3 * 4 + 3


def test_demo_report_renders_every_figure_without_errors(demo_report):  # noqa: F811
    check = inspect_report(demo_report)
    assert check.errors == []
    assert len(check.figures) == FIGURES
    for figure in check.figures:
        assert figure["rendered"] and figure["traces"] > 0 and figure["drawn"] == figure["traces"], figure
    assert check.ok


@pytest.mark.slow
def test_tiny_demo_report_renders(tmp_path):
    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["demo", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert inspect_report(out).ok


def test_probe_sees_empty_figures_and_console_errors(tmp_path):
    page = Report("broken").figure(go.Figure()).write(tmp_path / "broken.html")
    page.write_text(page.read_text().replace("</body>", "<script>console.error('boom')</script></body>"))
    check = inspect_report(page)
    assert not check.ok and check.figures[0]["traces"] == 0 and any("boom" in e for e in check.errors)
