"""The runtime check every adapter's test makes on its reduced random model.

A no-op graph of one run reproduces plain `pipe(prompt)` bit for bit; in one batch, corrupting the
subject changes the image, restoring every site brings the clean image back (<= 1e-5), and a `Swap`
of some cross-attention layers (where the family supports it) changes the image.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

import interp
from interp.graph import Graph, Noise, Restore, Run, Swap
from interp.runner import run
from tests.conftest import PROMPT


def check_family(
    pipe: Any,
    noised: list[str],
    swap: list[str] | None,
    guidance_scale: float,
    plain_kwargs: dict | None = None,
    to_unit: Callable[[torch.Tensor], torch.Tensor] = lambda image: image,
    alone_prompt: str = PROMPT,
) -> None:
    """Assert the family's exactness; `to_unit` maps plain pipeline output to [0, 1] where it differs."""
    model = interp.load(pipe)
    settings = dict(seed=1, steps=2, guidance_scale=guidance_scale)
    span = model.locate(PROMPT, "van gogh")
    noise = [Noise(site, tokens=span.positions, std=3.0) for site in noised]
    alone = run(model, Graph([Run("clean", alone_prompt, **settings)]), progress=False).images["clean"]
    graph = Graph([Run("clean", PROMPT, **settings), Run("corrupted", PROMPT, ops=noise, **settings)])
    graph.add(Run("restored", PROMPT, ops=[*noise, *(Restore(s.name, source="clean") for s in model.sites())],
                  **settings))
    if swap:
        branch = "cond" if model.adapter.cfg(guidance_scale) else "both"  # FLUX: one row per image
        graph.add(Run("swapped", PROMPT, ops=[Swap(swap, "a painting", branch=branch)], **settings))
    images = run(model, graph, progress=False).images
    with torch.no_grad():
        plain = pipe(PROMPT, num_inference_steps=2, guidance_scale=guidance_scale, output_type="pt",
                     generator=torch.Generator().manual_seed(1), **(plain_kwargs or {})).images[0]
    assert torch.equal(alone, to_unit(plain))
    clean = images["clean"]
    assert (images["corrupted"] - clean).abs().max() > 1e-3
    assert (images["restored"] - clean).abs().max() <= 1e-5
    if swap:
        assert (images["swapped"] - clean).abs().max() > 1e-4
