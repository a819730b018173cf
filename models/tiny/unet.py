"""The tiny `UNet2DConditionModel` and its latent-diffusion training with classifier-free dropout."""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from models.tiny.clip import WIDTH, token_ids
from models.tiny.pairs import Pair, random_pair_caption
from models.tiny.scenes import Scene, random_caption
from models.tiny.training import optimize

LATENT_SIZE = 8
UNCOND_PROB = 0.1  # share of training captions replaced by "" for classifier-free guidance
EMA_DECAY = 0.998
MIN_SNR_GAMMA = 5.0  # Min-SNR loss weighting (Hang et al., 2023): faster convergence per step
PAIRS_PER_BATCH = 16  # two-object scenes added to each batch of one-object scenes


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


def train_unet(
    latents: torch.Tensor, scenes: Sequence[Scene], encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
    steps: int, batch: int = 64, seed: int = 0, on_step: Callable[[int], None] | None = None,
    pairs: tuple[torch.Tensor, Sequence[Pair]] | None = None,
) -> UNet2DConditionModel:
    """Epsilon-prediction training (Min-SNR weighted) on scaled `latents` of `scenes` with random
    captions, `PAIRS_PER_BATCH` of `pairs` (their latents, the pairs) beside each `batch`; returns
    the exponential moving average of the weights. `on_step(step)` runs after each update (the
    trainer widens the thread pool there once a parallel stage is done)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    unet = build_unet()
    ema = copy.deepcopy(unet).requires_grad_(False)
    sched = noise_scheduler()
    context = EmbeddingCache(encoder, tokenizer)

    def sample() -> tuple[torch.Tensor, list[str]]:
        idx = torch.randint(len(latents), (batch,), generator=gen)
        x0, captions = latents[idx], [random_caption(scenes[i], rng) for i in idx.tolist()]
        if pairs is not None:
            pair_idx = torch.randint(len(pairs[0]), (PAIRS_PER_BATCH,), generator=gen)
            x0 = torch.cat([x0, pairs[0][pair_idx]])
            captions += [random_pair_caption(pairs[1][i], rng) for i in pair_idx.tolist()]
        return x0, ["" if rng.random() < UNCOND_PROB else c for c in captions]

    def loss_at(step: int) -> torch.Tensor:
        x0, captions = sample()
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(x0),), generator=gen)
        pred = unet(sched.add_noise(x0, noise, t), t, context(captions)).sample
        per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        return (min_snr_weights(sched, t) * per_sample).mean()

    @torch.no_grad()
    def update_ema(step: int) -> None:
        decay = min(EMA_DECAY, (1 + step) / (10 + step))
        for e, p in zip(ema.parameters(), unet.parameters()):
            e.lerp_(p, 1 - decay)
        if on_step is not None:
            on_step(step)

    optimize(unet.parameters(), loss_at, steps, lr=1e-3, desc="unet", after_step=update_ema)
    return ema.eval()
