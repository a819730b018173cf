"""The aligned restore protocol: a donor computed on the restored run's own latent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import interp
from interp import Graph, Noise, Restore, Run
from interp.errors import GraphValidationError
from interventions.causal_trace import trace_unet
from tests.conftest import PROMPT
from tests.random_clip import random_clip_scorer

TEXT_INDEPENDENT = ("down-0-resnet-0", "down-0-self-attn-0")  # before the first cross-attention


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    torch.set_num_threads(1)
    return random_clip_scorer(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def traces(model, scorer):
    kwargs = dict(sites=[*TEXT_INDEPENDENT, "down-0-cross-attn-0"], samples=2, steps=3, scorer=scorer,
                  progress=False, min_effect=-np.inf)
    return {p: trace_unet(model, PROMPT, "van gogh", protocol=p, **kwargs) for p in ("paper", "aligned")}


def test_aligned_ie_is_exactly_zero_at_text_independent_sites(traces):
    aligned = traces["aligned"]
    assert aligned.settings["protocol"] == "aligned"
    np.testing.assert_array_equal(aligned.ie_samples[:, :2], 0.0)
    assert np.abs(aligned.ie_samples[:, 2]).max() > 0  # a cross-attention layer reads the text


def test_paper_protocol_gives_text_independent_sites_a_spurious_effect(traces):
    paper = traces["paper"]
    assert np.abs(paper.ie_samples[:, :2]).max() > 1e-4
    np.testing.assert_array_equal(paper.scores["clean"], traces["aligned"].scores["clean"])
    np.testing.assert_array_equal(paper.scores["corrupted"], traces["aligned"].scores["corrupted"])


def test_latent_restore_makes_a_shadow_row_denoise_the_target_latent(model):
    """The shadow (clean prompt) takes the target's latent; the target takes a text-independent
    site from the shadow: the same activation it had, so the target's image does not move."""
    noise = Noise("text-embed", tokens=model.locate(PROMPT, "van gogh").positions, std=2.0)
    graph = Graph([Run("corrupted", PROMPT, steps=3, ops=[noise]),
                   Run("target", PROMPT, steps=3, ops=[noise, Restore("down-0-resnet-0", source="shadow")]),
                   Run("shadow", PROMPT, steps=3, ops=[Restore("latent", source="target")])])
    images = interp.run(model, graph, progress=False).images
    torch.testing.assert_close(images["target"], images["corrupted"], rtol=0, atol=0)
    assert model.sites("latent")[0].name == "latent" and "latent" not in [s.name for s in model.sites()]


def test_a_restore_cycle_at_one_site_is_refused(model):
    graph = Graph([Run("a", PROMPT, steps=2, ops=[Restore("mid-cross-attn", source="b")]),
                   Run("b", PROMPT, steps=2, ops=[Restore("mid-cross-attn", source="a")])])
    with pytest.raises(GraphValidationError, match="restore cycle at mid-cross-attn"):
        interp.run(model, graph, progress=False)


def test_unknown_protocol_is_refused(model, scorer):
    with pytest.raises(ValueError, match="protocol must be one of"):
        trace_unet(model, PROMPT, "van gogh", sites=["mid-cross-attn"], samples=1, steps=2, scorer=scorer,
                   protocol="shadow", progress=False)
