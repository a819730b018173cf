"""Causal tracing and LoCoGen at head granularity inside one layer: one cell per head."""

import numpy as np
import pytest
import torch

from interp.sites import head_names
from interventions.causal_trace import trace_unet
from interventions.locogen import localize
from tests.conftest import PROMPT
from tests.random_clip import random_clip_scorer

FAST = dict(seeds=(0,), steps=2, progress=False)
LAYER = "mid-cross-attn"


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    torch.set_num_threads(1)
    return random_clip_scorer(tmp_path_factory.mktemp("clip"))


def test_head_trace_has_one_cell_per_head_and_all_heads_restore_the_layer(model, scorer):
    heads = head_names(model.site(LAYER))
    result = trace_unet(model, PROMPT, "van gogh", sites=[*heads, tuple(heads), LAYER], scorer=scorer,
                        **{**FAST, "samples": 2})
    assert result.coords["site"][:8] == [f"{LAYER}.head-{h}" for h in range(8)]
    restored = result.scores["restored"]
    assert restored.shape == (2, 10)
    np.testing.assert_allclose(restored[:, 8], restored[:, 9], atol=1e-6)  # every head = the layer
    assert np.ptp(restored[:, :8], axis=1).max() > 0  # heads differ from one another


def test_head_locogen_slides_over_the_heads_of_one_layer(model, scorer):
    heads = head_names(model.site(LAYER))
    result = localize(model, PROMPT, "a painting", window=1, layers=heads, scorer=scorer, **FAST)
    assert result.layers == heads and result.coords["window start"] == list(range(8))
    assert result.scores["window"].shape == (1, 8)
    layer = localize(model, PROMPT, "a painting", window=1, layers=[LAYER], scorer=scorer, **FAST)
    np.testing.assert_allclose(result.scores["full"], layer.scores["window"][:, 0], atol=1e-6)  # all heads = layer
    assert result.best_sites[0] in heads
