"""Unit keys: a hash of everything a unit's result depends on, so equal keys mean equal work."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

KEY_LENGTH = 24  # hex digits: 96 bits, no collision in any sweep a person runs


def unit_key(recipe: str, arguments: dict[str, Any], fingerprint: str, prompt: str, subject: str,
             seed: int, sample: int, inputs: dict[str, Any] | None = None) -> str:
    """The key of one unit: recipe, its (resolved) arguments, the model's weights, prompt, subject,
    seed and noise sample, and any other per-unit `inputs` (e.g. LoCoGen's target prompt; a unit
    without them keeps the key it had before they existed). Arguments and inputs must be JSON
    values; their order does not matter."""
    document = {"recipe": recipe, "arguments": arguments, "model": fingerprint, "prompt": prompt,
                "subject": subject, "seed": int(seed), "sample": int(sample), **({"inputs": inputs} if inputs else {})}
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


def model_fingerprint(components: dict[str, torch.nn.Module]) -> str:
    """A hash of every component's parameter and buffer names, shapes, dtypes and bytes: units
    computed on other weights (an applied edit, another checkpoint) get other keys."""
    digest = hashlib.sha256()
    for component in sorted(components):
        for name, tensor in sorted(components[component].state_dict().items()):
            data = tensor.detach().cpu().contiguous()
            digest.update(f"{component}.{name}{tuple(data.shape)}{data.dtype}".encode())
            digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]
