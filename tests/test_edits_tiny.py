"""DiffQuickFix on the bundled tiny model, read back by its judge (skipped until the weights exist)."""

from __future__ import annotations

import pytest

import interp
from interventions import diffquickfix, edits
from interventions.evaluate import captions, evaluation_scenes, style_hit_rate
from models.tiny import JUDGE_PATH, WEIGHTS_DIR

pytestmark = pytest.mark.skipif(
    not (WEIGHTS_DIR / "model_index.json").exists() or not JUDGE_PATH.exists(),
    reason="the tiny model's weights are not built (python -m models.tiny.train)",
)


def test_diffquickfix_lowers_the_van_gogh_hit_rate() -> None:
    model = interp.load("tiny")
    prompts = captions(evaluation_scenes(6, styles=("van gogh",)))
    before = style_hit_rate(model, prompts, "van gogh", seeds=(0,))
    with edits.applied(model, diffquickfix.edit(model, "van gogh", "painting", layer=0)):
        after = style_hit_rate(model, prompts, "van gogh", seeds=(0,))
    assert before >= 0.5 and after < before, (before, after)
