"""LoCoGen window localization on the random-weight dummy pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.errors import WindowSizeError
from interventions.locogen import LocalizeResult, localize, window_starts
from tests.conftest import PROMPT
from tests.random_clip import random_clip_scorer

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
    assert result.window_images(2).shape == (4, 16, 16, 3)


def test_best_window_is_the_lowest_mean_score(result):
    curve = result.curve
    np.testing.assert_allclose(curve, result.scores["window"].mean(0))
    assert result.best_start == int(np.argmin(curve))
    assert result.best_layers == [result.best_start, result.best_start + 1]
    assert result.best_sites == result.layers[result.best_start : result.best_start + 2]
    assert "<- best" in result.table()


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


def test_grow_until_grows_the_window_until_the_threshold_passes(model, scorer, result):
    kept = localize(model, PROMPTS, window=2, grow_until=np.inf, scorer=scorer, **FAST)
    assert kept.m == 2 and kept.settings["met"] and kept.settings["grown"] == [{"m": 2, "best": result.curve.min()}]
    never = localize(model, PROMPTS, window=2, grow_until=-np.inf, scorer=scorer, **FAST)
    assert never.m == 4 and not never.settings["met"]
    assert [g["m"] for g in never.settings["grown"]] == [2, 3, 4]
    # stops at the first m whose best window passes: m=3's own best passes at m=3 at the latest
    bests = {g["m"]: g["best"] for g in never.settings["grown"]}
    grown = localize(model, PROMPTS, window=2, grow_until=bests[3], scorer=scorer, **FAST)
    assert grown.m == (2 if bests[2] <= bests[3] else 3) and grown.settings["met"]
    assert grown.coords["window start"] == window_starts(4, grown.m)
    np.testing.assert_allclose(never.scores["baseline"], result.scores["baseline"])


def test_save_load_round_trip(result, tmp_path):
    loaded = LocalizeResult.load(result.save(tmp_path / "locogen"))
    assert loaded == result and loaded.best_sites == result.best_sites
