"""The tiny `UNet2DConditionModel` and its latent-diffusion training with classifier-free dropout."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from models.tiny.clip import WIDTH, token_ids
from models.tiny.grounding import PIXEL_WEIGHT, Grounds, grounding_loss, kept_cross_attention
from models.tiny.pairs import Pair, random_pair_caption, render_pair
from models.tiny.scenes import PLURALS, Scene, object_mask, random_caption
from models.tiny.training import optimize

LATENT_SIZE = 8
UNCOND_PROB = 0.1  # share of training captions replaced by "" for classifier-free guidance
EMA_DECAY = 0.998
MIN_SNR_GAMMA = 5.0  # Min-SNR loss weighting (Hang et al., 2023): faster convergence per step


def build_unet() -> UNet2DConditionModel:
    """SD-like topology at 8x8 latents: cross-attention down, mid and up blocks, each transformer
    block with self-attention (attn1), cross-attention (attn2) and a feed-forward (ff)."""
    return UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        layers_per_block=1,
        cross_attention_dim=WIDTH,
        attention_head_dim=2,
        norm_num_groups=16,
    )


def noise_scheduler() -> DDPMScheduler:
    """Stable Diffusion 1.x's training noise schedule."""
    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False,
    )


@torch.no_grad()
def embed(encoder: CLIPTextModel, tokenizer: CLIPTokenizer, captions: Sequence[str]) -> torch.Tensor:
    """The encoder's last hidden states (N, MAX_LENGTH, WIDTH), the UNet's cross-attention context."""
    return encoder(token_ids(tokenizer, captions)).last_hidden_state


class EmbeddingCache:
    """Context of each distinct caption, computed once: the encoder is frozen and the tiny world
    has a few thousand captions, so training steps need not rerun it."""

    def __init__(self, encoder: CLIPTextModel, tokenizer: CLIPTokenizer) -> None:
        self.encoder, self.tokenizer, self.states = encoder, tokenizer, {}

    def __call__(self, captions: Sequence[str]) -> torch.Tensor:
        new = list(dict.fromkeys(c for c in captions if c not in self.states))
        if new:
            self.states.update(zip(new, embed(self.encoder, self.tokenizer, new)))
        return torch.stack([self.states[c] for c in captions])


def min_snr_weights(sched: DDPMScheduler, t: torch.Tensor, gamma: float = MIN_SNR_GAMMA) -> torch.Tensor:
    """Per-sample epsilon-loss weights min(SNR, gamma) / SNR at timesteps `t`."""
    alpha_bar = sched.alphas_cumprod[t]
    snr = alpha_bar / (1 - alpha_bar)
    return snr.clamp(max=gamma) / snr


def latent_masks(items: Sequence[Scene | Pair]) -> torch.Tensor:
    """Each item's object masks at the latent resolution, (N, 2, LATENT_SIZE, LATENT_SIZE): a
    scene's object(s) in slot 0 (slot 1 empty), a pair's objects in the order named."""
    full = []
    for item in items:
        if isinstance(item, Pair):
            full.append(render_pair(item)[1])
        else:
            mask = object_mask(item)
            full.append(np.stack([mask, np.zeros_like(mask)]))
    return F.adaptive_avg_pool2d(torch.from_numpy(np.stack(full)), LATENT_SIZE)


def object_words(item: Scene | Pair) -> tuple[str, ...]:
    """The words a caption of `item` names its object(s) with, in mask-slot order (none for a
    character or fact: the name stands for the object)."""
    if isinstance(item, Pair):
        return item.objects
    if item.name:
        return ()
    return (PLURALS[item.object] if item.count == 2 else item.object,)


def train_unet(
    latents: torch.Tensor, scenes: Sequence[Scene], encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
    steps: int, batch: int = 64, seed: int = 0, on_step: Callable[[int], None] | None = None,
    pairs: tuple[torch.Tensor, Sequence[Pair], int] | None = None, grounding: float = 0.0,
    pixel: float = PIXEL_WEIGHT,
) -> UNet2DConditionModel:
    """Epsilon-prediction training (Min-SNR weighted) on scaled `latents` of `scenes` with random
    captions; returns the exponential moving average of the weights. `pairs` (their latents, the
    pairs, how many per batch) adds two-object scenes beside each `batch`; `grounding` > 0 adds
    that weight of the grounding terms (`models.tiny.grounding`; the pixel loss at `pixel` times the
    token loss's weight) on every object word. `on_step(step)` runs after each update (the trainer
    widens the thread pool there once a parallel stage is done)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    unet = build_unet()
    ema = copy.deepcopy(unet).requires_grad_(False)
    sched = noise_scheduler()
    context = EmbeddingCache(encoder, tokenizer)
    items = list(scenes) + list(pairs[1] if pairs else [])
    pool = torch.cat([latents, pairs[0]]) if pairs else latents
    masks = latent_masks(items) if grounding else None

    def sample() -> tuple[torch.Tensor, list[str]]:
        idx = torch.randint(len(latents), (batch,), generator=gen)
        if pairs is not None:
            idx = torch.cat([idx, len(latents) + torch.randint(len(pairs[0]), (pairs[2],), generator=gen)])
        captions = ["" if rng.random() < UNCOND_PROB else
                    random_pair_caption(items[i], rng) if isinstance(items[i], Pair) else random_caption(items[i], rng)
                    for i in idx.tolist()]
        return idx, captions

    def grounds_of(idx: torch.Tensor, captions: list[str]) -> Grounds:
        rows, positions, chosen = [], [], []
        for row, (i, text) in enumerate(zip(idx.tolist(), captions)):
            words = text.split()
            for slot, word in enumerate(object_words(items[i]) if text else ()):
                rows.append(row)
                positions.append(words.index(word) + 1)  # after BOS; one token per word
                chosen.append(masks[i, slot])
        found = torch.stack(chosen) if chosen else masks[:0, 0]
        return Grounds(torch.tensor(rows, dtype=torch.long), torch.tensor(positions, dtype=torch.long), found)

    def loss_at(step: int) -> torch.Tensor:
        idx, captions = sample()
        x0 = pool[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(x0),), generator=gen)
        with kept_cross_attention(unet, enabled=grounding > 0) as probs:
            pred = unet(sched.add_noise(x0, noise, t), t, context(captions)).sample
        per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (min_snr_weights(sched, t) * per_sample).mean()
        if grounding:
            loss = loss + grounding * grounding_loss(probs, grounds_of(idx, captions), pixel)
        return loss

    @torch.no_grad()
    def update_ema(step: int) -> None:
        decay = min(EMA_DECAY, (1 + step) / (10 + step))
        for e, p in zip(ema.parameters(), unet.parameters()):
            e.lerp_(p, 1 - decay)
        if on_step is not None:
            on_step(step)

    optimize(unet.parameters(), loss_at, steps, lr=1e-3, desc="unet", after_step=update_ema)
    return ema.eval()
