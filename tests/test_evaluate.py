"""Judge-based measurement: batching order, aggregation and input checks (a stub judge on the
random-weight dummy model; the real judge is exercised by tests/test_edits_tiny.py)."""

from __future__ import annotations

import pytest
import torch

from interventions.evaluate import (
    attribute_accuracy, captions, evaluation_scenes, generate, generate_units, judge_generations, judge_units,
    style_hit_rate,
)
from models.tiny import STYLES, Scene, is_held_out, named_scene

STEPS = 2


def brightness_judge(images: torch.Tensor) -> list[dict]:
    """Calls an image "van gogh" when it is brighter than 0.5 on average, else "plain"."""
    return [
        {"object": "circle", "color": "red", "style": "van gogh" if float(i.mean()) > 0.5 else "plain", "count": 1,
         "mark": "eye"}
        for i in images
    ]


def test_generate_is_prompt_major_and_matches_single_runs(model) -> None:
    prompts, seeds = ["a red circle", "a blue square"], [0, 1]
    images = generate(model, prompts, seeds, steps=STEPS)
    assert images.shape[0] == 4 and images.shape[1] == 3
    single = generate(model, ["a blue square"], [0], steps=STEPS)
    torch.testing.assert_close(images[2], single[0], atol=1e-5, rtol=0)
    assert not torch.equal(images[0], images[1])  # seeds differ


def test_judged_rows_follow_cases_and_seeds(model) -> None:
    cases = [Scene("circle", "red", "van gogh", 1), ("a blue square", {"style": "plain", "color": "blue"})]
    judged = judge_generations(model, cases, seeds=(0, 1, 2), judge=brightness_judge, steps=STEPS)
    assert len(judged) == 6
    assert judged.prompts[:3] == (captions(cases[:1])[0],) * 3 and judged.seeds == (0, 1, 2) * 2
    by_hand = brightness_judge(generate(model, list(dict.fromkeys(judged.prompts)), (0, 1, 2), steps=STEPS))
    assert list(judged.predictions) == by_hand
    accuracy = judged.accuracy()
    assert accuracy["object"] == 1.0  # only the scene states an object, and the stub says circle
    assert accuracy["color"] == 0.5  # red right, blue wrong
    van_gogh = judged.where(lambda e: e.get("style") == "van gogh")
    assert van_gogh.prompts == judged.prompts[:3] and van_gogh.predictions == judged.predictions[:3]
    assert van_gogh.hit_rate("style", "van gogh") == sum(p["style"] == "van gogh" for p in by_hand[:3]) / 3


def test_units_keep_their_order_and_seeds(model) -> None:
    units = [("a blue square", 1), ("a red circle", 0), ("a blue square", 0)]
    images = generate_units(model, units, steps=STEPS)
    crossed = generate(model, ["a blue square", "a red circle"], [1, 0], steps=STEPS)
    torch.testing.assert_close(images, crossed[[0, 3, 1]], atol=1e-5, rtol=0)
    judged = judge_units(model, units, [{}, {}, {"style": "plain"}], judge=brightness_judge, steps=STEPS)
    assert judged.prompts == tuple(p for p, _ in units) and judged.seeds == (1, 0, 0)
    with pytest.raises(ValueError, match="one expectation per unit"):
        judge_units(model, units, [{}], judge=brightness_judge)


def test_named_scenes_expect_their_mark(model) -> None:
    cases = [named_scene("wumbo"), named_scene("the king of zembla")]
    judged = judge_generations(model, cases, judge=brightness_judge, steps=STEPS)
    assert judged.prompts == ("wumbo", "a photograph of the king of zembla")
    assert [e["mark"] for e in judged.expected] == ["eye", "none"]
    assert judged.accuracy()["mark"] == 0.5  # the stub always says "eye"


def test_hit_rate_and_accuracy_agree(model) -> None:
    prompts = ["a red circle in the style of van gogh", "a cat"]
    rate = style_hit_rate(model, prompts, "van gogh", seeds=(0,), judge=brightness_judge, steps=STEPS)
    accuracy = attribute_accuracy(
        model, [(p, {"style": "van gogh"}) for p in prompts], seeds=(0,), judge=brightness_judge, steps=STEPS
    )
    assert accuracy == {"style": rate}


def test_evaluation_scenes_are_deterministic_balanced_and_seen() -> None:
    scenes = evaluation_scenes(40)
    assert scenes == evaluation_scenes(40)
    assert {s.style for s in scenes} == set(STYLES)
    assert not any(is_held_out(s) for s in scenes)
    assert {s.style for s in evaluation_scenes(6, styles=("monet",))} == {"monet"}


def test_bad_inputs_are_clear() -> None:
    with pytest.raises(ValueError, match="style 'picasso'"):
        evaluation_scenes(3, styles=("picasso",))
    with pytest.raises(ValueError, match="mark 'spot'"):
        judge_generations(None, [("wumbo", {"mark": "spot"})])
    with pytest.raises(ValueError, match="unknown attribute 'size'"):
        judge_generations(None, [("a cat", {"size": 2})])
    with pytest.raises(ValueError, match="at least one case"):
        judge_generations(None, [])
