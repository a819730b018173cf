"""DiffQuickFix on the random-weight dummy pipeline: what changes, the closed form's promise,
reversibility, transfer to a copy, several concepts, and bad input (weights untouched)."""

from __future__ import annotations

import pytest
import torch

import interp
from interp.editing import Edit
from interp.errors import EditInputError, EditMismatchError, SubjectNotFoundError, UnknownSiteError
from interventions import diffquickfix, edits
from models.testing import dummy_sd_pipeline

OUT_PROJ = "encoder.layers.0.self_attn.out_proj.weight"


def snapshot(model: interp.Model) -> dict[str, torch.Tensor]:
    """Every tensor of every module of the pipeline (VAE included), by "component.name"."""
    modules = {c: m for c, m in model.pipe.components.items() if isinstance(m, torch.nn.Module)}
    return {f"{c}.{k}": v.detach().clone() for c, m in modules.items() for k, v in m.state_dict().items()}


def changed(model: interp.Model, before: dict[str, torch.Tensor]) -> set[str]:
    return {k for k, v in snapshot(model).items() if not torch.equal(v, before[k])}


def residual(weight: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> float:
    return float((keys @ weight.detach().T - values).norm() / values.norm())


def test_only_the_out_projection_changes_and_revert_is_bit_exact(model) -> None:
    before = snapshot(model)
    edit = diffquickfix.edit(model, "van gogh", "painting", layer=1)
    assert changed(model, before) == set()  # computing an edit writes nothing
    assert edit.changed_parameters == ("encoder.layers.1.self_attn.out_proj.weight",)
    assert edit.metadata["component"] == "text_encoder" and edit.metadata["concepts"] == [["van gogh", "painting"]]
    with edits.applied(model, edit):
        assert changed(model, before) == {"text_encoder.encoder.layers.1.self_attn.out_proj.weight"}
    assert changed(model, before) == set()


def test_edited_layer_maps_old_keys_onto_new_values(model) -> None:
    weight = model.pipe.text_encoder.get_parameter(OUT_PROJ)
    one = ("{}",)  # 14 keys in a 32-wide layer: the fit can be (nearly) exact
    keys, values = diffquickfix.collect_pairs(model, "van gogh", "painting", templates=one)
    assert keys.shape == values.shape == (model.max_length - 2, 32)  # last subject token at 2 .. 15
    assert residual(weight, keys, values) > 0.3
    solved = diffquickfix.edit(model, templates=one).weights[OUT_PROJ]
    assert residual(solved, keys, values) < 0.1  # lam = 0.01 keeps W* near W' (keys' small singular values)
    exact = diffquickfix.edit(model, templates=one, lam=1e-6).weights[OUT_PROJ]
    assert residual(exact, keys, values) < 1e-4

    keys, values = diffquickfix.collect_pairs(model, "van gogh", "painting")  # 4 templates: more keys than width
    assert len(keys) > 32
    solved = diffquickfix.edit(model).weights[OUT_PROJ]
    assert residual(solved, keys, values) < 0.3 * residual(weight, keys, values)


def test_values_are_the_new_prompts_outputs_from_their_last_subject_token(model) -> None:
    out_proj = model.pipe.text_encoder.get_submodule(OUT_PROJ.removesuffix(".weight"))
    outputs = []
    handle = out_proj.register_forward_hook(lambda m, a, out: outputs.append(out))
    try:
        with torch.no_grad():
            model.pipe.text_encoder(model.token_ids(["a photo of painting"]))
    finally:
        handle.remove()
    _, values = diffquickfix.collect_pairs(model, "van gogh", "painting", templates=("a photo of {}",))
    last = model.locate("a photo of painting", "painting").last
    start = model.locate("a photo of van gogh", "van gogh").last
    expected = outputs[0][0, last : last + model.max_length - start] - out_proj.bias  # cut to the shorter
    torch.testing.assert_close(values, expected, atol=1e-5, rtol=1e-5)


def test_save_and_load_onto_a_second_copy_gives_identical_weights(model, tmp_path) -> None:
    edit = diffquickfix.edit(model)
    copy = interp.load(dummy_sd_pipeline())
    loaded = Edit.load(edit.save(tmp_path / "dqf.safetensors"))
    assert loaded.metadata == edit.metadata
    with edits.applied(model, edit), edits.applied(copy, loaded):
        for name in (OUT_PROJ, "encoder.layers.0.self_attn.out_proj.bias"):
            assert torch.equal(model.pipe.text_encoder.get_parameter(name), copy.pipe.text_encoder.get_parameter(name))


def test_two_concepts_in_one_edit(model) -> None:
    both_keys, both_values = diffquickfix.collect_pairs(model, ["van gogh", "monet"], "painting")
    single = [diffquickfix.collect_pairs(model, c, "painting") for c in ("van gogh", "monet")]
    torch.testing.assert_close(both_keys, torch.cat([k for k, _ in single]))
    torch.testing.assert_close(both_values, torch.cat([v for _, v in single]))
    both = diffquickfix.edit(model, ["van gogh", "monet"], ["painting", "painting"])
    assert both.changed_parameters == (OUT_PROJ,)
    weight = model.pipe.text_encoder.get_parameter(OUT_PROJ)
    for concept in ("van gogh", "monet"):
        keys, values = diffquickfix.collect_pairs(model, concept, "painting")
        assert residual(both.weights[OUT_PROJ], keys, values) < 0.5 * residual(weight, keys, values)
    with pytest.raises(EditInputError, match="pair up"):
        diffquickfix.edit(model, ["van gogh", "monet"], ["painting", "drawing", "sketch"])


def test_bad_input_is_a_clear_error_and_writes_nothing(model) -> None:
    before = snapshot(model)
    too_long = ("a photo of a photo of a photo of a photo of a photo of {}",)  # truncated at 16 tokens
    with pytest.raises(SubjectNotFoundError, match="van gogh"):
        diffquickfix.edit(model, templates=too_long)
    for lam in (0, -0.01, float("nan")):
        with pytest.raises(EditInputError, match="lam must be"):
            diffquickfix.edit(model, lam=lam)
    for layer in (2, -1):
        with pytest.raises(UnknownSiteError, match="2 self-attention layers, 0 .. 1"):
            diffquickfix.edit(model, layer=layer)
    with pytest.raises(EditInputError, match="'{}' slot"):
        diffquickfix.edit(model, templates=("a photo",))
    assert changed(model, before) == set()


def test_edit_for_another_architecture_is_refused_untouched(model) -> None:
    wider = interp.load(dummy_sd_pipeline(width=48))
    before = snapshot(wider)
    edit = diffquickfix.edit(model)
    with pytest.raises(EditMismatchError, match="another size"):
        edits.apply(wider, edit)
    assert changed(wider, before) == set()
    assert not edit.is_applied(wider.pipe.text_encoder)
