"""The tiny CLIP: a transformers `CLIPModel` trained contrastively on scenes.

Its text tower is the diffusion model's text encoder (as in Stable Diffusion) and the whole model is
the tiny world's CLIP-score model. Besides in-batch negatives, every image also sees a caption with
one attribute changed, so scores separate near-miss captions.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTextModel, CLIPTokenizer

from models.tiny.scenes import SIZE, Scene, change_one, is_held_out, random_caption, render_batch
from models.tiny.tensors import CLIP_MEAN, CLIP_STD, to_clip_pixels
from models.tiny.tokenizer import MAX_LENGTH
from models.tiny.training import optimize

WIDTH = 64  # text hidden size = the UNet's cross_attention_dim


def build_clip(tokenizer: CLIPTokenizer) -> CLIPModel:
    """A small CLIP: 3-layer text and vision transformers, 64-wide (4x4 patches see shapes)."""
    tower = dict(hidden_size=WIDTH, intermediate_size=4 * WIDTH, num_hidden_layers=3, num_attention_heads=4)
    config = CLIPConfig(
        text_config=dict(
            tower, vocab_size=len(tokenizer), max_position_embeddings=MAX_LENGTH,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(tower, image_size=SIZE, patch_size=4, num_channels=3),
        projection_dim=WIDTH,
    )
    return CLIPModel(config)


def build_processor(tokenizer: CLIPTokenizer) -> CLIPProcessor:
    """The processor saved with the CLIP: 32 px images, OpenAI normalization, the tiny tokenizer."""
    images = CLIPImageProcessorPil(
        size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE},
        image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD),
    )
    return CLIPProcessor(image_processor=images, tokenizer=tokenizer)


@lru_cache(maxsize=None)
def _ids(tokenizer: CLIPTokenizer, caption: str) -> tuple[int, ...]:
    """Memoized token ids of one caption (the slow Python BPE would dominate training steps)."""
    return tuple(tokenizer(caption, padding="max_length", max_length=MAX_LENGTH, truncation=True).input_ids)


def token_ids(tokenizer: CLIPTokenizer, captions: Sequence[str]) -> torch.Tensor:
    """Padded input ids (N, MAX_LENGTH), as the pipeline tokenizes prompts."""
    return torch.tensor([_ids(tokenizer, c) for c in captions])


def similarities(clip: CLIPModel, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Cosine similarities (images, captions) of the CLIP's projected image and text features."""
    img = F.normalize(clip.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)
    txt = F.normalize(clip.get_text_features(input_ids=input_ids).pooler_output, dim=-1)
    return img @ txt.T


def contrastive_loss(clip: CLIPModel, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric loss where image i matches caption i; captions past the last image are extra
    negatives for every image (image-to-text side only)."""
    logits = clip.logit_scale.exp().clamp(max=100) * similarities(clip, pixel_values, input_ids)
    targets = torch.arange(len(logits))
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits[:, : len(logits)].T, targets)) / 2


def train_clip(
    images: np.ndarray, scenes: Sequence[Scene], tokenizer: CLIPTokenizer, steps: int, batch: int = 256,
    seed: int = 0,
) -> CLIPModel:
    """Contrastive training of both towers together on uint8 renders (N, H, W, 3) of `scenes`: the
    text tower learns from a vision tower that sees shapes, so object words separate too."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = build_clip(tokenizer)
    pixels = to_clip_pixels(images)

    def loss_at(step: int) -> torch.Tensor:
        idx = [rng.randrange(len(scenes)) for _ in range(batch)]
        picked = [scenes[i] for i in idx]
        captions = [random_caption(s, rng) for s in picked] + [random_caption(change_one(s, rng), rng) for s in picked]
        return contrastive_loss(model, pixels[idx], token_ids(tokenizer, captions))

    optimize(model.parameters(), loss_at, steps, lr=1e-3, desc="clip", weight_decay=0.01)
    return model.eval().requires_grad_(False)


def seen_twins(scenes: Sequence[Scene], rng: random.Random) -> list[Scene]:
    """Each scene with one random attribute changed (same layout seed), redrawn until the twin's
    combination is not held out, so the held-out list stays unseen."""
    twins = []
    for s in scenes:
        twin = change_one(s, rng)
        while is_held_out(twin):
            twin = change_one(s, rng)
        twins.append(twin)
    return twins


def tune_vision(
    clip: CLIPModel, images: np.ndarray, scenes: Sequence[Scene], tokenizer: CLIPTokenizer, steps: int,
    batch: int = 128, seed: int = 1,
) -> CLIPModel:
    """Go on training the vision tower on uint8 renders (N, H, W, 3) of seen `scenes`, each batch
    image next to its twin with one attribute changed, so near-miss images separate, as retrieval
    galleries ask. The twins are rendered once, up front (rendering would cost 40% of every step).
    The text tower stays frozen (it is the diffusion model's text encoder); its projection, which
    the pipeline does not use, trains: the frozen tower's object captions are close together
    (cosine 0.86-0.94), and a free projection can pull them apart."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    twins = seen_twins(scenes, rng)
    pixels = to_clip_pixels(np.concatenate([images, render_batch(twins)]))
    pool = list(scenes) + twins
    clip.requires_grad_(True)
    clip.text_model.requires_grad_(False)
    clip.train()

    def loss_at(step: int) -> torch.Tensor:
        idx = [rng.randrange(len(scenes)) for _ in range(batch)]
        idx += [i + len(scenes) for i in idx]
        ids = token_ids(tokenizer, [random_caption(pool[i], rng) for i in idx])
        return contrastive_loss(clip, pixels[idx], ids)

    optimize(clip.parameters(), loss_at, steps, lr=1e-3, desc="clip vision", weight_decay=0.01)
    return clip.eval().requires_grad_(False)


def text_encoder_of(clip: CLIPModel) -> CLIPTextModel:
    """A standalone `CLIPTextModel` holding the CLIP's text tower weights (the pipeline's encoder)."""
    encoder = CLIPTextModel(clip.config.text_config)
    encoder.load_state_dict(clip.text_model.state_dict())
    return encoder.eval().requires_grad_(False)


def save_clip(clip: CLIPModel, tokenizer: CLIPTokenizer, folder: Path) -> None:
    """Save model, processor and tokenizer so `CLIPModel/CLIPProcessor.from_pretrained(folder)` work."""
    clip.save_pretrained(str(folder), safe_serialization=True)
    build_processor(tokenizer).save_pretrained(str(folder))


@torch.no_grad()
def scores(clip: CLIPModel, tokenizer: CLIPTokenizer, images, captions: Sequence[str]) -> torch.Tensor:
    """Cosine similarities (len(images), len(captions)) between uint8 images and captions."""
    return similarities(clip, to_clip_pixels(images), token_ids(tokenizer, captions))
