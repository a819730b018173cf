"""Two-object scenes of the tiny world: two different objects of different colors, side by side.

The world's other scenes draw one object (or two copies of it), so nothing in them makes a model
tie a word to a place: the end-of-text token carries the whole caption. A pair's caption names both
objects, "a red circle by a blue square", and which of the two places each gets is drawn at random,
so a UNet trained on pairs must read each object word where it draws that object. Cross-attention
maps are judged on them (`interventions.attention_eval`).

Pairs are plain (no style) and only the UNet trains on them; the judge reads one-object scenes, so
a generated pair's objects are found by their colors instead (`color_masks`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from models.tiny.scenes import COLORS, OBJECTS, PLAIN_TEMPLATES, colored_mask, layout, shape_mask, subject

PAIR_TEMPLATES: tuple[str, ...] = PLAIN_TEMPLATES[:4]  # not "... in the style of painting": too long
MIN_AREA = 16  # pixels of its color a generated object needs to count as drawn (a pair's cover 60-130)


@dataclass(frozen=True)
class Pair:
    """Two objects, each with its color, named in this order; `seed` draws the layout and which
    object takes which place."""

    first: str
    first_color: str
    second: str
    second_color: str
    seed: int = 0

    def __post_init__(self) -> None:
        for obj in (self.first, self.second):
            if obj not in OBJECTS:
                raise ValueError(f"unknown object {obj!r}; the tiny world draws {OBJECTS}")
        for color in (self.first_color, self.second_color):
            if color not in COLORS:
                raise ValueError(f"unknown color {color!r}; the tiny world has {tuple(COLORS)}")
        if self.first == self.second or self.first_color == self.second_color:
            raise ValueError(f"a pair needs two different objects of two different colors, got {self}")

    @property
    def objects(self) -> tuple[str, str]:
        return self.first, self.second

    @property
    def colors(self) -> tuple[str, str]:
        return self.first_color, self.second_color


def random_pair(rng: random.Random) -> Pair:
    """A pair of different objects and colors, uniform over the world's."""
    first, second = rng.sample(OBJECTS, 2)
    first_color, second_color = rng.sample(list(COLORS), 2)
    return Pair(first, first_color, second, second_color, rng.randrange(2**31))


def pair_caption(pair: Pair, template: int = 0) -> str:
    """The pair's caption with template number `template`, e.g. 'a picture of a red circle by a
    blue square'."""
    text = f"{subject(pair.first_color, pair.first, 1)} by {subject(pair.second_color, pair.second, 1)}"
    return PAIR_TEMPLATES[template % len(PAIR_TEMPLATES)].format(subject=text)


def random_pair_caption(pair: Pair, rng: random.Random) -> str:
    """A caption of `pair` with a random template, for training."""
    return pair_caption(pair, rng.randrange(len(PAIR_TEMPLATES)))


def render_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """The pair as an RGB uint8 array (SIZE, SIZE, 3) and each object's coverage in [0, 1],
    (2, SIZE, SIZE) in the order named; same pair, same pixels."""
    rng = np.random.default_rng(pair.seed)
    background = rng.uniform(175, 225) + rng.uniform(-8, 8, size=3)
    colors = [np.clip(np.array(COLORS[c], np.float32) + rng.uniform(-12, 12, size=3), 0, 255) for c in pair.colors]
    centers, radius = layout(2, rng)
    if rng.random() < 0.5:
        centers = centers[::-1]
    masks = np.stack([shape_mask(obj, [center], radius) for obj, center in zip(pair.objects, centers)])
    image = np.full((*masks.shape[1:], 3), background, np.float32)
    for alpha, color in zip(masks, colors):
        image = image * (1 - alpha[..., None]) + color * alpha[..., None]
    image += rng.normal(0, 3, size=image.shape)
    return np.clip(image, 0, 255).round().astype(np.uint8), masks


def color_masks(image: np.ndarray, colors: tuple[str, ...]) -> np.ndarray:
    """Where an image (uint8 (H, W, 3)) shows each of `colors`: its colored pixels
    (`colored_mask`) whose nearest color of the world, in RGB, is that one; boolean
    (len(colors), H, W). A pair's objects have different colors, so this finds each in a
    generated image."""
    references = np.array(list(COLORS.values()), np.float32)
    distance = np.linalg.norm(np.asarray(image, np.float32)[None] - references[:, None, None], axis=-1)
    nearest, names = distance.argmin(0), list(COLORS)
    return np.stack([colored_mask(image) & (nearest == names.index(c)) for c in colors])


def drawn(image: np.ndarray, pair: Pair, min_area: int = MIN_AREA) -> bool:
    """Whether a generated image shows both of the pair's colors, each on at least `min_area`
    pixels: the pair's check in place of the judge."""
    return bool((color_masks(image, pair.colors).sum(axis=(1, 2)) >= min_area).all())
