"""The LoCoGen figure: CLIP-score per window start, one line per attribute, the chosen window marked."""

from __future__ import annotations

from collections.abc import Mapping

import plotly.graph_objects as go

from interventions.locogen import LocalizeResult
from viz.style import attribute_color, styled


def locogen_curve(results: LocalizeResult | Mapping[str, LocalizeResult], title: str = "LoCoGen") -> go.Figure:
    """Mean score of every window start (line), the unswapped baseline (dotted) and the winning
    window (star), per attribute; hover names the window's layers."""
    named = {"attribute": results} if isinstance(results, LocalizeResult) else dict(results)
    if not named:
        raise ValueError("pass at least one LocalizeResult")
    figure = go.Figure()
    for index, (attribute, result) in enumerate(named.items()):
        color, starts, m = attribute_color(attribute, index), result.coords["window start"], result.m
        windows = [", ".join(result.layers[s : s + m]) for s in starts]
        figure.add_trace(go.Scatter(
            x=starts, y=result.curve, mode="lines+markers", name=attribute, line=dict(color=color, width=2),
            error_y=dict(type="data", array=result.std("window"), thickness=1, width=3, color=color),
            customdata=windows, hovertemplate="start %{x}: %{customdata}<br>score %{y:.4f}<extra>" + attribute + "</extra>",
        ))
        figure.add_hline(y=result.baseline, line=dict(color=color, dash="dot", width=1),
                         annotation_text=f"{attribute}: no swap", annotation_position="top left")
        best = result.best_start
        figure.add_trace(go.Scatter(
            x=[best], y=[result.curve[starts.index(best)]], mode="markers", showlegend=False,
            marker=dict(symbol="star", size=16, color=color, line=dict(color="black", width=1)),
            customdata=[windows[starts.index(best)]],
            hovertemplate=f"chosen window (m = {m})<br>" + "%{customdata}<br>score %{y:.4f}<extra></extra>",
        ))
    first = next(iter(named.values()))
    target = first.units[0].get("target", "")
    figure.update_xaxes(title=f"window start (cross-attention layer index, m = {first.m})", dtick=1)
    figure.update_yaxes(title="CLIP-score")
    return styled(figure, f"{title}<br><sup>window layers fed {target!r}; ★ chosen window "
                          f"({first.settings['mode']} score wins)</sup>", height=380)
