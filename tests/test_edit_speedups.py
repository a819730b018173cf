"""The leaner editors against the float64 formulas: LoCoEdit's r x r solve (with and without
preservation keys, on ill-conditioned keys) and DiffQuickFix's collection of each distinct prompt
once. Speed is `bench/edit_speed.py`'s job, not a test's."""

from __future__ import annotations

import pytest
import torch

from interp.editing import solve_closed_form, solve_shared_keys
from interp.errors import EditInputError
from interventions import diffquickfix, edits, locoedit

F64 = torch.float64


def reference(weight: torch.Tensor, keys: torch.Tensor, targets: torch.Tensor, lam: float,
              preserve: torch.Tensor | None = None, preserve_weight: float = 1.0) -> torch.Tensor:
    """W* = (lam W' + V^T K + w W' P^T P)(lam I + K^T K + w P^T P)^-1 with V = T W'^T, all float64."""
    w, k, t = weight.double(), keys.double(), targets.double()
    p = torch.zeros(0, k.shape[1], dtype=F64) if preserve is None else preserve.double()
    system = lam * torch.eye(k.shape[1], dtype=F64) + k.T @ k + preserve_weight * p.T @ p
    return (lam * w + (t @ w.T).T @ k + preserve_weight * w @ p.T @ p) @ torch.linalg.inv(system)


def ill_conditioned(n: int, d: int, seed: int = 1) -> torch.Tensor:
    """n keys of width d spanning singular values 1e2 .. 1e-3 (as collinear as template keys)."""
    g = torch.Generator().manual_seed(seed)
    left, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    right, _ = torch.linalg.qr(torch.randn(d, n, generator=g, dtype=F64))
    return (left @ torch.diag(torch.logspace(2, -3, n, dtype=F64)) @ right.T).float()


def relative(got: torch.Tensor, want: torch.Tensor, base: torch.Tensor) -> float:
    """Error against the reference, relative to the update."""
    return float((got.double() - want).norm() / (want - base.double()).norm())


@pytest.mark.parametrize(("n", "m"), [(1, 0), (8, 0), (8, 5), (40, 0)])  # keys, preservation keys; r < d = 64
def test_low_rank_solve_equals_the_float64_formula(n, m):
    g = torch.Generator().manual_seed(n + m)
    d, lam = 64, 0.01
    keys, targets = ill_conditioned(n, d), torch.randn(n, d, generator=g)
    preserve = torch.randn(m, d, generator=g) if m else None
    weights = {"to_k": torch.randn(48, d, generator=g) / 8, "to_v": torch.randn(80, d, generator=g) / 8}
    solved = locoedit.low_rank_solve(weights, keys, targets, lam, preserve, 2.0)
    values = {name: targets @ w.T for name, w in weights.items()}
    square = solve_shared_keys(weights, keys, values, lam, preserve, 2.0)  # the d x d form
    for name, weight in weights.items():
        want = reference(weight, keys, targets, lam, preserve, 2.0)
        assert solved[name].dtype == weight.dtype and solved[name].shape == weight.shape
        assert relative(solved[name], want, weight) <= 1e-6
        assert relative(solved[name], square[name].double(), weight) <= 1e-6


def test_locoedit_solve_takes_the_small_form_only_below_the_width(monkeypatch):
    g = torch.Generator().manual_seed(0)
    d = 16
    weights = {"a.to_k.weight": torch.randn(8, d, generator=g)}, {"a.to_v.weight": torch.randn(12, d, generator=g)}
    used = []
    real = locoedit.low_rank_solve
    monkeypatch.setattr(locoedit, "low_rank_solve", lambda *a, **k: used.append(len(a[1])) or real(*a, **k))
    for n in (4, 20):  # fewer keys than the width, then more: the d x d form
        keys, targets = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
        solved = locoedit.solve(*weights, keys, targets, 0.01, 0.5)
        for group, lam in zip(weights, (0.01, 0.5)):
            for name, weight in group.items():
                assert relative(solved[name], reference(weight, keys, targets, lam), weight) <= 1e-6
    assert used == [4, 4]  # W_K and W_V, only for n = 4


def test_low_rank_solve_writes_nothing_and_keeps_half_precision():
    g = torch.Generator().manual_seed(2)
    weight = (torch.randn(24, 32, generator=g) / 4).half()
    before = weight.clone()
    keys, targets = torch.randn(3, 32, generator=g), torch.randn(3, 32, generator=g)
    solved = locoedit.low_rank_solve({"w": weight}, keys, targets, 0.01)["w"]
    assert torch.equal(weight, before) and solved.dtype == torch.float16
    want = reference(weight, keys, targets, 0.01)
    assert float((solved.double() - want).norm() / want.norm()) < 1e-3  # half's own rounding


def former_pairs(model, old, new, layer, templates, positions):
    """DiffQuickFix's former collection: both prompts of every pair, repeats included."""
    component, path = diffquickfix.out_proj(model, layer)
    placed = [(edits.place(model, t, o), edits.place(model, t, n)) for o, n in edits.pairs(old, new) for t in templates]
    inputs = diffquickfix._inputs(model, component, path, [p.prompt for row in placed for p in row])
    weight = model.components[component].get_submodule(path).weight.detach()
    keys, values = [], []
    for i, (a, b) in enumerate(placed):
        key_positions, value_positions = edits.aligned(positions, a, b)
        keys.append(inputs[2 * i, key_positions])
        values.append(inputs[2 * i + 1, value_positions] @ weight.T)
    return torch.cat(keys), torch.cat(values)


@pytest.mark.parametrize("positions", ["from-subject", "subject"])
def test_diffquickfix_encodes_each_distinct_prompt_once(model, monkeypatch, positions):
    old, new = ["van gogh", "monet", "red circle"], "painting"
    want = former_pairs(model, old, new, 1, diffquickfix.TEMPLATES, positions)
    encoded = []
    real = diffquickfix._inputs
    monkeypatch.setattr(diffquickfix, "_inputs",
                        lambda m, c, p, prompts: encoded.append(prompts) or real(m, c, p, prompts))
    keys, values = diffquickfix.collect_pairs(model, old, new, 1, diffquickfix.TEMPLATES, positions=positions)
    [prompts] = encoded
    templates = len(diffquickfix.TEMPLATES)
    assert len(prompts) == len(set(prompts)) == len(old) * templates + templates  # "painting" once per template
    torch.testing.assert_close(keys, want[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(values, want[1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("preserved", [0, 12])
def test_solve_with_shared_values_equals_the_float64_formula(preserved):
    """Keys that share values (one new concept for many old ones): K^T V by scatter-add over
    `value_index` gives the solve of the written-out values, and the float64 formula, to 1e-10."""
    g = torch.Generator().manual_seed(preserved)
    # float64 in, so float64 out: the solves compared, not float32's rounding of their results; n > out
    weight, keys = torch.randn(24, 16, generator=g, dtype=F64), torch.randn(90, 16, generator=g, dtype=F64)
    distinct, index = torch.randn(7, 24, generator=g, dtype=F64), torch.randint(0, 7, (90,), generator=g)
    kept = torch.randn(preserved, 16, generator=g, dtype=F64) if preserved else None
    shared = solve_closed_form(weight, keys, distinct, 0.01, kept, 0.5, value_index=index)
    written = solve_closed_form(weight, keys, distinct[index], 0.01, kept, 0.5)
    want = reference_values(weight, keys, distinct[index], 0.01, kept, 0.5)
    assert relative(shared, want, weight) < 1e-10 and relative(written, want, weight) < 1e-10


def reference_values(weight, keys, values, lam, preserve, preserve_weight) -> torch.Tensor:
    """W* = (lam W' + V^T K + w W' P^T P)(lam I + K^T K + w P^T P)^-1, values given, all float64."""
    w, k, v = weight.double(), keys.double(), values.double()
    p = torch.zeros(0, k.shape[1], dtype=F64) if preserve is None else preserve.double()
    system = lam * torch.eye(k.shape[1], dtype=F64) + k.T @ k + preserve_weight * p.T @ p
    return (lam * w + v.T @ k + preserve_weight * w @ p.T @ p) @ torch.linalg.inv(system)


def test_shared_values_need_an_index_per_key_inside_values():
    weight, keys, values = torch.randn(4, 3), torch.randn(5, 3), torch.randn(2, 4)
    with pytest.raises(EditInputError, match="one entry per key"):
        solve_closed_form(weight, keys, values, 0.01, value_index=torch.zeros(4, dtype=torch.long))
    with pytest.raises(EditInputError, match="values has 2 rows"):
        solve_closed_form(weight, keys, values, 0.01, value_index=torch.tensor([0, 1, 2, 0, 1]))
    with pytest.raises(EditInputError, match="or pass value_index"):
        solve_closed_form(weight, keys, values, 0.01)


def test_diffquickfix_indexed_collection_writes_out_to_its_pairs(model):
    old, new = ["van gogh", "monet"], "painting"
    keys, distinct, index = diffquickfix.collect_indexed(model, old, new, 1)
    pair_keys, pair_values = diffquickfix.collect_pairs(model, old, new, 1)
    assert len(distinct) < len(pair_values)  # "painting"'s values once, not once per old concept
    assert torch.equal(keys, pair_keys) and torch.equal(distinct[index], pair_values)
