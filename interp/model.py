"""`interp.load`: one object that knows a pipeline's components, sites and tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from string import Formatter
from typing import TYPE_CHECKING, Any

import torch

from interp.errors import SubjectNotFoundError, TokenRangeError
from interp.sites import Event, Site, SiteMap
import models.base as adapters  # a module reference: models.base imports interp's error types
from models import BUNDLED

if TYPE_CHECKING:
    from models.base import Adapter


@dataclass(frozen=True)
class SubjectSpan:
    """Where a subject sits in one tokenizer's padded sequence (CLIP: BOS at 0; T5 has no BOS)."""

    subject: str
    positions: tuple[int, ...]
    tokens: tuple[str, ...]

    @property
    def last(self) -> int:
        """The subject's last token, where causal tracing finds the text encoder's knowledge."""
        return self.positions[-1]


def template_prefix(template: str) -> str | None:
    """The text before `template`'s slot ("a photo of {}" -> "a photo of ", escaped braces read as
    text), or None unless it has exactly one '{}' slot (no name, index or format spec)."""
    try:
        fields = list(Formatter().parse(template))
    except ValueError:  # an unmatched brace
        return None
    slots = [i for i, (_, name, _, _) in enumerate(fields) if name is not None]
    if len(slots) != 1 or fields[slots[0]][1:] != ("", "", None):
        return None
    return "".join(text for text, *_ in fields[: slots[0] + 1])


def _occurrences(ids: list[int], wanted: list[int]) -> list[int]:
    """Start positions of every occurrence of the run `wanted` in `ids` (none for an empty run)."""
    if not wanted:
        return []
    return [start for start in range(len(ids) - len(wanted) + 1) if ids[start : start + len(wanted)] == wanted]


class Model:
    """A diffusers pipeline seen through its adapter: components, sites, tokens."""

    def __init__(self, pipe: Any, adapter: Adapter | None = None):
        self.pipe = pipe
        self.adapter = adapter or adapters.adapter_for(pipe)

    def __repr__(self) -> str:
        return f"Model({type(self.pipe).__name__}, family={self.adapter.family!r}, sites={len(self.site_map)})"

    # components -----------------------------------------------------------------------------
    @property
    def components(self) -> dict[str, torch.nn.Module]:
        return self.adapter.components(self.pipe)

    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipe, self.adapter.denoiser)

    @property
    def text_encoders(self) -> list[torch.nn.Module]:
        return [getattr(self.pipe, name) for name in self.adapter.text_encoders]

    @property
    def tokenizers(self) -> list[Any]:
        return [getattr(self.pipe, name) for name in self.adapter.tokenizers]

    @property
    def tokenizer(self) -> Any:
        return self.tokenizers[0]

    # sites ----------------------------------------------------------------------------------
    @cached_property
    def _sites_and_events(self) -> tuple[SiteMap, dict[str, dict[str, Event]]]:
        sites, events = self.adapter.sites(self.pipe)
        return SiteMap(sites, self.components, events), events

    @property
    def site_map(self) -> SiteMap:
        return self._sites_and_events[0]

    def sites(self, kind: str | None = None, component: str | None = None) -> list[Site]:
        """Named sites in forward order, optionally of one kind ("cross-attn", "text-mlp", ...)."""
        return self.site_map.filter(kind, component)

    def site(self, name: str | Site) -> Site:
        """A site by canonical name, alias (`cross-attn-6`) or raw module path."""
        return self.site_map[name]

    def event(self, component: str, path: str) -> Event:
        """Forward-pass timing of a module, for ordering reads and writes within one step."""
        return self._sites_and_events[1][component][path]

    # tokens ---------------------------------------------------------------------------------
    @property
    def max_length(self) -> int:
        return self.adapter.token_length(self.pipe)

    def token_ids(self, prompts: list[str], tokenizer_index: int = 0) -> torch.Tensor:
        """Padded ids exactly as the pipeline tokenizes prompts (its text preprocessing, max length,
        truncation)."""
        tokenizer = self.tokenizers[tokenizer_index]
        return tokenizer(
            [self.adapter.preprocess(p) for p in prompts], padding="max_length",
            max_length=self.adapter.token_length(self.pipe, tokenizer_index), truncation=True, return_tensors="pt",
        ).input_ids

    def tokenizer_index(self, site: str | Site) -> int:
        """The tokenizer whose positions `site`'s tokens are: its text encoder's (tokenizers and text
        encoders pair up in order; SD3's `text3-*` sites read T5's), the first for denoiser sites."""
        component = self.site(site).component
        encoders = self.adapter.text_encoders
        return encoders.index(component) if component in encoders else 0

    def tokens(self, prompt: str, tokenizer_index: int = 0) -> list[str]:
        """The prompt's tokens (of one tokenizer) up to and including the first EOS."""
        tokenizer = self.tokenizers[tokenizer_index]
        ids = self.token_ids([prompt], tokenizer_index)[0].tolist()
        end = ids.index(tokenizer.eos_token_id) + 1 if tokenizer.eos_token_id in ids else len(ids)
        return tokenizer.convert_ids_to_tokens(ids[:end])

    def locate(self, prompt: str, subject: str, tokenizer_index: int = 0, template: str | None = None) -> SubjectSpan:
        """Token positions of `subject` in `prompt` as tokenizer `tokenizer_index` splits it
        (`tokenizer_index(site)` says which one a site's positions use).

        Without `template`, the first occurrence. With it (`prompt` must be `template.format(subject)`),
        the occurrence in the template's slot: in "a painting in the style of {}" filled with "painting",
        the second "painting", not the first. The slot's occurrence is counted, not measured: the
        template's text before the slot holds n occurrences of the subject's tokens, so the slot is
        occurrence n + 1 (robust to a tokenizer splitting the text around the slot differently).
        """
        tokenizer = self.tokenizers[tokenizer_index]
        wanted = self._subject_ids(subject, tokenizer_index)
        ids = self.token_ids([prompt], tokenizer_index)[0].tolist()
        starts = _occurrences(ids, wanted)
        before = 0 if template is None else self._slot_occurrence(prompt, subject, template, wanted, tokenizer_index)
        if len(starts) > before:
            positions = tuple(range(starts[before], starts[before] + len(wanted)))
            return SubjectSpan(subject, positions, tuple(tokenizer.convert_ids_to_tokens(wanted)))
        where, fix = ("", "pass a subject spelled as in the prompt") if template is None else (
            f" in the slot of template {template!r}",
            f"the tokenizer cuts prompts at {len(ids)} tokens: shorten the template",
        )
        raise SubjectNotFoundError(
            f"subject {subject!r} (tokens {tokenizer.convert_ids_to_tokens(wanted)}) is not in prompt "
            f"{prompt!r}{where}, whose tokens are {self.tokens(prompt, tokenizer_index)}; {fix}"
        )

    def _subject_ids(self, text: str, tokenizer_index: int) -> list[int]:
        """`text`'s token ids without special tokens, as the pipeline would preprocess it."""
        tokenizer = self.tokenizers[tokenizer_index]
        return tokenizer(self.adapter.preprocess(text), add_special_tokens=False).input_ids

    def _slot_occurrence(
        self, prompt: str, subject: str, template: str, wanted: list[int], tokenizer_index: int
    ) -> int:
        """Which occurrence of the subject's tokens `wanted` the slot is (0 for the first): how often they
        occur in `template`'s text before its slot."""
        prefix = template_prefix(template)
        if prefix is None or template.format(subject) != prompt:
            raise SubjectNotFoundError(
                f"template {template!r} must have exactly one '{{}}' slot and give prompt {prompt!r} when filled "
                f"with subject {subject!r}; pass the template the prompt was made from"
            )
        return len(_occurrences(self._subject_ids(prefix, tokenizer_index), wanted))

    def check_positions(self, positions: tuple[int, ...] | list[int], site: str | Site | None = None) -> None:
        """Raise `TokenRangeError` for a position outside the padded sequence (`site`'s tokenizer's)."""
        length = self.adapter.token_length(self.pipe, 0 if site is None else self.tokenizer_index(site))
        bad = [p for p in positions if not -length <= p < length]
        if bad:
            where = "" if site is None else f" of {self.site(site).name}"
            raise TokenRangeError(
                f"token positions {bad} are out of range: sequences{where} have {length} positions "
                f"(0 .. {length - 1})"
            )

    # generation -----------------------------------------------------------------------------
    def default_size(self) -> tuple[int, int]:
        return self.adapter.default_size(self.pipe)

    @staticmethod
    def generators(seeds: list[int]) -> list[torch.Generator]:
        """One CPU generator per image: row i gets exactly the noise (initial and per-step, for
        stochastic schedulers) that `pipe(generator=torch.Generator().manual_seed(seeds[i]))` draws
        for a single image, on any device."""
        return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]


def load(source: Any, **kwargs: Any) -> Model:
    """A `Model` from a built pipeline, a folder saved with `save_pretrained`, a hub id, or "tiny"
    ("tiny-grounded": the bundled tiny model with its grounded UNet, `models.tiny.GROUNDED_UNET_DIR`).

    `kwargs` go to `DiffusionPipeline.from_pretrained` (e.g. `torch_dtype`).
    """
    if isinstance(source, Model):
        return source
    if isinstance(source, (str, Path)):
        source = _load_pipeline(str(source), **kwargs)
    return Model(source)


def _load_pipeline(source: str, **kwargs: Any) -> Any:
    from diffusers import DiffusionPipeline

    if source in BUNDLED:
        from models.tiny import load_pipeline

        return load_pipeline(grounded=source == "tiny-grounded", **kwargs)
    if Path(source).exists() and not (Path(source) / "model_index.json").exists():
        raise FileNotFoundError(f"{source} is a path without model_index.json; save the pipeline with save_pretrained")
    pipe = DiffusionPipeline.from_pretrained(source, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe
