"""The tiny world's two-object scenes: renders with known masks, captions the tokenizer reads word
by word, and the color segmentation that finds each object in a generated image."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from interventions.attention_eval import PairCase, iou, score_pairs
from models.tiny import COLORS
from models.tiny.pairs import Pair, color_masks, drawn, pair_caption, random_pair, render_pair
from models.tiny.tokenizer import MAX_LENGTH, build_tokenizer


def test_render_is_deterministic_and_each_mask_holds_its_own_color() -> None:
    rng = random.Random(0)
    firsts_left = set()
    for _ in range(12):
        pair = random_pair(rng)
        image, masks = render_pair(pair)
        again, _ = render_pair(pair)
        assert (image == again).all() and image.shape == (32, 32, 3) and masks.shape == (2, 32, 32)
        assert not ((masks[0] > 0.5) & (masks[1] > 0.5)).any()
        for mask, color in zip(masks, pair.colors):
            inside = image[mask > 0.99].astype(float)
            assert np.abs(inside.mean(0) - COLORS[color]).max() < 25
        firsts_left.add(bool(np.nonzero(masks[0])[1].mean() < np.nonzero(masks[1])[1].mean()))
    assert firsts_left == {True, False}  # the first-named object is not always on the same side


def test_captions_are_one_token_per_word_and_fit_the_context() -> None:
    tokenizer = build_tokenizer()
    pair = Pair("circle", "red", "house", "orange")
    assert pair_caption(pair) == "a red circle by an orange house"
    longest = pair_caption(pair, 1)
    assert longest == "a photograph of a red circle by an orange house"
    tokens = tokenizer.tokenize(longest)
    assert tokens == [w + "</w>" for w in longest.split()] and len(tokens) + 2 <= MAX_LENGTH


def test_bad_pairs_are_refused() -> None:
    with pytest.raises(ValueError, match="two different objects"):
        Pair("circle", "red", "circle", "blue")
    with pytest.raises(ValueError, match="two different objects"):
        Pair("circle", "red", "star", "red")
    with pytest.raises(ValueError, match="unknown object 'dog'"):
        Pair("dog", "red", "star", "blue")


def test_color_masks_find_each_rendered_object() -> None:
    rng = random.Random(1)
    values = []
    for _ in range(20):
        pair = random_pair(rng)
        image, masks = render_pair(pair)
        found = color_masks(image, pair.colors)
        values += [iou(f, m > 0.5) for f, m in zip(found, masks)]
        assert drawn(image, pair)
    assert min(values) > 0.6 and np.mean(values) > 0.85
    image, _ = render_pair(Pair("circle", "red", "star", "blue"))
    assert not drawn(image, Pair("circle", "green", "star", "yellow"))  # neither color is there


def test_pair_scores_tell_a_map_on_its_own_object_from_one_on_the_other() -> None:
    masks = np.zeros((2, 32, 32), bool)
    masks[0, 4:12, 4:12], masks[1, 20:28, 20:28] = True, True
    maps = [torch.from_numpy(m.astype(np.float32)) + 0.05 for m in masks]
    right = PairCase(Pair("circle", "red", "star", "blue"), "p", 0, True, masks, ({"l": maps[0]}, {"l": maps[1]}))
    swapped = PairCase(right.pair, "p", 1, True, masks, ({"l": maps[1]}, {"l": maps[0]}))
    undrawn = PairCase(right.pair, "p", 2, False, masks, ({"l": maps[1]}, {"l": maps[0]}))
    scores = score_pairs([right, swapped, undrawn])
    assert (scores.images, scores.kept) == (3, 2)
    assert scores.both_own.value == 0.5 and scores.own.n == 4
    assert scores.own.value == pytest.approx(0.5) and scores.other.value == pytest.approx(0.5)
    with pytest.raises(ValueError, match="none of 1 pair images"):
        score_pairs([undrawn])


def test_the_judge_refuses_pair_captions_and_says_how_to_read_them() -> None:
    from models.tiny.scenes import parse_caption

    with pytest.raises(ValueError, match="names two objects.*color_masks"):
        parse_caption(pair_caption(Pair("circle", "red", "star", "blue"), 2))
