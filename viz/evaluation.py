"""The edit evaluation as a figure and a table: each (group, measure) row's rate under every
condition (unedited, edited, the controls) with its 95% Wilson interval and n."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from interventions.edit_eval import EditEvaluation, Row
from viz.style import PALETTE, error_bars, styled

CONDITION_COLORS = {"unedited": "#888888", "edited": "#7b3294", "all layers": "#d95f02", "random layer": "#2c7bb6"}


def _row_label(evaluation: EditEvaluation, row: Row) -> str:
    """'efficacy: style = van gogh', with the concept first where the edit has several."""
    label = f"{row.group}: {row.measure}"
    return f"{row.concept} · {label}" if len(evaluation.concepts) > 1 else label


def evaluation_table(evaluation: EditEvaluation) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the evaluation: a row per (group, measure), a column per condition, each
    cell 'rate% [low, high] (n=...)' or '-' where the condition was not run."""
    header = ["group: measure", *evaluation.conditions]
    rows = [[_row_label(evaluation, row),
             *((i.percent() if (i := row.interval(c)) else "-") for c in evaluation.conditions)]
            for row in evaluation.rows]
    return header, rows


def edit_evaluation(evaluations: Mapping[str, EditEvaluation], title: str = "Edit evaluation") -> go.Figure:
    """One panel per edit: for every (group, measure) row a bar per condition, the judge's rate with
    its 95% Wilson interval (error bars; hover adds n and the hits)."""
    if not evaluations:
        raise ValueError("pass at least one EditEvaluation")
    figure = make_subplots(rows=len(evaluations), cols=1, subplot_titles=list(evaluations), vertical_spacing=0.18)
    shown: set[str] = set()
    for panel, evaluation in enumerate(evaluations.values(), start=1):
        labels = [_row_label(evaluation, row) for row in evaluation.rows]
        for index, condition in enumerate(evaluation.conditions):
            intervals = [row.interval(condition) for row in evaluation.rows]
            rate, low, high = (np.array([getattr(i, k) if i else np.nan for i in intervals], dtype=float)
                               for k in ("value", "low", "high"))
            counts = [row.counts.get(condition) or (0, 0) for row in evaluation.rows]
            color = CONDITION_COLORS.get(condition, PALETTE[index % len(PALETTE)])
            figure.add_trace(go.Bar(
                x=labels, y=rate, name=condition, legendgroup=condition, showlegend=condition not in shown,
                marker_color=color, error_y=error_bars(rate, low, high, "#333"),
                customdata=[[lo, hi, hits, n] for lo, hi, (hits, n) in zip(low, high, counts)],
                hovertemplate="%{x}<br>%{y:.1%} [%{customdata[0]:.1%}, %{customdata[1]:.1%}] "
                              "(%{customdata[2]} of %{customdata[3]})<extra>" + condition + "</extra>",
            ), row=panel, col=1)
            shown.add(condition)
        figure.update_yaxes(title="judge's rate", range=[0, 1.05], tickformat=".0%", row=panel, col=1)
    figure.update_layout(barmode="group")
    first = next(iter(evaluations.values()))
    size = first.settings.get("images_per_group")
    return styled(figure, f"{title}<br><sup>bars: 95% Wilson intervals; {size} images per group and condition; "
                          "prompts held out from the edit's keys</sup>", height=120 + 330 * len(evaluations))
