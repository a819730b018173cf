"""LoCoGen window localization on the random-weight dummy pipeline, and judged on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import interp
from interp.errors import ScoringInputError, WindowSizeError
from interventions.locogen import LocalizeResult, localize, random_layers, window_starts
from models.tiny import WEIGHTS_DIR
from models.tiny.judge import JudgeNet
from tests.conftest import PROMPT
from tests.random_clip import random_clip_scorer
from viz.locogen import locogen_curve

PROMPTS = [PROMPT, "a blue cat"]
FAST = dict(seeds=(0, 1), steps=2, progress=False)


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    torch.set_num_threads(1)  # tiny tensors: threads only contend
    return random_clip_scorer(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def result(model, scorer) -> LocalizeResult:
    return localize(model, PROMPTS, "a painting", window=2, scorer=scorer, **FAST)


def test_every_window_start_including_the_tail(model, result):
    layers = [s.name for s in model.sites("cross-attn")]
    assert len(layers) == 4
    assert window_starts(4, 2) == [0, 1, 2] and window_starts(4, 4) == [0] and window_starts(4, 1) == [0, 1, 2, 3]
    assert result.coords["window start"] == [0, 1, 2] and result.m == 2 and result.layers == layers
    assert result.scores["window"].shape == (4, 3) and result.scores["baseline"].shape == (4,)
    assert result.scores["full"].shape == result.scores["random"].shape == (4,)
    assert result.window_images(2).shape == result.random_images().shape == (4, 16, 16, 3)
    assert result.scorer == "clip-score"


def test_best_window_is_the_lowest_mean_score(result):
    curve = result.curve
    np.testing.assert_allclose(curve, result.scores["window"].mean(0))
    assert result.best_start == int(np.argmin(curve))
    assert result.best_layers == [result.best_start, result.best_start + 1]
    assert result.best_sites == result.layers[result.best_start : result.best_start + 2]
    assert "<- chosen" in result.table()


def test_swapping_in_the_prompts_own_embedding_changes_nothing(model, scorer):
    same = localize(model, PROMPTS, PROMPTS, window=2, scorer=scorer, **FAST)
    np.testing.assert_allclose(same.scores["window"], same.scores["baseline"][:, None].repeat(3, 1), atol=1e-6)


def test_highest_mode_scores_against_the_target(model, scorer):
    facts = localize(model, PROMPTS, "a painting", window=3, mode="highest", scorer=scorer, **FAST)
    assert {u["text"] for u in facts.units} == {"a painting"}
    assert facts.best_start == int(np.argmax(facts.curve)) and facts.coords["window start"] == [0, 1]


def test_without_guidance_the_swap_acts_on_the_only_branch(model, scorer):
    plain = localize(model, PROMPTS[:1], window=4, guidance_scale=1.0, scorer=scorer, **FAST)
    assert plain.scores["window"].shape == (2, 1)


def test_window_larger_than_the_layer_count_is_a_clear_error(model, scorer):
    with pytest.raises(WindowSizeError, match="window=5 does not fit: the model has 4 cross-attention layers"):
        localize(model, PROMPTS, window=5, scorer=scorer, **FAST)
    with pytest.raises(WindowSizeError):
        localize(model, PROMPTS, window=0, scorer=scorer, **FAST)


def test_m_grows_from_one_until_the_threshold_is_met(model, scorer):
    # a share counts only where swapping every layer moves the score the mode's way: pick that mode
    # (scored against one text, so both modes read the same scores)
    args = dict(prompts=PROMPTS[:1], attribute=PROMPT, scorer=scorer, **FAST)
    probe = localize(model, window=4, **args)
    mode = "lowest" if probe.scores["full"].mean() < probe.baseline else "highest"
    first = localize(model, mode=mode, threshold=-np.inf, **args)
    assert first.m == 1 and first.settings["met"] and [g["m"] for g in first.settings["grown"]] == [1]
    assert first.coords["window start"] == [0, 1, 2, 3]
    never = localize(model, mode=mode, threshold=np.inf, **args)
    assert never.m == 4 and not never.settings["met"] and [g["m"] for g in never.settings["grown"]] == [1, 2, 3, 4]
    # stops at the first m whose best window passes; m=2's own share passes at m=2 at the latest
    shares = {g["m"]: g["share"] for g in never.settings["grown"]}
    grown = localize(model, mode=mode, threshold=shares[2], **args)
    assert grown.m == (1 if shares[1] >= shares[2] else 2) and grown.settings["met"]
    np.testing.assert_allclose(never.scores["baseline"], first.scores["baseline"])
    against = localize(model, mode={"lowest": "highest", "highest": "lowest"}[mode], threshold=-np.inf, **args)
    assert against.m == 4 and not against.settings["met"]


def test_share_is_the_windows_part_of_the_full_swaps_effect(result):
    baseline, full = result.scores["baseline"].mean(), result.scores["full"].mean()
    np.testing.assert_allclose(result.share, (result.curve - baseline) / (full - baseline))
    assert result.settings["grown"][-1]["share"] == pytest.approx(result.share[result.best_start])


def test_every_window_has_a_95_interval_over_units(result):
    values = result.scores["window"]  # (units, starts): 2 prompts x 2 seeds
    n = len(values)
    half = 3.182 * values.std(0, ddof=1) / np.sqrt(n)  # t_{0.975, df=3}
    mean, low, high, count = result.intervals("window")
    np.testing.assert_allclose(mean, values.mean(0))
    np.testing.assert_allclose(low, values.mean(0) - half)
    np.testing.assert_allclose(high, values.mean(0) + half)
    assert list(count) == [4, 4, 4]
    one = result.interval("window", 1)
    assert (one.value, one.low, one.high, one.n) == pytest.approx((mean[1], low[1], high[1], 4))
    assert result.interval("random").n == 4 and f"[{low[0]:.4f}, {high[0]:.4f}]" in result.table()


def test_random_control_has_the_chosen_size_and_a_fixed_seed(model, scorer, result):
    picked = result.random_layers
    assert len(picked) == result.m and picked != result.best_layers and picked == sorted(set(picked))
    assert picked == random_layers(4, 2, result.best_layers, seed=0)
    assert random_layers(4, 2, [0, 1], seed=3) == random_layers(4, 2, [0, 1], seed=3)
    assert random_layers(4, 4, [0, 1, 2, 3]) == [0, 1, 2, 3]  # no other set exists
    again = localize(model, PROMPTS, "a painting", window=2, scorer=scorer, **FAST)
    np.testing.assert_array_equal(again.scores["random"], result.scores["random"])
    assert "control, random layers" in result.table()


def test_figure_draws_intervals_and_marks_the_random_control(result):
    figure = locogen_curve({"style": result})
    line = next(t for t in figure.data if t.mode == "lines+markers")
    mean, low, high, _ = result.intervals("window")
    np.testing.assert_allclose(line.error_y.array, high - mean)
    np.testing.assert_allclose(line.error_y.arrayminus, mean - low)
    assert line.text[0] == f"[{low[0]:.4f}, {high[0]:.4f}] n=4"
    control = next(t for t in figure.data if t.name == "style: random control")
    assert control.y[0] == pytest.approx(result.interval("random").value) and control.marker.symbol == "x-thin-open"
    assert figure.layout.yaxis.title.text == "clip-score"


def test_collateral_needs_the_tiny_judge(model, scorer):
    assert localize(model, PROMPTS[:1], window=4, scorer=scorer, **FAST).collateral == {}
    with pytest.raises(ScoringInputError, match="tiny model's judge"):
        localize(model, PROMPTS[:1], window=4, collateral=["object"], scorer=scorer, **FAST)


def test_save_load_round_trip(result, tmp_path):
    loaded = LocalizeResult.load(result.save(tmp_path / "locogen"))
    assert loaded == result and loaded.best_sites == result.best_sites


# the bundled tiny model, judged -------------------------------------------------------------
needs_tiny = pytest.mark.skipif(not (WEIGHTS_DIR / "model_index.json").is_file(),
                                reason="the tiny model's weights are not built (python -m models.tiny.train)")
TINY = dict(seeds=(0, 1), steps=1, progress=False)


@pytest.fixture(scope="module")
def tiny():
    return interp.load("tiny")


@pytest.fixture
def judge(monkeypatch):
    """A random-weight judge in place of the shipped one: these tests check the wiring, not the weights."""
    torch.manual_seed(0)
    monkeypatch.setattr("models.tiny.scoring.load_judge", lambda path: JudgeNet().eval())


@needs_tiny
def test_tiny_style_is_judged_by_default_with_collateral_on_object_and_color(tiny, judge, tmp_path):
    style = localize(tiny, ["a red circle in the style of van gogh"], window=1, **TINY)
    assert style.scorer == "judge P(style)" and style.m == 1
    assert style.settings["collateral"] == ["object", "color"]
    (before, after) = style.collateral["object"]
    assert before.n == after.n == 2 and 0 <= after.value <= 1
    assert "collateral, judge P(color)" in style.table()
    loaded = LocalizeResult.load(style.save(tmp_path / "style"))
    assert loaded == style and loaded.collateral == style.collateral
    assert loaded.random_layers == style.random_layers


@needs_tiny
def test_tiny_fact_mode_judges_the_targets_object_and_color(tiny, judge):
    fact = localize(tiny, ["the king of zembla"], "the king of vardo", window=2, mode="highest", **TINY)
    assert fact.scorer == "judge P(object+color)" and {u["text"] for u in fact.units} == {"the king of vardo"}
    assert fact.best_start == int(np.argmax(fact.curve)) and fact.settings["collateral"] == ["style"]


@needs_tiny
def test_tiny_judge_reads_only_captions_of_its_world(tiny, judge):
    with pytest.raises(ScoringInputError, match="captions of its world"):
        localize(tiny, ["a cat on a sofa"], window=7, **TINY)
