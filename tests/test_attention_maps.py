"""Cross-attention maps: the capture leaves the user's processors in place, computes what SDPA
computes, aggregates as DAAM, and on the bundled model its maps line up with the drawn object."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0

import interp
from interp.errors import AttentionCaptureError, SubjectNotFoundError, UnknownSiteError
from interventions.attention_eval import (
    MAP_SEED, generate_cases, generate_pair_cases, map_pairs, map_scenes, score_cases, score_pairs, segmentation_iou,
)
from interventions.attention_maps import (
    JOINT_KERNELS, attention_maps, binarize, cross_attention_layers, normalise, token_positions,
)
from interventions.evaluate import generate_units
from models.testing import (
    dummy_flux_pipeline, dummy_if_pipeline, dummy_pixart_pipeline, dummy_sd3_pipeline, dummy_sdxl_pipeline,
)
from models.tiny import COLORS, Scene
from models.tiny.scenes import object_mask, render
from tests.reference_hooks import joint_text_probs
from viz.attention import attention_heatmaps, attention_layers

PROMPT = "a red circle in the style of van gogh"
STEPS = 3
STEPS_TINY = 25  # the tiny model's sampling default


class Spy(AttnProcessor2_0):
    """The user's own SDPA processor, counting its calls; raises on call `fail_at` if set."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.calls, self.fail_at = 0, fail_at

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("the user's processor failed")
        return super().__call__(*args, **kwargs)


@pytest.fixture
def spies(model):
    """Every cross-attention module of the session's dummy model runs a `Spy`; the model's own
    processors come back afterwards."""
    modules = [model.denoiser.get_submodule(s.path) for s in model.sites("cross-attn")]
    originals = [m.processor for m in modules]
    installed = [Spy() for _ in modules]
    for module, spy in zip(modules, installed):
        module.processor = spy
    yield modules, installed
    for module, original in zip(modules, originals):
        module.processor = original


def test_processors_stay_the_users_objects_and_sdpa_runs_where_nothing_is_captured(model, spies) -> None:
    modules, installed = spies
    first = model.sites("cross-attn")[0].name
    maps = attention_maps(model, PROMPT, ["circle"], seeds=(0, 1), layers=[first], steps=STEPS)
    assert all(m.processor is s for m, s in zip(modules, installed))
    assert installed[0].calls == 0  # the captured layer ran the capture instead
    assert all(s.calls == STEPS for s in installed[1:])  # one batched call per step, uncond and cond together
    assert maps.layers == (first,) and maps.probs[first].shape[:3] == (STEPS, 2, modules[0].heads)

    installed[-1].fail_at = installed[-1].calls + 2  # fails in the second step of the next run
    with pytest.raises(RuntimeError, match="the user's processor failed"):
        attention_maps(model, PROMPT, ["circle"], layers=[first], steps=STEPS)
    assert all(m.processor is s for m, s in zip(modules, installed))


def test_capture_computes_what_sdpa_computes(model) -> None:
    maps = attention_maps(model, PROMPT, list(range(model.max_length)), seeds=(0, 1), steps=STEPS)
    for layer, probs in maps.probs.items():  # every position kept: each query's probabilities sum to 1
        assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5), layer
    reference = generate_units(model, [(PROMPT, 0), (PROMPT, 1)], steps=STEPS)
    assert (maps.images - reference).abs().max() < 1e-4  # explicit softmax vs SDPA: float rounding only
    assert maps.steps == tuple(range(STEPS))


def test_heatmaps_aggregate_as_daam(model) -> None:
    maps = attention_maps(model, PROMPT, ["van gogh", "red"], seeds=(0, 1), steps=STEPS)
    height, width = maps.size
    expected = 0
    for probs in maps.probs.values():  # (calls, seeds, heads, h, w, positions): positions 2, 8, 9
        summed = probs[..., [maps.positions.index(8), maps.positions.index(9)]].sum(dim=(0, 2, -1))
        expected = expected + F.interpolate(summed[:, None], size=(height, width), mode="bicubic")[:, 0].clamp_min(0)
    flat = expected.flatten(1)
    expected = (expected - flat.min(1).values[:, None, None]) / (flat.max(1).values - flat.min(1).values)[:, None, None]
    assert torch.allclose(maps.heatmaps["van gogh"], expected, atol=1e-6)
    assert maps.tokens == {"van gogh": (8, 9), "red": (2,)}
    assert set(maps.per_layer["red"]) == set(maps.layers)
    for heat in [maps.heatmaps["red"], *maps.per_layer["red"].values()]:
        assert heat.shape == (2, height, width) and heat.min() == 0 and heat.max() == 1
    one_step = maps.heatmap("red", steps=[STEPS - 1], heads=[0], layers=[maps.layers[0]])
    assert torch.allclose(one_step, normalise(maps.layer_map("red", maps.layers[0], [STEPS - 1], [0])))


def test_bad_input_names_the_problem_and_swaps_nothing(model) -> None:
    with pytest.raises(SubjectNotFoundError, match="unicorn"):
        attention_maps(model, PROMPT, ["unicorn"], steps=STEPS)
    with pytest.raises(AttentionCaptureError, match="not a cross-attention layer"):
        cross_attention_layers(model, ["mid-self-attn"])
    with pytest.raises(UnknownSiteError):
        cross_attention_layers(model, ["mid-cross-atn"])
    module = model.denoiser.get_submodule(model.sites("cross-attn")[0].path)
    original, custom = module.processor, type("IPAdapterLike", (), {"__call__": lambda *a, **k: None})()
    module.processor = custom
    try:
        with pytest.raises(AttentionCaptureError, match="IPAdapterLike"):
            attention_maps(model, PROMPT, ["circle"], steps=STEPS)
        assert module.processor is custom
    finally:
        module.processor = original
    maps = attention_maps(model, PROMPT, ["circle"], steps=STEPS, layers=["mid-cross-attn"])
    with pytest.raises(AttentionCaptureError, match="steps"):
        maps.heatmap("circle", steps=[STEPS])
    with pytest.raises(AttentionCaptureError, match="not captured"):
        maps.heatmap("red")
    with pytest.raises(AttentionCaptureError, match="threshold rule"):
        binarize(maps.heatmaps["circle"], "median")


@pytest.mark.parametrize("build", [dummy_sdxl_pipeline, dummy_pixart_pipeline], ids=["sdxl", "pixart"])
def test_other_families_with_text_keys(build) -> None:
    other = interp.load(build())
    maps = attention_maps(other, "a red circle", list(range(other.max_length)), steps=2)
    assert len(maps.layers) == len(other.sites("cross-attn"))
    for probs in maps.probs.values():
        assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)
    assert maps.heatmap(3).shape == (1, *other.default_size())


@pytest.mark.parametrize("build, guidance", [(dummy_sd3_pipeline, 7.5), (dummy_flux_pipeline, 3.5)], ids=["sd3", "flux"])
def test_joint_attention_maps_keep_the_users_processors_and_kernels(build, guidance) -> None:
    joint = interp.load(build())
    readers = [s for s in joint.sites() if s.kind == "cross-attn" or s.name.startswith("single-") and s.kind == "self-attn"]
    modules = [joint.denoiser.get_submodule(s.path) for s in readers]
    originals = [m.processor for m in modules]
    kernels = {k: getattr(k.module, k.name) for k in JOINT_KERNELS.values()}
    offsets = joint.adapter.context_offsets(joint.pipe)
    length = max(o + joint.adapter.token_length(joint.pipe, i) for i, o in offsets.items())
    maps = attention_maps(joint, "a red circle", list(range(length)), seeds=(0, 1), steps=2, guidance_scale=guidance)
    assert all(m.processor is o for m, o in zip(modules, originals))
    assert all(getattr(k.module, k.name) is f for k, f in kernels.items())
    assert maps.layers == tuple(s.name for s in readers)  # FLUX: double- then single-stream blocks
    for probs in maps.probs.values():  # the image queries' share on the text keys; the rest is on image keys
        assert probs.shape[-1] == length and probs.shape[3:5] == (4, 4)
        assert ((probs.sum(-1) > 0) & (probs.sum(-1) < 1)).all()
    plain = generate_units(joint, [("a red circle", 0), ("a red circle", 1)], steps=2, guidance_scale=guidance)
    assert (maps.images - plain).abs().max() < 1e-4  # explicit softmax vs the kernel: float rounding only
    words = token_positions(joint, "a red circle", ["circle"])["circle"]  # found in every token stream
    assert [sum(o <= p < o + joint.adapter.token_length(joint.pipe, i) for p in words)
            for i, o in offsets.items()] == [1] * len(offsets)


def test_joint_attention_probabilities_equal_a_written_out_reference() -> None:
    sd3 = interp.load(dummy_sd3_pipeline())
    site = sd3.sites("cross-attn")[0]
    attention = sd3.denoiser.get_submodule(site.path)
    seen = []
    handle = attention.register_forward_pre_hook(lambda m, args, kwargs: seen.append(kwargs), with_kwargs=True)
    try:
        maps = attention_maps(sd3, "a red circle", ["circle", "red"], seeds=(0, 1), steps=2, layers=[site.name])
    finally:
        handle.remove()
    with torch.no_grad():
        reference = joint_text_probs(attention, seen[-1]["hidden_states"], seen[-1]["encoder_hidden_states"])
    cond = reference[2:, ..., list(maps.positions)]  # [uncond, uncond, cond, cond]: the cond rows
    assert torch.allclose(maps.probs[site.name][-1].flatten(2, 3), cond, atol=1e-6)


def test_added_kv_attention_is_refused() -> None:
    with pytest.raises(AttentionCaptureError, match="AttnAddedKVProcessor"):
        attention_maps(interp.load(dummy_if_pipeline()), "a red circle", ["circle"], steps=2)


def test_cli_writes_the_page(tmp_path) -> None:
    from typer.testing import CliRunner

    from interp.cli import app

    out = tmp_path / "maps.html"
    result = CliRunner().invoke(app, ["attention", "--model", "dummy", "--prompt", PROMPT, "--token", "circle",
                                      "--token", "van gogh", "--steps", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "van gogh: positions [8, 9]" in result.output and out.read_text().count('class="figure"') == 3
    result = CliRunner().invoke(app, ["attention", "--model", "dummy", "--prompt", PROMPT, "--token", "unicorn"])
    assert result.exit_code == 2 and "unicorn" in result.output


def test_binarize_rules() -> None:
    maps = torch.zeros(2, 8, 8)
    maps[:, 2:5, 3:6] = torch.tensor([0.9, 0.6])[:, None, None]
    maps[1, 0, 0] = 0.05  # a faint outlier: below every rule's cut
    for rule in ("otsu", "mean", 0.4):
        found = binarize(maps, rule)
        assert found[:, 2:5, 3:6].all() and found.sum() == 18, rule


def test_figures_draw_every_token_and_layer(model) -> None:
    maps = attention_maps(model, PROMPT, ["circle", "van gogh"], seeds=(0, 1), steps=STEPS)
    heat = attention_heatmaps(maps, seed_index=1)
    assert [type(t).__name__ for t in heat.data] == ["Image", "Image", "Heatmap", "Image", "Heatmap"]
    assert [a.text for a in heat.layout.annotations] == ["image", "circle", "van gogh"]
    layers = attention_layers(maps, "circle", columns=3)
    assert sum(isinstance(t, go.Heatmap) for t in layers.data) == len(maps.layers) + 1
    assert layers.layout.annotations[-1].text == "all layers (DAAM)"
    with pytest.raises(IndexError, match="seed_index"):
        attention_heatmaps(maps, seed_index=2)


def test_object_mask_is_where_render_draws_the_object() -> None:
    for seed in range(6):
        scene = Scene("star", "blue", "plain", 1 + seed % 2, seed)
        image, mask = render(scene).astype(float), object_mask(scene)
        blue = np.abs(image - np.array(COLORS["blue"])).max(-1) < 30
        assert (blue == (mask > 0.5)).mean() > 0.97 and mask.max() == 1.0


def test_world_segmentation_finds_rendered_objects() -> None:
    for style, value in segmentation_iou(per_style=12).items():
        assert value.value > 0.8, style


@pytest.fixture(scope="module")
def tiny() -> interp.Model:
    return interp.load("tiny")


def test_maps_on_the_bundled_model_line_up_with_the_drawn_object(tiny) -> None:
    """Weaker than the bench's claims (`bench/attention_iou.py`, n=84): on a few one-object scenes
    the end-of-text token's map, the one that finds the object on this model, peaks inside the
    object found in the image and overlaps it more than it overlaps another image's object, and
    more than the style word's map does. A misaligned capture (transposed grid, wrong branch, wrong
    rows) fails these."""
    cases = generate_cases(tiny, map_scenes(1, 6, seed=MAP_SEED + 7), seeds=(0, 1), steps=STEPS_TINY)
    scores = score_cases(cases, role="eos")
    print("\n".join(scores.lines()))
    assert scores.kept >= 8
    assert scores.iou["eos"].value > max(0.4, scores.other_image.value, scores.iou["style"].value)
    assert scores.peak_inside.value >= 0.75


@pytest.fixture(scope="module")
def grounded() -> interp.Model:
    return interp.load("tiny-grounded")


def test_the_grounded_unets_object_words_find_their_objects(grounded) -> None:
    """Weaker than the bench's claims (`bench/attention_iou.py --model tiny-grounded`): on a few
    one-object scenes the object word's own map peaks inside the object and overlaps it more than
    another image's object; on a few pairs ("a red circle by a blue square") each word's map
    overlaps its own object more than the other on most images."""
    scores = score_cases(generate_cases(grounded, map_scenes(1, 6, seed=MAP_SEED + 7), seeds=(0, 1), steps=STEPS_TINY))
    print("\n".join(scores.lines()))
    assert scores.kept >= 8
    assert scores.peak_inside.value >= 0.75 and scores.iou["object"].value > max(0.5, scores.other_image.value)
    pairs = score_pairs(generate_pair_cases(grounded, map_pairs(6, seed=MAP_SEED + 7), seeds=(0, 1), steps=STEPS_TINY))
    print("\n".join(pairs.lines()))
    assert pairs.kept >= 6
    assert pairs.own.value > pairs.other.value and pairs.both_own.value > 0.5
