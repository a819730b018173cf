"""Headless Chromium for reports: check every figure rendered without console errors, take screenshots.

`inspect_report` loads a copy of the report with a probe script added: it records console errors,
uncaught exceptions and rejected promises from the start, and after the page has loaded writes,
for every plotly figure, whether its `.plotly` node exists and how many traces it drew into a
`<pre>` that `--dump-dom` returns. No debugging protocol and no network are needed.
"""

from __future__ import annotations

import html
import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--mute-audio")
PROBE_ID = "interp-report-probe"
RECORD_ERRORS = """<script>
window.__errors = [];
const __error = console.error.bind(console);
console.error = (...args) => { window.__errors.push(args.map(String).join(" ")); __error(...args); };
window.addEventListener("error", e => window.__errors.push("uncaught: " + e.message));
window.addEventListener("unhandledrejection", e => window.__errors.push("rejected: " + e.reason));
</script>"""
REPORT_FIGURES = """<script>
window.addEventListener("load", () => setTimeout(() => {
  const figures = [...document.querySelectorAll(".plotly-graph-div")].map(div => ({
    id: div.id,
    rendered: div.querySelector(".plotly .main-svg") !== null,
    traces: (div._fullData || []).filter(t => t.visible !== false).length,
    drawn: div.querySelectorAll(".plotly .trace, .plotly .hm, .plotly .im").length,
  }));
  const out = document.createElement("pre");
  out.id = "%s";
  out.textContent = JSON.stringify({figures, errors: window.__errors});
  document.body.appendChild(out);
}, 1000));
</script>""" % PROBE_ID


def find_chromium() -> Path | None:
    """The Chromium binary (Debian's `chromium` package), or None where it is not installed."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    return Path(found) if found else None


def chromium(arguments: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run headless Chromium with the project's flags and a throwaway profile."""
    binary = find_chromium()
    if binary is None:
        raise FileNotFoundError("chromium is not installed (Debian: apt-get install -y chromium)")
    with tempfile.TemporaryDirectory(prefix="interp-chromium-") as profile:
        command = [str(binary), *FLAGS, f"--user-data-dir={profile}", *arguments]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


@dataclass(frozen=True)
class ReportCheck:
    """What the browser saw: per figure its id, `.plotly` node, traces in the data and drawn; errors."""

    figures: list[dict]
    errors: list[str]

    @property
    def ok(self) -> bool:
        return not self.errors and all(f["rendered"] and f["traces"] > 0 and f["drawn"] > 0 for f in self.figures)


def inspect_report(report: str | Path, budget_ms: int = 20_000, timeout: float = 120) -> ReportCheck:
    """Open `report` in headless Chromium and report what rendered (see the module docstring)."""
    page = Path(report).read_text(encoding="utf-8")
    if "<head>" not in page or "</body>" not in page:
        raise ValueError(f"{report} is not an HTML page with <head> and <body>")
    probed = page.replace("<head>", "<head>" + RECORD_ERRORS, 1).replace("</body>", REPORT_FIGURES + "</body>", 1)
    with tempfile.TemporaryDirectory(prefix="interp-report-") as folder:
        copy = Path(folder) / "report.html"
        copy.write_text(probed, encoding="utf-8")
        done = chromium([f"--virtual-time-budget={budget_ms}", "--dump-dom", copy.as_uri()], timeout)
    start = done.stdout.find(f'<pre id="{PROBE_ID}">')
    if start < 0:
        raise RuntimeError(f"the probe did not run (chromium exit {done.returncode}): {done.stderr[-2000:]}")
    body = done.stdout[start:].split(">", 1)[1].split("</pre>", 1)[0]
    found = json.loads(html.unescape(body))
    return ReportCheck(found["figures"], found["errors"])


def screenshot(report: str | Path, png: str | Path, width: int = 1280, height: int = 1600,
               budget_ms: int = 20_000, timeout: float = 120) -> Path:
    """A PNG of the top `width` x `height` pixels of `report`, after its figures have drawn."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    done = chromium([f"--window-size={width},{height}", f"--virtual-time-budget={budget_ms}",
                     f"--screenshot={png}", Path(report).resolve().as_uri()], timeout)
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot (exit {done.returncode}): {done.stderr[-2000:]}")
    return png
