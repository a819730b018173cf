"""A grounding term for training the tiny UNet: each object word's cross-attention falls on its object.

Trained on denoising alone, the tiny UNet reads a caption from the end-of-text and padding states
(CLIP is causal: they carry every word), everywhere in the image, and an object word's attention map
says nothing about where the object is, even on two-object scenes. Real models' word maps localize
(DAAM), and the world's attention maps are meant to be checkable against ground truth, so the UNet
grounded stage adds TokenCompose's two grounding terms (Wang et al., CVPR 2024) for each object word
of a caption, at each cross-attention layer's resolution: the token loss, (1 - the share of its
attention mass that falls inside the object's true mask)^2 per head, and the pixel loss, the binary
cross-entropy between the word's head-averaged attention probability at each pixel and the mask. The
token loss alone puts the mass on the object but only its peak there (Otsu IoU 0.36); the pixel loss
makes the map fill the object (0.71). The world knows every mask, so no segmenter is needed.
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

# The grounded UNet's recipe (`python -m models.tiny.train --stages grounded_unet`): the grounding
# terms' weight beside the epsilon loss, the pixel loss's weight relative to the token loss's, and
# two-object scenes beside each batch of 64.
GROUNDING_WEIGHT = 0.1
PIXEL_WEIGHT = 0.5
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


def grounding_loss(probs: list[torch.Tensor], grounds: Grounds, pixel: float = PIXEL_WEIGHT) -> torch.Tensor:
    """TokenCompose's grounding terms, averaged over grounded words and layers: the token loss, (1 -
    share of the word's attention mass inside its mask)^2 per head, plus `pixel` times the pixel
    loss, the BCE of the word's head-averaged probability at each pixel against the mask. `probs`:
    per layer (batch, heads, h*w, tokens)."""
    if not len(grounds.rows):
        return probs[0].new_zeros(())
    losses = []
    for layer in probs:
        side = round(layer.shape[2] ** 0.5)
        masks = F.adaptive_avg_pool2d(grounds.masks[:, None], side).flatten(1)  # (G, h*w)
        word = layer[grounds.rows, :, :, grounds.positions]  # (G, heads, h*w)
        share = (word * masks[:, None]).sum(-1) / word.sum(-1).clamp_min(1e-8)
        per_pixel = word.mean(1).clamp(1e-6, 1 - 1e-6)  # (G, h*w): the word's probability at each pixel
        losses.append(((1 - share) ** 2).mean() + pixel * F.binary_cross_entropy(per_pixel, masks.clamp(0, 1)))
    return torch.stack(losses).mean()
