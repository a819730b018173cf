"""One look for every figure: the indirect-effect colour scale, attribute colours, fonts, margins.

Convention: indirect effects (and any signed effect) use one diverging scale centred on zero, red
where restoring a state brings the attribute back, blue where it pushes it further away, the
range symmetric so equal colours mean equal effects within a figure. Attributes keep one line
colour across figures (style, object, color, count).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import plotly.graph_objects as go

IE_COLORSCALE = "RdBu_r"
FONT = dict(family="Inter, Helvetica, Arial, sans-serif", size=13)
ATTRIBUTE_COLORS = {"style": "#7b3294", "object": "#1b7837", "color": "#d95f02", "count": "#2c7bb6"}
PALETTE = ("#7b3294", "#1b7837", "#d95f02", "#2c7bb6", "#e7298a", "#666666")


def attribute_color(name: str, index: int = 0) -> str:
    """The fixed colour of an attribute, or a palette colour by position for any other label."""
    return ATTRIBUTE_COLORS.get(name, PALETTE[index % len(PALETTE)])


def symmetric_range(values: Iterable[np.ndarray]) -> float:
    """Half-width of the colour range: the largest |value| (ignoring NaN), at least a tiny epsilon."""
    largest = max((float(np.nanmax(np.abs(v))) for v in values if np.isfinite(v).any()), default=0.0)
    return max(largest, 1e-9)


def ie_coloraxis(limit: float, title: str = "IE") -> dict:
    """The shared diverging colour axis, symmetric about zero."""
    return dict(colorscale=IE_COLORSCALE, cmin=-limit, cmax=limit, cmid=0.0,
                colorbar=dict(title=dict(text=title), thickness=14))


def styled(figure: go.Figure, title: str, height: int | None = None) -> go.Figure:
    """Apply the common template, font, title and margins; returns `figure`."""
    figure.update_layout(template="plotly_white", font=FONT, title=dict(text=title, x=0.01, xanchor="left"),
                         margin=dict(l=70, r=30, t=80, b=60), height=height)
    return figure


def error_bars(mean: np.ndarray, low: np.ndarray, high: np.ndarray, color: str) -> dict:
    """Asymmetric plotly error bars from (mean, low, high) intervals (a NaN bound draws none)."""
    mean, low, high = (np.atleast_1d(np.asarray(a, dtype=float)) for a in (mean, low, high))
    return dict(type="data", symmetric=False, array=high - mean, arrayminus=mean - low, thickness=1, width=3,
                color=color)
