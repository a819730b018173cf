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

from typing import Any, Callable

import torch

from interp.sites import Site, SitePattern
from models.base import register
from models.sd import StableDiffusionAdapter, resnet_patterns, unet_meta_call
from models.t5 import encode_t5, t5_meta_forward, t5_prompt, t5_text_patterns


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
class DeepFloydIFAdapter(StableDiffusionAdapter):
    """IF stage I (`IFPipeline`): T5 prompt embeddings, pixel-space UNet."""

    family = "deepfloyd"
    patterns = {"text_encoder": t5_text_patterns(), "unet": simple_cross_attn_patterns()}
    max_length = 77  # `IFPipeline.encode_prompt` fixes it, whatever the tokenizer says

    def meta_forward(
        self, component: str, twin: torch.nn.Module, latent_hw: tuple[int, int] | None = None
    ) -> Callable[[torch.nn.Module], object]:
        if component == self.denoiser:
            return lambda unet: unet_meta_call(unet, latent_hw)
        return t5_meta_forward()

    def preprocess(self, prompt: str) -> str:
        return t5_prompt(prompt)

    def encode(self, pipe: Any, input_ids: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        embeds, _ = encode_t5(pipe.text_encoder, input_ids[0], pipe.tokenizer.pad_token_id)
        return {"prompt_embeds": embeds}

    def kv_input(self, pipe: Any, site: Site, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        unet = pipe.unet
        context = cond["prompt_embeds"]
        if unet.encoder_hid_proj is not None:
            context = unet.encoder_hid_proj(context)
        attention = unet.get_submodule(site.path)
        return attention.norm_encoder_hidden_states(context) if attention.norm_cross is not None else context

    def latent_shape(self, pipe: Any, height: int, width: int) -> tuple[int, int, int]:
        return pipe.unet.config.in_channels, height, width

    def postprocess(self, images: torch.Tensor) -> torch.Tensor:
        return (images / 2 + 0.5).clamp(0, 1)  # what the pipeline does for PIL and numpy output
