"""PixArt-alpha: a T5 encoder and a DiT (`PixArtTransformer2DModel`) with cross-attention.

Sites per transformer block N, in forward order: `block-N-self-attn` (attn1), `block-N-cross-attn`
(attn2, key/value projections `to_k`/`to_v`, LoCoGen index `cross-attn-N`), `block-N-ff`, and
`block-N` (the block's output, kind "block"); all in the image stream (`site.block == "image"`).
PixArt-XL-2 has 28 blocks. Cross-attention reads the T5 states
through the transformer's `caption_projection`, with the prompt's padding masked.

Prompts are encoded as `PixArtAlphaPipeline.encode_prompt` does with `clean_caption=False`:
lowercased, stripped, padded to 120 tokens, with the attention mask passed along. The runner calls
the pipeline without resolution binning, so a run's height and width are used as given.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from interp.sites import Site, SitePattern
from models.base import register
from models.t5 import T5Adapter, t5_text_patterns

_BLOCK = r"transformer_blocks\.(?P<n>\d+)"


def dit_patterns() -> tuple[SitePattern, ...]:
    """Site patterns of a diffusers DiT whose blocks hold attn1 (self), attn2 (cross) and ff."""
    return (
        SitePattern(_BLOCK + r"\.attn1", "block-{n}-self-attn", "self-attn", "image"),
        SitePattern(_BLOCK + r"\.attn2", "block-{n}-cross-attn", "cross-attn", "image", ("to_k", "to_v")),
        SitePattern(_BLOCK + r"\.ff", "block-{n}-ff", "ff", "image"),
        SitePattern(_BLOCK, "block-{n}", "block", "image"),
    )


def pixart_meta_call(transformer: torch.nn.Module, latent_hw: tuple[int, int] | None = None, tokens: int = 8) -> object:
    """One forward of a `PixArtTransformer2DModel` on meta tensors, at its sample size by default."""
    config = transformer.config
    height, width = latent_hw or (config.sample_size, config.sample_size)
    meta = dict(device="meta")
    sample = torch.zeros(1, config.in_channels, height, width, **meta)
    context = torch.zeros(1, tokens, config.caption_channels, **meta)
    added = {"resolution": None, "aspect_ratio": None}
    if transformer.use_additional_conditions:
        added = {"resolution": torch.zeros(1, 2, **meta), "aspect_ratio": torch.zeros(1, 1, **meta)}
    return transformer(sample, encoder_hidden_states=context, timestep=torch.zeros(1, **meta),
                       added_cond_kwargs=added)


@register("PixArtAlphaPipeline")
class PixArtAlphaAdapter(T5Adapter):
    """PixArt-alpha (`PixArtAlphaPipeline`): T5 prompt embeddings and mask, DiT denoiser."""

    family = "pixart"
    denoiser = "transformer"
    patterns = {"text_encoder": t5_text_patterns(), "transformer": dit_patterns()}
    max_lengths = (120,)  # the pipeline's default `max_sequence_length`
    mask_kwarg = "prompt_attention_mask"

    def meta_forward(
        self, component: str, twin: torch.nn.Module, latent_hw: tuple[int, int] | None = None
    ) -> Callable[[torch.nn.Module], object]:
        if component == self.denoiser:
            return lambda transformer: pixart_meta_call(transformer, latent_hw)
        return super().meta_forward(component, twin, latent_hw)

    def uncond_kwargs(self, pipe: Any, encode_empty: Callable[[], dict[str, torch.Tensor]]) -> dict[str, Any]:
        return {"negative_prompt": None, **super().uncond_kwargs(pipe, encode_empty)}  # its default is ""

    def call_kwargs(self, pipe: Any) -> dict[str, Any]:
        return {"use_resolution_binning": False}

    def kv_input(self, pipe: Any, site: Site, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        projection = pipe.transformer.caption_projection
        context = cond["prompt_embeds"]
        return context if projection is None else projection(context)
