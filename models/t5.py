"""T5 encoder text towers (DeepFloyd IF, PixArt, SD3's third encoder): site patterns and encoding.

Sites mirror the CLIP ones in `models.sd`: `text-embed` (the token embedding), `text-self-attn-N`
(the attention output of block N before its residual add), `text-mlp-N` (the gated feed-forward
output before its residual add), `text-hidden-N` (block N's output). T5 is bidirectional and masks
padding with the tokenizer's attention mask, which the pipelines pass; `T5Adapter.encode` rebuilds
that mask from the padded ids (every position that is not the pad id), so it matches bit for bit.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar

import torch

from interp.sites import SitePattern
from models.sd import StableDiffusionAdapter


def t5_text_patterns(prefix: str = "text") -> tuple[SitePattern, ...]:
    """Site patterns of a transformers `T5EncoderModel`."""
    block = r"encoder\.block\.(?P<n>\d+)"
    return (
        # transformers >= 5 calls `encoder.embed_tokens` (tied to `shared`); older versions share one module
        SitePattern(r"(?:shared|encoder\.embed_tokens)", f"{prefix}-embed", "text-embed", "text"),
        SitePattern(block + r"\.layer\.0\.SelfAttention", prefix + "-self-attn-{n}", "text-self-attn", "text"),
        SitePattern(block + r"\.layer\.1\.DenseReluDense", prefix + "-mlp-{n}", "text-mlp", "text"),
        SitePattern(block, prefix + "-hidden-{n}", "text-hidden", "text"),
    )


def t5_meta_call(text: torch.nn.Module) -> object:
    """One forward of a T5 encoder on meta token ids (site order does not depend on the length)."""
    return text(torch.zeros(1, 8, dtype=torch.long, device="meta"))


class T5Adapter(StableDiffusionAdapter):
    """Pipelines with one T5 encoder whose `encode_prompt` lowercases and strips the prompt (the
    `clean_caption=False` path), pads it to a fixed length (`max_lengths`) and masks the padding.

    `mask_kwarg` names the pipeline kwarg that also takes the mask (PixArt), if any.
    """

    mask_kwarg: ClassVar[str | None] = None

    def meta_forward(
        self, component: str, twin: torch.nn.Module, latent_hw: tuple[int, int] | None = None
    ) -> Callable[[torch.nn.Module], object]:
        if component == self.denoiser:
            return super().meta_forward(component, twin, latent_hw)
        return t5_meta_call

    def preprocess(self, prompt: str) -> str:
        return prompt.lower().strip()

    def encode(self, pipe: Any, input_ids: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        encoder = pipe.text_encoder
        ids = input_ids[0].to(encoder.device)
        mask = (ids != pipe.tokenizer.pad_token_id).long()
        embeds = encoder(ids, attention_mask=mask)[0].to(dtype=encoder.dtype)
        return {"prompt_embeds": embeds, **({self.mask_kwarg: mask} if self.mask_kwarg else {})}
