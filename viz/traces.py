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
from dataclasses import dataclass
from typing import Literal

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from interventions.causal_trace import TraceResult
from viz.style import ie_coloraxis, styled, symmetric_range

Value = Literal["ie", "normalized_ie"]
TEXT_SITE = re.compile(r"^(?P<encoder>text\d*)-(?P<kind>embed|self-attn|mlp|hidden)(?:-(?P<layer>\d+))?$")
UNET_ROWS = ("resnet", "self-attn", "cross-attn", "ff")
DIT_SITE = re.compile(r"^block-(?P<index>\d+)(?:-(?P<kind>[a-z][a-z-]*))?$")
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


def _subtitle(result: TraceResult) -> str:
    prompts = sorted({u["prompt"] for u in result.units})
    subject = result.units[0].get("subject", "")
    shown = prompts[0] if len(prompts) == 1 else f"{len(prompts)} prompts"
    return (f"{shown!r}, subject {subject!r} · clean {np.mean(result.scores['clean']):.3f}, "
            f"corrupted {np.mean(result.scores['corrupted']):.3f}")


def text_encoder_grid(result: TraceResult, value: Value = "ie", title: str = "Text encoder") -> go.Figure:
    """Heatmaps of `value` over (layer, token), one panel per site kind (self-attn, mlp, hidden)."""
    if result.axes != ("site", "token"):
        raise ValueError(f"need a trace_text_encoder result (axes site, token), got axes {result.axes}")
    values = _values(result, value)
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
        names = [result.coords["site"][r] for _, r in rows]
        figure.add_trace(go.Heatmap(
            z=values[[r for _, r in rows]], x=tokens, y=[f"layer {layer}" for layer, _ in rows],
            coloraxis="coloraxis", customdata=np.array([[n] * len(tokens) for n in names]),
            hovertemplate="%{customdata} · token %{x}<br>" + VALUE_TITLES[value] + " %{z:.4f}<extra></extra>",
            name=panel,
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
    (kinds starting with "text"), each in order of first appearance. Other names are skipped."""
    found = [(name, match) for name in names if (match := DIT_SITE.match(name))]
    kinds = dict.fromkeys(match["kind"] or "block" for _, match in found)
    rows = tuple(sorted(kinds, key=lambda kind: kind.startswith("text")))
    cells = [Cell(name, rows.index(match["kind"] or "block"), int(match["index"]), match["index"])
             for name, match in found]
    return rows, cells


def denoiser_layout(names: list[str]) -> tuple[tuple[str, ...], list[Cell]]:
    """Rows and cells of the site map: a DiT's if any name is a DiT site, else a UNet's."""
    if any(DIT_SITE.match(name) for name in names):
        return dit_layout(names)
    return UNET_ROWS, unet_layout(names)


def denoiser_site_map(result: TraceResult, value: Value = "ie", title: str = "Denoiser") -> go.Figure:
    """The denoiser's sites as a grid coloured by `value`, hover showing each site's name and value.

    A UNet: down, mid, up blocks left to right, resnet / self-attn / cross-attn / ff rows. A DiT
    (PixArt, SD3): transformer blocks left to right, a row per site kind and stream (`dit_layout`).
    """
    if result.axes != ("site",):
        raise ValueError(f"need a trace_unet result (axis site), got axes {result.axes}")
    values = dict(zip(result.coords["site"], _values(result, value)))
    rows, cells = denoiser_layout(list(values))
    if not cells:
        raise ValueError(f"no denoiser site names among {result.coords['site'][:5]}...; trace single sites")
    width = max(cell.column for cell in cells) + 1
    z = np.full((len(rows), width), np.nan)
    text = np.full((len(rows), width), "", dtype=object)
    for cell in cells:
        z[cell.row, cell.column], text[cell.row, cell.column] = values[cell.name], cell.name
    figure = go.Figure(go.Heatmap(
        z=z, x=list(range(width)), y=list(rows), text=text, coloraxis="coloraxis", xgap=3, ygap=3,
        hovertemplate="%{text}<br>" + VALUE_TITLES[value] + " %{z:.4f}<extra></extra>", hoverongaps=False,
        name="sites",
    ))
    starts: dict[str, int] = {}
    for cell in cells:
        starts.setdefault(cell.block, cell.column)
    if len(starts) < width:  # blocks span several columns (a UNet): mark where each begins
        for start in list(starts.values())[1:]:
            figure.add_vline(x=start - 0.5, line=dict(color="#444", width=1, dash="dot"))
    figure.update_xaxes(tickvals=list(starts.values()), ticktext=list(starts), title="block (forward order →)",
                        showgrid=False, zeroline=False)
    figure.update_yaxes(autorange="reversed", showgrid=False)
    figure.update_layout(coloraxis=ie_coloraxis(symmetric_range([z]), VALUE_TITLES[value]))
    return styled(figure, f"{title}<br><sup>{_subtitle(result)}</sup>", height=max(330, 90 + 60 * len(rows)))
