"""The closed-form editor: solver correctness and conditioning, and Edit apply/revert/save/load."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from interp.editing import Delta, Edit, fingerprint, solve_closed_form, solve_shared_keys
from interp.errors import EditInputError, EditMismatchError, EditStateError, InterpError

F64 = torch.float64
OUT_PROJ = "encoder.layers.0.self_attn.out_proj.weight"
V_PROJ = "encoder.layers.1.self_attn.v_proj.weight"


def _problem(out_dim: int = 12, in_dim: int = 16, n: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_dim, in_dim, generator=g, dtype=F64)
    keys = torch.randn(n, in_dim, generator=g, dtype=F64)
    values = torch.randn(n, out_dim, generator=g, dtype=F64)
    return weight, keys, values


def _objective_gradient(w, w0, keys, values, lam, preserve=None, preserve_lam=1.0):
    """d/dW of sum ||W k - v||^2 + lam ||W - W0||^2 + preserve_lam sum ||(W - W0) p||^2."""
    grad = 2 * (w @ keys.T - values.T) @ keys + 2 * lam * (w - w0)
    if preserve is not None:
        grad = grad + 2 * preserve_lam * (w - w0) @ preserve.T @ preserve
    return grad


def _text_model(hidden: int = 32, seed: int = 0) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=100,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
        bos_token_id=0,
        eos_token_id=2,
        pad_token_id=1,
    )
    return CLIPTextModel(config).eval()


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(v, before[k])}


def _edit_for(model: CLIPTextModel, names: tuple[str, ...] = (OUT_PROJ,)) -> Edit:
    weights, base = {}, {}
    for i, name in enumerate(names):
        w = model.get_parameter(name)
        g = torch.Generator().manual_seed(i)
        keys = torch.randn(3, w.shape[1], generator=g)
        values = torch.randn(3, w.shape[0], generator=g)
        weights[name], base[name] = solve_closed_form(w, keys, values, lam=0.01), w
    return Edit(weights, {"method": "test", "concepts": ["van gogh"], "lam": 0.01}, base=base)


# --- solver ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [5, 40])  # fewer keys than outputs, and more keys than inputs
@pytest.mark.parametrize(("m", "preserve_lam"), [(0, 1.0), (3, 1.0), (3, 7.5)])  # m preservation keys
def test_solver_matches_normal_equations_and_minimises_objective(n, m, preserve_lam):
    """The papers' formula with UCE's preservation term, in float64:
    W* = (lam W' + V^T K + w W' P^T P)(lam I + K^T K + w P^T P)^-1."""
    weight, keys, values = _problem(n=n)
    preserve = torch.randn(m, weight.shape[1], generator=torch.Generator().manual_seed(9), dtype=F64) if m else None
    lam = 0.01
    got = solve_closed_form(weight, keys, values, lam, preserve, preserve_lam)
    eye = torch.eye(weight.shape[1], dtype=F64)
    p = torch.zeros(0, weight.shape[1], dtype=F64) if preserve is None else preserve
    reference = (lam * weight + values.T @ keys + preserve_lam * weight @ p.T @ p) @ torch.linalg.inv(
        lam * eye + keys.T @ keys + preserve_lam * p.T @ p
    )
    torch.testing.assert_close(got, reference, rtol=1e-9, atol=1e-9)
    grad = _objective_gradient(got, weight, keys, values, lam, preserve, preserve_lam)
    assert grad.abs().max() < 1e-8
    if n + m < weight.shape[1]:  # the keys are matched almost exactly for a small lambda
        torch.testing.assert_close(keys @ got.T, values, rtol=0, atol=1e-2)


def test_solver_keeps_dtype_and_device_and_does_not_touch_inputs():
    weight, keys, values = (t.float() for t in _problem())
    before = weight.clone()
    got = solve_closed_form(weight, keys, values.half(), lam=0.5)
    assert got.dtype == torch.float32 and got.device == weight.device and got.shape == weight.shape
    assert torch.equal(weight, before)


def test_float64_solve_avoids_float32_inverse_drift_on_ill_conditioned_keys():
    out_dim, in_dim, n, lam = 64, 64, 8, 0.01
    g = torch.Generator().manual_seed(1)
    left, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    right, _ = torch.linalg.qr(torch.randn(in_dim, n, generator=g, dtype=F64))
    keys = (left @ torch.diag(torch.logspace(2, -3, n, dtype=F64)) @ right.T).float()
    weight = (torch.randn(out_dim, in_dim, generator=g, dtype=F64) / 8).float()
    values = torch.randn(n, out_dim, generator=g, dtype=F64).float()
    k, w, v = keys.double(), weight.double(), values.double()
    system = lam * torch.eye(in_dim, dtype=F64) + k.T @ k
    assert torch.linalg.cond(system) > 1e5
    reference = (lam * w + v.T @ k) @ torch.linalg.inv(system)
    update = (reference - w).norm()

    ours = solve_closed_form(weight, keys, values, lam).double()
    system32 = lam * torch.eye(in_dim) + keys.T @ keys
    papers = ((lam * weight + values.T @ keys) @ torch.linalg.inv(system32)).double()
    ours_drift = ((ours - reference).norm() / update).item()
    papers_drift = ((papers - reference).norm() / update).item()
    assert ours_drift < 1e-5
    assert papers_drift > 1e-3 and papers_drift > 100 * ours_drift


def test_preservation_keys_keep_current_outputs():
    weight, keys, values = _problem(out_dim=12, in_dim=24, n=4)
    preserve = torch.randn(6, 24, generator=torch.Generator().manual_seed(7), dtype=F64)
    lam, preserve_lam = 0.01, 100.0
    plain = solve_closed_form(weight, keys, values, lam)
    kept = solve_closed_form(weight, keys, values, lam, preserve_keys=preserve, preserve_lam=preserve_lam)
    drift_plain = (preserve @ (plain - weight).T).norm()
    drift_kept = (preserve @ (kept - weight).T).norm()
    assert drift_kept < 1e-3 * drift_plain
    torch.testing.assert_close(keys @ kept.T, values, rtol=0, atol=5e-2)  # the edit still lands
    grad = _objective_gradient(kept, weight, keys, values, lam, preserve, preserve_lam)
    assert grad.abs().max() < 1e-8


def test_shared_keys_solve_equals_one_solve_per_matrix():
    g = torch.Generator().manual_seed(3)
    keys, preserve = torch.randn(4, 16, generator=g), torch.randn(3, 16, generator=g)
    weights = {"to_k": torch.randn(8, 16, generator=g), "to_v": torch.randn(20, 16, generator=g).double()}
    values = {name: torch.randn(4, len(w), generator=g) for name, w in weights.items()}
    shared = solve_shared_keys(weights, keys, values, 0.01, preserve, 2.0)
    for name, weight in weights.items():
        alone = solve_closed_form(weight, keys, values[name], 0.01, preserve, 2.0)
        assert shared[name].dtype == weight.dtype
        torch.testing.assert_close(shared[name], alone, rtol=1e-6, atol=1e-6)
    with pytest.raises(EditInputError, match=r"values for 'to_v' has shape \(4, 8\) but needs 20 columns"):
        solve_shared_keys(weights, keys, {**values, "to_v": values["to_k"]}, 0.01)
    with pytest.raises(EditInputError, match="same matrices"):
        solve_shared_keys(weights, keys, {"to_k": values["to_k"]}, 0.01)


@pytest.mark.parametrize("lam", [0, -0.01, float("nan"), float("inf")])
def test_solver_rejects_non_positive_lambda(lam):
    weight, keys, values = _problem()
    with pytest.raises(EditInputError, match=r"lam must be a finite number > 0, got") as info:
        solve_closed_form(weight, keys, values, lam)
    assert "0.01" in str(info.value)  # names the fix


def test_solver_rejects_bad_preserve_lambda():
    weight, keys, values = _problem()
    with pytest.raises(EditInputError, match="preserve_lam"):
        solve_closed_form(weight, keys, values, 0.01, preserve_keys=keys, preserve_lam=0)


@pytest.mark.parametrize(
    ("keys_shape", "values_shape", "preserve_shape", "message"),
    [
        ((5, 15), (5, 12), None, r"keys has shape \(5, 15\) but needs 16 columns"),
        ((5, 16), (5, 11), None, r"values has shape \(5, 11\) but needs 12 columns"),
        ((5, 16), (4, 12), None, r"keys \(5, 16\) and values \(4, 12\) need the same number of rows"),
        ((16,), (12,), None, r"keys must be a 2-D matrix .* got shape \(16,\)"),
        ((5, 16), (5, 12), (3, 8), r"preserve_keys has shape \(3, 8\) but needs 16 columns"),
    ],
)
def test_solver_shape_errors_name_the_shapes(keys_shape, values_shape, preserve_shape, message):
    weight = torch.zeros(12, 16)
    preserve = None if preserve_shape is None else torch.zeros(preserve_shape)
    with pytest.raises(EditInputError, match=message):
        solve_closed_form(weight, torch.zeros(keys_shape), torch.zeros(values_shape), 0.01, preserve)


def test_solver_rejects_non_finite_inputs():
    weight, keys, values = _problem()
    keys[0, 0] = float("nan")
    with pytest.raises(EditInputError, match="keys contains NaN or inf"):
        solve_closed_form(weight, keys, values, 0.01)


def test_errors_share_the_framework_base_and_value_error():
    assert issubclass(EditInputError, InterpError) and issubclass(EditInputError, ValueError)
    assert issubclass(EditMismatchError, InterpError) and issubclass(EditMismatchError, ValueError)


# --- Edit objects ---------------------------------------------------------------------------------


def test_apply_changes_only_the_targeted_weight_and_revert_is_bit_exact():
    model = _text_model()
    before = _snapshot(model)
    edit = _edit_for(model)
    assert edit.changed_parameters == (OUT_PROJ,)
    edit.apply(model)
    assert edit.is_applied(model)
    assert _changed(model, before) == {OUT_PROJ}  # bias and everything else untouched
    assert torch.equal(model.get_parameter(OUT_PROJ), edit.weights[OUT_PROJ])
    edit.revert(model)
    assert not edit.is_applied(model)
    assert _changed(model, before) == set()


def test_apply_twice_and_revert_unapplied_are_errors():
    model = _text_model()
    edit = _edit_for(model)
    with pytest.raises(EditStateError, match="not applied"):
        edit.revert(model)
    edit.apply(model)
    with pytest.raises(EditStateError, match="already applied"):
        edit.apply(model)


def test_save_load_round_trip_onto_another_copy(tmp_path):
    model = _text_model()
    twin = copy.deepcopy(model)
    before = _snapshot(twin)
    edit = _edit_for(model, (OUT_PROJ, V_PROJ))
    path = edit.save(tmp_path / "edit.safetensors")
    loaded = Edit.load(path)
    assert loaded.changed_parameters == edit.changed_parameters
    assert loaded.metadata == {"method": "test", "concepts": ["van gogh"], "lam": 0.01}
    edit.apply(model)
    loaded.apply(twin)
    for (name, a), (_, b) in zip(model.state_dict().items(), twin.state_dict().items()):
        assert torch.equal(a, b), name
    assert _changed(loaded.revert(twin), before) == set()
    # The file holds the changed weights only.
    assert path.stat().st_size < 2 * sum(t.numel() * t.element_size() for t in edit.weights.values())


def test_failed_apply_leaves_every_weight_untouched():
    model = _text_model()
    before = _snapshot(model)
    weights = dict(_edit_for(model, (OUT_PROJ, V_PROJ)).weights)
    weights["encoder.layers.7.self_attn.out_proj.weight"] = torch.zeros(32, 32)
    edit = Edit(weights)
    with pytest.raises(EditMismatchError, match=r"no parameter 'encoder\.layers\.7.*closest"):
        edit.apply(model)
    assert _changed(model, before) == set()
    assert not edit.is_applied(model)


def test_edit_for_another_architecture_is_a_clear_mismatch():
    small, wide = _text_model(hidden=32), _text_model(hidden=48)
    before = _snapshot(wide)
    edit = _edit_for(small)
    with pytest.raises(EditMismatchError, match=r"shape \(48, 48\) .* holds \(32, 32\)"):
        edit.apply(wide)
    with pytest.raises(EditMismatchError, match="float16"):
        Edit({OUT_PROJ: edit.weights[OUT_PROJ].half()}).apply(small)
    with pytest.raises(EditMismatchError, match="no parameter"):
        edit.apply(torch.nn.Linear(32, 32))
    assert _changed(wide, before) == set()


def test_edit_rejects_non_matrices_and_bad_files(tmp_path):
    with pytest.raises(EditInputError, match="weight matrices only"):
        Edit({"encoder.layers.0.self_attn.out_proj.bias": torch.zeros(32)})
    with pytest.raises(EditInputError, match="at least one weight"):
        Edit({})
    with pytest.raises(EditInputError, match="JSON"):
        Edit({OUT_PROJ: torch.ones(2, 2)}, {"lam": torch.tensor(1.0)}, base={OUT_PROJ: torch.zeros(2, 2)}).save(
            tmp_path / "x.safetensors")
    save_file({"w": torch.zeros(2, 2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(EditInputError, match="not an interp edit file"):
        Edit.load(tmp_path / "plain.safetensors")


# --- edits as fingerprinted deltas -------------------------------------------------------------------


def test_saved_edit_is_a_low_rank_delta_with_base_fingerprints(tmp_path):
    model = _text_model()
    edit = _edit_for(model, (OUT_PROJ, V_PROJ))
    assert edit.ranks == {OUT_PROJ: 3, V_PROJ: 3}  # three keys each
    path = edit.save(tmp_path / "edit.safetensors")
    loaded = Edit.load(path)
    assert loaded.fingerprints == {n: fingerprint(model.get_parameter(n)) for n in (OUT_PROJ, V_PROJ)}
    assert path.stat().st_size < 0.5 * sum(t.numel() * t.element_size() for t in edit.weights.values())
    twin = copy.deepcopy(model)
    loaded.apply(twin)
    assert all(torch.equal(twin.get_parameter(n), edit.weights[n]) for n in (OUT_PROJ, V_PROJ))  # bit-exact


def test_other_base_is_refused_and_force_adds_the_delta(tmp_path):
    model = _text_model()
    edit = Edit.load(_edit_for(model).save(tmp_path / "e.safetensors"))
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.get_parameter(OUT_PROJ).add_(0.01)
    before = _snapshot(other)
    with pytest.raises(EditMismatchError, match="force"):
        edit.apply(other)
    assert _changed(other, before) == set()
    edit.apply(other, force=True)
    added = other.get_parameter(OUT_PROJ).double() - before[OUT_PROJ].double()
    assert torch.allclose(added, edit.deltas[OUT_PROJ].dense(), atol=1e-7)
    assert _changed(edit.revert(other), before) == set()


def test_two_loads_of_one_file_are_one_edit(tmp_path):
    model = _text_model()
    before = _snapshot(model)
    path = _edit_for(model).save(tmp_path / "e.safetensors")
    first, second = Edit.load(path), Edit.load(path)
    first.apply(model)
    assert second.is_applied(model)
    with pytest.raises(EditStateError, match="already applied"):
        second.apply(model)
    second.revert(model)
    assert _changed(model, before) == set()


def test_revert_in_any_order_or_a_clear_refusal():
    model = _text_model()
    before = _snapshot(model)
    out_proj, v_proj = _edit_for(model), _edit_for(model, (V_PROJ,))
    out_proj.apply(model), v_proj.apply(model)
    out_proj.revert(model), v_proj.revert(model)  # disjoint weights: any order
    assert _changed(model, before) == set()
    stacked = Edit({OUT_PROJ: model.get_parameter(OUT_PROJ) + 1}, base={OUT_PROJ: model.get_parameter(OUT_PROJ)})
    out_proj.apply(model)
    stacked.apply(model, force=True)
    with pytest.raises(EditStateError, match="revert it first"):
        out_proj.revert(model)
    stacked.revert(model), out_proj.revert(model)
    assert _changed(model, before) == set()


def test_apply_is_all_or_nothing(monkeypatch):
    model = _text_model()
    before = _snapshot(model)
    edit = _edit_for(model, (OUT_PROJ, V_PROJ))
    onto, calls = Delta.onto, []

    def out_of_memory(self, base):
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("simulated")
        return onto(self, base)

    monkeypatch.setattr(Delta, "onto", out_of_memory)
    with pytest.raises(torch.OutOfMemoryError):
        edit.apply(model)
    assert _changed(model, before) == set() and not edit.is_applied(model)


def test_old_and_garbage_files_give_clear_errors(tmp_path):
    model = _text_model()
    edit = _edit_for(model)
    save_file({OUT_PROJ: edit.weights[OUT_PROJ]}, str(tmp_path / "v1.safetensors"),
              metadata={"__interp_edit__": "1", "method": '"test"'})
    with pytest.raises(EditInputError, match="before edits were deltas"):
        Edit.load(tmp_path / "v1.safetensors")
    migrated = Edit.load(tmp_path / "v1.safetensors", base=model)
    assert migrated.fingerprints == edit.fingerprints and migrated.metadata == {"method": "test"}
    good = edit.save(tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(good[: len(good) // 2])
    (tmp_path / "junk.safetensors").write_bytes(b"\x00garbage" * 10)
    for name in ("cut", "junk"):
        with pytest.raises(EditInputError, match="not a readable edit file"):
            Edit.load(tmp_path / f"{name}.safetensors")


def test_lora_export_loads_in_diffusers(tmp_path):
    import interp
    from interventions.edits import export_lora, import_lora
    from models.testing import dummy_sd_pipeline
    from tests.conftest import PROMPT
    from tests.reference_hooks import generate

    model = interp.load(dummy_sd_pipeline())
    name = f"{model.site('cross-attn-0').kv_paths[0]}.weight"
    weight = model.denoiser.get_parameter(name)
    g = torch.Generator().manual_seed(0)
    solved = solve_closed_form(weight, torch.randn(3, weight.shape[1], generator=g),
                               torch.randn(3, weight.shape[0], generator=g), lam=0.01)
    edit = Edit({name: solved}, {"component": "unet"}, base={name: weight})
    assert export_lora(edit, tmp_path / "lora") == {name: 3}
    imported = import_lora(tmp_path / "lora", "unet")
    assert torch.allclose(imported.deltas[name].dense(), edit.deltas[name].dense(), atol=1e-7)
    edit.apply(model.denoiser)
    expected = generate(model, [PROMPT], [0], 3)
    edit.revert(model.denoiser)
    model.pipe.load_lora_weights(str(tmp_path / "lora"))
    assert (generate(model, [PROMPT], [0], 3) - expected).abs().max() <= 1e-4
    model.pipe.fuse_lora()
    fused = model.pipe.unet.get_submodule(name.removesuffix(".weight")).base_layer.weight
    assert ((fused - edit.weights[name]).norm() / edit.weights[name].norm()) <= 1e-6


def test_delta_of_a_low_rank_update_keeps_its_rank_without_a_full_svd():
    """A rank-10 update of a 256 x 512 matrix: the sketched SVD finds rank 10 and the same ΔW as the
    full SVD truncated at the rounding level."""
    from interp.editing import Delta

    generator = torch.Generator().manual_seed(0)
    base = torch.randn(256, 512, generator=generator) * 0.02
    update = torch.randn(256, 10, generator=generator, dtype=torch.float64) @ torch.randn(10, 512, generator=generator, dtype=torch.float64)
    edited = (base.double() + 0.01 * update).float()
    delta = Delta.between(base, edited)
    dense = edited.double() - base.double()
    u, s, vh = torch.linalg.svd(dense, full_matrices=False)
    assert delta.rank == 10
    torch.testing.assert_close(delta.dense(), (u[:, :10] * s[:10]) @ vh[:10], rtol=0, atol=1e-12)
