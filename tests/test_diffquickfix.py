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


def recorded(model: interp.Model, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer-0 out-projection's input and output without its bias for `prompt`, (L, d) each,
    recorded by a hook on a plain forward pass of the text encoder."""
    out_proj = model.pipe.text_encoder.get_submodule(OUT_PROJ.removesuffix(".weight"))
    seen = []
    handle = out_proj.register_forward_hook(lambda m, args, out: seen.append((args[0][0], out[0] - m.bias)))
    try:
        with torch.no_grad():
            model.pipe.text_encoder(model.token_ids([prompt]))
    finally:
        handle.remove()
    return seen[0]


def test_values_are_the_new_prompts_outputs_from_their_last_subject_token(model) -> None:
    _, outputs = recorded(model, "a photo of painting")
    _, values = diffquickfix.collect_pairs(model, "van gogh", "painting", templates=("a photo of {}",))
    last = model.locate("a photo of painting", "painting").last
    start = model.locate("a photo of van gogh", "van gogh").last
    expected = outputs[last : last + model.max_length - start]  # cut to the shorter
    torch.testing.assert_close(values, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("positions", "key_positions", "value_positions"),
    [  # "a photo of van gogh": gogh at 5, EOS at 6; "a photo of painting": painting at 4, EOS at 5; 16 positions
        ("subject", [5], [4]),
        ("from-subject", list(range(5, 16)), list(range(4, 15))),
        ("subject+eos", [5, *range(6, 16)], [4, *range(5, 15)]),
    ],
)
def test_positions_give_the_documented_keys_and_values(model, positions, key_positions, value_positions) -> None:
    inputs, _ = recorded(model, "a photo of van gogh")
    _, outputs = recorded(model, "a photo of painting")
    keys, values = diffquickfix.collect_pairs(model, "van gogh", "painting", templates=("a photo of {}",),
                                              positions=positions)
    torch.testing.assert_close(keys, inputs[key_positions], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(values, outputs[value_positions], atol=1e-5, rtol=1e-5)
    assert diffquickfix.edit(model, positions=positions).metadata["positions"] == positions


def test_keys_come_from_the_templates_slot_not_the_first_occurrence(model) -> None:
    """'painting' in 'a painting in the style of {}' is the slot's token (7), not the first (2)."""
    template = "a painting in the style of {}"
    inputs, _ = recorded(model, template.format("painting"))
    _, outputs = recorded(model, template.format("drawing"))
    keys, values = diffquickfix.collect_pairs(model, "painting", "drawing", templates=(template,), positions="subject")
    torch.testing.assert_close(keys[0], inputs[7], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(values[0], outputs[7], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(keys[0], inputs[2], atol=1e-3)


def test_preserved_prompt_moves_ten_times_less(model) -> None:
    """What the UNet reads for a preserved prompt (the encoder's last hidden states) barely moves,
    and the edit still lands. The default keys (47 in a 32-wide layer) compete with the preserved
    prompt's 16 states, so this takes preserve_weight=10 (31x here; the default 1.0 gives 9x)."""
    keep = "a blue square in the style of monet"
    base = model.pipe.text_encoder(model.token_ids([keep]))[0].detach()

    def moved(edit: Edit) -> float:
        with edits.applied(model, edit), torch.no_grad():
            return float((model.pipe.text_encoder(model.token_ids([keep]))[0] - base).norm() / base.norm())

    plain, kept = diffquickfix.edit(model), diffquickfix.edit(model, preserve=[keep], preserve_weight=10.0)
    assert moved(kept) < 0.1 * moved(plain)
    keys, values = diffquickfix.collect_pairs(model, "van gogh", "painting")
    weight = model.pipe.text_encoder.get_parameter(OUT_PROJ)
    assert residual(kept.weights[OUT_PROJ], keys, values) < 0.5 * residual(weight, keys, values)
    assert kept.metadata["preserve"] == [keep] and kept.metadata["preserve_weight"] == 10.0
    assert plain.metadata["preserve"] == [] and plain.metadata["positions"] == "from-subject"


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
    with pytest.raises(EditInputError, match="positions must be one of subject, subject[+]eos, from-subject; got 'e"):
        diffquickfix.edit(model, positions="eos")
    for weight in (0, -1.0, float("nan")):
        with pytest.raises(EditInputError, match="preserve_weight must be a finite number > 0"):
            diffquickfix.edit(model, preserve="a red circle", preserve_weight=weight)
    with pytest.raises(EditInputError, match="preserve must be a prompt or a list of non-empty prompts"):
        diffquickfix.edit(model, preserve=["a red circle", " "])
    assert changed(model, before) == set()


def test_edit_for_another_architecture_is_refused_untouched(model) -> None:
    wider = interp.load(dummy_sd_pipeline(width=48))
    before = snapshot(wider)
    edit = diffquickfix.edit(model)
    with pytest.raises(EditMismatchError, match="another size"):
        edits.apply(wider, edit)
    assert changed(wider, before) == set()
    assert not edit.is_applied(wider.pipe.text_encoder)
