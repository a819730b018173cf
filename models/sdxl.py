"""SDXL: two CLIP text encoders (CLIP-L and OpenCLIP bigG) and a UNet with added conditions.

Prompt embeddings are both encoders' penultimate hidden states, concatenated; the pooled embedding
of the second encoder and the size/crop time ids enter as added conditions. Text sites are named per
encoder: `text-self-attn-0` (CLIP-L), `text2-self-attn-0` (bigG). The UNet has 70 cross-attention
layers in forward order (0-23 down, 24-33 mid, 34-69 up), named `down-2-cross-attn-1.9` where an
attention holds several transformer blocks.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from models.base import register
from models.sd import StableDiffusionAdapter, clip_text_patterns, unet_patterns


@register("StableDiffusionXLPipeline")
class StableDiffusionXLAdapter(StableDiffusionAdapter):
    """SDXL base: encode as `StableDiffusionXLPipeline.encode_prompt` does (no clip skip)."""

    family = "sdxl"
    text_encoders = ("text_encoder", "text_encoder_2")
    tokenizers = ("tokenizer", "tokenizer_2")
    patterns = {
        "text_encoder": clip_text_patterns("text"),
        "text_encoder_2": clip_text_patterns("text2"),
        "unet": unet_patterns(),
    }

    def encode(self, pipe: Any, input_ids: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        hidden, pooled = [], None
        for encoder, ids in zip((pipe.text_encoder, pipe.text_encoder_2), input_ids):
            out = encoder(ids.to(encoder.device), output_hidden_states=True)
            pooled = out[0]  # the last encoder's projected pooled output
            hidden.append(out.hidden_states[-2])
        dtype = pipe.text_encoder_2.dtype
        return {"prompt_embeds": torch.cat(hidden, dim=-1).to(dtype), "pooled_prompt_embeds": pooled.to(dtype)}

    def uncond_kwargs(self, pipe: Any, encode_empty: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        if pipe.config.force_zeros_for_empty_prompt:
            return {}  # the pipeline zeros the negative embeddings itself
        return super().uncond_kwargs(pipe, encode_empty)
