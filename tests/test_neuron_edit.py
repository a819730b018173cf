"""Neuron-level LoCoEdit: the layer-level update kept on the attributed output rows (or heads) only."""

import pytest
import torch

from interp.errors import EditInputError
from interventions import locoedit

LAYERS = ["mid-cross-attn", "up-1-cross-attn-0"]


@pytest.fixture(scope="module")
def full(model):
    return locoedit.edit(model, "van gogh", "painting", LAYERS)


@pytest.mark.parametrize("fraction, by", [(0.25, "row"), (0.5, "head"), (1.0, "row")])
def test_only_the_selected_rows_change_and_they_are_the_layer_edits(model, full, fraction, by):
    part = locoedit.neuron_edit(model, "van gogh", "painting", LAYERS, fraction=fraction, by=by)
    selected = part.metadata["rows"]["selected"]
    assert set(part.changed_parameters) == set(full.changed_parameters)
    for name, weight in part.weights.items():
        base = model.denoiser.get_parameter(name).detach()
        rows = torch.tensor(selected[name])
        others = torch.ones(len(base), dtype=torch.bool)
        others[rows] = False
        assert len(rows) == round(fraction * len(base))  # the fraction of the matrix's entries
        assert torch.equal(weight[others], base[others])
        # the row-separable solution itself, to float32 precision (an edit stores its ΔW and rounds base + ΔW)
        torch.testing.assert_close(weight[rows], full.weights[name][rows], rtol=0, atol=1e-6)
        if by == "head":  # whole heads: runs of head_dim rows
            width = next(model.site(layer).head_dim for layer in LAYERS if name.startswith(model.site(layer).path))
            assert all(r % width == 0 for r in rows[::width].tolist())


def test_rows_are_those_that_move_the_keys_most(model, full):
    part = locoedit.neuron_edit(model, "van gogh", "painting", LAYERS[:1], fraction=0.25)
    keys = locoedit.collect(model, "van gogh", "painting", layers=LAYERS[:1])[LAYERS[0]][0]
    for name, rows in part.metadata["rows"]["selected"].items():
        base = model.denoiser.get_parameter(name).detach().double()
        effect = ((full.weights[name].double() - base) @ keys.double().T).pow(2).sum(1)
        assert set(rows) == set(effect.topk(len(rows)).indices.tolist())


def test_named_heads_come_from_a_trace(model):
    part = locoedit.neuron_edit(model, "van gogh", "painting", ["mid-cross-attn"], heads=[5, 2])
    width = model.site("mid-cross-attn").head_dim
    for rows in part.metadata["rows"]["selected"].values():
        assert rows == [*range(2 * width, 3 * width), *range(5 * width, 6 * width)]
    with pytest.raises(EditInputError, match=r"has heads 0 \.\. 7"):
        locoedit.neuron_edit(model, "van gogh", "painting", ["mid-cross-attn"], heads=[8])


def test_bad_arguments_are_clear_errors(model):
    with pytest.raises(EditInputError, match="fraction must be in"):
        locoedit.neuron_edit(model, "van gogh", "painting", LAYERS, fraction=0.0)
    with pytest.raises(EditInputError, match="by must be one of"):
        locoedit.neuron_edit(model, "van gogh", "painting", LAYERS, by="column")
