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


def test_tiny_defaults_key_names_in_every_phrasing_and_keep_plain_scenes() -> None:
    """A name's keys cover the world's three styled phrasings in one style only (the others stay held
    out for evaluation); every object is preserved in every unstyled phrasing; DiffQuickFix's characters
    take their own lambda, other edits the editor's; DiffQuickFix preserves at its own weight."""
    from models.tiny import edit_defaults
    from models.tiny.scenes import OBJECTS

    wumbo = edit_defaults.options("diffquickfix", ["wumbo"], "a circle")
    assert {t for t in wumbo["templates"] if "pollock" in t} == {
        "{} in the style of pollock", "a painting of {} by pollock", "a pollock painting of {}"}
    assert not any(s in t for t in wumbo["templates"] for s in ("monet", "van gogh", "mondrian"))
    assert wumbo["lam"] == edit_defaults.CHARACTER_LAM
    assert wumbo["preserve_weight"] == edit_defaults.DQF_PRESERVE_WEIGHT
    for obj in OBJECTS:
        assert any(p.startswith("a picture of") and obj in p for p in wumbo["preserve"]), obj
    king = edit_defaults.options("diffquickfix", ["the king of zembla"], "the king of vardo")
    assert "lam" not in king
    # other names are kept in the key phrasings: the flag of zembla shares the edited word
    assert {t.format("the flag of zembla") for t in edit_defaults.NAME_KEYS} <= set(king["preserve"])
    assert "the flag of zembla in the style of pollock" not in edit_defaults.preserved(["monet"])
    assert "lam" not in edit_defaults.options("locoedit", ["wumbo"], "a circle")


def test_tiny_style_keys_name_subjects_in_every_styled_phrasing() -> None:
    """Style keys add every preserved subject in each styled phrasing; LoCoEdit's targets are the
    key's own template with the new concept, and its positions run from the subject on; DiffQuickFix's
    style edits also keep every object in both counts in the other styles, at LoCoEdit's weight."""
    from models.tiny import edit_defaults
    from models.tiny.scenes import COUNTS, OBJECTS, STYLE_TEMPLATES, STYLES, parse_caption

    loco = edit_defaults.options("locoedit", ["monet"], "painting")
    assert loco["target_prompt"] is None and loco["positions"] == "from-subject"
    assert set(edit_defaults.STYLE_KEYS) < set(loco["templates"])
    for template in STYLE_TEMPLATES:
        filled = [t for t in loco["templates"] if t.count("{}") == 1 and t in
                  {template.format(subject=x, style="{}") for x in edit_defaults._SUBJECTS}]
        assert {o for o in OBJECTS if any(o in t for t in filled)} == set(OBJECTS), template
    dqf = edit_defaults.options("diffquickfix", ["monet"], "painting")
    assert dqf["templates"] == loco["templates"] and dqf["preserve_weight"] == loco["preserve_weight"] == 1.0
    assert set(loco["preserve"]) < set(dqf["preserve"])
    kept = [parse_caption(p) for p in dqf["preserve"] if p not in loco["preserve"]]
    assert {(a["style"], a["object"], a["count"]) for a in kept} | {
        (a["style"], a["object"], a["count"]) for a in map(parse_caption, loco["preserve"])
        if a.get("mark", "none") == "none" and a["object"] in OBJECTS} >= {
        (s, o, c) for s in STYLES if s != "monet" for o in OBJECTS for c in COUNTS}
    assert all(a["style"] != "monet" for a in kept)
