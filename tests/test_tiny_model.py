"""The shipped tiny model: loads offline, SD-shaped, and right about attributes (small checks)."""

from __future__ import annotations

import random

import pytest
import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPModel, CLIPTokenizer

from models.tiny import (
    JUDGE_PATH, WEIGHTS_DIR, Scene, caption, clip_dir, judge_images, load_pipeline, render_batch,
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
