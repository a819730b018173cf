"""Attribution patching: exact where the score is linear in a site, the same grid as exact tracing,
gradient generation identical to the runner's, nothing left behind, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

import interp
from interp.errors import ScoringInputError
from interp.gradients import generate
from interp.graph import Graph, Noise, Run
from interp.runner import run
from interventions.attribution import agreement, attribute, spearman
from interventions.causal_trace import trace_unet
from models.testing import dummy_sd_pipeline
from tests.conftest import PROMPT
from tests.random_clip import random_clip_scorer
from viz.traces import denoiser_site_map

FAST = dict(steps=2, progress=False, samples=2, seeds=(0,), min_effect=-np.inf)  # random weights: keep every unit


class LinearScore:
    """A score linear in the image's pixels (fixed random weights), with its differentiable form."""

    name = "linear"

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.weight = 1e3 * torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def differentiable(self, images: torch.Tensor, texts) -> torch.Tensor:
        return (images.double() * self.weight).sum((1, 2, 3))

    def __call__(self, images, texts) -> torch.Tensor:
        stacked = torch.stack(list(images)) if isinstance(images, (list, tuple)) else images
        return self.differentiable(stacked, texts).detach()


def linear_pipeline():
    """A reduced random SD pipeline whose output after its last feed-forward layer is linear: the
    UNet's output norm and activation removed, a 1x1-conv decoder with small weights (no pixel
    clamps), DDIM without sample clipping. So the score is linear (affine) in that layer's output.
    Float64, so that what is compared is the method, not float32 rounding."""
    torch.set_num_threads(1)
    pipe = dummy_sd_pipeline().to(torch.float64)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    pipe.unet.conv_norm_out, pipe.unet.conv_act = torch.nn.Identity(), torch.nn.Identity()
    decoder = torch.nn.Conv2d(4, 3, 1, bias=False, dtype=torch.float64).requires_grad_(False)
    torch.nn.init.normal_(decoder.weight, std=0.02, generator=torch.Generator().manual_seed(2))
    pipe.vae.decode = lambda z, return_dict=False, generator=None: (decoder(z),)
    return pipe


def linear_case(pipe) -> tuple[interp.Model, LinearScore]:
    """`pipe` loaded, with a score linear in its images' pixels."""
    model = interp.load(pipe)
    return model, LinearScore((3, *[s // 2 for s in model.default_size()]))


@pytest.fixture(scope="module")
def linear() -> tuple[interp.Model, LinearScore]:
    return linear_case(linear_pipeline())


def test_attribution_equals_exact_patching_where_the_score_is_linear(linear):
    model, scorer = linear
    last = [s.name for s in model.sites() if not s.is_text][-1]
    assert last.startswith("up-1-ff")  # nothing but linear maps between it and the score
    sites = [last, f"{last}.neuron", "up-1-cross-attn-1"]
    options = dict(FAST, steps=1, seeds=(0, 1), scorer=scorer, sites=sites)
    exact = trace_unet(model, PROMPT, "van gogh", **options)
    estimated = trace_unet(model, PROMPT, "van gogh", method="attribution", **options)
    images = np.stack(list(estimated.images.values()))
    assert 0 < images.min() and images.max() < 255  # no pixel clamped: the decode is linear
    assert estimated.settings["metric"] == "score"
    np.testing.assert_allclose(estimated.scores["corrupted"], exact.scores["corrupted"], atol=1e-5)
    gap = np.abs(estimated.ie_samples - exact.ie_samples)
    assert np.abs(exact.ie_samples[:, :2]).min() > 1e-3  # a real effect to match
    assert gap[:, :2].max() < 1e-5  # the last layer and its neurons: linear in the score
    assert gap[:, 2].max() > 1e-4  # cross-attention feeds the feed-forward's nonlinearity: an estimate only


def test_gradient_generation_matches_the_runner(model):
    span = model.locate(PROMPT, "van gogh")
    noise = [Noise("text-embed", tokens=span.positions, std=3.0, seed=4)]
    graph = Graph([Run("clean", PROMPT, seed=1, steps=2), Run("corrupted", PROMPT, seed=1, steps=2, ops=noise)])
    images = run(model, graph, progress=False).images
    ours = generate(model, [PROMPT, PROMPT], [1, 1], 2, 7.5, noises=[[], noise])
    assert torch.equal(ours[0], images["clean"]) and torch.equal(ours[1], images["corrupted"])
    with_grad = generate(model, [PROMPT], [1], 2, 7.5, noises=[noise], grad=True)
    assert with_grad.requires_grad
    torch.testing.assert_close(with_grad[0].detach(), images["corrupted"], atol=1e-5, rtol=0)


def test_a_failed_gradient_generation_leaves_nothing_behind(model):
    unet = model.denoiser
    site = model.site("mid-cross-attn")
    module = unet.get_submodule(site.path)

    def broken(_site, _call, _out):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        generate(model, [PROMPT], [0], 2, 7.5, sites=[site], edit=broken, grad=True)
    assert "forward" not in unet.__dict__ and not module._forward_hooks
    with pytest.raises(RuntimeError, match="boom"):
        generate(model, [PROMPT], [0], 2, 7.5, sites=[site], edit=broken, grad=True, checkpoint="blocks")
    assert not any("forward" in m.__dict__ for m in unet.modules()) and not module._forward_hooks
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.text_encoders[0].modules())


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    return random_clip_scorer(tmp_path_factory.mktemp("clip"))


def test_checkpointing_and_per_step_estimates_agree(model, scorer):
    sites = ["mid-cross-attn", "up-1-resnet-0", ("mid-cross-attn", "up-1-resnet-0"), ()]
    common = dict(FAST, scorer=scorer, sites=sites)
    whole = attribute(model, PROMPT, "van gogh", **common)
    unchecked = attribute(model, PROMPT, "van gogh", checkpoint=False, **common)
    blocks = attribute(model, PROMPT, "van gogh", checkpoint="blocks", **common)
    steps = attribute(model, PROMPT, "van gogh", per_step=True, **common)
    estimate = whole.scores["estimate"]
    np.testing.assert_allclose(unchecked.scores["estimate"], estimate, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(blocks.scores["estimate"], estimate, rtol=1e-4, atol=1e-7)
    assert steps.axes == ("site", "step") and steps.shape == (4, 2)
    np.testing.assert_allclose(steps.scores["estimate"].sum(-1), estimate, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(estimate[:, 2], estimate[:, 0] + estimate[:, 1], rtol=1e-5)  # groups add up
    assert np.all(estimate[:, 3] == 0) and whole.coords["site"][3] == "none"
    np.testing.assert_allclose(whole.scores["restored"], whole.scores["corrupted"][:, None] + estimate)


def test_attribution_and_hybrid_are_the_trace_grid_and_say_so(model, scorer, tmp_path):
    sites = ["down-0-cross-attn-0", "mid-cross-attn", "up-1-cross-attn-0", "up-1-resnet-1"]
    common = dict(FAST, scorer=scorer, sites=sites)
    exact = trace_unet(model, PROMPT, "van gogh", **common)
    estimated = trace_unet(model, PROMPT, "van gogh", method="attribution", **common)
    hybrid = trace_unet(model, PROMPT, "van gogh", method="hybrid", verify=2, **common)
    assert type(estimated) is type(exact) and estimated.coords == exact.coords
    assert "method attribution patching" in estimated.summary() and "method exact" in exact.summary()
    assert "method hybrid" in hybrid.summary()
    np.testing.assert_allclose(estimated.scores["clean"], exact.scores["clean"], atol=1e-5)
    verified = [sites.index(s) for s in hybrid.settings["verified"]]
    assert len(verified) == 2
    size = np.abs(estimated.scores["estimate"]).mean(0)
    assert verified == list(np.argsort(-size, kind="stable")[:2])  # the largest estimates, in size
    np.testing.assert_allclose(hybrid.scores["restored"][:, verified], exact.scores["restored"][:, verified],
                               atol=1e-5)
    others = [i for i in range(len(sites)) if i not in verified]
    assert np.isnan(hybrid.scores["restored"][:, others]).all()  # not measured: never ranked with measured cells
    assert {labels[0] for labels, _, _ in hybrid.top(5)} == set(hybrid.settings["verified"])
    np.testing.assert_allclose(hybrid.scores["estimate"], estimated.scores["estimate"])
    denoiser_site_map(hybrid)  # unmeasured cells are blank, not an error
    hybrid.save(tmp_path / "hybrid")
    assert type(hybrid).load(tmp_path / "hybrid") == hybrid


def test_bad_input_is_a_clear_error(model, scorer):
    common = dict(FAST, scorer=scorer, sites=["mid-cross-attn"])
    with pytest.raises(ValueError, match="method must be one of"):
        trace_unet(model, PROMPT, "van gogh", method="fast", **common)
    with pytest.raises(ValueError, match="protocol='paper'"):
        trace_unet(model, PROMPT, "van gogh", method="attribution", protocol="aligned", **common)
    with pytest.raises(TypeError, match="only method='attribution'"):
        trace_unet(model, PROMPT, "van gogh", points=4, **common)
    with pytest.raises(ValueError, match="points must be >= 1"):
        attribute(model, PROMPT, "van gogh", points=0, **common)
    with pytest.raises(ValueError, match="needs a probability score"):
        attribute(model, PROMPT, "van gogh", metric="log", **common)

    class Opaque:
        name = "opaque"

        def __call__(self, images, texts):
            return torch.zeros(len(texts))

    with pytest.raises(ScoringInputError, match="differentiable"):
        attribute(model, PROMPT, "van gogh", **{**common, "scorer": Opaque()})


def test_rank_agreement_helpers():
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([10.0, 20, 30, 40])) == pytest.approx(1)
    assert spearman(np.array([1.0, 2, 3, 4]), np.array([4.0, 3, 2, 1])) == pytest.approx(-1)
    assert spearman(np.array([1.0, 1, 2]), np.array([1.0, 2, 3])) == pytest.approx(np.sqrt(3) / 2)


def test_agreement_of_a_map_with_itself_is_perfect(model, scorer):
    result = trace_unet(model, PROMPT, "van gogh", **FAST, scorer=scorer,
                        sites=["down-0-cross-attn-0", "mid-cross-attn", "up-1-cross-attn-0"])
    same = agreement(result, result, k=2)
    assert same["spearman"] == pytest.approx(1) and same["top_overlap"] == 2 and same["units"] == 2


def test_cli_trace_method_attribution_says_so(tmp_path):
    from typer.testing import CliRunner

    from interp.cli import app

    folder = tmp_path / "clip"
    random_clip_scorer(folder)
    common = ["trace", "--model", "dummy", "--prompt", PROMPT, "--subject", "van gogh", "--steps", "1",
              "--samples", "2", "--clip", str(folder)]
    result = CliRunner().invoke(app, [*common, "--method", "attribution", "--out", str(tmp_path / "trace")])
    assert result.exit_code == 0, result.output
    assert "method attribution patching" in result.output and "mid-cross-attn" in result.output
    assert "attribution patching" in (tmp_path / "trace" / "report.html").read_text()
    refused = CliRunner().invoke(app, [*common, "--method", "hybrid", "--protocol", "aligned"])
    assert refused.exit_code == 2 and "protocol='paper'" in refused.output and "Traceback" not in refused.output
