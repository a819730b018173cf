"""Cross-attention maps drawn over the generated image: per token (aggregated, DAAM) and per layer.

Both read an `AttentionMaps` (interventions.attention_maps). Each panel is the image with the
token's normalised map (0..1, one colour axis for the figure) laid over it at `opacity`; the first
panel of `attention_heatmaps` is the bare image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from interventions.attention_maps import AttentionMaps, normalise
from viz.images import CELL_PX, data_uri, wrap
from viz.style import styled
from viz.traces import token_label

MAP_COLORSCALE = "Inferno"  # maps are non-negative shares of attention: a sequential scale


def _overlay(figure: go.Figure, image: np.ndarray, heat: np.ndarray | None, row: int, col: int, name: str,
             opacity: float) -> None:
    """The image in one panel and, unless `heat` is None, the map (H, W) over it."""
    figure.add_trace(go.Image(source=data_uri(image), name=name, hoverinfo="name"), row=row, col=col)
    if heat is not None:
        figure.add_trace(go.Heatmap(z=heat, coloraxis="coloraxis", opacity=opacity, name=name,
                                    hovertemplate=f"{name}<br>x %{{x}}, y %{{y}}: %{{z:.2f}}<extra></extra>"),
                         row=row, col=col)


def _finish(figure: go.Figure, title: str, rows: int, columns: int) -> go.Figure:
    figure.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    figure.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, autorange="reversed")
    figure.update_annotations(font_size=11)
    figure.update_layout(coloraxis=dict(colorscale=MAP_COLORSCALE, cmin=0, cmax=1,
                                        colorbar=dict(title=dict(text="attention"), thickness=14)))
    figure = styled(figure, title, height=rows * (CELL_PX + 50) + 130)
    figure.update_layout(width=max(520, columns * CELL_PX + 160), margin_t=120)
    return figure


def _check(maps: AttentionMaps, seed_index: int) -> np.ndarray:
    if not -len(maps.seeds) <= seed_index < len(maps.seeds):
        raise IndexError(
            f"seed_index {seed_index} out of range: the maps hold {len(maps.seeds)} images (seeds {maps.seeds})"
        )
    return maps.images[seed_index].numpy()


def attention_heatmaps(maps: AttentionMaps, seed_index: int = 0, tokens: Sequence[str] | None = None,
                       opacity: float = 0.6) -> go.Figure:
    """The image of seed `seed_index`, then each token's DAAM heatmap (every layer, head and step)
    over it, in one row."""
    image = _check(maps, seed_index)
    chosen = list(tokens or maps.tokens)
    titles = ["image", *(token_label(t) for t in chosen)]
    figure = make_subplots(rows=1, cols=len(titles), subplot_titles=titles, horizontal_spacing=0.02)
    _overlay(figure, image, None, 1, 1, "image", opacity)
    for col, token in enumerate(chosen, start=2):
        _overlay(figure, image, maps.heatmap(token)[seed_index].numpy(), 1, col, token_label(token), opacity)
    title = f"Cross-attention heatmaps: {wrap(repr(maps.prompt), 80)} · seed {maps.seeds[seed_index]}"
    return _finish(figure, title, 1, len(titles))


def attention_layers(maps: AttentionMaps, token: str, seed_index: int = 0, columns: int = 4,
                     opacity: float = 0.6) -> go.Figure:
    """One token's map from each cross-attention layer over the image (each normalised on its own,
    titled with its native resolution), and the aggregate last."""
    image = _check(maps, seed_index)
    panels = [(f"{layer} ({maps.probs[layer].shape[3]}x{maps.probs[layer].shape[4]})",
               normalise(maps.layer_map(token, layer))[seed_index].numpy()) for layer in maps.layers]
    panels.append(("all layers (DAAM)", maps.heatmap(token)[seed_index].numpy()))
    columns = min(columns, len(panels))
    rows = -(-len(panels) // columns)
    figure = make_subplots(rows=rows, cols=columns, subplot_titles=[wrap(t, 28) for t, _ in panels],
                           horizontal_spacing=0.02, vertical_spacing=0.3 / rows)
    for i, (name, heat) in enumerate(panels):
        _overlay(figure, image, heat, i // columns + 1, i % columns + 1, name, opacity)
    title = (f"Cross-attention of {token_label(token)!r} per layer: {wrap(repr(maps.prompt), 80)} · "
             f"seed {maps.seeds[seed_index]}")
    return _finish(figure, title, rows, columns)
