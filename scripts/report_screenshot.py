"""Regenerate the README's screenshot of the report: run `interp demo`, open the real report in
headless Chromium, save the top of the page as a PNG.

    python scripts/report_screenshot.py                       # tiny model -> docs/report.png
    python scripts/report_screenshot.py --report report.html  # screenshot an existing report
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from viz.browser import screenshot

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", type=Path, help="an existing report (default: run `interp demo` first)")
    parser.add_argument("--model", default="tiny", help="the model `interp demo` runs on")
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "report.png")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="interp-screenshot-") as folder:
        report = args.report
        if report is None:
            report = Path(folder) / "report.html"
            subprocess.run([sys.executable, "-m", "interp.cli", "demo", "--model", args.model, "--out", str(report)],
                           check=True)
        print(f"wrote {screenshot(report, args.png, args.width, args.height)}")


if __name__ == "__main__":
    main()
