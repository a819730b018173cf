"""The scorer protocol and the tiny model's ground-truth scorer (its judge)."""

from __future__ import annotations

import pytest

from interp.errors import ScoringInputError
from interp.scoring import CLIPScore, Scorer
from interventions.sweep import default_scorer, subject_attributes
from models.tiny import Scene, named_scene, render_batch
from models.tiny.scenes import parse_caption
from models.tiny.scoring import JudgeScore, is_bundled


def test_clip_score_and_judge_score_are_scorers() -> None:
    assert isinstance(JudgeScore("style"), Scorer) and JudgeScore("style").name == "judge P(style)"
    assert CLIPScore.name == "clip-score"


def test_judge_score_is_the_probability_of_the_value_the_prompt_names() -> None:
    images = render_batch([Scene("star", "green", "monet", 1, seed=3), Scene("star", "green", "van gogh", 1, seed=3)])
    style = JudgeScore("style")(images, ["a green star in the style of monet"] * 2)
    assert style[0] > 0.9 and style[1] < 0.1
    obj = JudgeScore("object")(images, ["a green star in the style of monet", "a green heart in the style of monet"])
    assert obj[0] > 0.9 and obj[1] < 0.1
    everything = JudgeScore()(images[:1], ["a green star in the style of monet"])
    assert everything.shape == (1,) and everything[0] > 0.9


def test_judge_score_reads_characters_and_facts_through_their_attributes() -> None:
    images = render_batch([named_scene("wumbo", "plain", 1), named_scene("the king of zembla", "monet", 2)])
    scores = JudgeScore()(images, ["a picture of wumbo", "the king of zembla in the style of monet"])
    assert (scores > 0.9).all()
    assert JudgeScore("mark")(images[:1], ["zibble"])[0] < 0.1  # wumbo's eye is not zibble's band


def test_judge_score_errors_name_the_problem() -> None:
    image = render_batch([Scene("star", "green", "monet", 1)])
    with pytest.raises(ScoringInputError, match="does not name its color"):
        JudgeScore("color")(image, ["a star in the style of monet"])
    with pytest.raises(ScoringInputError, match="not a caption of the tiny world"):
        JudgeScore()(image, ["a photo of a dog"])
    with pytest.raises(ScoringInputError, match="unknown attributes"):
        JudgeScore("texture")
    with pytest.raises(ScoringInputError, match="1 images but 2 texts"):
        JudgeScore()(image, ["a star", "a heart"])


def test_parse_caption_inverts_captions_and_subjects_pick_attributes() -> None:
    assert parse_caption("a painting of two squares") == {"object": "square", "style": "plain", "count": 2, "mark": "none"}
    assert parse_caption("a van gogh painting of the ruler of vardo")["object"] == "house"
    assert subject_attributes(["van gogh", "monet"]) == ("style",)
    assert subject_attributes(["wumbo"]) == ("object", "color", "mark")
    assert subject_attributes(["monet", "star"]) is None


def test_default_scorer_is_the_judge_on_the_bundled_model_only(model) -> None:
    from models.tiny import load_pipeline

    import interp

    assert is_bundled(load_pipeline()) and not is_bundled(model.pipe)
    assert default_scorer(interp.load("tiny"), attributes=("style",)).name == "judge P(style)"
    given = JudgeScore("color")
    assert default_scorer(model, given) is given
