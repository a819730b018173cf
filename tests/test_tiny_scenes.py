"""The tiny world's generator, captions and tokenizer: deterministic, complete, SD-shaped."""

from __future__ import annotations

import random

import numpy as np

from models.tiny import (
    COLORS, OBJECTS, STYLES, Scene, caption, held_out_combos, is_held_out, render, sample_scene, vocabulary,
)
from models.tiny.tokenizer import MAX_LENGTH, build_tokenizer


def test_render_is_deterministic_and_styles_differ() -> None:
    scene = Scene("star", "blue", "van gogh", 2, seed=7)
    assert np.array_equal(render(scene), render(scene))
    assert render(scene).shape == (32, 32, 3)
    plain = render(Scene("star", "blue", "plain", 2, seed=7)).astype(int)
    for style in STYLES[1:]:
        assert np.abs(render(Scene("star", "blue", style, 2, seed=7)).astype(int) - plain).mean() > 10


def test_held_out_combos_are_fixed_and_never_sampled_for_training() -> None:
    combos = held_out_combos()
    assert len(combos) == round(0.15 * len(COLORS) * len(OBJECTS) * len(STYLES))
    rng = random.Random(0)
    assert not any(is_held_out(sample_scene(rng)) for _ in range(500))
    assert all(is_held_out(sample_scene(rng, held_out=True)) for _ in range(50))


def test_captions_put_subjects_and_styles_at_several_positions() -> None:
    scene = Scene("circle", "red", "van gogh", 1)
    texts = {caption(scene, t) for t in range(3)}
    assert texts == {
        "a red circle in the style of van gogh",
        "a painting of a red circle by van gogh",
        "a van gogh painting of a red circle",
    }
    assert caption(Scene("square", "blue", "plain", 2), 1) == "a photograph of two blue squares"
    assert caption(Scene("heart", "orange", "plain", 1)) == "an orange heart"


def test_tokenizer_is_sd_style_with_one_token_per_word() -> None:
    tok = build_tokenizer()
    for word in vocabulary():
        assert tok.tokenize(word) == [word + "</w>"]
    assert tok.tokenize("van gogh") == ["van</w>", "gogh</w>"]
    ids = tok("a red circle", padding="max_length", max_length=MAX_LENGTH).input_ids
    assert len(ids) == MAX_LENGTH and ids[0] == tok.bos_token_id
    assert tok.pad_token_id == tok.eos_token_id and ids[4:] == [tok.eos_token_id] * (MAX_LENGTH - 4)
