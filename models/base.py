"""What the core needs to know about one family of pipelines, and the registry of families.

An adapter is mostly data (component names, site-naming patterns, key/value projections) plus three
small functions that differ per family: the meta-device forward that orders sites, the encoding of
prompts into the denoiser's conditioning, and the pipeline call kwargs built from it.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar

import torch

from interp.errors import UnsupportedModelError
from interp.sites import Event, Site, SitePattern, forward_events, latent_site, meta_twin, name_sites

ADAPTERS: dict[str, type["Adapter"]] = {}
# imported on first lookup; each registers its adapters
FAMILY_MODULES = ("models.sd", "models.sdxl", "models.deepfloyd", "models.pixart", "models.sd3", "models.flux")


def register(*pipeline_classes: str) -> Callable[[type["Adapter"]], type["Adapter"]]:
    """Class decorator: this adapter serves pipelines of these class names."""

    def wrap(cls: type[Adapter]) -> type[Adapter]:
        for name in pipeline_classes:
            ADAPTERS[name] = cls
        return cls

    return wrap


def adapter_for(pipe: Any) -> "Adapter":
    """The adapter registered for `pipe`'s class (or a base class of it)."""
    for module in FAMILY_MODULES:
        importlib.import_module(module)
    for klass in type(pipe).__mro__:
        if klass.__name__ in ADAPTERS:
            return ADAPTERS[klass.__name__]()
    raise UnsupportedModelError(
        f"no adapter for {type(pipe).__name__}; known pipelines: {sorted(ADAPTERS)}. An adapter "
        "(one file in models/) declares the text encoder and denoiser components, site patterns, "
        "cross-attention key/value projections and how prompts are encoded; see "
        "docs/adding_an_architecture.md and models/sd.py."
    )


class Adapter(ABC):
    """One family of text-to-image pipelines."""

    family: ClassVar[str]
    denoiser: ClassVar[str]
    text_encoders: ClassVar[tuple[str, ...]]
    tokenizers: ClassVar[tuple[str, ...]]
    patterns: ClassVar[dict[str, tuple[SitePattern, ...]]]
    max_lengths: ClassVar[tuple[int | None, ...]] = ()  # per tokenizer, where the pipeline fixes the length
    embedded_guidance: ClassVar[bool] = False  # guidance is a denoiser input, not CFG rows (FLUX.1)

    def components(self, pipe: Any) -> dict[str, torch.nn.Module]:
        """Component name -> module, text encoders first (their forward comes first)."""
        return {name: getattr(pipe, name) for name in (*self.text_encoders, self.denoiser)}

    def sites(self, pipe: Any) -> tuple[list[Site], dict[str, dict[str, Event]]]:
        """Every named site in forward order, and the forward events of each component."""
        sites: list[Site] = []
        events: dict[str, dict[str, Event]] = {}
        for component, module in self.components(pipe).items():
            twin = meta_twin(module)
            events[component] = forward_events(twin, self.meta_forward(component, twin))
            found = self.finish_names(component, name_sites(component, module, self.patterns[component], events[component]))
            if component == self.denoiser:
                found = [latent_site(component, events[component]), *found]
            sites.extend(found)
        return sites, events

    def finish_names(self, component: str, sites: list[Site]) -> list[Site]:
        """Hook for family-specific renaming and aliases; the identity by default."""
        return sites

    @abstractmethod
    def meta_forward(
        self, component: str, twin: torch.nn.Module, latent_hw: tuple[int, int] | None = None
    ) -> Callable[[torch.nn.Module], object]:
        """A function running one forward pass of `twin` on meta tensors (denoiser: at `latent_hw`,
        or the smallest size its blocks accept)."""

    @abstractmethod
    def encode(self, pipe: Any, input_ids: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Pipeline kwargs of the conditional branch from token ids (one tensor per tokenizer)."""

    @abstractmethod
    def uncond_kwargs(self, pipe: Any, encode_empty: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """The pipeline's negative_* kwargs, as `pipe(prompt)` would compute them.

        `encode_empty()` returns `encode`'s output for the empty prompt, one row per run.
        """

    @abstractmethod
    def latent_shape(self, pipe: Any, height: int, width: int) -> tuple[int, int, int]:
        """(channels, height, width) of the initial noise for an image of this size."""

    def default_size(self, pipe: Any) -> tuple[int, int]:
        """The pipeline's default (height, width) in pixels (pixel-space pipelines have no VAE)."""
        size = getattr(pipe, self.denoiser).config.sample_size * getattr(pipe, "vae_scale_factor", 1)
        return size, size

    def token_length(self, pipe: Any, index: int = 0) -> int:
        """The length tokenizer `index`'s prompts are padded to: fixed by the pipeline (`max_lengths`; IF 77,
        PixArt 120, SD3's T5 256) or the tokenizer's `model_max_length`."""
        fixed = self.max_lengths[index] if index < len(self.max_lengths) else None
        return fixed or getattr(pipe, self.tokenizers[index]).model_max_length

    def preprocess(self, prompt: str) -> str:
        """The prompt text the pipeline tokenizes (T5 pipelines lowercase and strip it)."""
        return prompt

    def cfg(self, guidance_scale: float) -> bool:
        """Whether a run at `guidance_scale` has classifier-free-guidance rows [uncond..., cond...] in the
        denoiser's batch: above 1, unless the family embeds its guidance (FLUX.1: one row per image)."""
        return guidance_scale > 1.0 and not self.embedded_guidance

    def call_kwargs(self, pipe: Any) -> dict[str, Any]:
        """Extra kwargs of every pipeline call (e.g. turning off a size rounding the runner must not do)."""
        return {}

    def postprocess(self, images: torch.Tensor) -> torch.Tensor:
        """`pipe(..., output_type="pt")` images as floats in [0, 1] (the identity for VAE pipelines)."""
        return images

    def context(self, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """The tensor cross-attention layers read keys and values from, given `encode`'s output."""
        return cond["prompt_embeds"]

    def context_offsets(self, pipe: Any) -> dict[int, int]:
        """Tokenizer index -> where its token positions start along the context's sequence axis (and
        so along each `kv_input`'s): the first tokenizer's at 0 by default (SD3 appends T5's tokens)."""
        return {0: 0}

    def kv_input(self, pipe: Any, site: Site, cond: dict[str, torch.Tensor]) -> torch.Tensor:
        """What `site`'s key/value projections (`site.kv_paths`) take as input, given `encode`'s output:
        the context by default; a family that projects or normalizes it first (per layer) says so."""
        return self.context(cond)

    def kv_inputs(self, pipe: Any, sites: list[Site], cond: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """`kv_input` of each of `sites`, in order; a family whose inputs all come from one forward pass
        (SD3's joint attention) computes them in that one pass."""
        return [self.kv_input(pipe, site, cond) for site in sites]
