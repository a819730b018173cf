"""Stable Diffusion 3: CLIP-L, OpenCLIP bigG and T5 text encoders and an MMDiT (`SD3Transformer2DModel`).

Text sites per encoder: `text-*` (CLIP-L), `text2-*` (bigG), `text3-*` (T5). Each joint block N
carries two streams, image and text (`site.block`): `block-N-attn` (the joint attention's image
output; image queries read text keys/values through `add_k_proj`/`add_v_proj`, its key/value
projections; LoCoGen index `cross-attn-N`), `block-N-self-attn` (SD3.5's second, image-only
attention, where present), `block-N-ff` (image), `block-N` (the image stream's block output, named
as PixArt's), `block-N-text-ff` and `block-N-text` (the text stream's feed-forward and block output;
the last block updates no text stream). A joint block returns (text, image), so `block-N-text` is
element 0 of its output and `block-N` element 1 (`SitePattern.element`).

Prompts are encoded as `StableDiffusion3Pipeline.encode_prompt` does without clip skip: both CLIP
encoders' penultimate states, concatenated and zero-padded to T5's width, then T5's states (256
tokens, unmasked) appended along the sequence; the CLIP pooled outputs concatenated.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import torch
import torch.nn.functional as F

from interp.errors import UnsupportedModelError
from interp.sites import Site, SitePattern
from models.base import register
from models.sd import StableDiffusionAdapter, clip_text_patterns
from models.t5 import t5_meta_call, t5_text_patterns

_BLOCK = r"transformer_blocks\.(?P<n>\d+)"
KV_STEPS = 4  # steps of the generation whose text streams `kv_inputs` averages
KV_SEED = 0


def mmdit_patterns() -> tuple[SitePattern, ...]:
    """Site patterns of the joint blocks of an `SD3Transformer2DModel`."""
    return (
        SitePattern(_BLOCK + r"\.attn", "block-{n}-attn", "cross-attn", "image", ("add_k_proj", "add_v_proj")),
        SitePattern(_BLOCK + r"\.attn2", "block-{n}-self-attn", "self-attn", "image"),
        SitePattern(_BLOCK + r"\.ff", "block-{n}-ff", "ff", "image"),
        SitePattern(_BLOCK + r"\.ff_context", "block-{n}-text-ff", "ff", "text"),
        SitePattern(_BLOCK, "block-{n}", "block", "image", element=1),
        SitePattern(_BLOCK, "block-{n}-text", "block", "text"),
    )


def sd3_meta_call(transformer: torch.nn.Module, latent_hw: tuple[int, int] | None = None, tokens: int = 8) -> object:
    """One forward of an `SD3Transformer2DModel` on meta tensors, at its sample size by default."""
    config = transformer.config
    height, width = latent_hw or (config.sample_size, config.sample_size)
    meta = dict(device="meta")
    return transformer(
        torch.zeros(1, config.in_channels, height, width, **meta),
        encoder_hidden_states=torch.zeros(1, tokens, config.joint_attention_dim, **meta),
        pooled_projections=torch.zeros(1, config.pooled_projection_dim, **meta),
        timestep=torch.zeros(1, **meta),
    )


def _block_index(site: Site) -> int:
    return int(re.match(r"transformer_blocks\.(\d+)", site.path)[1])


@register("StableDiffusion3Pipeline")
class StableDiffusion3Adapter(StableDiffusionAdapter):
    """SD3 / SD3.5 (`StableDiffusion3Pipeline`) with all three text encoders."""

    family = "sd3"
    denoiser = "transformer"
    text_encoders = ("text_encoder", "text_encoder_2", "text_encoder_3")
    tokenizers = ("tokenizer", "tokenizer_2", "tokenizer_3")
    patterns = {
        "text_encoder": clip_text_patterns("text"),
        "text_encoder_2": clip_text_patterns("text2"),
        "text_encoder_3": t5_text_patterns("text3"),
        "transformer": mmdit_patterns(),
    }
    max_lengths = (None, None, 256)  # the pipeline's default `max_sequence_length` for T5

    def components(self, pipe: Any) -> dict[str, torch.nn.Module]:
        if pipe.text_encoder_3 is None:
            raise UnsupportedModelError("this SD3 pipeline has no T5 encoder (text_encoder_3=None); load it with T5")
        return super().components(pipe)

    def finish_names(self, component: str, sites: list[Site]) -> list[Site]:
        if component != self.denoiser:
            return sites
        # a block without a text feed-forward (the last, `context_pre_only`) outputs no text stream
        with_text_ff = {_block_index(s) for s in sites if s.name.endswith("-text-ff")}
        kept = [s for s in sites if (s.kind, s.block) != ("block", "text") or _block_index(s) in with_text_ff]
        return super().finish_names(component, kept)  # LoCoGen's cross-attn-N alias on the joint attention

    def meta_forward(
        self, component: str, twin: torch.nn.Module, latent_hw: tuple[int, int] | None = None
    ) -> Callable[[torch.nn.Module], object]:
        if component == self.denoiser:
            return lambda transformer: sd3_meta_call(transformer, latent_hw)
        if component == "text_encoder_3":
            return t5_meta_call
        return super().meta_forward(component, twin, latent_hw)

    def encode(self, pipe: Any, input_ids: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        hidden, pooled = [], []
        for encoder, ids in zip((pipe.text_encoder, pipe.text_encoder_2), input_ids):
            out = encoder(ids.to(encoder.device), output_hidden_states=True)
            pooled.append(out[0])
            hidden.append(out.hidden_states[-2].to(dtype=pipe.text_encoder.dtype))
        t5 = pipe.text_encoder_3
        t5_embeds = t5(input_ids[2].to(t5.device))[0].to(dtype=t5.dtype)
        clip = torch.cat(hidden, dim=-1)
        clip = F.pad(clip, (0, t5_embeds.shape[-1] - clip.shape[-1]))
        return {"prompt_embeds": torch.cat([clip, t5_embeds], dim=-2), "pooled_prompt_embeds": torch.cat(pooled, -1)}

    def context_offsets(self, pipe: Any) -> dict[int, int]:
        return {0: 0, 2: self.token_length(pipe, 0)}  # CLIP-L and bigG side by side, then T5

    def kv_input(self, pipe: Any, site: Site, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.kv_inputs(pipe, [site], cond)[0]

    def kv_inputs(self, pipe: Any, sites: list[Site], cond: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """What each joint attention's `add_k_proj`/`add_v_proj` read for the prompt(s) in `cond`: the
        block's own (normalized, timestep-modulated) text stream, averaged over a short generation.

        That stream depends on the block, the step and the image, so no single tensor is exact. The
        approximation: generate each prompt alone (no guidance, `KV_STEPS` steps, the pipeline's
        default size, seed `KV_SEED` for every row, so a prompt's result does not depend on the
        others in the batch) and average each block's input over the steps. Swap feeds this to the
        swapped blocks at every step; LoCoEdit takes its keys and targets from it.
        """
        transformer = pipe.transformer
        sums: dict[str, torch.Tensor] = {}

        def record(name: str) -> Callable[..., None]:
            def hook(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
                sums[name] = sums.get(name, 0) + args[0].detach().float()

            return hook

        handles = [transformer.get_submodule(s.kv_paths[0]).register_forward_pre_hook(record(s.name)) for s in sites]
        height, width = self.default_size(pipe)
        rows = len(cond["prompt_embeds"])
        try:
            with torch.no_grad():
                pipe(**cond, num_inference_steps=KV_STEPS, guidance_scale=1.0, height=height, width=width,
                     output_type="latent", generator=[torch.Generator().manual_seed(KV_SEED) for _ in range(rows)])
        finally:
            for handle in handles:
                handle.remove()
        dtype = cond["prompt_embeds"].dtype
        return [(sums[s.name] / KV_STEPS).to(dtype) for s in sites]
