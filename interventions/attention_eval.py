"""Cross-attention maps judged against the tiny world's ground truth: does a word's map sit on its object?

The world's captions do not say where the object goes, so a generated image's object is found in
the image itself: the world draws flat, saturated objects on gray backgrounds and its styles only
shade lightness, so `models.tiny.scenes.colored_mask` (chroma above a threshold, closed 3x3) finds
it; on renders, whose true masks are known (`object_mask`), that segmentation's IoU is measured
(`segmentation_iou`). Only images whose judge reading is right on every attribute the caption names
count. Each map is thresholded (`binarize`: Otsu by default) and compared with the object's mask:

- IoU of the object word's map with the mask, and of the color and style words' and the
  end-of-text token's maps beside it (CLIP is causal: EOS carries the whole caption);
- the same map against another image's mask (same count: a map that ignores where the object is
  scores as well there) and the mean map of all images against each mask (a fixed prior);
- whether the map's peak lies inside the mask;
- two copies of one object ("two red circles"): whether the map covers at least half of each copy;
- pairs of different objects ("a red circle by a blue square", `models.tiny.pairs`), each object
  found by its color: whether each object word's map overlaps its own object more than the other
  (`generate_pair_cases`, `score_pairs`). The judge reads one-object scenes only, so a pair counts
  when both its colors are drawn (`models.tiny.pairs.drawn`).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from interp import stats
from interp.model import Model
from interventions.attention_maps import attention_maps, binarize, normalise
from models.tiny import CAPTIONED, COLORS, OBJECTS, PLURALS, STYLES, Scene, caption, judge_images, templates_of
from models.tiny.pairs import PAIR_TEMPLATES, Pair, color_masks, drawn, pair_caption, random_pair
from models.tiny.scenes import colored_mask, object_mask, render
from models.tiny.tensors import as_uint8

ROLES = ("object", "color", "style", "eos")  # the caption's words, and its end-of-text token
MAP_SEED = 30_000  # scenes and seeds apart from training's and the other evaluations'


@dataclass
class MapCase:
    """One generated image: its scene, prompt and seed, whether the judge reads it right, the
    object's mask found in it, and per role its word's unnormalised map (H, W) from each layer."""

    scene: Scene
    prompt: str
    seed: int
    right: bool
    mask: np.ndarray
    layer_maps: dict[str, dict[str, torch.Tensor]]

    def heatmap(self, role: str, layers: Sequence[str] | None = None) -> torch.Tensor:
        """The role word's DAAM heatmap (H, W) over `layers` (default all captured)."""
        return summed(self.layer_maps[role], layers)


def summed(maps: dict[str, torch.Tensor], layers: Sequence[str] | None = None) -> torch.Tensor:
    """The DAAM heatmap (H, W) of one word's per-layer `maps` over `layers` (default all)."""
    return normalise(sum(maps[layer] for layer in (layers or maps)))


def map_scenes(count: int, n: int, seed: int = MAP_SEED) -> list[Scene]:
    """`n` random generic scenes with `count` objects, colors and styles uniform (layout seeds are
    irrelevant: the model places objects itself)."""
    rng = random.Random(seed + count)
    return [Scene(rng.choice(OBJECTS), rng.choice(list(COLORS)), rng.choice(STYLES), count) for _ in range(n)]


def role_words(scene: Scene) -> dict[str, str]:
    """The words of a scene's caption that name its object, color and (unless plain) style."""
    words = {"object": PLURALS[scene.object] if scene.count == 2 else scene.object, "color": scene.color}
    return words | ({"style": scene.style} if scene.style != "plain" else {})


def generate_cases(model: Model, scenes: Sequence[Scene], seeds: Sequence[int], steps: int = 25,
                   seed: int = MAP_SEED, map_steps: Sequence[int] | None = None) -> list[MapCase]:
    """Each scene captioned with a random template and generated at every seed, with its maps
    (summed over `map_steps`, default every step)."""
    rng = random.Random(seed)
    cases = []
    for scene in scenes:
        prompt = caption(scene, rng.randrange(len(templates_of(scene))))
        words: dict[str, str | int] = {**role_words(scene), "eos": len(model.tokens(prompt)) - 1}
        maps = attention_maps(model, prompt, list(words.values()), seeds=seeds, steps=steps)
        images = as_uint8(maps.images)
        readings = judge_images(images)
        for i, s in enumerate(seeds):
            right = all(readings[i][a] == scene.attributes()[a] for a in CAPTIONED)
            raw = {role: {layer: maps.layer_map(word, layer, map_steps)[i] for layer in maps.layers}
                   for role, word in words.items()}
            cases.append(MapCase(scene, prompt, int(s), right, colored_mask(images[i]), raw))
    return cases


@dataclass
class PairCase:
    """One generated two-object image: its pair, prompt and seed, whether both colors are drawn,
    each object's mask found by its color (2, H, W), and each object word's per-layer maps."""

    pair: Pair
    prompt: str
    seed: int
    right: bool
    masks: np.ndarray
    layer_maps: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]


def map_pairs(n: int, seed: int = MAP_SEED) -> list[Pair]:
    """`n` random pairs of different objects and colors."""
    rng = random.Random(seed + 3)
    return [random_pair(rng) for _ in range(n)]


def generate_pair_cases(model: Model, pairs: Sequence[Pair], seeds: Sequence[int], steps: int = 25,
                        seed: int = MAP_SEED) -> list[PairCase]:
    """Each pair captioned with a random template and generated at every seed, with both object
    words' maps."""
    rng = random.Random(seed)
    cases = []
    for pair in pairs:
        prompt = pair_caption(pair, rng.randrange(len(PAIR_TEMPLATES)))
        maps = attention_maps(model, prompt, list(pair.objects), seeds=seeds, steps=steps)
        images = as_uint8(maps.images)
        for i, s in enumerate(seeds):
            raw = tuple({layer: maps.layer_map(word, layer)[i] for layer in maps.layers} for word in pair.objects)
            cases.append(PairCase(pair, prompt, int(s), drawn(images[i], pair), color_masks(images[i], pair.colors), raw))
    return cases


@dataclass(frozen=True)
class PairScores:
    """Whether each object word's map sits on its own object of a pair rather than the other."""

    images: int  # generated
    kept: int  # both colors drawn
    own: stats.Interval  # IoU of a word's thresholded map with its own object's mask
    other: stats.Interval  # ... with the other object's mask
    own_mass: stats.Interval  # share of a word's map (its sum) inside its own object's mask
    other_mass: stats.Interval  # ... inside the other object's
    both_own: stats.Interval  # rate over images: each word's IoU with its own object > with the other

    def lines(self) -> list[str]:
        return [f"{self.kept} of {self.images} images with both objects' colors drawn",
                f"IoU(object word's map, its own object) {self.own}; with the other object {self.other}",
                f"share of the map's mass on its own object {self.own_mass}; on the other {self.other_mass}",
                f"each word's map overlaps its own object more than the other {self.both_own.percent()}"]


def score_pairs(cases: Sequence[PairCase], rule: str | float = "otsu") -> PairScores:
    """Judge the object words' maps of `cases` (every layer, thresholded with `rule`) against
    both objects' masks; only images with both colors drawn count."""
    kept = [c for c in cases if c.right]
    if not kept:
        raise ValueError(f"none of {len(cases)} pair images shows both its colors; nothing to judge")
    own, other, own_mass, other_mass, both = [], [], [], [], []
    for case in kept:
        heat = [summed(maps).numpy() for maps in case.layer_maps]
        found = [binarize(torch.from_numpy(h), rule).numpy() for h in heat]
        ious = np.array([[iou(f, m) for m in case.masks] for f in found])  # [word, object]
        mass = np.array([[(h * m).sum() / max(h.sum(), 1e-12) for m in case.masks] for h in heat])
        own += [ious[0, 0], ious[1, 1]]
        other += [ious[0, 1], ious[1, 0]]
        own_mass += [mass[0, 0], mass[1, 1]]
        other_mass += [mass[0, 1], mass[1, 0]]
        both.append(ious[0, 0] > ious[0, 1] and ious[1, 1] > ious[1, 0])
    return PairScores(len(cases), len(kept), *(stats.interval(np.array(v)) for v in (own, other, own_mass, other_mass)),
                      stats.wilson(int(sum(both)), len(both)))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (0 where both are empty)."""
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def instances(mask: np.ndarray) -> list[np.ndarray]:
    """The 4-connected components of a boolean mask, largest first."""
    seen = np.zeros_like(mask, dtype=bool)
    parts = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        part, stack = np.zeros_like(seen), [start]
        seen[start] = True
        while stack:
            y, x = stack.pop()
            part[y, x] = True
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        parts.append(part)
    return sorted(parts, key=lambda p: -p.sum())


@dataclass(frozen=True)
class MapScores:
    """What the judged maps of one group of images show, each with its interval and n; the
    controls, peak and copies are about the map of `role` (the object word by default)."""

    images: int  # generated
    kept: int  # judged right and with an object found
    role: str  # whose map the rows below judge
    iou: dict[str, stats.Interval]  # role -> IoU of that token's map with the object's mask
    other_image: stats.Interval  # IoU of the map with another image's mask
    prior: stats.Interval  # IoU of the mean map (over the group) with each mask
    own_beats_other: stats.Interval  # rate: IoU with its own mask > with the other image's
    beats_style: stats.Interval | None  # rate (styled images): the map's IoU > the style word's
    peak_inside: stats.Interval  # rate: the map's maximum lies inside the mask
    both_found: stats.Interval | None  # rate (two-object images): the map covers >= half of each copy

    def lines(self) -> list[str]:
        out = [f"{self.kept} of {self.images} images judged right, object found"]
        out += [f"IoU({role} map, object mask) {value}" for role, value in self.iou.items()]
        out += [f"{self.role} map: control IoU with another image's mask {self.other_image}",
                f"{self.role} map: control IoU of the mean map of all images with each mask {self.prior}",
                f"{self.role} map: own mask beats the other image's {self.own_beats_other.percent()}",
                *([f"{self.role} map: IoU beats the style word's {self.beats_style.percent()}"]
                  if self.beats_style and self.role != "style" else []),
                f"{self.role} map: peak inside the mask {self.peak_inside.percent()}"]
        if self.both_found is not None:
            out.append(f"{self.role} map: covers >= half of each of the two copies {self.both_found.percent()}")
        return out


def score_cases(cases: Sequence[MapCase], rule: str | float = "otsu", layers: Sequence[str] | None = None,
                role: str = "object") -> MapScores:
    """Judge the maps of `cases` (summed over `layers`, default all) with threshold `rule` (see
    `binarize`); `role`'s map gets the controls (image i against the next kept image's mask), the
    peak and the two-copy check."""
    kept = [c for c in cases if c.right and c.mask.any()]
    if len(kept) < 2:
        raise ValueError(f"only {len(kept)} of {len(cases)} images are judged right with an object found; need 2")
    masks = [c.mask for c in kept]
    heat = [{r: c.heatmap(r, layers) for r in c.layer_maps} for c in kept]
    found = [{r: binarize(h[r], rule).numpy() for r in h} for h in heat]
    scores = {r: stats.interval(np.array([iou(f[r], m) for f, m in zip(found, masks) if r in f]))
              for r in ROLES if any(r in f for f in found)}
    own = np.array([iou(f[role], m) for f, m in zip(found, masks)])
    other = np.array([iou(f[role], masks[(i + 1) % len(masks)]) for i, f in enumerate(found)])
    prior = binarize(torch.stack([h[role] for h in heat]).mean(0), rule).numpy()
    peaks = [c.mask.flat[int(h[role].argmax())] for c, h in zip(kept, heat)]
    styled = [iou(f[role], m) > iou(f["style"], m) for f, m in zip(found, masks) if "style" in f]
    two = [(f[role], instances(c.mask)) for f, c in zip(found, kept) if c.scene.count == 2]
    both = [len(parts) >= 2 and all(f[p].mean() >= 0.5 for p in parts[:2]) for f, parts in two]
    return MapScores(
        len(cases), len(kept), role, scores, stats.interval(other),
        stats.interval(np.array([iou(prior, m) for m in masks])), stats.wilson(int((own > other).sum()), len(own)),
        stats.wilson(int(sum(styled)), len(styled)) if styled else None, stats.wilson(int(sum(peaks)), len(peaks)),
        stats.wilson(int(sum(both)), len(both)) if both else None,
    )


def segmentation_iou(per_style: int = 100, seed: int = MAP_SEED) -> dict[str, stats.Interval]:
    """Per style, IoU of `colored_mask` on renders with their true masks (`object_mask` > 0.5):
    how well the segmentation that stands in for truth on generated images finds the object."""
    rng = random.Random(seed)
    out = {}
    for style in STYLES:
        values = []
        for _ in range(per_style):
            scene = Scene(rng.choice(OBJECTS), rng.choice(list(COLORS)), style, rng.choice((1, 2)),
                          rng.randrange(2**31))
            values.append(iou(colored_mask(render(scene)), object_mask(scene) > 0.5))
        out[style] = stats.interval(np.array(values))
    return out
