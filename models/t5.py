"""T5 encoder text towers (DeepFloyd IF, PixArt, SD3's third encoder): site patterns and encoding.

Sites mirror the CLIP ones in `models.sd`: `text-embed` (the token embedding), `text-self-attn-N`
(the attention output of block N before its residual add), `text-mlp-N` (the gated feed-forward
output before its residual add), `text-hidden-N` (block N's output). T5 is bidirectional and masks
padding with the tokenizer's attention mask, which the pipelines pass; `encode_t5` rebuilds that
mask from the padded ids (every position that is not the pad id), so it matches bit for bit.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from interp.sites import SitePattern


def t5_text_patterns(prefix: str = "text") -> tuple[SitePattern, ...]:
    """Site patterns of a transformers `T5EncoderModel`."""
    block = r"encoder\.block\.(?P<n>\d+)"
    return (
        # transformers >= 5 calls `encoder.embed_tokens` (tied to `shared`); older versions share one module
        SitePattern(r"(?:shared|encoder\.embed_tokens)", f"{prefix}-embed", "text-embed", "text"),
        SitePattern(block + r"\.layer\.0\.SelfAttention", prefix + "-self-attn-{n}", "text-self-attn", "text"),
        SitePattern(block + r"\.layer\.1\.DenseReluDense", prefix + "-mlp-{n}", "text-mlp", "text"),
        SitePattern(block, prefix + "-hidden-{n}", "text-hidden", "text"),
    )


def t5_meta_forward(tokens: int = 8) -> Callable[[torch.nn.Module], object]:
    """One forward of a T5 encoder on meta token ids (site order does not depend on the length)."""
    return lambda text: text(torch.zeros(1, tokens, dtype=torch.long, device="meta"))


def encode_t5(encoder: Any, ids: torch.Tensor, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(last hidden state in the encoder's dtype, attention mask) as the T5 pipelines compute them."""
    ids = ids.to(encoder.device)
    mask = (ids != pad_id).long()
    embeds = encoder(ids, attention_mask=mask)[0]
    return embeds.to(dtype=encoder.dtype), mask


def t5_prompt(prompt: str) -> str:
    """The text IF and PixArt tokenize: their `_text_preprocessing` with `clean_caption=False`."""
    return prompt.lower().strip()
