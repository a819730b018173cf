"""CLIPScore on a tiny random CLIP saved to a folder with an offline tokenizer."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPConfig, CLIPModel

import models
from interp.errors import BundledModelMissingError, ScoringInputError
from interp.scoring import CLIP_MEAN, CLIPScore
from models.vocab import build_clip_tokenizer

WORDS = "a photo painting of cat dog red blue in the style van gogh".split()
TEXTS = ["a photo of a cat", "a red dog", "a painting in the style of van gogh", "blue", "a dog"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-clip")
    tokenizer = build_clip_tokenizer(WORDS, max_length=16, save_dir=folder)
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=16,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def scorer(clip_dir):
    return CLIPScore.from_pretrained(clip_dir, batch_size=2)


def _pixels(n: int, height: int = 40, width: int = 48) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(n, height, width, 3), dtype=np.uint8)


def test_scores_have_the_right_shapes_and_range(scorer):
    images = torch.from_numpy(_pixels(5)).permute(0, 3, 1, 2).float() / 255
    scores = scorer(images, TEXTS)
    grid = scorer.matrix(images, TEXTS[:3])
    assert scores.shape == (5,) and grid.shape == (5, 3)
    assert scores.dtype == torch.float32
    assert (scores.abs() <= 1 + 1e-6).all() and (grid.abs() <= 1 + 1e-6).all()
    torch.testing.assert_close(torch.diagonal(scorer.matrix(images, TEXTS)), scores)


def test_batched_equals_unbatched(clip_dir, scorer):
    pixels = _pixels(5)
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    whole = CLIPScore.from_pretrained(clip_dir, batch_size=64)
    expected = whole(images, TEXTS)
    torch.testing.assert_close(scorer(images, TEXTS), expected, rtol=0, atol=1e-5)
    # Mixed sizes and kinds regroup into batches of 2 across inputs.
    mixed = [images[0], Image.fromarray(pixels[1]), images[2:4], pixels[4] / 255]
    torch.testing.assert_close(scorer(mixed, TEXTS), expected, rtol=0, atol=1e-5)


def test_pil_numpy_and_tensor_inputs_score_the_same(scorer):
    pixels = _pixels(3)
    tensor = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    pil = [Image.fromarray(p) for p in pixels]
    expected = scorer(tensor, TEXTS[:3])
    torch.testing.assert_close(scorer(pil, TEXTS[:3]), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(scorer(pixels.astype(np.float32) / 255, TEXTS[:3]), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(scorer(pil[0], TEXTS[0]), expected[:1], rtol=0, atol=1e-6)
    torch.testing.assert_close(scorer(pixels, TEXTS[:3]), expected, rtol=0, atol=1e-6)  # uint8


def test_normalisation_comes_from_the_checkpoint_when_present(clip_dir, tmp_path):
    assert CLIPScore.from_pretrained(clip_dir).mean.flatten().tolist() == pytest.approx(CLIP_MEAN)
    folder = tmp_path / "with-processor"
    CLIPModel.from_pretrained(clip_dir).save_pretrained(folder)
    build_clip_tokenizer(WORDS, max_length=16, save_dir=folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.25] * 3}))
    scorer = CLIPScore.from_pretrained(folder)
    assert scorer.mean.flatten().tolist() == [0.5] * 3 and scorer.std.flatten().tolist() == [0.25] * 3


def test_bad_inputs_are_clear_errors(scorer):
    images = torch.rand(2, 3, 32, 32)
    with pytest.raises(ScoringInputError, match="2 images but 3 texts"):
        scorer(images, TEXTS[:3])
    with pytest.raises(ScoringInputError, match=r"\[0, 1\].*\(x \+ 1\) / 2"):
        scorer(images * 2 - 1, TEXTS[:2])
    with pytest.raises(ScoringInputError, match=r"floats in \[0, 1\] or uint8, got torch.int64"):
        scorer((images * 255).long(), TEXTS[:2])
    with pytest.raises(ScoringInputError, match=r"\(N, 3, H, W\)"):
        scorer(torch.rand(2, 4, 32, 32), TEXTS[:2])


def test_default_is_the_bundled_tiny_clip_loaded_lazily(clip_dir, monkeypatch):
    fake = types.ModuleType("models.tiny")
    fake.clip_dir = lambda: clip_dir
    monkeypatch.setitem(sys.modules, "models.tiny", fake)
    monkeypatch.setattr(models, "tiny", fake, raising=False)
    assert CLIPScore.from_pretrained().image_size == 32


def test_missing_bundled_model_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "models.tiny", None)
    monkeypatch.delattr(models, "tiny", raising=False)
    with pytest.raises(BundledModelMissingError, match="pass a CLIP hub id or folder"):
        CLIPScore.from_pretrained()
    unbuilt = types.ModuleType("models.tiny")
    unbuilt.clip_dir = lambda: tmp_path / "not-built"
    monkeypatch.setitem(sys.modules, "models.tiny", unbuilt)
    monkeypatch.setattr(models, "tiny", unbuilt, raising=False)
    with pytest.raises(BundledModelMissingError, match="not built yet.*models.tiny.train"):
        CLIPScore.from_pretrained()
