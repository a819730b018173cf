"""How many runs fit in one batched pipeline call under a memory budget.

The estimate comes from a forward pass of a meta-device twin of the denoiser at the run's latent
size: the outputs of every named site (block outputs, skip connections, attention results) are what
a forward holds at once, plus the largest self-attention score matrix, per UNet row. It is
conservative, not exact; pass `chunk_size` to the runner to override it.
"""

from __future__ import annotations

import torch

from interp.model import Model
from interp.sites import meta_twin


def bytes_per_run(model: Model, height: int, width: int, cfg: bool) -> int:
    """Estimated activation memory that one more run adds to a batch."""
    twin = meta_twin(model.denoiser)
    _, latent_h, latent_w = model.adapter.latent_shape(model.pipe, height, width)
    paths = {s.path for s in model.sites() if s.component == model.adapter.denoiser}
    held, scores = 0, 0
    handles = []

    def record(module: torch.nn.Module, inputs: tuple, out: object, path: str) -> None:
        nonlocal held, scores
        tensor = out[0] if isinstance(out, tuple) else out
        if path in paths and isinstance(tensor, torch.Tensor):
            held += tensor.numel()
            if tensor.dim() == 3 and hasattr(module, "heads"):  # attention over image tokens
                scores = max(scores, module.heads * tensor.shape[1] ** 2)

    for path, module in twin.named_modules():
        if path in paths:
            handles.append(module.register_forward_hook(lambda m, i, o, p=path: record(m, i, o, p)))
    try:
        with torch.no_grad():
            model.adapter.meta_forward(model.adapter.denoiser, twin, (latent_h, latent_w))(twin)
    finally:
        for handle in handles:
            handle.remove()
    rows = 2 if cfg else 1
    itemsize = torch.empty((), dtype=model.denoiser.dtype).element_size()
    return rows * itemsize * (held + scores)


def runs_per_chunk(model: Model, height: int, width: int, cfg: bool, budget_bytes: float) -> int:
    """The largest number of runs whose estimated activations fit `budget_bytes` (at least 1)."""
    return max(1, int(budget_bytes // bytes_per_run(model, height, width, cfg)))
