"""DeepFloyd IF stage I: a T5 encoder and a pixel-space UNet with `SimpleCrossAttn` blocks.

Each attention of the UNet attends over the image tokens and, through `add_k_proj`/`add_v_proj`,
over the text: the T5 states projected by the UNet's `encoder_hid_proj` and group-normed by the
attention's own `norm_cross`. Those attentions are the cross-attention sites (`down-1-cross-attn-0`,
`mid-cross-attn`, `up-0-cross-attn-3`), with LoCoGen's index `cross-attn-K` in forward order (22 in
IF-I-XL: 0-8 down, 9 mid, 10-21 up); their key/value projections are `add_k_proj`/`add_v_proj`.

Prompts are encoded as `IFPipeline.encode_prompt` does with `clean_caption=False`: lowercased,
stripped, padded to 77 tokens, with the padding masked. The UNet denoises pixels in [-1, 1] with a
stochastic DDPM scheduler (the runner's per-row generators make it reproducible).
"""

from __future__ import annotations

from typing import Any

import torch

from interp.sites import Site, SitePattern
from models.base import register
from models.sd import resnet_patterns
from models.t5 import T5Adapter, t5_text_patterns


def simple_cross_attn_patterns() -> tuple[SitePattern, ...]:
    """Site patterns of a UNet built from `SimpleCrossAttn*` and `Resnet*Sample` blocks."""
    kv = ("add_k_proj", "add_v_proj")
    return (
        *resnet_patterns(),
        SitePattern(r"(?P<b>down|up)_blocks\.(?P<i>\d+)\.attentions\.(?P<j>\d+)", "{b}-{i}-cross-attn-{j}",
                    "cross-attn", "{b}", kv),
        SitePattern(r"mid_block\.attentions\.(?P<j>\d+)", "mid-cross-attn-{j}", "cross-attn", "mid", kv),
    )


@register("IFPipeline")
class DeepFloydIFAdapter(T5Adapter):
    """IF stage I (`IFPipeline`): T5 prompt embeddings, pixel-space UNet."""

    family = "deepfloyd"
    patterns = {"text_encoder": t5_text_patterns(), "unet": simple_cross_attn_patterns()}
    max_lengths = (77,)  # `IFPipeline.encode_prompt` fixes it, whatever the tokenizer says

    def kv_input(self, pipe: Any, site: Site, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        unet = pipe.unet
        context = cond["prompt_embeds"]
        if unet.encoder_hid_proj is not None:
            context = unet.encoder_hid_proj(context)
        attention = unet.get_submodule(site.path)
        return attention.norm_encoder_hidden_states(context) if attention.norm_cross is not None else context

    def postprocess(self, images: torch.Tensor) -> torch.Tensor:
        return (images / 2 + 0.5).clamp(0, 1)  # what the pipeline does for PIL and numpy output
