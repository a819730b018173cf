"""Image grids as plotly figures, each image inlined as a base64 PNG (no external files)."""

from __future__ import annotations

import base64
import io
import textwrap
from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.subplots import make_subplots

from interp.results import as_uint8
from interventions.causal_trace import TraceResult
from viz.style import styled

Cell = tuple[str, np.ndarray]  # (caption, image (H, W, 3) uint8 or (3, H, W) float)
CELL_PX = 150


def data_uri(image: np.ndarray) -> str:
    """A PNG data URI of an image ((H, W, 3) uint8 or (3, H, W) float in [0, 1])."""
    buffer = io.BytesIO()
    Image.fromarray(as_uint8(image)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def wrap(text: str, width: int = 24) -> str:
    """`text` broken into plotly lines (<br>) of at most `width` characters."""
    return "<br>".join(textwrap.wrap(text, width)) or " "


def image_grid(rows: Sequence[Sequence[Cell]], row_titles: Sequence[str], title: str) -> go.Figure:
    """A grid of captioned images, one list of cells per row (rows may differ in length)."""
    if not rows or len(rows) != len(row_titles):
        raise ValueError(f"need one title per row, got {len(rows)} rows and {len(row_titles)} titles")
    columns = max(len(r) for r in rows)
    captions = [wrap(row[c][0]) if c < len(row) else "" for row in rows for c in range(columns)]
    figure = make_subplots(rows=len(rows), cols=columns, subplot_titles=captions,
                           horizontal_spacing=0.02, vertical_spacing=0.3 / len(rows))
    for r, (row, row_title) in enumerate(zip(rows, row_titles), start=1):
        for c, (caption, image) in enumerate(row, start=1):
            figure.add_trace(go.Image(source=data_uri(image), name=caption, hoverinfo="name"), row=r, col=c)
        figure.update_yaxes(title_text=row_title, row=r, col=1)
    figure.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    figure.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    figure.update_annotations(font_size=11)
    figure = styled(figure, title, height=len(rows) * (CELL_PX + 60) + 130)
    figure.update_layout(width=max(520, columns * CELL_PX + 140), margin_t=130)
    return figure


def trace_images(results: Mapping[str, TraceResult], top: int = 2, unit: int = 0) -> go.Figure:
    """Per trace (row): the clean and corrupted images and the images restored at the `top` sites
    of largest mean IE, for unit `unit` and its first noise sample."""
    rows, titles = [], []
    for label, result in results.items():
        cells = [("clean", result.images[f"u{unit}/clean"]), ("corrupted", result.images[f"u{unit}/n0/corrupted"])]
        for labels, ie, _ in result.top(top):
            name = "/".join(map(str, labels))
            cells.append((f"restored {' '.join(map(str, labels))} (IE {ie:+.3f})", result.images[f"u{unit}/n0/{name}/0"]))
        rows.append(cells)
        titles.append(label)
    return image_grid(rows, titles, "Clean, corrupted and restored images")
