"""Conversions between uint8 renders and the tensors each tiny component consumes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP normalization, as CLIPImageProcessor
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def as_uint8(images: np.ndarray | torch.Tensor | Sequence[Image.Image | np.ndarray]) -> np.ndarray:
    """Images as uint8 (N, H, W, 3): from PIL images, uint8 arrays, or float tensors in [0, 1]
    shaped (N, 3, H, W) as a pipeline's ``output_type="pt"`` returns (or a list of (3, H, W) ones,
    as the runner returns them)."""
    if not isinstance(images, (torch.Tensor, np.ndarray)) and images and isinstance(images[0], torch.Tensor):
        images = torch.stack(list(images))
    if isinstance(images, torch.Tensor):
        array = images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
        return (array * 255).round().astype(np.uint8)
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return images if images.dtype == np.uint8 else (np.clip(images, 0, 1) * 255).round().astype(np.uint8)
    return np.stack([np.asarray(Image.fromarray(i) if isinstance(i, np.ndarray) else i.convert("RGB")) for i in images])


def to_signed(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1], the VAE's pixel range."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def from_signed(pixels: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W) in [-1, 1] -> uint8 (N, H, W, 3)."""
    return as_uint8((pixels + 1.0) / 2.0)


def to_clip_pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> the tiny CLIP's normalized `pixel_values` (N, 3, H, W)."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
