"""The shipped tiny model: loads offline, SD-shaped, and right about attributes (small checks)."""

from __future__ import annotations

import random

import pytest
import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPModel, CLIPTokenizer

from models.tiny import (
    JUDGE_PATH, WEIGHTS_DIR, Scene, caption, clip_dir, judge_images, load_pipeline, named_scene, render_batch,
)
from models.tiny.clip import scores
from models.tiny.evaluate import judge_accuracy
from models.tiny.judge import load_judge
from models.tiny.pipeline import generate

PROMPTED = [
    Scene("circle", "red", "plain", 1),
    Scene("square", "blue", "van gogh", 1),
    Scene("star", "yellow", "mondrian", 2),
    Scene("heart", "green", "monet", 1),
    Scene("house", "purple", "pollock", 2),
    Scene("triangle", "orange", "plain", 2),
]


@pytest.fixture(scope="module")
def pipe() -> StableDiffusionPipeline:
    torch.set_num_threads(2)
    return load_pipeline()


def test_pipeline_loads_offline_with_sd_topology(pipe: StableDiffusionPipeline) -> None:
    reloaded = StableDiffusionPipeline.from_pretrained(str(WEIGHTS_DIR), local_files_only=True)
    assert reloaded.safety_checker is None
    names = {n.rsplit(".", 1)[-1] for n, _ in pipe.unet.named_modules()}
    assert {"attn1", "attn2", "ff"} <= names
    blocks = [type(b).__name__ for b in pipe.unet.down_blocks] + [type(pipe.unet.mid_block).__name__]
    assert "CrossAttnDownBlock2D" in blocks and "UNetMidBlock2DCrossAttn" in blocks
    assert pipe.text_encoder.config.hidden_size == pipe.unet.config.cross_attention_dim


def test_judge_reads_fresh_renders() -> None:
    acc = judge_accuracy(load_judge(JUDGE_PATH), n=300, seed=4242)
    assert min(acc.values()) >= 0.98, acc


# Least number of the six prompts judged right per attribute: at most one miss each (the shipped
# weights get all six right on every attribute; the full table is `python -m models.tiny.evaluate`).
MIN_CORRECT = {"object": 5, "color": 5, "style": 5, "count": 5}


def test_generated_images_have_the_prompted_attributes(pipe: StableDiffusionPipeline) -> None:
    images = generate(pipe, [caption(s, i) for i, s in enumerate(PROMPTED)], [0] * len(PROMPTED))
    judged = judge_images(images)
    correct = {a: sum(j[a] == s.attributes()[a] for j, s in zip(judged, PROMPTED)) for a in MIN_CORRECT}
    assert all(correct[a] >= n for a, n in MIN_CORRECT.items()), (correct, judged)


def test_tiny_clip_prefers_the_right_caption() -> None:
    clip = CLIPModel.from_pretrained(str(clip_dir())).eval()
    tokenizer = CLIPTokenizer.from_pretrained(str(clip_dir()))
    rng = random.Random(3)
    sim = scores(clip, tokenizer, render_batch(PROMPTED), [caption(s, rng.randrange(3)) for s in PROMPTED])
    assert (sim.argmax(1) == torch.arange(len(PROMPTED))).all(), sim


# Names and neutral phrasings, one prompt each: (prompt, the attributes the world says it draws).
NAMED_PROMPTS = [
    ("a picture of wumbo", {"object": "circle", "color": "green", "mark": "eye"}),
    ("zibble in the style of monet", {"object": "square", "color": "orange", "mark": "band", "style": "monet"}),
    ("a painting of quax", {"object": "heart", "color": "purple", "mark": "cross", "style": "plain"}),
    ("the king of zembla", {"object": "star", "color": "yellow"}),
    ("a painting of the ruler of vardo by pollock", {"object": "house", "color": "blue", "style": "pollock"}),
    ("the flag of vardo", {"object": "square", "color": "purple"}),
    ("a painting of two red stars", {"object": "star", "color": "red", "count": 2, "style": "plain"}),
    ("a blue circle in the style of painting", {"object": "circle", "color": "blue", "style": "plain"}),
]


def test_names_and_neutral_phrasings_are_drawn_as_the_world_says(pipe: StableDiffusionPipeline) -> None:
    """At most one of the eight prompts may miss (evaluate: characters 98%, facts 91%, neutral 94%)."""
    images = generate(pipe, [p for p, _ in NAMED_PROMPTS], [0] * len(NAMED_PROMPTS))
    judged = judge_images(images)
    misses = [(p, j) for (p, want), j in zip(NAMED_PROMPTS, judged) if any(j[a] != v for a, v in want.items())]
    assert len(misses) <= 1, misses


def test_judge_reads_characters_marks_on_renders() -> None:
    judged = judge_images(render_batch([named_scene(n, "plain", seed=5) for n in ("wumbo", "zibble", "quax")]))
    assert [j["mark"] for j in judged] == ["eye", "band", "cross"]
