"""A self-contained HTML report: plotly.js inlined once, every figure and image inline, opens offline."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

CSS = """
body { font-family: Inter, Helvetica, Arial, sans-serif; margin: 0 auto; max-width: 1180px; padding: 24px 32px;
       color: #222; background: #fff; }
h1 { font-size: 26px; margin-bottom: 4px; } h2 { font-size: 20px; margin-top: 36px; border-bottom: 1px solid #ddd; }
p, li { line-height: 1.5; } .meta { color: #666; font-size: 13px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }
td, th { border: 1px solid #ddd; padding: 4px 10px; text-align: right; } th { background: #f5f5f5; }
td:first-child, th:first-child { text-align: left; }
.figure { margin: 12px 0 24px; }
footer { margin-top: 40px; padding-top: 8px; border-top: 1px solid #ddd; color: #666; font-size: 13px; }
"""
CONFIG = {"displaylogo": False, "responsive": True}


@dataclass
class Report:
    """Sections of headings, paragraphs, tables and figures, written as one HTML file."""

    title: str
    subtitle: str = ""
    footer: str = ""  # the page's last line, e.g. how long the job that made it took
    parts: list[str] = field(default_factory=list)
    figures: int = 0

    def heading(self, text: str) -> Report:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")
        return self

    def text(self, text: str) -> Report:
        self.parts.append(f"<p>{html.escape(text)}</p>")
        return self

    def table(self, header: list[str], rows: list[list[object]]) -> Report:
        """A small table; floats shown with 3 decimals."""
        cell = lambda v: f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))  # noqa: E731
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
        self.parts.append(f"<table><tr>{head}</tr>{body}</table>")
        return self

    def figure(self, figure: go.Figure) -> Report:
        """A plotly figure, drawn by the one inlined plotly.js."""
        self.figures += 1
        div = figure.to_html(full_html=False, include_plotlyjs=False, config=CONFIG, div_id=f"figure-{self.figures}")
        self.parts.append(f'<div class="figure">{div}</div>')
        return self

    def html(self) -> str:
        subtitle = f'<p class="meta">{html.escape(self.subtitle)}</p>' if self.subtitle else ""
        footer = f"<footer>{html.escape(self.footer)}</footer>" if self.footer else ""
        return (
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(self.title)}</title><style>{CSS}</style>"
            f"<script type=\"text/javascript\">{get_plotlyjs()}</script></head>"
            f"<body><h1>{html.escape(self.title)}</h1>{subtitle}{''.join(self.parts)}{footer}</body></html>\n"
        )

    def write(self, path: str | Path) -> Path:
        """Write the report (parent folders created); returns the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.html(), encoding="utf-8")
        return path
