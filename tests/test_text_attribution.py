"""Attribution patching of text-encoder (site, token) states: exact where the score is linear in the
state, adding up to the whole-site estimate, the exact trace's grid, hybrid verification, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import interp
from interventions.attribution import attribute, candidates
from interventions.causal_trace import ROLES, trace_text_encoder
from tests.conftest import PROMPT
from tests.random_clip import random_clip_scorer
from tests.test_attribution import FAST, LinearScore, linear_case, linear_pipeline
from viz.traces import text_encoder_grid

LAYER_0 = dict(kinds=("text-self-attn", "text-mlp"), layers=[0])
SAME_SUBJECT = [(PROMPT, "van gogh"), ("a blue square in the style of van gogh", "van gogh")]


@pytest.fixture(scope="module")
def text_linear() -> tuple[interp.Model, LinearScore]:
    """The linear pipeline of tests/test_attribution.py, also linear from the text encoder's last
    layer on: no final layer norm; the last cross-attention attends uniformly (zero keys), so it
    averages the text states' values; no other cross-attention reads the text (zero values); the
    feed-forward after it is constant (zero output weights). One step: the image is then affine in
    the last layer's output and in its MLP's, not in its self-attention's (a layer norm and an MLP follow)."""
    pipe = linear_pipeline()
    pipe.text_encoder.final_layer_norm = torch.nn.Identity()
    last = pipe.unet.up_blocks[-1].attentions[-1].transformer_blocks[0]
    for block in pipe.unet.modules():
        if hasattr(block, "attn2") and block is not last:
            torch.nn.init.zeros_(block.attn2.to_v.weight)
    torch.nn.init.zeros_(last.attn2.to_k.weight)
    torch.nn.init.zeros_(last.ff.net[2].weight)
    return linear_case(pipe)


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    return random_clip_scorer(tmp_path_factory.mktemp("clip"))


def test_text_attribution_equals_exact_patching_where_the_score_is_linear(text_linear):
    model, scorer = text_linear
    options = dict(FAST, steps=1, seeds=(0, 1), scorer=scorer, kinds=("text-mlp", "text-hidden", "text-self-attn"),
                   layers=[1])
    exact = trace_text_encoder(model, PROMPT, "van gogh", **options)
    estimated = trace_text_encoder(model, PROMPT, "van gogh", method="attribution", **options)
    assert estimated.coords["site"] == ["text-mlp-1", "text-hidden-1", "text-self-attn-1"]
    np.testing.assert_allclose(estimated.scores["corrupted"], exact.scores["corrupted"], atol=1e-5)
    gap = np.abs(estimated.ie_samples - exact.ie_samples)
    after = slice(8, None)  # "van gogh" is at 8, 9: earlier positions never see the corruption
    assert np.abs(exact.ie_samples[:, :2, after]).min() > 1e-3  # a real effect at every later token
    assert gap[:, :2].max() < 1e-5  # the last layer's output and its MLP's: linear in the score
    assert np.all(estimated.ie_samples[:, :, :8] == 0) and np.all(exact.ie_samples[:, :, :8] == 0)
    assert gap[:, 2].max() > 1e-4  # self-attention feeds a layer norm and an MLP: an estimate only


def test_per_token_estimates_add_up_to_the_whole_site(model, scorer):
    names = ["text-self-attn-0", "text-mlp-0", "text-hidden-1"]
    length = model.adapter.token_length(model.pipe, 0)
    common = dict(FAST, scorer=scorer)
    tokens = trace_text_encoder(model, PROMPT, "van gogh", kinds=("text-self-attn", "text-mlp", "text-hidden"),
                                tokens=range(length), method="attribution", **common)
    whole = attribute(model, PROMPT, "van gogh", sites=names, **common)
    rows = [tokens.coords["site"].index(n) for n in names]
    per_token = tokens.scores["estimate"][:, rows]
    assert np.abs(per_token).max() > 1e-6
    np.testing.assert_allclose(per_token.sum(-1), whole.scores["estimate"], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(tokens.scores["corrupted"], whole.scores["corrupted"])


def test_text_attribution_is_the_exact_trace_grid_for_positions_and_roles(model, scorer):
    common = dict(FAST, scorer=scorer, **LAYER_0)
    for prompt, subject in ((PROMPT, "van gogh"), ([*SAME_SUBJECT, ("a blue cat", "cat")], None)):
        exact = trace_text_encoder(model, prompt, subject, **common)
        estimated = trace_text_encoder(model, prompt, subject, method="attribution", **common)
        assert type(estimated) is type(exact) and estimated.axes == exact.axes == ("site", "token")
        assert estimated.coords == exact.coords and estimated.shape == exact.shape
        assert estimated.scores["estimate"].shape == exact.scores["restored"].shape
        np.testing.assert_array_equal(np.isnan(estimated.scores["restored"]), np.isnan(exact.scores["restored"]))
        np.testing.assert_allclose(estimated.scores["clean"], exact.scores["clean"], atol=1e-5)
        assert estimated.settings["method"] == "attribution"
        assert estimated.settings["tokens"] == exact.settings["tokens"]
        assert "method attribution patching" in estimated.summary()
    assert estimated.coords["token"] == list(ROLES)


def test_a_role_cell_is_the_mean_of_its_positions(model, scorer):
    common = dict(FAST, scorer=scorer, method="attribution", **LAYER_0)
    positions = trace_text_encoder(model, PROMPT, "van gogh", **common)
    roles = trace_text_encoder(model, SAME_SUBJECT, **common)  # the same corruption: one subject's rows
    before, after = ROLES.index("before subject"), ROLES.index("last subject")
    for key in ("estimate", "restored"):
        ours, theirs = roles.scores[key][:2], positions.scores[key]  # unit 0: PROMPT, seed 0, both samples
        np.testing.assert_allclose(ours[..., before], theirs[..., :8].mean(-1), rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(ours[..., after], theirs[..., 9], rtol=1e-5, atol=1e-9)


def test_text_hybrid_reproduces_exact_scores_on_the_verified_cells(model, scorer, tmp_path):
    common = dict(FAST, scorer=scorer, **LAYER_0)
    exact = trace_text_encoder(model, PROMPT, "van gogh", **common)
    estimated = trace_text_encoder(model, PROMPT, "van gogh", method="attribution", **common)
    hybrid = trace_text_encoder(model, PROMPT, "van gogh", method="hybrid", verify=3, **common)
    top = candidates(estimated)[:3]
    cells = estimated.cells()
    assert hybrid.settings["verified"] == [f"{site}/{token}" for site, token in (cells[i] for i in top)]
    flat, measured = hybrid.scores["restored"].reshape(2, -1), exact.scores["restored"].reshape(2, -1)
    np.testing.assert_allclose(flat[:, top], measured[:, top], atol=1e-5)
    assert np.isnan(np.delete(flat, top, axis=1)).all()
    np.testing.assert_allclose(hybrid.scores["estimate"], estimated.scores["estimate"])
    assert "method hybrid" in hybrid.summary()
    text_encoder_grid(hybrid)  # unmeasured cells are blank, not an error
    hybrid.save(tmp_path / "hybrid")
    assert type(hybrid).load(tmp_path / "hybrid") == hybrid


def test_text_trace_bad_method_is_a_clear_error(model, scorer):
    common = dict(FAST, scorer=scorer, **LAYER_0)
    with pytest.raises(ValueError, match="method must be one of"):
        trace_text_encoder(model, PROMPT, "van gogh", method="fast", **common)
    with pytest.raises(TypeError, match="only method='attribution'"):
        trace_text_encoder(model, PROMPT, "van gogh", points=4, **common)
    with pytest.raises(ValueError, match="cells restricts an exact trace"):
        trace_text_encoder(model, PROMPT, "van gogh", method="attribution", cells=[0], **common)
    with pytest.raises(ValueError, match="per_step applies to method='attribution' only"):
        trace_text_encoder(model, PROMPT, "van gogh", method="hybrid", per_step=True, **common)


def test_cli_text_trace_takes_a_method(tmp_path):
    from typer.testing import CliRunner

    from interp.cli import app

    folder = tmp_path / "clip"
    random_clip_scorer(folder)
    result = CliRunner().invoke(app, ["trace", "--model", "dummy", "--prompt", PROMPT, "--subject", "van gogh",
                                      "--target", "text", "--steps", "1", "--samples", "2", "--clip", str(folder),
                                      "--method", "hybrid", "--verify", "2", "--out", str(tmp_path / "trace")])
    assert result.exit_code == 0, result.output
    assert "method hybrid" in result.output and "text-mlp-1" in result.output
    assert "hybrid" in (tmp_path / "trace" / "report.html").read_text()
