"""Causal tracing on the random-weight dummy pipeline (and, when built, the bundled tiny model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interp.errors import ResultFormatError, SubjectNotFoundError
from interp.model import SubjectSpan
from interventions.causal_trace import (
    ROLES, TraceResult, embedding_std, make_units, token_role, trace_text_encoder, trace_unet,
)
from models.tiny import WEIGHTS_DIR
from tests.conftest import PROMPT, STEPS
from tests.random_clip import random_clip_scorer

FAST = dict(steps=2, progress=False, samples=1, min_effect=-np.inf)  # random weights: keep every unit


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    torch.set_num_threads(1)  # tiny tensors: threads only contend
    return random_clip_scorer(tmp_path_factory.mktemp("clip"))


def denoiser_sites(model) -> tuple[str, ...]:
    return tuple(s.name for s in model.sites() if not s.is_text)


@pytest.fixture(scope="module")
def unet_trace(model, scorer) -> TraceResult:
    return trace_unet(model, PROMPT, "van gogh", sites=[denoiser_sites(model), (), "mid-cross-attn"],
                      scorer=scorer, **{**FAST, "samples": 2})


def test_restoring_every_site_gives_clean_and_none_gives_corrupted(unet_trace):
    assert unet_trace.coords["site"] == ["all", "none", "mid-cross-attn"]
    restored, clean, corrupted = unet_trace.scores["restored"], unet_trace.scores["clean"], unet_trace.scores["corrupted"]
    assert clean[0] == clean[1] and corrupted[0] != corrupted[1]  # one clean run, a unit per noise sample
    assert not np.allclose(clean, corrupted, atol=1e-5)  # the noise does something
    np.testing.assert_allclose(restored[:, 0], clean, atol=1e-6)
    np.testing.assert_allclose(restored[:, 1], corrupted, atol=1e-6)
    np.testing.assert_allclose(unet_trace.normalized_ie[:2], [1.0, 0.0], atol=1e-3)
    assert unet_trace.top(1)[0][0] == ("all",)


def test_every_cell_has_a_t_interval_over_units(unet_trace):
    mean, low, high, n = unet_trace.ie_interval()
    assert n.tolist() == [2, 2, 2]
    ie = unet_trace.ie_samples[:, 2]
    half = 12.706 * np.std(ie, ddof=1) / np.sqrt(2)
    assert (low[2], high[2]) == (pytest.approx(ie.mean() - half), pytest.approx(ie.mean() + half))
    assert "n" in unet_trace.table().splitlines()[1] and "0 dropped" in unet_trace.table()


def test_units_below_the_effect_threshold_are_dropped_and_counted(model, scorer):
    kept = trace_unet(model, PROMPT, "van gogh", sites=["mid-cross-attn"], scorer=scorer, **{**FAST, "samples": 2})
    effects = kept.scores["clean"] - kept.scores["corrupted"]
    threshold = float(np.sort(effects)[1])  # the larger effect stays, the smaller goes
    result = trace_unet(model, PROMPT, "van gogh", sites=["mid-cross-attn"], scorer=scorer,
                        **{**FAST, "samples": 2, "min_effect": threshold})
    assert result.dropped == 1 and result.kept.tolist() == (effects >= threshold).tolist()
    assert result.ie_interval()[3].tolist() == [1]
    assert result.ie[0] == pytest.approx(kept.ie_samples[effects >= threshold, 0][0])


def test_trace_keeps_images_and_settings(model, unet_trace):
    tokens = [t.removesuffix("</w>") for t in model.tokens(PROMPT)]
    assert unet_trace.units == [{"prompt": PROMPT, "subject": "van gogh", "seed": 0, "positions": [8, 9],
                                 "tokens": tokens, "sample": k, "dropped": False} for k in range(2)]
    assert tokens[8:10] == ["van", "gogh"]
    # clean + 2 corrupted samples + 3 cells x 2 samples
    assert len(unet_trace.images) == 9 and unet_trace.images["u0/clean"].dtype == np.uint8
    subject_std = embedding_std(model, make_units(model, PROMPT, "van gogh", (0,)))
    assert unet_trace.settings["noise_std"] == pytest.approx({"text-embed": 3.0 * subject_std})
    assert "mid-cross-attn" in unet_trace.table()
    assert unet_trace.settings["scorer"] == "clip-score" and unet_trace.settings["protocol"] == "paper"


def test_noise_std_is_that_of_the_subject_embedding_rows(model):
    ids = model.token_ids([PROMPT])[0][[8, 9]]
    weight = model.pipe.text_encoder.get_input_embeddings().weight.detach()
    assert embedding_std(model, make_units(model, PROMPT, "van gogh", (0,))) == pytest.approx(float(weight[ids].std()))


def test_text_trace_restoring_the_subject_embedding_gives_clean(model, scorer):
    result = trace_text_encoder(model, "a blue cat", "cat", kinds=("text-embed", "text-hidden"), layers=[1],
                                scorer=scorer, **FAST)
    assert result.axes == ("site", "token") and result.shape == (2, 5)
    assert result.coords["site"] == ["text-embed", "text-hidden-1"]
    assert result.coords["token"][3] == "3:cat"
    restored, clean, corrupted = result.mean("restored"), result.scores["clean"][0], result.scores["corrupted"][0]
    assert restored[0, 3] == pytest.approx(clean, abs=1e-6)  # the only noised position
    np.testing.assert_allclose(restored[0, [0, 1, 2, 4]], corrupted, atol=1e-6)  # clean already


def test_several_prompts_align_tokens_by_role_and_average(model, scorer):
    pairs = [(PROMPT, "van gogh"), ("a blue cat", "cat")]
    result = trace_text_encoder(model, pairs, kinds=("text-self-attn",), layers=[0], seeds=(0, 1),
                                scorer=scorer, **FAST)
    assert result.coords["token"] == list(ROLES) and len(result.units) == 4  # 2 prompts x 2 seeds x 1 sample
    per_unit = result.scores["restored"][:, 0]
    assert np.isnan(per_unit[2:, ROLES.index("middle subject")]).all()  # "cat" is one token
    assert not np.isnan(result.ie[0, ROLES.index("last subject")])
    last = ROLES.index("last subject")
    expected = np.mean(per_unit[:, last] - result.scores["corrupted"])
    assert result.ie[0, last] == pytest.approx(expected)
    assert result.ie_std.shape == result.shape


def test_token_roles():
    span = SubjectSpan("van gogh", (8, 9), ("van", "gogh"))
    assert [token_role(p, span, 12) for p in range(12)] == (
        ["before subject"] * 8 + ["first subject", "last subject", "first after", "last"])


def test_bad_subject_is_a_clear_error(model, scorer):
    with pytest.raises(SubjectNotFoundError, match="monet"):
        trace_unet(model, PROMPT, "monet", scorer=scorer, **FAST)
    with pytest.raises(SubjectNotFoundError):
        trace_text_encoder(model, [(PROMPT, "van gogh"), ("a red cat", "dog")], scorer=scorer, **FAST)


def test_save_load_round_trip(unet_trace, tmp_path):
    unet_trace.save(tmp_path / "trace")
    loaded = TraceResult.load(tmp_path / "trace")
    assert loaded == unet_trace
    np.testing.assert_array_equal(loaded.ie, unet_trace.ie)
    with pytest.raises(ResultFormatError, match="result.save"):
        TraceResult.load(tmp_path / "nothing")


@pytest.mark.skipif(not (WEIGHTS_DIR / "model_index.json").exists(), reason="tiny model weights not built")
def test_tiny_model_restoring_everything_gives_the_clean_score():
    import interp

    tiny = interp.load("tiny")
    result = trace_unet(tiny, "a red circle in the style of van gogh", "van gogh",
                        sites=[denoiser_sites(tiny), (), "mid-cross-attn"], steps=STEPS, samples=1, progress=False)
    clean, corrupted = result.scores["clean"][0], result.scores["corrupted"][0]
    assert result.settings["scorer"] == "judge P(style)"
    assert clean > corrupted + 0.1  # losing "van gogh" lowers the judge's P(van gogh)
    assert result.mean("restored")[0] == pytest.approx(clean, abs=1e-5)
    assert result.mean("restored")[1] == pytest.approx(corrupted, abs=1e-5)
