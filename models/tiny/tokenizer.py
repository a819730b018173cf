"""The tiny world's `CLIPTokenizer`: one token per word, SD1.x-style padding with EOS."""

from __future__ import annotations

from pathlib import Path

from transformers import CLIPTokenizer

from models.tiny.scenes import vocabulary
from models.vocab import build_clip_tokenizer

MAX_LENGTH = 16  # BOS + the longest caption (10 tokens) + EOS, with room to spare


def build_tokenizer(save_dir: str | Path | None = None) -> CLIPTokenizer:
    """The tokenizer shared by the tiny CLIP and the diffusion pipeline."""
    return build_clip_tokenizer(vocabulary(), max_length=MAX_LENGTH, save_dir=save_dir)
