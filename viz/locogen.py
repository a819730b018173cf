"""The LoCoGen figure: score per window start with 95% intervals, one line per attribute, the
chosen window marked, and beside it the random control of the same size."""

from __future__ import annotations

from collections.abc import Mapping

import plotly.graph_objects as go

from interventions.locogen import LocalizeResult
from viz.style import attribute_color, error_bars, styled

CONTROL_OFFSET = 0.2  # the random control sits just right of the chosen window


def _collateral_hover(result: LocalizeResult) -> str:
    """Hover lines for the chosen window's collateral: the judge's P(attribute), no swap -> swapped."""
    return "".join(f"<br>P({a}): {before.value:.3f} -> {after.value:.3f} [{after.low:.3f}, {after.high:.3f}]"
                   for a, (before, after) in result.collateral.items())


def _random_control(result: LocalizeResult, attribute: str, color: str) -> go.Scatter:
    """The random m layers' score with its interval, as an open cross beside the chosen window."""
    found = result.interval("random")
    layers = ", ".join(result.layers[i] for i in result.random_layers)
    return go.Scatter(
        x=[result.best_start + CONTROL_OFFSET], y=[found.value], mode="markers", name=f"{attribute}: random control",
        marker=dict(symbol="x-thin-open", size=12, color=color, line=dict(width=2, color=color)),
        error_y=error_bars(found.value, found.low, found.high, color),
        customdata=[layers], hovertemplate=f"random control (m = {result.m}, seed "
        f"{result.settings.get('control seed')})<br>%{{customdata}}<br>score %{{y:.4f}} "
        f"[{found.low:.4f}, {found.high:.4f}] n={found.n}<extra>{attribute}</extra>",
    )


def locogen_curve(results: LocalizeResult | Mapping[str, LocalizeResult], title: str = "LoCoGen") -> go.Figure:
    """Mean score of every window start (line, 95% interval bars), the unswapped baseline (dotted),
    the winning window (star; hover: its collateral) and the random control (cross), per
    attribute; hover names the window's layers and its interval."""
    named = {"attribute": results} if isinstance(results, LocalizeResult) else dict(results)
    if not named:
        raise ValueError("pass at least one LocalizeResult")
    figure = go.Figure()
    for index, (attribute, result) in enumerate(named.items()):
        color, starts, m = attribute_color(attribute, index), result.coords["window start"], result.m
        windows = [", ".join(result.layers[s : s + m]) for s in starts]
        mean, low, high, n = result.intervals("window")
        spans = [f"[{lo:.4f}, {hi:.4f}] n={k}" for lo, hi, k in zip(low, high, n)]
        figure.add_trace(go.Scatter(
            x=starts, y=mean, mode="lines+markers", name=attribute, line=dict(color=color, width=2),
            error_y=error_bars(mean, low, high, color), customdata=windows, text=spans,
            hovertemplate="start %{x}: %{customdata}<br>score %{y:.4f} %{text}<extra>" + attribute + "</extra>",
        ))
        figure.add_hline(y=result.baseline, line=dict(color=color, dash="dot", width=1),
                         annotation_text=f"{attribute}: no swap", annotation_position="top left")
        best = starts.index(result.best_start)
        figure.add_trace(go.Scatter(
            x=[result.best_start], y=[mean[best]], mode="markers", showlegend=False,
            marker=dict(symbol="star", size=16, color=color, line=dict(color="black", width=1)),
            customdata=[windows[best]],
            hovertemplate=f"chosen window (m = {m})<br>" + "%{customdata}<br>score %{y:.4f} " + spans[best]
            + _collateral_hover(result) + "<extra></extra>",
        ))
        if "random" in result.scores:
            figure.add_trace(_random_control(result, attribute, color))
    first = next(iter(named.values()))
    target = first.units[0].get("target", "")
    figure.update_xaxes(title=f"window start (cross-attention layer index, m = {first.m})", dtick=1)
    figure.update_yaxes(title=first.scorer)
    wins = first.settings["mode"]
    return styled(figure, f"{title}<br><sup>window layers fed {target!r}; bars: 95% intervals over units; "
                          f"★ chosen window ({wins} score wins), ✕ random layers of its size</sup>", height=400)
