"""The tiny `AutoencoderKL`: 32x32 RGB <-> 8x8x4 latents, trained on renders."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from models.tiny.scenes import SIZE
from models.tiny.training import optimize

KL_WEIGHT = 1e-6
COLOR_WEIGHT = 4.0


def build_vae() -> AutoencoderKL:
    """An SD-shaped VAE (encoder/decoder with a mid attention block), downsampling 4x."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=SIZE,
    )


def train_vae(pixels: torch.Tensor, steps: int, batch: int = 32, seed: int = 0) -> AutoencoderKL:
    """Fit a VAE to `pixels` (N, 3, H, W) in [-1, 1] with L1 + MSE reconstruction, a per-cell color
    term from the first step (without it hues drift: red decodes as orange) and a small KL; sets
    `scaling_factor` so scaled latents have unit variance, as SD does."""
    torch.manual_seed(seed)
    vae = build_vae()
    gen = torch.Generator().manual_seed(seed)

    def loss_at(step: int) -> torch.Tensor:
        x = pixels[torch.randint(len(pixels), (batch,), generator=gen)]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        return reconstruction_loss(recon, x) + KL_WEIGHT * posterior.kl().mean()

    optimize(vae.parameters(), loss_at, steps, lr=2e-3, desc="vae")
    vae.eval().requires_grad_(False)
    latents = encode(vae, pixels[:2048], scaled=False)
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return vae


def reconstruction_loss(recon: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 + MSE, plus `COLOR_WEIGHT` times the L1 error of 4x4-pooled colors (one per latent cell)."""
    err = recon - x
    return err.abs().mean() + err.pow(2).mean() + COLOR_WEIGHT * F.avg_pool2d(err, 4).abs().mean()


@torch.no_grad()
def encode(vae: AutoencoderKL, pixels: torch.Tensor, scaled: bool = True, batch: int = 256) -> torch.Tensor:
    """Posterior means of `pixels`, multiplied by `scaling_factor` when `scaled`."""
    out = torch.cat([vae.encode(pixels[i : i + batch]).latent_dist.mean for i in range(0, len(pixels), batch)])
    return out * vae.config.scaling_factor if scaled else out


@torch.no_grad()
def decode(vae: AutoencoderKL, latents: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Pixels in [-1, 1] of scaled `latents`."""
    scale = vae.config.scaling_factor
    parts = [vae.decode(latents[i : i + batch] / scale).sample for i in range(0, len(latents), batch)]
    return torch.cat(parts).clamp(-1, 1)
