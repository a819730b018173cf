"""A grounding term for training the tiny UNet: each object word's cross-attention falls on its object.

Trained on denoising alone, the tiny UNet reads a caption from the end-of-text and padding states
(CLIP is causal: they carry every word), everywhere in the image, and an object word's attention map
says nothing about where the object is, even on two-object scenes. Real models' word maps localize
(DAAM), and the world's attention maps are meant to be checkable against ground truth, so the UNet
stage adds TokenCompose's token loss (Wang et al., CVPR 2024): for each object word of a caption,
(1 - the share of its attention mass that falls inside the object's true mask)^2, averaged over heads
and every cross-attention layer, at each layer's resolution. The world knows every mask, so no
segmenter is needed. Everything else about the maps (which layers, how sharp, the end-of-text
token's) is left to training.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention

from interp.attention_probs import CapturingProcessor

# The grounded UNet's recipe (`python -m models.tiny.train --stages grounded_unet`): the token loss's
# weight beside the epsilon loss, and two-object scenes beside each batch of 64.
GROUNDING_WEIGHT = 0.1
GROUNDING_PAIRS = 8


@contextmanager
def kept_cross_attention(unet: UNet2DConditionModel, enabled: bool = True) -> Iterator[list[torch.Tensor]]:
    """Inside the block every cross-attention layer (`attn2`) of `unet` runs a `CapturingProcessor`
    that appends each call's probabilities, (batch, heads, queries, tokens) with their gradients, to
    the list yielded; the UNet's own processors come back after it. Not `enabled`: nothing changes,
    nothing is kept."""
    kept: list[torch.Tensor] = []
    if not enabled:
        yield kept
        return
    modules = [m for name, m in unet.named_modules() if name.endswith("attn2") and isinstance(m, Attention)]
    originals = [m.processor for m in modules]
    for module in modules:
        def keep(probs: torch.Tensor, heads: int = module.heads) -> None:  # (batch * heads, ...) -> (batch, heads, ...)
            kept.append(probs.view(-1, heads, *probs.shape[1:]))

        module.set_processor(CapturingProcessor(keep))
    try:
        yield kept
    finally:
        for module, original in zip(modules, originals):
            module.set_processor(original)


@dataclass(frozen=True)
class Grounds:
    """Which rows of a batch name an object where: row index, token position of the object word,
    and the object's coverage mask (G, H, W) in [0, 1] at the latent resolution."""

    rows: torch.Tensor
    positions: torch.Tensor
    masks: torch.Tensor


def grounding_loss(probs: list[torch.Tensor], grounds: Grounds) -> torch.Tensor:
    """TokenCompose's token loss: mean over grounded words, heads and layers of (1 - share of the
    word's attention mass inside its mask)^2. `probs`: per layer (batch, heads, h*w, tokens)."""
    if not len(grounds.rows):
        return probs[0].new_zeros(())
    losses = []
    for layer in probs:
        side = round(layer.shape[2] ** 0.5)
        masks = F.adaptive_avg_pool2d(grounds.masks[:, None], side).flatten(1)  # (G, h*w)
        word = layer[grounds.rows, :, :, grounds.positions]  # (G, heads, h*w)
        share = (word * masks[:, None]).sum(-1) / word.sum(-1).clamp_min(1e-8)
        losses.append(((1 - share) ** 2).mean())
    return torch.stack(losses).mean()
