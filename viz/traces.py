"""Causal-tracing figures: the text encoder's (layer x token) grid and the denoiser site map.

Both read a `TraceResult` (live or loaded from disk) and its site names only, so a saved result
redraws without the model. Names follow the adapters' documented scheme: text sites
`<encoder>-<kind>-<layer>` (`text-mlp-3`, `text2-self-attn-0`), UNet sites
`<block>-<kind>[-<index>]` (`down-1-cross-attn-0`, `mid-ff`, `up-0-resnet-2`), DiT sites
`block-<N>[-<kind>]` (PixArt's `block-3-cross-attn`, SD3's `block-3-attn`, `block-3-text-ff`, and
`block-3` for a block's output).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from interventions.causal_trace import TraceResult
from viz.style import PALETTE, error_bars, ie_coloraxis, styled, symmetric_range

Value = Literal["ie", "normalized_ie"]
TEXT_SITE = re.compile(r"^(?P<encoder>text\d*)-(?P<kind>embed|self-attn|mlp|hidden)(?:-(?P<layer>\d+))?$")
UNET_ROWS = ("resnet", "self-attn", "cross-attn", "ff")
DIT_SITE = re.compile(r"^(?P<stream>block|single)-(?P<index>\d+)(?:-(?P<kind>[a-z][a-z-]*))?$")
UNET_SITE = re.compile(r"^(?P<block>[^+]+?)-(?P<kind>resnet|self-attn|cross-attn|ff)(?:[-.](?P<index>[\d.]+))?$")
VALUE_TITLES = {"ie": "IE", "normalized_ie": "normalised IE"}
SPECIAL_TOKENS = {"<|startoftext|>": "BOS", "<|endoftext|>": "EOS"}  # CLIP's, shortened on the axis


def token_label(token: object) -> str:
    """A token axis label as shown: CLIP's special tokens shortened to BOS / EOS."""
    label = str(token)
    for special, short in SPECIAL_TOKENS.items():
        label = label.replace(special, short)
    return label


def _values(result: TraceResult, value: Value) -> np.ndarray:
    if value not in VALUE_TITLES:
        raise ValueError(f"value must be one of {list(VALUE_TITLES)}, got {value!r}")
    return np.asarray(getattr(result, value), dtype=float)


def _subtitle(result: TraceResult, protocol: bool = True) -> str:
    """The trace's prompts, subject, units (kept, dropped), scorer, protocol (if `protocol`), method
    (exact patching, attribution estimates, or hybrid) and total effect."""
    prompts = sorted({u["prompt"] for u in result.units})
    subjects = sorted({u.get("subject", "") for u in result.units})
    shown = repr(prompts[0]) if len(prompts) == 1 else f"{len(prompts)} prompts"
    settings = result.settings
    total = result.total_interval() if result.kept.any() else None
    return (f"{shown}, subject {' / '.join(map(repr, subjects))} · {int(result.kept.sum())} units kept, "
            f"{result.dropped} dropped · {settings.get('scorer', 'score')}"
            + (f" · protocol {settings.get('protocol', 'paper')}" if protocol else "")
            + f" · {result.method}"
            + f" · clean - corrupted {total if total else 'n/a'}")


def interval_labels(result: TraceResult, value: Value = "ie") -> np.ndarray:
    """Per grid cell, its mean IE with the 95% interval and n as hover text (normalised by the
    total effect for `value="normalized_ie"`)."""
    mean, low, high, n = result.ie_interval()
    total = result.total_effect
    scale = 1.0 if value == "ie" else (total if total and not np.isnan(total) else np.nan)
    labels = np.empty(result.shape, dtype=object)
    for index in np.ndindex(*result.shape):
        if n[index] == 0:
            labels[index] = "no unit"
            continue
        m, lo, hi = (x[index] / scale for x in (mean, low, high))
        labels[index] = f"{VALUE_TITLES[value]} {m:+.4f} [{lo:+.4f}, {hi:+.4f}] n={int(n[index])}"
    return labels


def text_encoder_grid(result: TraceResult, value: Value = "ie", title: str = "Text encoder") -> go.Figure:
    """Heatmaps of `value` over (layer, token), one panel per site kind (self-attn, mlp, hidden)."""
    if result.axes != ("site", "token"):
        raise ValueError(f"need a trace_text_encoder result (axes site, token), got axes {result.axes}")
    values, labels = _values(result, value), interval_labels(result, value)
    panels: dict[str, list[tuple[str, int]]] = {}
    for row, name in enumerate(result.coords["site"]):
        found = TEXT_SITE.match(name)
        if found is None:
            raise ValueError(f"{name!r} is not a text-encoder site name (<encoder>-<kind>-<layer>)")
        panels.setdefault(f"{found['encoder']}-{found['kind']}", []).append((found["layer"] or "embed", row))
    tokens = [token_label(t) for t in result.coords["token"]]
    figure = make_subplots(rows=1, cols=len(panels), subplot_titles=list(panels), shared_yaxes=True,
                           horizontal_spacing=0.04)
    for col, (panel, rows) in enumerate(panels.items(), start=1):
        hover = [[f"{result.coords['site'][r]} · token {t}<br>{labels[r, c]}" for c, t in enumerate(tokens)]
                 for _, r in rows]
        figure.add_trace(go.Heatmap(
            z=values[[r for _, r in rows]], x=tokens, y=[f"layer {layer}" for layer, _ in rows],
            coloraxis="coloraxis", customdata=np.array(hover, dtype=object), name=panel,
            hovertemplate="%{customdata}<extra></extra>",
        ), row=1, col=col)
        figure.update_xaxes(tickangle=-45, row=1, col=col)
    figure.update_yaxes(autorange="reversed")
    figure.update_layout(coloraxis=ie_coloraxis(symmetric_range([values]), VALUE_TITLES[value]))
    return styled(figure, f"{title}<br><sup>{_subtitle(result)}</sup>", height=380)


@dataclass(frozen=True)
class Cell:
    """A denoiser site's place in the site map."""

    name: str
    row: int  # index into the layout's rows (UNET_ROWS for a UNet)
    column: int
    block: str  # "down-0", "mid", "up-1", ...; a DiT's block index ("0", "1", ...)


def unet_layout(names: list[str]) -> list[Cell]:
    """Place denoiser sites (in forward order) as the UNet is drawn: blocks left to right, a new
    column at every resnet, a block change, or a kind already present in the current column;
    rows by kind. Names that are not single denoiser sites (groups, "none", "all") are skipped."""
    cells: list[Cell] = []
    used: set[int] = set()
    column, block = -1, None
    for name in names:
        found = UNET_SITE.match(name)
        if found is None:
            continue
        row = UNET_ROWS.index(found["kind"])
        if found["block"] != block or found["kind"] == "resnet" or row in used:
            column, block, used = column + 1, found["block"], set()
        used.add(row)
        cells.append(Cell(name, row, column, found["block"]))
    return cells


def dit_layout(names: list[str]) -> tuple[tuple[str, ...], list[Cell]]:
    """Rows and cells of DiT sites (`block-N[-kind]`): a column per transformer block, a row per
    site kind ("block" for the block's output), image-stream rows first, then SD3's text stream
    (kinds starting with "text"), each in order of first appearance. FLUX's single-stream blocks
    (`single-M[-kind]`, labelled "sM") follow its double-stream ones. Other names are skipped."""
    found = [(name, match) for name in names if (match := DIT_SITE.match(name))]
    kinds = dict.fromkeys(match["kind"] or "block" for _, match in found)
    rows = tuple(sorted(kinds, key=lambda kind: kind.startswith("text")))
    doubles = 1 + max((int(m["index"]) for _, m in found if m["stream"] == "block"), default=-1)
    cells = [Cell(name, rows.index(match["kind"] or "block"), int(match["index"]), match["index"])
             if match["stream"] == "block" else
             Cell(name, rows.index(match["kind"] or "block"), doubles + int(match["index"]), f"s{match['index']}")
             for name, match in found]
    return rows, cells


def denoiser_layout(names: list[str]) -> tuple[tuple[str, ...], list[Cell]]:
    """Rows and cells of the site map: a DiT's if any name is a DiT site, else a UNet's."""
    if any(DIT_SITE.match(name) for name in names):
        return dit_layout(names)
    return UNET_ROWS, unet_layout(names)


def _site_grid(result: TraceResult, value: Value, rows: tuple[str, ...], cells: list[Cell], width: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The site map's grid of one trace: values, site names and hover labels (intervals)."""
    values = dict(zip(result.coords["site"], _values(result, value)))
    labels = dict(zip(result.coords["site"], interval_labels(result, value)))
    z = np.full((len(rows), width), np.nan)
    names = np.full((len(rows), width), "", dtype=object)
    hover = np.full((len(rows), width), "", dtype=object)
    for cell in cells:
        z[cell.row, cell.column], names[cell.row, cell.column] = values[cell.name], cell.name
        hover[cell.row, cell.column] = labels[cell.name]
    return z, names, hover


def denoiser_site_maps(results: Mapping[str, TraceResult], value: Value = "ie", title: str = "Denoiser") -> go.Figure:
    """Site maps of traces over the same denoiser sites side by side (e.g. the paper's protocol and
    the aligned one), one panel per entry, one colour scale; hover gives each site's mean with its
    95% interval and n. The layout is `denoiser_site_map`'s."""
    if not results:
        raise ValueError("pass at least one trace_unet result")
    for result in results.values():
        if result.axes != ("site",):
            raise ValueError(f"need trace_unet results (axis site), got axes {result.axes}")
    first = next(iter(results.values()))
    if any(r.coords["site"] != first.coords["site"] for r in results.values()):
        raise ValueError("side-by-side site maps need traces of the same sites")
    rows, cells = denoiser_layout(first.coords["site"])
    if not cells:
        raise ValueError(f"no denoiser site names among {first.coords['site'][:5]}...; trace single sites")
    width = max(cell.column for cell in cells) + 1
    starts: dict[str, int] = {}
    for cell in cells:
        starts.setdefault(cell.block, cell.column)
    several = len(results) > 1
    titles = [f"{label}: {int(r.kept.sum())} units kept, {r.dropped} dropped" for label, r in results.items()]
    figure = make_subplots(rows=1, cols=len(results), shared_yaxes=True, horizontal_spacing=0.05,
                           subplot_titles=titles if several else None)
    grids = []
    for col, (label, result) in enumerate(results.items(), start=1):
        z, names, hover = _site_grid(result, value, rows, cells, width)
        grids.append(z)
        figure.add_trace(go.Heatmap(
            z=z, x=list(range(width)), y=list(rows), text=names, customdata=hover, coloraxis="coloraxis", xgap=3,
            ygap=3, hovertemplate="%{text}<br>%{customdata}<extra>" + label + "</extra>", hoverongaps=False,
            name=label or "sites",
        ), row=1, col=col)
        if len(starts) < width:  # blocks span several columns (a UNet): mark where each begins
            for start in list(starts.values())[1:]:
                figure.add_vline(x=start - 0.5, line=dict(color="#444", width=1, dash="dot"), row=1, col=col)
        figure.update_xaxes(tickvals=list(starts.values()), ticktext=list(starts), title="block (forward order →)",
                            showgrid=False, zeroline=False, row=1, col=col)
    figure.update_yaxes(autorange="reversed", showgrid=False)
    figure.update_layout(coloraxis=ie_coloraxis(symmetric_range(grids), VALUE_TITLES[value]))
    return styled(figure, f"{title}<br><sup>{_subtitle(first, protocol=not several)}</sup>",
                  height=max(330, 90 + 60 * len(rows)) + (30 if several else 0))


def denoiser_site_map(result: TraceResult, value: Value = "ie", title: str = "Denoiser") -> go.Figure:
    """The denoiser's sites as a grid coloured by `value`, hover showing each site's name, mean,
    95% interval and n.

    A UNet: down, mid, up blocks left to right, resnet / self-attn / cross-attn / ff rows. A DiT
    (PixArt, SD3): transformer blocks left to right, a row per site kind and stream (`dit_layout`).
    """
    if result.axes != ("site",):
        raise ValueError(f"need a trace_unet result (axis site), got axes {result.axes}")
    return denoiser_site_maps({"": result}, value, title)


def ie_bars(results: Mapping[str, TraceResult], top: int = 8, title: str = "Largest indirect effects") -> go.Figure:
    """Horizontal bars of the cells with the largest mean IE, each with its 95% interval as error
    bars and n in the hover: the `top` cells of every result (the union, in the first result's
    order), one bar colour per result (e.g. the paper's and the aligned protocol)."""
    if not results:
        raise ValueError("pass at least one trace result")
    chosen: list[tuple] = []
    for result in results.values():
        chosen += [labels for labels, _, _ in result.top(top) if labels not in chosen]
    figure = go.Figure()
    for index, (label, result) in enumerate(results.items()):
        mean, low, high, n = (a.ravel() for a in result.ie_interval())
        cells = result.cells()
        rows = [cells.index(c) if c in cells else None for c in chosen]
        pick = lambda a: np.array([a[r] if r is not None else np.nan for r in rows], dtype=float)  # noqa: E731
        m, lo, hi, k = pick(mean), pick(low), pick(high), pick(n)
        figure.add_trace(go.Bar(
            y=[" · ".join(token_label(x) for x in c) for c in chosen], x=m, orientation="h", name=label,
            marker_color=PALETTE[index % len(PALETTE)], error_x=error_bars(m, lo, hi, "#333"),
            customdata=np.stack([lo, hi, k], axis=1),
            hovertemplate="%{y}<br>IE %{x:+.4f} [%{customdata[0]:+.4f}, %{customdata[1]:+.4f}] "
                          "n=%{customdata[2]:.0f}<extra>" + label + "</extra>",
        ))
    figure.update_yaxes(autorange="reversed")
    figure.update_xaxes(title="indirect effect (bars: 95% interval over units)", zeroline=True)
    first = next(iter(results.values()))
    return styled(figure, f"{title}<br><sup>{_subtitle(first, protocol=len(results) == 1)}</sup>",
                  height=140 + 26 * len(chosen) * max(1, len(results)))
