"""A tiny random-weight CLIP scorer built from a config in a temporary folder, for recipe tests."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPConfig, CLIPModel

from interp.scoring import CLIPScore
from models.testing import DUMMY_WORDS
from models.vocab import build_clip_tokenizer


def random_clip_scorer(folder: Path) -> CLIPScore:
    """A CLIPScore over a 2-layer, 32-wide random CLIP knowing the dummy pipeline's words."""
    tokenizer = build_clip_tokenizer(list(DUMMY_WORDS), max_length=16, save_dir=folder)
    torch.manual_seed(0)
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=16, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=16, patch_size=4)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    return CLIPScore.from_pretrained(folder)
