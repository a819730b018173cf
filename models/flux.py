"""FLUX.1: a CLIP-L and a T5 text encoder and a rectified-flow transformer (`FluxTransformer2DModel`)
with double-stream (MMDiT, as SD3) and single-stream blocks.

Text sites: `text-*` (CLIP-L: only its pooled output, at the EOS token, reaches the transformer,
through the timestep/guidance modulation), `text2-*` (T5: its states are the transformer's text tokens).

Double-stream block N (`transformer_blocks.N`, 19 in FLUX.1) carries two streams, as SD3's joint
blocks: `block-N-attn` (the joint attention's image output; image queries read text keys/values through
`add_k_proj`/`add_v_proj`; kind "cross-attn", LoCoGen index `cross-attn-N`), `block-N-text-attn` (its
text output), `block-N-ff` and `block-N-text-ff` (the image and text feed-forwards), `block-N` (the
image stream's block output) and `block-N-text` (the text stream's). The attention returns (image,
text) and the block (text, image), so `block-N-attn` is element 0 of its module's output and
`block-N` element 1.

Single-stream block M (`single_transformer_blocks.M`, 38 in FLUX.1) runs one sequence, the text
tokens (T5 positions 0 .. 511) followed by the image tokens, through a parallel attention and MLP:
`single-M-mlp` (the MLP's hidden activation after its GELU) and `single-M-attn` (the attention
output before the shared out projection) cover that whole joint sequence (`site.block == "joint"`);
the block's output is split back into its two parts, as the block itself returns them: `single-M`
(the image positions) and `single-M-text` (the text positions).

Approximations of the recipes on FLUX (said in README too):
- No classifier-free-guidance rows: FLUX.1-dev embeds `guidance_scale` as a conditioning input (its
  guidance is distilled), so a run is one denoiser row at any guidance and `branch=` must stay "both"
  (`Adapter.cfg`). FLUX.1-schnell has no guidance embedding and ignores the scale.
- LoCoGen (`Swap`) and LoCoEdit act on the double-stream blocks' `add_k_proj`/`add_v_proj`, whose input
  is that block's text stream, recomputed in every block and step: as on SD3, it is averaged over a
  short fixed-seed generation (`StableDiffusion3Adapter.kv_inputs`: 4 steps at the default size,
  `guidance_scale=1`, which FLUX.1-dev reads as its embedded guidance, not the run's). The edit also
  changes what the text tokens read from each other in the edited blocks (they share those keys and
  values). The last single block's text positions feed nothing (the output reads the image's).
- LoCoEdit edits nothing in single-stream blocks: there text and image tokens share one key/value
  projection, so a closed-form text-key edit would also rewrite image-to-image attention. A swapped or
  edited double-stream block still feeds its changed text stream on to the single-stream blocks.
- DiffQuickFix edits CLIP-L, whose pooled output is a global modulation in FLUX; the prompt's tokens
  reach the transformer through T5 only, which DiffQuickFix refuses (see `interventions.diffquickfix`).

Prompts are encoded as `FluxPipeline.encode_prompt` does: CLIP-L's pooled output, T5's last states
(512 tokens, unmasked).
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from interp.sites import SitePattern
from models.base import Adapter, register
from models.sd import StableDiffusionAdapter, clip_text_patterns
from models.sd3 import StableDiffusion3Adapter
from models.t5 import t5_meta_call, t5_text_patterns

_DOUBLE = r"transformer_blocks\.(?P<n>\d+)"
_SINGLE = r"single_transformer_blocks\.(?P<n>\d+)"
T5_TOKENS = 512  # FluxPipeline's default `max_sequence_length`


def flux_patterns() -> tuple[SitePattern, ...]:
    """Site patterns of the double- and single-stream blocks of a `FluxTransformer2DModel`."""
    return (
        SitePattern(_DOUBLE + r"\.attn", "block-{n}-attn", "cross-attn", "image", ("add_k_proj", "add_v_proj")),
        SitePattern(_DOUBLE + r"\.attn", "block-{n}-text-attn", "self-attn", "text", element=1),
        SitePattern(_DOUBLE + r"\.ff", "block-{n}-ff", "ff", "image"),
        SitePattern(_DOUBLE + r"\.ff_context", "block-{n}-text-ff", "ff", "text"),
        SitePattern(_DOUBLE, "block-{n}", "block", "image", element=1),
        SitePattern(_DOUBLE, "block-{n}-text", "block", "text"),
        SitePattern(_SINGLE + r"\.act_mlp", "single-{n}-mlp", "ff", "joint"),
        SitePattern(_SINGLE + r"\.attn", "single-{n}-attn", "self-attn", "joint"),
        SitePattern(_SINGLE, "single-{n}", "block", "image", element=1),
        SitePattern(_SINGLE, "single-{n}-text", "block", "text"),
    )


def flux_meta_call(transformer: torch.nn.Module, latent_hw: tuple[int, int] | None = None,
                   tokens: int = T5_TOKENS) -> object:
    """One forward of a `FluxTransformer2DModel` on meta tensors: `latent_hw` latents (2x2 by default)
    packed into 2x2 patches, `tokens` text tokens."""
    config = transformer.config
    height, width = latent_hw or (2, 2)
    patches = (height // 2) * (width // 2)
    meta = dict(device="meta")
    return transformer(
        torch.zeros(1, patches, config.in_channels, **meta),
        encoder_hidden_states=torch.zeros(1, tokens, config.joint_attention_dim, **meta),
        pooled_projections=torch.zeros(1, config.pooled_projection_dim, **meta),
        timestep=torch.zeros(1, **meta),
        img_ids=torch.zeros(patches, 3, **meta),
        txt_ids=torch.zeros(tokens, 3, **meta),
        guidance=torch.zeros(1, **meta) if config.guidance_embeds else None,
    )


@register("FluxPipeline")
class FluxAdapter(StableDiffusion3Adapter):
    """FLUX.1 (`FluxPipeline`): dev (guidance-distilled) and schnell.

    Shares SD3's handling of joint attention: the double-stream blocks' key/value inputs come from
    `StableDiffusion3Adapter.kv_inputs` (each block's text stream averaged over a short generation).
    """

    family = "flux"
    denoiser = "transformer"
    text_encoders = ("text_encoder", "text_encoder_2")
    tokenizers = ("tokenizer", "tokenizer_2")
    patterns = {
        "text_encoder": clip_text_patterns("text"),
        "text_encoder_2": t5_text_patterns("text2"),
        "transformer": flux_patterns(),
    }
    max_lengths = (None, T5_TOKENS)
    embedded_guidance = True  # one denoiser row per image at any guidance scale (`Adapter.cfg`)

    def components(self, pipe: Any) -> dict[str, torch.nn.Module]:
        return Adapter.components(self, pipe)  # SD3's own asks for a third encoder

    # LoCoGen's `cross-attn-N` alias on each double-stream block's attention, without SD3's pruning of a
    # last block's missing text stream (every FLUX double-stream block has one)
    finish_names = StableDiffusionAdapter.finish_names

    def meta_forward(
        self, component: str, twin: torch.nn.Module, latent_hw: tuple[int, int] | None = None
    ) -> Callable[[torch.nn.Module], object]:
        if component == self.denoiser:
            return lambda transformer: flux_meta_call(transformer, latent_hw)
        if component == "text_encoder_2":
            return t5_meta_call
        return StableDiffusionAdapter.meta_forward(self, component, twin, latent_hw)  # CLIP (SD3's sends T5 here)

    def encode(self, pipe: Any, input_ids: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        clip, t5 = pipe.text_encoder, pipe.text_encoder_2
        pooled = clip(input_ids[0].to(clip.device)).pooler_output.to(dtype=clip.dtype)
        embeds = t5(input_ids[1].to(t5.device))[0].to(dtype=t5.dtype)
        return {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}

    def uncond_kwargs(self, pipe: Any, encode_empty: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """None: without CFG rows (`cfg`) the runner never asks; FluxPipeline's optional true CFG (a
        second, separate denoiser call per step) is not used."""
        return {}

    def context_offsets(self, pipe: Any) -> dict[int, int]:
        return {1: 0}  # the text tokens are T5's alone; CLIP enters pooled

    def latent_shape(self, pipe: Any, height: int, width: int) -> tuple[int, int, int]:
        """The VAE's latent (channels, height, width), before the pipeline packs it into 2x2 patches."""
        scale = pipe.vae_scale_factor
        return pipe.transformer.config.in_channels // 4, height // scale, width // scale

    def default_size(self, pipe: Any) -> tuple[int, int]:
        size = pipe.default_sample_size * pipe.vae_scale_factor
        return size, size
