"""LoCoEdit on the random-weight dummy pipeline (4 cross-attention layers): what changes, keys
mapped onto targets per matrix, separate lambdas, layer choice, reversibility, transfer, several
concepts, and bad input (weights untouched)."""

from __future__ import annotations

import pytest
import torch

import interp
from interp.editing import Edit
from interp.errors import EditInputError, EditMismatchError, SubjectNotFoundError, UnknownSiteError
from interventions import edits, locoedit
from models.testing import dummy_sd_pipeline
from tests.test_diffquickfix import changed, snapshot

WINDOW = ("cross-attn-2", "cross-attn-3")


def kv_names(model: interp.Model, sites: tuple[str, ...]) -> set[str]:
    return {f"{p}.weight" for s in sites for p in model.site(s).kv_paths}


def residual(new: torch.Tensor, old: torch.Tensor, keys: torch.Tensor, targets: torch.Tensor) -> float:
    wanted = targets @ old.detach().T
    return float((keys @ new.detach().T - wanted).norm() / wanted.norm())


def test_only_the_windows_key_and_value_projections_change(model) -> None:
    before = snapshot(model)
    edit = locoedit.edit(model, "van gogh", "painting", layers=WINDOW)
    assert changed(model, before) == set()
    assert set(edit.changed_parameters) == kv_names(model, WINDOW) and len(edit.changed_parameters) == 4
    assert edit.metadata["component"] == "unet"
    assert edit.metadata["layers"] == ["up-1-cross-attn-0", "up-1-cross-attn-1"]
    with edits.applied(model, edit):
        assert changed(model, before) == {f"unet.{n}" for n in kv_names(model, WINDOW)}
    assert changed(model, before) == set()


def test_keys_map_onto_each_matrixs_output_for_the_target(model) -> None:
    collected = locoedit.collect(model, "van gogh", "painting", layers=WINDOW)
    keys, targets = collected["up-1-cross-attn-0"]
    assert keys.shape == targets.shape == (4, 32)  # 4 templates
    assert all(torch.equal(keys, k) and torch.equal(targets, t) for k, t in collected.values())  # SD: shared
    embedding = model.pipe.text_encoder(model.token_ids(["a painting"]))[0]
    torch.testing.assert_close(targets[0], embedding[0, 2].detach())  # "painting" after BOS, "a"
    edit = locoedit.edit(model, layers=WINDOW)
    for name, new in edit.weights.items():
        old = model.denoiser.get_parameter(name)
        assert residual(old, old, keys, targets) > 0.3 and residual(new, old, keys, targets) < 0.01


def embedding(model: interp.Model, prompt: str) -> torch.Tensor:
    """The text encoder's last hidden states for `prompt` (L, d): what SD's cross-attention layers read."""
    with torch.no_grad():
        return model.pipe.text_encoder(model.token_ids([prompt]))[0][0]


@pytest.mark.parametrize(
    ("positions", "key_positions", "target_positions"),
    [  # "a photo of van gogh": gogh at 5, EOS at 6; "a painting": painting at 2, EOS at 3; 16 positions
        ("subject", [5], [2]),
        ("from-subject", list(range(5, 16)), list(range(2, 13))),
        ("subject+eos", [5, *range(6, 16)], [2, *range(3, 13)]),
    ],
)
def test_positions_give_the_documented_keys_and_targets(model, positions, key_positions, target_positions) -> None:
    keys, targets = locoedit.collect(model, "van gogh", "painting", templates=("a photo of {}",), layers=WINDOW,
                                     positions=positions)["up-1-cross-attn-0"]
    torch.testing.assert_close(keys, embedding(model, "a photo of van gogh")[key_positions], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(targets, embedding(model, "a painting")[target_positions], atol=1e-6, rtol=1e-6)
    assert locoedit.edit(model, layers=WINDOW, positions=positions).metadata["positions"] == positions


def test_without_a_target_prompt_each_key_meets_its_own_template_with_the_new_concept(model) -> None:
    """target_prompt=None: 'a photo of van gogh' maps onto 'a photo of painting', position by position
    from the subject on (DiffQuickFix's pairing)."""
    keys, targets = locoedit.collect(model, "van gogh", "painting", templates=("a photo of {}",), layers=WINDOW,
                                     target_prompt=None, positions="from-subject")["up-1-cross-attn-0"]
    torch.testing.assert_close(keys, embedding(model, "a photo of van gogh")[5:16], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(targets, embedding(model, "a photo of painting")[4:15], atol=1e-6, rtol=1e-6)
    edit = locoedit.edit(model, layers=WINDOW, target_prompt=None, templates=("a photo of {}",))
    assert edit.metadata["target_prompt"] is None


def test_keys_come_from_the_templates_slot_not_the_first_occurrence(model) -> None:
    """'painting' in 'a painting in the style of {}' is the slot's token (7), not the first (2); so is
    the target's 'painting' in a target prompt that names it twice."""
    template = "a painting in the style of {}"
    keys, targets = locoedit.collect(model, "painting", "painting", templates=(template,), layers=WINDOW,
                                     target_prompt="a painting of {}")["up-1-cross-attn-0"]
    torch.testing.assert_close(keys[0], embedding(model, template.format("painting"))[7], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(targets[0], embedding(model, "a painting of painting")[4], atol=1e-6, rtol=1e-6)


def test_preserved_prompt_moves_ten_times_less(model) -> None:
    """The edited layers' keys and values for a preserved prompt barely move (default weight), and the
    edit still lands."""
    keep = "a blue square in the style of monet"
    states = embedding(model, keep)
    plain, kept = locoedit.edit(model, layers=WINDOW), locoedit.edit(model, layers=WINDOW, preserve=keep)
    keys, targets = locoedit.collect(model, "van gogh", "painting", layers=WINDOW)["up-1-cross-attn-0"]
    for name, old in ((n, model.denoiser.get_parameter(n).detach()) for n in plain.weights):
        before = (states @ old.T).norm()
        moved = {e: float((states @ (e.weights[name] - old).T).norm() / before) for e in (plain, kept)}
        assert moved[kept] < 0.1 * moved[plain]
        assert residual(kept.weights[name], old, keys, targets) < 0.05 < residual(old, old, keys, targets)
    assert kept.metadata["preserve"] == [keep] and kept.metadata["preserve_weight"] == 1.0
    assert plain.metadata["positions"] == "subject"


def test_lam_k_and_lam_v_act_on_their_own_matrices(model) -> None:
    soft = locoedit.edit(model, layers=WINDOW, lam_k=0.01, lam_v=1e4).weights
    default = locoedit.edit(model, layers=WINDOW).weights
    for name in soft:
        change = float((soft[name] - model.denoiser.get_parameter(name).detach()).norm())
        if ".to_k." in name:
            assert torch.equal(soft[name], default[name])
        else:
            assert change < 0.01 * float((default[name] - model.denoiser.get_parameter(name).detach()).norm())


def test_layers_by_index_name_or_all(model) -> None:
    by_name = locoedit.edit(model, layers=WINDOW).weights
    by_index = locoedit.edit(model, layers=[2, 3, 3]).weights
    assert by_name.keys() == by_index.keys() and all(torch.equal(by_name[n], by_index[n]) for n in by_name)
    every = locoedit.edit(model, layers="all")
    assert set(every.changed_parameters) == kv_names(model, tuple(s.name for s in model.sites("cross-attn")))
    assert len(every.changed_parameters) == 8


def test_two_concepts_in_one_edit(model) -> None:
    edit = locoedit.edit(model, ["van gogh", "monet"], "painting", layers=WINDOW)
    assert edit.metadata["concepts"] == [["van gogh", "painting"], ["monet", "painting"]]
    for concept in ("van gogh", "monet"):
        keys, targets = locoedit.collect(model, concept, "painting", layers=WINDOW)["up-1-cross-attn-0"]
        for name, new in edit.weights.items():
            assert residual(new, model.denoiser.get_parameter(name), keys, targets) < 0.02


def test_save_and_load_onto_a_second_copy_gives_identical_weights(model, tmp_path) -> None:
    edit = locoedit.edit(model, layers=WINDOW)
    copy = interp.load(dummy_sd_pipeline())
    loaded = Edit.load(edit.save(tmp_path / "locoedit.safetensors"))
    assert loaded.metadata == edit.metadata
    with edits.applied(model, edit), edits.applied(copy, loaded):
        assert snapshot(model).keys() == snapshot(copy).keys()
        assert all(torch.equal(a, b) for a, b in zip(snapshot(model).values(), snapshot(copy).values()))


def test_bad_input_is_a_clear_error_and_writes_nothing(model) -> None:
    before = snapshot(model)
    with pytest.raises(UnknownSiteError, match="cross-attn-8, cross-attn-9 .* has 4 cross-attention layers"):
        locoedit.edit(model)  # the SD1.x default window is larger than this model
    with pytest.raises(UnknownSiteError, match="layer 4 does not exist: the model has 4"):
        locoedit.edit(model, layers=range(6))
    with pytest.raises(UnknownSiteError, match="closest: .*up-1-cross-attn-0"):
        locoedit.edit(model, layers=["up-1-cross-atn-0"])
    with pytest.raises(UnknownSiteError, match="resnet site, not a cross-attention layer"):
        locoedit.edit(model, layers=["mid-resnet-0"])
    for lam in ("lam_k", "lam_v"):
        with pytest.raises(EditInputError, match=f"{lam} must be"):
            locoedit.edit(model, layers=WINDOW, **{lam: 0.0})
    with pytest.raises(SubjectNotFoundError, match="van gogh"):
        locoedit.edit(model, layers=WINDOW, templates=("a photo of a photo of a photo of a photo of a photo of {}",))
    with pytest.raises(EditInputError, match="target_prompt 'a drawing' needs exactly one '{}' slot"):
        locoedit.edit(model, layers=WINDOW, target_prompt="a drawing")
    with pytest.raises(EditInputError, match="positions must be one of subject, subject[+]eos, from-subject"):
        locoedit.edit(model, layers=WINDOW, positions="all")
    with pytest.raises(EditInputError, match="preserve_weight must be a finite number > 0"):
        locoedit.edit(model, layers=WINDOW, preserve="a red circle", preserve_weight=0.0)
    assert changed(model, before) == set()


def test_edit_for_another_architecture_is_refused_untouched(model) -> None:
    wider = interp.load(dummy_sd_pipeline(width=48))
    before = snapshot(wider)
    with pytest.raises(EditMismatchError, match="another size"):
        edits.apply(wider, locoedit.edit(model, layers="all"))
    assert changed(wider, before) == set()


def test_each_concept_at_its_own_window(model) -> None:
    """layers={concept: window}: a layer takes the keys of the concepts whose window holds it, in one
    solve; a layer outside every window keeps its weights; a concept without a window is refused."""
    windows = {"van gogh": ["cross-attn-3"], "monet": ["cross-attn-2", "cross-attn-3"]}
    joint = locoedit.edit(model, ["van gogh", "monet"], "painting", layers=windows)
    only_monet = locoedit.edit(model, "monet", "painting", layers=["cross-attn-2"])
    both = locoedit.edit(model, ["van gogh", "monet"], "painting", layers=["cross-attn-3"])
    assert joint.metadata["layers"] == {c: [model.site(n).name for n in w] for c, w in windows.items()}
    at = {name: model.site(name).kv_paths for name in ("cross-attn-2", "cross-attn-3")}
    for path in at["cross-attn-2"]:  # monet's window alone: monet's edit
        torch.testing.assert_close(joint.weights[f"{path}.weight"], only_monet.weights[f"{path}.weight"])
    for path in at["cross-attn-3"]:  # both windows: both concepts' keys together
        torch.testing.assert_close(joint.weights[f"{path}.weight"], both.weights[f"{path}.weight"])
    assert len(joint.weights) == 4
    with pytest.raises(EditInputError, match="every old concept"):
        locoedit.edit(model, ["van gogh", "monet"], "painting", layers={"van gogh": ["cross-attn-3"]})
