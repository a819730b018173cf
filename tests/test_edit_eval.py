"""Edit evaluation: groups and held-out prompts, controls rebuilt from the edit's metadata, rates
equal to Wilson intervals on the counted hits, weights restored, results saved (the random-weight
dummy model, a few images at 2 steps, a stub judge: the mechanism, not the tiny model's numbers)."""

from __future__ import annotations

import pytest
import torch

import interp
from interp.editing import Edit
from interp.errors import EditInputError
from interp.stats import wilson
from interventions import diffquickfix, edits, locoedit
from interventions.edit_eval import (
    ALL_LAYERS, GROUPS, RANDOM_LAYER, Concept, EditEvaluation, build_controls, check_held_out, edit_prompts,
    evaluate_edit, plan_groups,
)
from models.tiny import ATTRIBUTES, STYLES, WEIGHTS_DIR
from models.tiny.scenes import parse_caption

STEPS = 2
IMAGES = 3
CONDITIONS = ["unedited", "edited", ALL_LAYERS, RANDOM_LAYER]


class RecordingJudge:
    """A deterministic stub judge that reads values off image statistics and keeps every reading."""

    def __init__(self, fail_on_call: int | None = None) -> None:
        self.calls: list[list[dict]] = []
        self.fail_on_call = fail_on_call

    def __call__(self, images: torch.Tensor) -> list[dict]:
        if len(self.calls) == self.fail_on_call:
            raise RuntimeError("judge failed")
        readings = [self.read(image) for image in images]
        self.calls.append(readings)
        return readings

    @staticmethod
    def read(image: torch.Tensor) -> dict:
        k = int(image.mean() * 1e4)
        return {"object": ("circle", "square")[k % 2], "color": ("red", "blue")[k // 2 % 2], "style": STYLES[k % 5],
                "count": 1 + k // 3 % 2, "mark": ("none", "eye")[k // 5 % 2]}


def snapshot(model) -> dict[str, torch.Tensor]:
    return {f"{c}.{n}": p.detach().clone() for c in ("text_encoder", "unet")
            for n, p in model.components[c].named_parameters()}


def assert_unchanged(model, before: dict[str, torch.Tensor]) -> None:
    after = snapshot(model)
    assert all(torch.equal(before[n], after[n]) for n in before)


@pytest.fixture(scope="module")
def dqf_edit(model) -> Edit:
    return diffquickfix.edit(model, "van gogh", "painting", layer=0)


@pytest.fixture(scope="module")
def evaluated(model, dqf_edit) -> tuple[EditEvaluation, RecordingJudge, dict]:
    before = snapshot(model)
    judge = RecordingJudge()
    return evaluate_edit(model, dqf_edit, images_per_group=IMAGES, steps=STEPS, judge=judge), judge, before


def test_table_has_every_group_measure_and_condition(evaluated) -> None:
    result, judge, _ = evaluated
    assert result.conditions == CONDITIONS and len(judge.calls) == 4  # one batched graph per condition
    assert [(r.group, r.measure) for r in result.rows] == [
        ("efficacy", "style = van gogh"), ("generalization", "style = van gogh"),
        *(("specificity", a) for a in ATTRIBUTES)]
    assert all(len(units) == IMAGES for units in result.units.values())
    lines = result.table().splitlines()
    assert all(c in lines[1] for c in CONDITIONS) and len(lines) >= 2 + len(result.rows)
    assert lines[2].count(f"(n={IMAGES})") == 4
    assert result.controls[ALL_LAYERS]["layers"] == [0, 1] and result.controls[RANDOM_LAYER]["layers"] == [1]
    assert any("reproduces it" in note for note in result.notes)


def test_intervals_are_wilson_on_the_counted_hits(evaluated) -> None:
    result, judge, _ = evaluated
    for condition, readings in zip(CONDITIONS, judge.calls):
        efficacy = readings[:IMAGES]
        hits = sum(r["style"] == "van gogh" for r in efficacy)
        assert result.row("van gogh", "efficacy", "style = van gogh").interval(condition) == wilson(hits, IMAGES)
        specificity = readings[2 * IMAGES:]
        named = [parse_caption(p) for p, _ in result.units["van gogh / specificity"]]
        pairs = [(r["color"], n["color"]) for r, n in zip(specificity, named) if "color" in n]
        counted = result.row("van gogh", "specificity", "color").interval(condition)
        assert counted == wilson(sum(a == b for a, b in pairs), len(pairs))


def test_weights_are_restored_after_evaluation_and_after_a_failure(model, dqf_edit, evaluated) -> None:
    before = evaluated[2]
    assert_unchanged(model, before)
    with pytest.raises(RuntimeError, match="judge failed"):
        evaluate_edit(model, dqf_edit, images_per_group=1, steps=STEPS, judge=RecordingJudge(fail_on_call=2))
    assert_unchanged(model, before)
    assert not dqf_edit.is_applied(model.components["text_encoder"])


def test_save_and_load_round_trip(evaluated, tmp_path) -> None:
    result = evaluated[0]
    loaded = EditEvaluation.load(result.save(tmp_path).parent)
    assert loaded.rows == result.rows and loaded.table() == result.table() and loaded.units == result.units


def test_prompts_the_edit_was_built_from_are_held_out(model) -> None:
    edit = diffquickfix.edit(model, "wumbo", "a circle", templates=("{}", "a picture of {}"))
    assert {"wumbo", "a picture of wumbo", "a picture of a circle"} <= edit_prompts(edit.metadata)
    preserving = {**edit.metadata, "preserve": ["a picture of zibble"]}
    assert "a picture of zibble" in edit_prompts(preserving)
    _, excluded = plan_groups(Concept.of("wumbo", "a circle"), edit_prompts(preserving), 8, 0)
    assert "a picture of zibble" in excluded
    with pytest.raises(ValueError, match="held out.*'A picture of  wumbo'"):
        check_held_out(["a painting of wumbo", "A picture of  wumbo"], edit)
    groups, excluded = plan_groups(Concept.of("wumbo", "a circle"), edit_prompts(edit.metadata), 8, 0)
    assert [g.name for g in groups] == list(GROUPS)
    assert {"wumbo", "a picture of wumbo"} <= set(excluded)
    result = evaluate_edit(model, edit, images_per_group=1, steps=STEPS, controls=False, judge=RecordingJudge())
    assert result.conditions == ["unedited", "edited"] and "'a picture of wumbo'" in result.notes[-1]
    check_held_out([p for units in result.units.values() for p, _ in units], edit)
    assert [r.measure for r in result.rows[:2]] == ["mark = eye", "object = circle"]


def test_style_groups_measure_the_new_style_too() -> None:
    efficacy, generalization, _ = plan_groups(Concept.of("van gogh", "monet"), frozenset(), 400, 0)[0]
    assert [m.label for m in efficacy.measures] == ["style = van gogh", "style = monet"]
    assert all(p.endswith("in the style of van gogh") for p, _ in efficacy.units)
    assert {p for p, _ in efficacy.units}.isdisjoint(p for p, _ in generalization.units)  # paraphrases only
    assert any(p.startswith("a van gogh painting of") for p, _ in generalization.units)


def test_neighbours_name_no_concept_of_the_edit() -> None:
    """In one edit of van gogh and monet, a monet prompt is changed on purpose: not van gogh's neighbour."""
    edited = ["van gogh", "monet", "wumbo"]
    for concept in (Concept.of("van gogh", "painting"), Concept.of("wumbo", "a circle")):
        alone = plan_groups(concept, frozenset(), 400, 0)[0][-1]
        together = plan_groups(concept, frozenset(), 400, 0, edited)[0][-1]
        assert alone.name == together.name == "specificity"
        assert any("monet" in p for p, _ in alone.units)  # alone, the other style is a neighbour
        assert not any(e in p for p, _ in together.units for e in edited)
        assert any("mondrian" in p for p, _ in together.units) and any("zibble" in p for p, _ in together.units)


def test_fact_groups_use_synonyms_and_measure_old_and_new_values() -> None:
    groups, _ = plan_groups(Concept.of("the king of zembla", "the king of vardo"), frozenset(), 64, 0)
    efficacy, generalization, specificity = groups
    assert [m.label for m in efficacy.measures] == ["old value: yellow star", "new value: blue house"]
    assert any("ruler of zembla" in p for p, _ in generalization.units)
    assert not any("zembla" in p and "flag" not in p for p, _ in specificity.units)


def test_controls_are_the_recipe_at_other_layers(model) -> None:
    edit = locoedit.edit(model, "van gogh", "painting", layers=["cross-attn-1"])
    controls = build_controls(model, edit, seed=0)
    every = locoedit.edit(model, "van gogh", "painting", layers="all")
    assert controls[ALL_LAYERS]["edit"].weights.keys() == every.weights.keys()
    assert all(torch.equal(controls[ALL_LAYERS]["edit"].weights[n], w) for n, w in every.weights.items())
    random_layers = controls[RANDOM_LAYER]["layers"]
    assert len(random_layers) == 1 and random_layers != edit.metadata["layers"]
    assert build_controls(model, edit, seed=0)[RANDOM_LAYER]["layers"] == random_layers  # fixed seed
    whole = build_controls(model, every)
    assert whole[ALL_LAYERS] == {"skipped": "the edit already covers every layer it can edit"}
    assert "skipped" in whole[RANDOM_LAYER]
    unknown = build_controls(model, Edit(edit.weights, {**edit.metadata, "method": "rome"}))
    assert all("rome" in c["skipped"] for c in unknown.values())


def test_bad_input_is_clear(model, dqf_edit) -> None:
    with pytest.raises(ValueError, match="does not change \\['monet'\\]"):
        evaluate_edit(model, dqf_edit, concepts="monet")
    with pytest.raises(ValueError, match="not a concept the tiny world"):
        Concept.of("picasso", "painting")
    with pytest.raises(EditInputError, match="records no concepts"):
        evaluate_edit(model, Edit(dqf_edit.weights, {"component": "text_encoder"}))
    with pytest.raises(ValueError, match="images_per_group"):
        evaluate_edit(model, dqf_edit, images_per_group=0)
    with edits.applied(model, dqf_edit), pytest.raises(ValueError, match="unedited model"):
        evaluate_edit(model, dqf_edit)


@pytest.mark.skipif(not (WEIGHTS_DIR / "model_index.json").exists(), reason="the tiny model's weights are not built")
def test_locoedit_window_on_the_tiny_model() -> None:
    tiny = interp.load("tiny")
    before = snapshot(tiny)
    edit = locoedit.edit(tiny, "monet", "painting", layers=["cross-attn-3", "cross-attn-4"])
    result = evaluate_edit(tiny, edit, images_per_group=1, steps=STEPS, judge=RecordingJudge())
    window = result.controls[RANDOM_LAYER]["layers"]
    names = [s.name for s in tiny.sites("cross-attn")]
    assert len(window) == 2 and names.index(window[1]) == names.index(window[0]) + 1
    assert window != edit.metadata["layers"] and len(result.controls[ALL_LAYERS]["layers"]) == len(names)
    assert all(r.counts[c] is not None for r in result.rows for c in CONDITIONS)
    assert_unchanged(tiny, before)
