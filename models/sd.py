"""Stable Diffusion 1.x / 2.x and OpenJourney: one CLIP text encoder and a `UNet2DConditionModel`.

Site names follow the papers' figure labels: `down-1-resnet-1`, `down-0-self-attn-1`,
`mid-cross-attn`, `up-1-ff-2`, `text-self-attn-0`, `text-mlp-11`, `text-hidden-3`, `text-embed`.
Cross-attention layers also answer to LoCoGen's index, `cross-attn-0` .. `cross-attn-15` in forward
order (SD1.x: 0-5 down, 6 mid, 7-15 up).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable

import torch

from interp.sites import Site, SitePattern
from models.base import Adapter, register

_TB = r"\.attentions\.(?P<j>\d+)\.transformer_blocks\.(?P<t>\d+)"
_UPDOWN = r"(?P<b>down|up)_blocks\.(?P<i>\d+)"


def resnet_patterns() -> list[SitePattern]:
    """Site patterns of the resnets of a diffusers UNet's down, mid and up blocks."""
    return [
        SitePattern(_UPDOWN + r"\.resnets\.(?P<j>\d+)", "{b}-{i}-resnet-{j}", "resnet", "{b}"),
        SitePattern(r"mid_block\.resnets\.(?P<j>\d+)", "mid-resnet-{j}", "resnet", "mid"),
    ]


def unet_patterns() -> tuple[SitePattern, ...]:
    """Site patterns of a diffusers `UNet2DConditionModel` (shared with SDXL)."""
    layers = (("attn1", "self-attn", ()), ("attn2", "cross-attn", ("to_k", "to_v")), ("ff", "ff", ()))
    patterns = resnet_patterns()
    for module, kind, kv in layers:
        patterns.append(SitePattern(_UPDOWN + _TB + rf"\.{module}", "{b}-{i}-%s-{j}.{t}" % kind, kind, "{b}", kv))
        patterns.append(SitePattern(r"mid_block" + _TB + rf"\.{module}", "mid-%s-{j}.{t}" % kind, kind, "mid", kv))
    return tuple(patterns)


def clip_text_patterns(prefix: str = "text") -> tuple[SitePattern, ...]:
    """Site patterns of a transformers CLIP text model (with or without the `text_model.` level)."""
    root = r"(?:text_model\.)?"
    layer = root + r"encoder\.layers\.(?P<n>\d+)"
    return (
        SitePattern(root + r"embeddings\.token_embedding", f"{prefix}-embed", "text-embed", "text"),
        SitePattern(layer + r"\.self_attn", prefix + "-self-attn-{n}", "text-self-attn", "text"),
        SitePattern(layer + r"\.mlp", prefix + "-mlp-{n}", "text-mlp", "text"),
        SitePattern(layer, prefix + "-hidden-{n}", "text-hidden", "text"),
    )


_BLOCK = re.compile(r"(.*\.attentions\.\d+)\.transformer_blocks\.(\d+)\.")
_MID_ATTENTION = re.compile(r"mid_block\.attentions\.\d+")


def tidy_unet_names(sites: list[Site]) -> list[Site]:
    """Drop indices that carry no information and add LoCoGen's cross-attention index alias.

    `.t` (transformer block within an attention) goes where an attention has one block; the mid
    block's attention index goes where it has one attention (`mid-cross-attn`).
    """
    depth: dict[str, int] = {}
    for site in sites:
        if found := _BLOCK.match(site.path + "."):
            depth[found[1]] = max(depth.get(found[1], 0), int(found[2]) + 1)
    single_mid = len({m[0] for s in sites if (m := _MID_ATTENTION.match(s.path))}) == 1
    tidy, cross = [], 0
    for site in sites:
        name, aliases = site.name, site.aliases
        if found := _BLOCK.match(site.path + "."):
            name = name.rsplit(".", 1)[0] if depth[found[1]] == 1 else name
        if single_mid and _MID_ATTENTION.match(site.path):
            name = re.sub(r"-0(?=$|\.)", "", name, count=1)
        if site.kind == "cross-attn":
            aliases, cross = (*aliases, f"cross-attn-{cross}"), cross + 1
        tidy.append(dataclasses.replace(site, name=name, aliases=aliases))
    return tidy


@register("StableDiffusionPipeline")
class StableDiffusionAdapter(Adapter):
    """SD 1.x/2.x: prompt embeddings are the CLIP text model's last hidden state."""

    family = "sd"
    denoiser = "unet"
    text_encoders = ("text_encoder",)
    tokenizers = ("tokenizer",)
    patterns = {"text_encoder": clip_text_patterns(), "unet": unet_patterns()}

    def finish_names(self, component: str, sites: list[Site]) -> list[Site]:
        return tidy_unet_names(sites) if component == self.denoiser else sites

    def meta_forward(
        self, component: str, twin: torch.nn.Module, latent_hw: tuple[int, int] | None = None
    ) -> Callable[[torch.nn.Module], object]:
        if component == self.denoiser:
            return lambda unet: unet_meta_call(unet, latent_hw)
        length = twin.config.max_position_embeddings
        return lambda text: text(torch.zeros(1, length, dtype=torch.long, device="meta"))

    def encode(self, pipe: Any, input_ids: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        encoder = pipe.text_encoder
        embeds = encoder(input_ids[0].to(encoder.device))[0]
        return {"prompt_embeds": embeds.to(dtype=encoder.dtype)}

    def uncond_kwargs(self, pipe: Any, encode_empty: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        return {f"negative_{key}": value for key, value in encode_empty().items()}

    def latent_shape(self, pipe: Any, height: int, width: int) -> tuple[int, int, int]:
        scale = getattr(pipe, "vae_scale_factor", 1)  # pixel-space pipelines (DeepFloyd IF) have no VAE
        return getattr(pipe, self.denoiser).config.in_channels, height // scale, width // scale


def unet_meta_call(unet: torch.nn.Module, latent_hw: tuple[int, int] | None = None, tokens: int = 77) -> object:
    """One forward of a `UNet2DConditionModel` on meta tensors; small spatially by default.

    SDXL-style UNets (`addition_embed_type="text_time"`) also get pooled text embeds and time ids.
    UNets that project the text first (DeepFloyd's `encoder_hid_dim`) get it at the encoder's width.
    """
    config = unet.config
    side = 2 ** len(config.down_block_types)
    height, width = latent_hw or (side, side)
    meta = dict(device="meta")
    sample = torch.zeros(1, config.in_channels, height, width, **meta)
    context = torch.zeros(1, tokens, config.encoder_hid_dim or config.cross_attention_dim, **meta)
    added = None
    if config.addition_embed_type == "text_time":
        time_ids = 6
        pooled = config.projection_class_embeddings_input_dim - time_ids * config.addition_time_embed_dim
        added = {"text_embeds": torch.zeros(1, pooled, **meta), "time_ids": torch.zeros(1, time_ids, **meta)}
    return unet(sample, torch.zeros((), **meta), context, added_cond_kwargs=added)
