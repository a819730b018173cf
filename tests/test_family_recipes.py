"""Every recipe end to end on each family's reduced random model (SD, SDXL, DeepFloyd IF, PixArt, SD3, FLUX):
causal traces of the denoiser and the text encoders, LoCoGen, DiffQuickFix (CLIP encoders only) and
LoCoEdit. Results have one cell per site or window; an edit changes exactly its parameters, and
reverting it restores every tensor of the pipeline bit for bit."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch

import interp
from interp.editing import Edit
from interp.errors import UnsupportedModelError
from interventions import diffquickfix, edits, locoedit
from interventions.causal_trace import trace_text_encoder, trace_unet
from interventions.edits import is_clip
from interventions.locogen import localize
from models import sd3
from models.testing import (
    dummy_flux_pipeline, dummy_if_pipeline, dummy_pixart_pipeline, dummy_sd3_pipeline, dummy_sd_pipeline,
    dummy_sdxl_pipeline,
)
from tests.conftest import PROMPT
from tests.random_clip import random_clip_scorer
from tests.test_diffquickfix import changed, snapshot

FAMILIES = {"sd": dummy_sd_pipeline, "sdxl": dummy_sdxl_pipeline, "deepfloyd": dummy_if_pipeline,
            "pixart": dummy_pixart_pipeline, "sd3": dummy_sd3_pipeline, "flux": dummy_flux_pipeline}
FAST = dict(seeds=(0,), steps=2, progress=False)


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    torch.set_num_threads(1)  # tiny tensors: threads only contend
    return random_clip_scorer(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request) -> interp.Model:
    model = interp.load(FAMILIES[request.param]())
    assert model.adapter.family == request.param
    return model


def check_round_trip(model: interp.Model, edit: Edit, expected: set[str]) -> None:
    """Applying `edit` changes exactly `expected` ("component.parameter"); reverting restores all."""
    before = snapshot(model)
    with edits.applied(model, edit):
        assert changed(model, before) == expected
    assert changed(model, before) == set()


def test_traces_have_one_cell_per_site(family, scorer) -> None:
    denoiser = [s.name for s in family.sites() if not s.is_text]
    unet = trace_unet(family, PROMPT, "van gogh", scorer=scorer, samples=1, **FAST)
    assert unet.coords["site"] == denoiser and unet.scores["restored"].shape == (1, len(denoiser))
    last = family.locate(PROMPT, "van gogh").last
    text = trace_text_encoder(family, PROMPT, "van gogh", kinds=("text-hidden",), tokens=(last,), scorer=scorer,
                              samples=1, **FAST)
    hidden = family.sites("text-hidden")  # every encoder's layers
    assert len(hidden) == sum(e.config.num_hidden_layers for e in family.text_encoders)
    assert text.scores["restored"].shape == (1, len(hidden), 1)
    for result in (unet, text):
        assert torch.isfinite(torch.as_tensor(result.scores["restored"])).all()


def test_locogen_scores_every_window(family, scorer) -> None:
    layers = family.sites("cross-attn")
    result = localize(family, PROMPT, "a painting", window=2, scorer=scorer, **FAST)
    assert result.layers == [s.name for s in layers] and result.coords["window start"] == list(range(len(layers) - 1))
    assert result.scores["window"].shape == (1, len(layers) - 1)
    assert result.best_sites == result.layers[result.best_start : result.best_start + 2]


def test_diffquickfix_edits_each_clip_encoder_and_refuses_t5(family) -> None:
    clip = [n for n, e in zip(family.adapter.text_encoders, family.text_encoders) if is_clip(e)]
    assert bool(clip) == (family.adapter.family in ("sd", "sdxl", "sd3", "flux"))
    for encoder in clip:
        edit = diffquickfix.edit(family, encoder=encoder)
        (name,) = edit.changed_parameters
        assert edit.metadata["component"] == encoder and name.endswith("layers.0.self_attn.out_proj.weight")
        check_round_trip(family, edit, {f"{encoder}.{name}"})
    t5 = [n for n in family.adapter.text_encoders if n not in clip]
    for encoder in t5:
        with pytest.raises(UnsupportedModelError, match="causal CLIP text encoder.*T5.*locoedit"):
            diffquickfix.edit(family, encoder=encoder)
    if not clip:
        with pytest.raises(UnsupportedModelError, match=f"{family.adapter.family} model is a T5EncoderModel"):
            diffquickfix.edit(family)


def test_locoedit_maps_every_layers_keys_and_reverts(family) -> None:
    sites = family.sites("cross-attn")
    edit = locoedit.edit(family, ["van gogh", "monet"], "painting", layers="all")
    names = {f"{p}.weight" for s in sites for p in s.kv_paths}
    assert set(edit.changed_parameters) == names and len(names) == 2 * len(sites)
    check_round_trip(family, edit, {f"{family.adapter.denoiser}.{n}" for n in names})
    collected = locoedit.collect(family, ["van gogh", "monet"], "painting")
    first_keys = next(iter(collected.values()))[0]
    shared = all(torch.equal(keys, first_keys) for keys, _ in collected.values())
    assert shared == (family.adapter.family in ("sd", "sdxl", "pixart"))  # IF, SD3: each layer reads its own
    for site, (keys, targets) in collected.items():
        streams = len(family.adapter.context_offsets(family.pipe))  # SD3: CLIP and T5 parts
        assert keys.shape == targets.shape and len(keys) == 2 * len(locoedit.TEMPLATES) * streams
        for path in family.site(site).kv_paths:
            old, new = family.denoiser.get_parameter(f"{path}.weight").detach(), edit.weights[f"{path}.weight"]
            wanted = targets @ old.T
            assert float((keys @ new.T - wanted).norm() / wanted.norm()) < 0.05


def test_locoedit_keys_are_what_the_projections_read(family) -> None:
    """Each key is its layer's key-projection input at the subject's last token of each token stream,
    averaged over the generation SD3's `kv_inputs` runs (every other family's input is the same at
    every step)."""
    read = mean_kv_inputs(family, PROMPT)
    collected = locoedit.collect(family, "van gogh", "painting", templates=(PROMPT.replace("van gogh", "{}"),))
    for site, (keys, _) in collected.items():
        for key, (index, offset) in zip(keys, family.adapter.context_offsets(family.pipe).items()):
            position = offset + family.locate(PROMPT, "van gogh", index).last
            torch.testing.assert_close(key, read[site][0, position].to(key.dtype), atol=1e-5, rtol=1e-5)


def mean_kv_inputs(model: interp.Model, prompt: str) -> dict[str, torch.Tensor]:
    """Each cross-attention site's key-projection input, averaged over an unguided generation of `prompt`
    with SD3's `kv_inputs` settings."""
    ids = [model.token_ids([prompt], i) for i in range(len(model.tokenizers))]
    calls: dict[str, list[torch.Tensor]] = defaultdict(list)
    handles = [model.denoiser.get_submodule(s.kv_paths[0]).register_forward_pre_hook(
        lambda module, args, name=s.name: calls[name].append(args[0].float())) for s in model.sites("cross-attn")]
    height, width = model.default_size()
    settings = dict(num_inference_steps=sd3.KV_STEPS, guidance_scale=1.0, height=height, width=width, output_type="pt",
                    generator=torch.Generator().manual_seed(sd3.KV_SEED), **model.adapter.call_kwargs(model.pipe))
    try:
        with torch.no_grad():
            model.pipe(**model.adapter.encode(model.pipe, ids), **settings)
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.stack(inputs).mean(0) for name, inputs in calls.items()}
