"""`Model.locate` with a template finds the subject in the template's slot, not at its first
occurrence ('painting' in 'a painting in the style of {}'); without one, the old behaviour."""

from __future__ import annotations

import pytest

from interp.errors import SubjectNotFoundError
from interp.model import template_prefix

STYLE = "a painting in the style of {}"


def test_template_finds_the_slots_token_not_the_first(model) -> None:
    prompt = STYLE.format("painting")
    assert model.tokens(prompt)[2] == model.tokens(prompt)[7] == "painting</w>"
    assert model.locate(prompt, "painting").positions == (2,)  # no template: the first occurrence, as before
    assert model.locate(prompt, "painting", template=STYLE).positions == (7,)
    assert model.locate(prompt, "painting", 0, STYLE).positions == (7,)  # positional, after tokenizer_index


def test_multi_token_subject_and_subject_only_in_the_slot(model) -> None:
    template = "van gogh by {}"
    assert model.locate(template.format("van gogh"), "van gogh", template=template).positions == (4, 5)
    assert model.locate("a photo of van gogh", "van gogh", template="a photo of {}").positions == (4, 5)
    assert model.locate("van gogh", "van gogh", template="{}").positions == (1, 2)


def test_bad_template_or_cut_slot_is_a_clear_error(model) -> None:
    prompt = STYLE.format("painting")
    with pytest.raises(SubjectNotFoundError, match="give prompt .* when filled with subject 'painting'"):
        model.locate(prompt, "painting", template="a {}")
    with pytest.raises(SubjectNotFoundError, match="exactly one '{}' slot"):
        model.locate(prompt, "painting", template=prompt)
    long = "a photo of a photo of a photo of a photo of a photo of {}"  # cut at 16 tokens
    with pytest.raises(SubjectNotFoundError, match="in the slot of template .* cuts prompts at 16 tokens"):
        model.locate(long.format("painting"), "painting", template=long)


@pytest.mark.parametrize(
    ("template", "prefix"),
    [("a photo of {}", "a photo of "), ("{}", ""), ("a {{b}} {} c", "a {b} "),
     ("no slot", None), ("{} and {}", None), ("{0}", None), ("{:>3}", None), ("{name}", None), ("a { b", None)],
)
def test_template_prefix(template: str, prefix: str | None) -> None:
    assert template_prefix(template) == prefix
