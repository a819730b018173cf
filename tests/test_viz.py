"""Figures from recipe results: layout, labels, the shared colour convention; the HTML report."""

import numpy as np
import plotly.graph_objects as go
import pytest
from plotly.offline import get_plotlyjs

from interp.stats import wilson
from interventions.causal_trace import TraceResult
from interventions.demo import causal_state_verdict
from interventions.edit_eval import Concept, EditEvaluation, Row
from interventions.locogen import LocalizeResult
from viz import (
    Report, denoiser_site_map, denoiser_site_maps, dit_layout, edit_evaluation, evaluation_table, ie_bars, image_grid,
    locogen_curve, text_encoder_grid, trace_images, unet_layout,
)
from viz.style import IE_COLORSCALE
from viz.traces import interval_labels

DUMMY_UNET = ["down-0-resnet-0", "down-0-self-attn-0", "down-0-cross-attn-0", "down-0-ff-0", "down-1-resnet-0",
              "mid-resnet-0", "mid-self-attn", "mid-cross-attn", "mid-ff", "mid-resnet-1", "up-0-resnet-0",
              "up-1-resnet-0", "up-1-self-attn-0", "up-1-cross-attn-0", "up-1-ff-0"]
# SD3's joint blocks in forward order (the last block has no text stream), and PixArt's blocks
SD3_SITES = [f"block-{n}-{kind}" if kind else f"block-{n}" for n in range(3)
             for kind in ("attn", "ff", "text-ff", "", "text") if n < 2 or "text" not in kind]
PIXART_SITES = [f"block-{n}{kind}" for n in range(2) for kind in ("-self-attn", "-cross-attn", "-ff", "")]
TOKENS = ["0:<|startoftext|>", "1:a", "2:red", "3:van", "4:gogh", "5:<|endoftext|>"]
PROMPT = "a red van gogh"


def image(value: int) -> np.ndarray:
    return np.full((8, 8, 3), value, dtype=np.uint8)


def unet_result(sites=DUMMY_UNET, units: int = 1, protocol: str = "paper", shift: float = 0.0) -> TraceResult:
    """A UNet trace of `units` units (the last one dropped when there are three or more)."""
    spread = np.linspace(-0.02, 0.02, units)[:, None]
    restored = 0.5 + shift + 0.01 * np.arange(len(sites))[None] + spread
    images = {"u0/clean": image(200), "u0/n0/corrupted": image(20),
              **{f"u0/n0/{s}/0": image(100) for s in sites}}
    records = [{"prompt": PROMPT, "subject": "van gogh", "seed": u, "positions": [3, 4], "tokens": [], "sample": 0,
                "dropped": units > 2 and u == units - 1} for u in range(units)]
    return TraceResult(("site",), {"site": list(sites)},
                       {"clean": [0.9] * units, "corrupted": [0.5] * units, "restored": restored}, records,
                       {"steps": 2, "noise": 3.0, "samples": 1, "scorer": "judge P(style)", "protocol": protocol},
                       images)


def text_result() -> TraceResult:
    sites = ["text-self-attn-0", "text-mlp-0", "text-hidden-0", "text-self-attn-1", "text-mlp-1", "text-hidden-1"]
    restored = 0.5 + np.linspace(-0.1, 0.3, len(sites) * len(TOKENS)).reshape(1, len(sites), len(TOKENS))
    unit = {"prompt": PROMPT, "subject": "van gogh", "seed": 0, "positions": [3, 4], "tokens": []}
    images = {"u0/clean": image(200), "u0/n0/corrupted": image(20),
              **{f"u0/n0/{s}/{t}/0": image(90) for s in sites for t in TOKENS}}
    return TraceResult(("site", "token"), {"site": sites, "token": TOKENS},
                       {"clean": [0.9], "corrupted": [0.5], "restored": restored}, [unit], {"steps": 2}, images)


def localize_result(best: int) -> LocalizeResult:
    layers = [f"cross-attn-{i}" for i in range(5)]
    window = np.array([[0.8, 0.7, 0.6, 0.7]])
    window[0, best] = 0.1
    units = [{"prompt": PROMPT, "target": "a painting", "seed": 0, "text": PROMPT}]
    return LocalizeResult(("window start",), {"window start": [0, 1, 2, 3]}, {"window": window, "baseline": [0.9]},
                          units, {"m": 2, "layers": layers, "mode": "lowest"})


def test_unet_layout_columns_follow_the_unet():
    cells = {c.name: c for c in unet_layout(DUMMY_UNET + ["none", "all", "mid-ff+up-1-ff-0"])}
    assert set(cells) == set(DUMMY_UNET)  # groups are not sites
    assert cells["down-0-cross-attn-0"].column == cells["down-0-resnet-0"].column == 0
    assert cells["down-0-cross-attn-0"].row == 2 and cells["up-1-ff-0"].row == 3
    assert cells["down-1-resnet-0"].column == 1 and cells["mid-ff"].column == cells["mid-resnet-0"].column == 2
    assert cells["mid-resnet-1"].column == 3 and cells["up-1-ff-0"].column == 5
    assert cells["mid-ff"].block == "mid" and cells["up-1-ff-0"].block == "up-1"


def test_unet_layout_repeated_transformer_blocks_get_their_own_columns():
    names = ["mid-resnet-0", "mid-self-attn.0", "mid-cross-attn.0", "mid-ff.0", "mid-self-attn.1", "mid-cross-attn.1"]
    assert [c.column for c in unet_layout(names)] == [0, 0, 0, 0, 1, 1]


def test_dit_layout_blocks_are_columns_and_kinds_rows_image_stream_first():
    rows, cells = dit_layout(SD3_SITES + ["none", "block-0-attn+block-1-attn"])
    assert rows == ("attn", "ff", "block", "text-ff", "text")
    placed = {c.name: (c.row, c.column) for c in cells}
    assert set(placed) == set(SD3_SITES)
    assert placed["block-0-attn"] == (0, 0) and placed["block-2"] == (2, 2) and placed["block-1-text"] == (4, 1)
    assert dit_layout(PIXART_SITES)[0] == ("self-attn", "cross-attn", "ff", "block")


def test_denoiser_site_map_draws_dit_blocks():
    result = unet_result(SD3_SITES)
    figure = denoiser_site_map(result)
    heatmap = figure.data[0]
    z, text = np.array(heatmap.z, dtype=float), np.array(heatmap.text)
    assert list(heatmap.y) == ["attn", "ff", "block", "text-ff", "text"] and z.shape == (5, 3)
    ie = dict(zip(SD3_SITES, result.ie))
    assert z[2, 1] == pytest.approx(ie["block-1"]) and text[2, 1] == "block-1"
    assert np.isnan(z[4, 2]) and text[4, 2] == ""  # the last block updates no text stream
    assert list(figure.layout.xaxis.ticktext) == ["0", "1", "2"] and not figure.layout.shapes  # no block dividers
    pixart = denoiser_site_map(unet_result(PIXART_SITES)).data[0]
    assert list(pixart.y) == ["self-attn", "cross-attn", "ff", "block"] and np.array(pixart.z).shape == (4, 2)


def test_denoiser_site_map_places_unet_values_and_names():
    result = unet_result()
    figure = denoiser_site_map(result)
    assert isinstance(figure, go.Figure)
    heatmap = figure.data[0]
    z, text = np.array(heatmap.z, dtype=float), np.array(heatmap.text)
    ie = dict(zip(DUMMY_UNET, result.ie))
    assert z[2, 0] == pytest.approx(ie["down-0-cross-attn-0"]) and text[2, 0] == "down-0-cross-attn-0"
    assert np.isnan(z[1, 1]) and text[1, 1] == ""  # down-1 has no attention
    assert list(figure.layout.xaxis.ticktext) == ["down-0", "down-1", "mid", "up-0", "up-1"]
    assert len(figure.layout.shapes) == 4  # dotted lines where each block after the first begins
    assert list(heatmap.y) == ["resnet", "self-attn", "cross-attn", "ff"]


def test_all_effect_figures_share_one_symmetric_diverging_scale():
    for figure in (denoiser_site_map(unet_result()), text_encoder_grid(text_result())):
        axis = figure.layout.coloraxis
        assert axis.cmid == 0 and axis.cmin == -axis.cmax > -np.inf
        assert [c[1] for c in axis.colorscale] == [c[1] for c in go.Figure(
            go.Heatmap(z=[[0]], colorscale=IE_COLORSCALE)).data[0].colorscale]
        assert all(trace.coloraxis == "coloraxis" for trace in figure.data)


def test_text_encoder_grid_one_panel_per_kind_with_token_strings():
    result = text_result()
    figure = text_encoder_grid(result)
    assert [t.name for t in figure.data] == ["text-self-attn", "text-mlp", "text-hidden"]
    assert list(figure.data[1].x) == ["0:BOS", *TOKENS[1:-1], "5:EOS"] and list(figure.data[1].y) == ["layer 0", "layer 1"]
    np.testing.assert_allclose(figure.data[1].z, result.ie[[1, 4]])
    assert figure.layout.coloraxis.cmax == pytest.approx(np.abs(result.ie).max())


def test_normalized_ie_and_wrong_results_are_rejected_or_drawn():
    figure = denoiser_site_map(unet_result(), value="normalized_ie")
    assert figure.layout.coloraxis.colorbar.title.text == "normalised IE"
    with pytest.raises(ValueError, match="trace_text_encoder"):
        text_encoder_grid(unet_result())
    with pytest.raises(ValueError, match="trace_unet"):
        denoiser_site_map(text_result())
    with pytest.raises(ValueError, match="value"):
        denoiser_site_map(unet_result(), value="ie2")


def test_locogen_curve_one_line_per_attribute_and_the_chosen_window():
    figure = locogen_curve({"style": localize_result(2), "object": localize_result(0)})
    lines = [t for t in figure.data if t.mode == "lines+markers"]
    stars = [t for t in figure.data if t.mode == "markers"]
    assert [t.name for t in lines] == ["style", "object"]
    assert [s.x[0] for s in stars] == [2, 0] and stars[0].marker.symbol == "star"
    assert lines[0].customdata[2] == "cross-attn-2, cross-attn-3"  # hover names the window's layers
    assert lines[0].line.color != lines[1].line.color


def test_image_grid_inlines_png_data_uris():
    figure = image_grid([[("a", image(0)), ("b", image(255))], [("c", image(9))]], ["first", "second"], "grid")
    assert len(figure.data) == 3 and all(t.source.startswith("data:image/png;base64,") for t in figure.data)
    with pytest.raises(ValueError, match="one title per row"):
        image_grid([[("a", image(0))]], [], "grid")


def test_trace_images_clean_corrupted_and_top_restored():
    figure = trace_images({"style": unet_result(), "color": unet_result()}, top=2)
    assert len(figure.data) == 8
    captions = [a.text for a in figure.layout.annotations]
    assert captions[:2] == ["clean", "corrupted"] and "up-1-ff-0" in captions[2]


def test_report_is_self_contained_with_plotly_inlined_once(tmp_path):
    report = Report("Title <&>", "sub").heading("Section").text("a < b").table(["x", "y"], [["row", 0.12345]])
    report.figure(denoiser_site_map(unet_result())).figure(locogen_curve(localize_result(1)))
    page = report.write(tmp_path / "deep" / "report.html").read_text()
    inlined, external = page.count(get_plotlyjs()), "<script src" in page  # booleans: no megabyte reprs
    assert inlined == 1 and not external
    body = page.split("</head>", 1)[1]
    assert body.count('class="plotly-graph-div"') == 2 and "Title &lt;&amp;&gt;" in body and "0.123" in body


def test_interval_labels_give_mean_interval_and_n_of_kept_units():
    result = unet_result(units=4)  # 3 kept, 1 dropped
    mean, low, high, n = result.ie_interval()
    labels = interval_labels(result)
    assert labels[0] == f"IE {mean[0]:+.4f} [{low[0]:+.4f}, {high[0]:+.4f}] n=3" and low[0] < mean[0] < high[0]
    assert "no unit" in interval_labels(text_result_with_gap())[0, 2]


def text_result_with_gap() -> TraceResult:
    result = text_result()
    result.scores["restored"][0, :, 2] = np.nan  # a token role the prompt has no token for
    return result


def test_denoiser_site_maps_side_by_side_share_one_scale_and_hover_intervals():
    paper, aligned = unet_result(units=4), unet_result(units=4, protocol="aligned", shift=-0.3)
    figure = denoiser_site_maps({"paper": paper, "aligned": aligned})
    assert [t.name for t in figure.data] == ["paper", "aligned"] and {t.coloraxis for t in figure.data} == {"coloraxis"}
    assert [a.text for a in figure.layout.annotations] == ["paper: 3 units kept, 1 dropped",
                                                           "aligned: 3 units kept, 1 dropped"]
    axis = figure.layout.coloraxis
    assert axis.cmax == pytest.approx(max(np.abs(paper.ie).max(), np.abs(aligned.ie).max()))
    hover = np.array(figure.data[1].customdata)
    assert hover[2, 0] == interval_labels(aligned)[DUMMY_UNET.index("down-0-cross-attn-0")]
    assert len(figure.layout.shapes) == 8  # each panel marks where its blocks begin
    with pytest.raises(ValueError, match="same sites"):
        denoiser_site_maps({"paper": paper, "pixart": unet_result(PIXART_SITES)})


def test_ie_bars_draw_the_top_cells_with_their_intervals():
    paper, aligned = unet_result(units=4), unet_result(units=4, protocol="aligned", shift=-0.3)
    figure = ie_bars({"paper": paper, "aligned": aligned}, top=3)
    bars = figure.data
    assert [b.name for b in bars] == ["paper", "aligned"] and list(bars[0].y) == ["up-1-ff-0", "up-1-cross-attn-0",
                                                                                "up-1-self-attn-0"]
    mean, low, high, n = aligned.ie_interval()
    i = DUMMY_UNET.index("up-1-ff-0")
    assert bars[1].x[0] == pytest.approx(mean[i]) and bars[1].error_x.array[0] == pytest.approx(high[i] - mean[i])
    assert bars[1].error_x.arrayminus[0] == pytest.approx(mean[i] - low[i]) and bars[1].customdata[0][2] == n[i] == 3
    text = ie_bars({"style": text_result()}, top=2)
    assert list(text.data[0].y) == ["text-hidden-1 · 5:EOS", "text-hidden-1 · 4:gogh"]


def verdict_result(effects: dict[tuple[str, str], list[float]]) -> TraceResult:
    """A text trace by token role whose IE per (site, role) is given per unit."""
    sites = sorted({s for s, _ in effects})
    roles = ["first subject", "last subject"]
    restored = np.full((3, len(sites), len(roles)), 0.5)
    for (site, role), values in effects.items():
        restored[:, sites.index(site), roles.index(role)] = 0.5 + np.array(values)
    units = [{"prompt": PROMPT, "subject": "van gogh", "seed": u, "sample": 0} for u in range(3)]
    return TraceResult(("site", "token"), {"site": sites, "token": roles},
                       {"clean": [1.0] * 3, "corrupted": [0.5] * 3, "restored": restored}, units, {"samples": 1})


def test_causal_state_verdict_says_what_the_numbers_say():
    state = ("text-self-attn-0", "last subject")
    holds = verdict_result({state: [0.40, 0.42, 0.44], ("text-mlp-0", "last subject"): [0.0, 0.01, 0.02]})
    assert causal_state_verdict(holds).startswith("Holds: text-self-attn-0 at the last subject token has the largest")
    close = verdict_result({state: [0.40, 0.42, 0.44], ("text-mlp-0", "last subject"): [0.30, 0.40, 0.41]})
    assert causal_state_verdict(close).startswith("Not established:") and "text-mlp-0 at the last subject" in \
        causal_state_verdict(close)
    beaten = verdict_result({state: [0.1, 0.1, 0.1], ("text-mlp-0", "first subject"): [0.5, 0.5, 0.5]})
    assert causal_state_verdict(beaten).startswith("Does not hold: the largest indirect effect is text-mlp-0 at "
                                                   "the first subject token") and "ranks 2 of 4" in \
        causal_state_verdict(beaten)
    assert "not traced" in causal_state_verdict(text_result())  # positions, not roles


def evaluation(conditions=("unedited", "edited", "all layers", "random layer")) -> EditEvaluation:
    counts = {"unedited": (15, 16), "edited": (2, 16), "all layers": (0, 16), "random layer": (14, 16)}
    rows = [Row("van gogh", group, "style = van gogh", {c: counts[c] for c in conditions})
            for group in ("efficacy", "generalization")]
    rows.append(Row("van gogh", "specificity", "color", {c: (16, 16) for c in conditions}))
    return EditEvaluation({"method": "diffquickfix", "concepts": [["van gogh", "painting"]]},
                          [Concept("van gogh", "painting", "style")], list(conditions), rows, {}, [], [],
                          {"images_per_group": 16}, {})


def test_edit_evaluation_table_and_bars_carry_wilson_intervals():
    header, rows = evaluation_table(evaluation())
    assert header == ["group: measure", "unedited", "edited", "all layers", "random layer"]
    assert rows[0][:3] == ["efficacy: style = van gogh", wilson(15, 16).percent(), wilson(2, 16).percent()]
    figure = edit_evaluation({"DiffQuickFix": evaluation(), "LoCoEdit": evaluation(("unedited", "edited"))})
    edited = [t for t in figure.data if t.name == "edited"]
    assert len(figure.data) == 6 and len(edited) == 2 and sum(t.showlegend for t in edited) == 1
    found = wilson(2, 16)
    assert edited[0].y[0] == pytest.approx(found.value)
    assert edited[0].error_y.array[0] == pytest.approx(found.high - found.value)
    assert edited[0].error_y.arrayminus[0] == pytest.approx(found.value - found.low)
    assert list(edited[0].customdata[0][2:]) == [2, 16]


def test_report_footer_is_the_last_line(tmp_path):
    page = Report("t", footer="took 12 s").text("body").write(tmp_path / "r.html").read_text()
    assert page.index("body") < page.index("<footer>took 12 s</footer>") < page.index("</body>")
