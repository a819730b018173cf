"""The attribute judge: a small CNN that reads object, color, style and count back from an image.

It is the tiny world's ground truth for tests and recipes. Trained on renders and on their VAE
reconstructions, so it reads generated images as well as clean ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from models.tiny.scenes import ATTRIBUTES, VALUES, Scene
from models.tiny.tensors import as_uint8, to_signed
from models.tiny.training import optimize



class JudgeNet(nn.Module):
    """Conv trunk (32 -> 4 px) with one linear head per attribute."""

    def __init__(self) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.trunk = nn.Sequential(
            *block(3, 32), nn.MaxPool2d(2),
            *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
            *block(64, 128), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(128 * 16, 256), nn.ReLU(),
        )
        self.heads = nn.ModuleDict({a: nn.Linear(256, len(VALUES[a])) for a in ATTRIBUTES})

    def forward(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per attribute for `pixels` (N, 3, 32, 32) in [-1, 1]."""
        features = self.trunk(pixels)
        return {a: head(features) for a, head in self.heads.items()}


def labels(scenes: Sequence[Scene]) -> dict[str, torch.Tensor]:
    """Class indices of each attribute of `scenes`."""
    return {a: torch.tensor([VALUES[a].index(s.attributes()[a]) for s in scenes]) for a in ATTRIBUTES}


def train_judge(
    pixels: torch.Tensor, targets: dict[str, torch.Tensor], steps: int, batch: int = 64, seed: int = 0
) -> JudgeNet:
    """Fit the judge on `pixels` (N, 3, H, W) in [-1, 1] with light pixel-noise augmentation."""
    torch.manual_seed(seed)
    net = JudgeNet()
    gen = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()

    def loss_at(step: int) -> torch.Tensor:
        idx = torch.randint(len(pixels), (batch,), generator=gen)
        x = pixels[idx] + 0.04 * torch.rand(()) * torch.randn(pixels[idx].shape, generator=gen)
        logits = net(x)
        return sum(loss_fn(logits[a], targets[a][idx]) for a in ATTRIBUTES)

    optimize(net.parameters(), loss_at, steps, lr=2e-3, desc="judge", weight_decay=1e-4)
    return net.eval().requires_grad_(False)


def save_judge(net: JudgeNet, path: Path) -> None:
    """Write the judge's weights as safetensors."""
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))


@lru_cache(maxsize=2)
def load_judge(path: Path) -> JudgeNet:
    """The judge saved at `path`, in eval mode."""
    net = JudgeNet()
    net.load_state_dict(load_file(str(path)))
    return net.eval().requires_grad_(False)


@torch.no_grad()
def predict(net: JudgeNet, images: np.ndarray | torch.Tensor | Sequence, batch: int = 512) -> list[dict]:
    """Judged attributes of `images` (see `as_uint8` for accepted forms), one dict per image."""
    pixels = to_signed(as_uint8(images))
    logits = {a: [] for a in ATTRIBUTES}
    for i in range(0, len(pixels), batch):
        for a, out in net(pixels[i : i + batch]).items():
            logits[a].append(out.argmax(-1))
    picks = {a: torch.cat(v).tolist() for a, v in logits.items()}
    return [{a: VALUES[a][picks[a][i]] for a in ATTRIBUTES} for i in range(len(pixels))]


def accuracy(predictions: Sequence[dict], truths: Sequence[Scene]) -> dict[str, float]:
    """Per-attribute fraction of `predictions` that match the scenes' attributes."""
    return {
        a: float(np.mean([p[a] == s.attributes()[a] for p, s in zip(predictions, truths)])) for a in ATTRIBUTES
    }


@torch.no_grad()
def probabilities(net: JudgeNet, images: np.ndarray | torch.Tensor | Sequence, batch: int = 512) -> dict[str, torch.Tensor]:
    """Per attribute, the judge's class probabilities (N, len(VALUES[attribute])) for `images`."""
    pixels = to_signed(as_uint8(images))
    parts: dict[str, list[torch.Tensor]] = {a: [] for a in ATTRIBUTES}
    for i in range(0, len(pixels), batch):
        for a, out in net(pixels[i : i + batch]).items():
            parts[a].append(out.softmax(-1))
    return {a: torch.cat(v) for a, v in parts.items()}
