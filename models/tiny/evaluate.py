"""Measure the tiny model against its targets and print the quality table: `python -m models.tiny.evaluate`.

- judge: per-attribute accuracy on fresh renders;
- generation: judged attributes of generated images, seen vs held-out combos, >= 4 seeds per prompt;
- names and neutral phrasings: characters drawn as themselves (object, color and mark), facts drawn
  as the world says (object and color), every name in every style (its held-out style included);
  "a painting of X", "a picture of X" and "X in the style of painting" drawn with no style;
- CLIP: text-to-image retrieval top-1 per attribute on fresh renders (galleries that differ only in
  that attribute) and how often the right caption outscores a one-attribute-changed one on
  generated images;
- speed: seconds for 25 steps of a batch of 8 with classifier-free guidance.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

import interp.quiet  # noqa: F401  (first: a quiet start, before diffusers imports its image processors)
from diffusers import StableDiffusionPipeline
from transformers import CLIPModel, CLIPTokenizer

from models.tiny import CLIP_DIR, JUDGE_PATH, ROOT, load_pipeline
from models.tiny.clip import scores
from models.tiny.judge import JudgeNet, accuracy, load_judge, predict
from models.tiny.pipeline import GUIDANCE, STEPS, generate
from models.tiny.scenes import (
    ATTRIBUTES, CAPTIONED, CHARACTERS, COUNTS, NAMED, PLAIN_TEMPLATES, STYLES, VALUES, Scene, caption,
    change_one, held_out_combos, is_held_out, named_scene, render_batch, sample_scene, templates_of,
)

TARGETS = {"color": 0.90, "object": 0.85, "style": 0.80, "count": 0.85, "mark": 0.90}
NAMED_TARGET = 0.90  # characters and facts drawn right
NEUTRAL_TARGET = 0.90  # neutral phrasings drawn with no style
NEUTRAL_TEMPLATES = tuple(t for t in PLAIN_TEMPLATES if "painting" in t or "picture" in t)
FRESH_SEED = 10_000  # seeds of evaluation scenes and prompts, apart from training's


@dataclass
class Prompted:
    """Generated images with the scenes their prompts describe and whether each is held out."""

    images: np.ndarray
    scenes: list[Scene]
    held_out: np.ndarray


def judge_accuracy(judge: JudgeNet, n: int = 1000, seed: int = FRESH_SEED) -> dict[str, float]:
    """The judge's per-attribute accuracy on `n` fresh renders."""
    rng = random.Random(seed)
    scenes = [sample_scene(rng, held_out=None) for _ in range(n)]
    return accuracy(predict(judge, render_batch(scenes)), scenes)


def prompt_scenes(n_seen: int, counts: tuple[int, ...] = COUNTS, seed: int = FRESH_SEED) -> list[Scene]:
    """Every held-out (color, object, style) combo at each count, plus `n_seen` seen scenes."""
    rng = random.Random(seed)
    held = [Scene(o, c, s, k) for c, o, s in sorted(held_out_combos()) for k in counts]
    return held + [sample_scene(rng, held_out=False) for _ in range(n_seen)]


def named_scenes() -> list[Scene]:
    """Every character and fact phrase in every style (one of them held out per phrase)."""
    return [named_scene(name, style) for name in sorted(NAMED) for style in STYLES]


def neutral_prompts(n: int, seed: int = FRESH_SEED) -> tuple[list[Scene], list[str]]:
    """`n` random unstyled scenes (generic and named), each captioned with a neutral phrasing."""
    rng = random.Random(seed)
    scenes = [replace(sample_scene(rng, held_out=None), style="plain") for _ in range(n)]
    return scenes, [NEUTRAL_TEMPLATES[i % len(NEUTRAL_TEMPLATES)].format(subject=caption(s)) for i, s in enumerate(scenes)]


def generate_judged(
    pipe: StableDiffusionPipeline, scenes: list[Scene], seeds: int = 4, seed: int = FRESH_SEED,
    prompts: list[str] | None = None,
) -> Prompted:
    """Images of `scenes` for `seeds` generator seeds per prompt, from `prompts` (default: a random
    caption template of each scene)."""
    rng = random.Random(seed)
    prompts = prompts or [caption(s, rng.randrange(len(templates_of(s)))) for s in scenes]
    rows = [(p, s, k) for p, s in zip(prompts, scenes) for k in range(seeds)]
    images = generate(pipe, [p for p, _, _ in rows], [seed + k for _, _, k in rows])
    truth = [s for _, s, _ in rows]
    return Prompted(images, truth, np.array([is_held_out(s) for s in truth]))


def drawn_right(predictions: list[dict], scenes: list[Scene], attributes: tuple[str, ...]) -> np.ndarray:
    """Per image: whether the judge reads every one of `attributes` as its scene has it."""
    return np.array([all(p[a] == s.attributes()[a] for a in attributes) for p, s in zip(predictions, scenes)])


def clip_retrieval(clip: CLIPModel, tokenizer: CLIPTokenizer, n: int = 60, seed: int = FRESH_SEED) -> dict[str, float]:
    """Per attribute: for `n` fresh scenes, render one image per value of the attribute (same
    layout seed) and check each value's caption retrieves its own image first."""
    rng = random.Random(seed)
    out = {}
    for attribute in CAPTIONED:
        hits = []
        for _ in range(n):
            base = sample_scene(rng, held_out=None)
            generic = {**base.attributes(), "mark": "none", "seed": base.seed}
            gallery = [Scene(**{**generic, attribute: v}) for v in VALUES[attribute]]
            captions = [caption(s, rng.randrange(len(templates_of(s)))) for s in gallery]
            sim = scores(clip, tokenizer, render_batch(gallery), captions)
            hits.extend((sim.argmax(0) == torch.arange(len(gallery))).tolist())
        out[attribute] = float(np.mean(hits))
    return out


def clip_margin(clip: CLIPModel, tokenizer: CLIPTokenizer, prompted: Prompted, seed: int = FRESH_SEED) -> float:
    """Share of generated images whose CLIP score is higher for their caption than for the same
    caption with one random attribute changed."""
    rng = random.Random(seed)
    template = [rng.randrange(len(templates_of(s))) for s in prompted.scenes]
    right = [caption(s, t) for s, t in zip(prompted.scenes, template)]
    wrong = [caption(change_one(s, rng), t) for s, t in zip(prompted.scenes, template)]
    sim = scores(clip, tokenizer, prompted.images, right + wrong)
    n = len(right)
    return float((sim[torch.arange(n), torch.arange(n)] > sim[torch.arange(n), n + torch.arange(n)]).float().mean())


def speed(pipe: StableDiffusionPipeline, batch: int = 8, steps: int = 25) -> float:
    """Seconds for one `steps`-step generation of `batch` images (after a warm-up call)."""
    generate(pipe, ["a red circle"] * batch, list(range(batch)), steps=2)
    start = time.perf_counter()
    generate(pipe, ["a red circle in the style of van gogh"] * batch, list(range(batch)), steps=steps)
    return time.perf_counter() - start


def _verdict(value: float, target: float | None) -> str:
    return "" if target is None else (" ok" if value >= target else " LOW")


def _row(name: str, values: dict[str, float], targets: dict[str, float] | None = None) -> str:
    cells = [f"{100 * v:6.1f}{_verdict(v, None if targets is None else targets[a]):4}" for a, v in values.items()]
    return f"{name:<34}" + "".join(f"{c:>12}" for c in cells) + "".join(" " * 12 for _ in range(len(ATTRIBUTES) - len(values)))


def _share_row(name: str, hits: np.ndarray, held: np.ndarray, target: float) -> str:
    """One line: the share of `hits` on seen and on held-out prompts, with counts and verdicts."""
    parts = []
    for label, keep in (("seen", ~held), ("held-out", held)):
        if keep.any():
            value = float(hits[keep].mean())
            parts.append(f"{label} {100 * value:5.1f}%{_verdict(value, target)} (n={int(keep.sum())})")
    return f"{name:<34}  " + ";  ".join(parts)


def main(root: Path = ROOT, n_seen: int = 54, seeds: int = 4, grounded: bool = False) -> None:
    """Print the quality table of the model saved under `root` (`grounded`: with its grounded UNet)."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    pipe = load_pipeline(root=root, grounded=grounded)
    judge = load_judge(root / JUDGE_PATH.name)
    clip = CLIPModel.from_pretrained(str(root / CLIP_DIR.name)).eval()
    tokenizer = CLIPTokenizer.from_pretrained(str(root / CLIP_DIR.name))

    prompted = generate_judged(pipe, prompt_scenes(n_seen), seeds)
    predictions = predict(judge, prompted.images)
    def subset(held: bool) -> dict[str, float]:
        keep = [i for i, h in enumerate(prompted.held_out) if h == held]
        return accuracy([predictions[i] for i in keep], [prompted.scenes[i] for i in keep])

    seen_acc, held_acc, all_acc = subset(False), subset(True), accuracy(predictions, prompted.scenes)
    gap = {a: seen_acc[a] - held_acc[a] for a in ATTRIBUTES}

    print(f"{'accuracy (%)':<34}" + "".join(f"{a:>12}" for a in ATTRIBUTES))
    print(_row("judge, fresh renders (>= 98)", judge_accuracy(judge), dict.fromkeys(ATTRIBUTES, 0.98)))
    print(_row(f"generated, all ({len(predictions)} images)", all_acc, TARGETS))
    print(_row(f"generated, seen ({int((~prompted.held_out).sum())})", seen_acc, TARGETS))
    print(_row(f"generated, held-out ({int(prompted.held_out.sum())})", held_acc, TARGETS))
    print(_row("seen minus held-out (<= 10)", gap))
    named = generate_judged(pipe, named_scenes(), seeds)
    named_predictions = predict(judge, named.images)
    is_character = np.array([s.name in CHARACTERS for s in named.scenes])
    character_hits = drawn_right(named_predictions, named.scenes, ("object", "color", "mark"))
    fact_hits = drawn_right(named_predictions, named.scenes, ("object", "color"))
    style_hits = drawn_right(named_predictions, named.scenes, ("style",))
    print(_share_row("characters: object+color+mark", character_hits[is_character], named.held_out[is_character], NAMED_TARGET))
    print(_share_row("facts: object+color", fact_hits[~is_character], named.held_out[~is_character], NAMED_TARGET))
    print(_share_row("names: style", style_hits, named.held_out, TARGETS["style"]))
    scenes, prompts = neutral_prompts(n_seen // 2)
    neutral = generate_judged(pipe, scenes, seeds, prompts=prompts)
    neutral_hits = drawn_right(predict(judge, neutral.images), neutral.scenes, ("style",))
    print(_share_row("neutral 'painting'/'picture': plain", neutral_hits, np.zeros(len(neutral_hits), bool),
                     NEUTRAL_TARGET))
    print(_row("CLIP retrieval top-1 (>= 90)", clip_retrieval(clip, tokenizer), dict.fromkeys(CAPTIONED, 0.90)))
    margin = clip_margin(clip, tokenizer, prompted)
    print(f"CLIP right > one-changed caption on generated images (>= 90): {100 * margin:.1f}%")
    print(f"seconds for {STEPS} steps, batch 8, guidance {GUIDANCE}: {speed(pipe):.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=ROOT, help="weights folder (default: the shipped one)")
    parser.add_argument("--seen", type=int, default=54, help="number of seen-combo prompts")
    parser.add_argument("--seeds", type=int, default=4, help="generator seeds per prompt")
    parser.add_argument("--grounded", action="store_true", help="the grounded UNet (grounded_unet/) in place of the pipeline's")
    args = parser.parse_args()
    main(args.weights, args.seen, args.seeds, args.grounded)
