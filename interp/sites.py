"""Sites: named places in a model whose activations can be read or replaced.

A site is data: which component it lives in, the module path there, what kind of layer it is and
where it sits in forward order. `SiteMap` holds a model's sites and resolves canonical names,
aliases (LoCoGen's cross-attention index) and raw dotted module paths; an unknown name is an
`UnknownSiteError` listing the closest real names.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import torch

from interp.errors import UnknownSiteError

TEXT_KINDS = ("text-embed", "text-self-attn", "text-mlp", "text-hidden")
DENOISER_KINDS = ("resnet", "self-attn", "cross-attn", "ff")
LATENT = "latent"  # the denoiser's input sample at each step: a site of every model


@dataclass(frozen=True)
class Site:
    """One hook point: the output (or, for `io="input"`, the first input) of a module.

    `order` is the position of this site's event in one forward pass of its component, so sorting
    by (component rank, order) is forward order. `tuple_output` marks modules that return a tuple;
    `element` is the index of the site's activation in it (0: text-encoder self-attention; 1: the
    image stream of an MMDiT joint block, which returns (text, image)). `kv_paths` names, for a
    cross-attention site, the key and value projections whose input is the text embedding.
    """

    name: str
    component: str
    path: str
    kind: str
    block: str = ""
    order: int = 0
    tuple_output: bool = False
    element: int = 0
    kv_paths: tuple[str, ...] = ()
    aliases: tuple[str, ...] = field(default=())
    io: str = "output"

    @property
    def is_text(self) -> bool:
        """Whether the site belongs to a text encoder (acts once per prompt, not per step)."""
        return self.kind in TEXT_KINDS or self.component.startswith("text_encoder")

    @property
    def qualified_path(self) -> str:
        """`component.path`, the raw name a user may type."""
        return f"{self.component}.{self.path}" if self.path else self.component


@dataclass(frozen=True)
class SitePattern:
    """A rule naming modules: a regex over module paths and a name template over its groups.

    `element` picks the activation from a module that returns a tuple (see `Site.element`); several
    patterns may match one module to name several elements of its output.
    """

    regex: str
    name: str
    kind: str
    block: str = ""
    kv: tuple[str, ...] = ()
    element: int = 0

    def match(self, path: str) -> dict[str, str] | None:
        found = re.fullmatch(self.regex, path)
        return found.groupdict() if found else None


class SiteMap:
    """A model's sites in forward order, with lookup by name, alias or raw module path."""

    def __init__(self, sites: Iterable[Site], modules: dict[str, torch.nn.Module]):
        self._sites = list(sites)
        self._modules = modules  # component name -> root module, for raw paths
        self._by_name: dict[str, Site] = {}
        for site in self._sites:
            for key in (site.name, *site.aliases, site.qualified_path):
                self._by_name.setdefault(key, site)

    def __iter__(self) -> Iterator[Site]:
        return iter(self._sites)

    def __len__(self) -> int:
        return len(self._sites)

    def __contains__(self, name: object) -> bool:
        try:
            self[str(name)]
        except UnknownSiteError:
            return False
        return True

    def names(self) -> list[str]:
        return [s.name for s in self._sites if s.kind != LATENT]

    def filter(self, kind: str | None = None, component: str | None = None) -> list[Site]:
        """Sites of one kind (e.g. "cross-attn", "text-mlp") and/or component, in forward order.

        Without a kind: the layers' sites, not the denoiser's input (`latent`, asked for by kind or name).
        """
        if kind is not None and kind not in {s.kind for s in self._sites}:
            kinds = sorted({s.kind for s in self._sites})
            raise UnknownSiteError(f"no sites of kind {kind!r}; this model has kinds {kinds}")
        return [
            s
            for s in self._sites
            if (s.kind == kind if kind is not None else s.kind != LATENT)
            and (component is None or s.component == component)
        ]

    def __getitem__(self, name: str) -> Site:
        if isinstance(name, Site):
            return name
        site = self._by_name.get(name)
        if site is not None:
            return site
        raw = self._raw_site(name)
        if raw is not None:
            return raw
        close = difflib.get_close_matches(name, list(self._by_name), n=5, cutoff=0.5)
        hint = f"closest: {', '.join(close)}" if close else f"e.g. {', '.join(self.names()[:5])}"
        raise UnknownSiteError(
            f"unknown site {name!r}; {hint}. List all with model.sites() or `interp sites`."
        )

    def _raw_site(self, name: str) -> Site | None:
        """A dotted module path ("unet.mid_block.attentions.0" or one unique within a component)."""
        candidates = []
        for component, root in self._modules.items():
            path = name[len(component) + 1 :] if name.startswith(component + ".") else name
            try:
                root.get_submodule(path)
            except AttributeError:
                continue
            candidates.append((component, path))
        if len(candidates) != 1:
            return None
        component, path = candidates[0]
        anchor = next((s for s in self._sites if s.component == component and s.path == path), None)
        if anchor is not None:
            return anchor
        return Site(name=f"{component}.{path}", component=component, path=path, kind="module",
                    order=self._raw_order(component, path))

    def _raw_order(self, component: str, path: str) -> int:
        """Forward order of a raw module: that of the first named site inside it, else the last."""
        inside = [s.order for s in self._sites if s.component == component and
                  (s.path + ".").startswith(path + ".")]
        return min(inside) if inside else max((s.order for s in self._sites), default=0)


@dataclass(frozen=True)
class Event:
    """When a module is entered (`pre`) and left (`post`) in one forward pass, and its output type."""

    pre: int
    post: int
    tuple_output: bool


def forward_events(module: torch.nn.Module, run: Callable[[torch.nn.Module], object]) -> dict[str, Event]:
    """Module path -> its first call's `Event`, recorded during `run(module)`.

    `run` calls `module` (usually a meta-device twin, so this costs no memory or compute). Module
    registration order is not forward order in diffusers UNets, hence a real pass.
    """
    entered: dict[str, int] = {}
    events: dict[str, Event] = {}
    counter = iter(range(1 << 30))
    handles = []
    for path, sub in module.named_modules():
        def pre(_m, _a, path=path):
            entered.setdefault(path, next(counter))

        def post(_m, _a, out, path=path):
            if path not in events:
                events[path] = Event(entered[path], next(counter), isinstance(out, tuple))

        handles.append(sub.register_forward_pre_hook(pre))
        handles.append(sub.register_forward_hook(post))
    try:
        with torch.no_grad():
            run(module)
    finally:
        for handle in handles:
            handle.remove()
    return events


def name_sites(
    component: str,
    module: torch.nn.Module,
    patterns: Iterable[SitePattern],
    events: dict[str, Event],
    rename: Callable[[str, str, dict[str, str]], str] | None = None,
) -> list[Site]:
    """Apply naming patterns to every module path of `module` (each matching pattern names one site),
    ordered by `events`; modules never called in forward (e.g. an unused projection) are skipped."""
    sites = []
    for path, _ in module.named_modules():
        if path not in events:
            continue
        event = events[path]
        for pattern in patterns:
            groups = pattern.match(path)
            if groups is None:
                continue
            name = pattern.name.format(**groups)
            if rename is not None:
                name = rename(name, path, groups)
            kv = tuple(f"{path}.{k}" for k in pattern.kv)
            sites.append(Site(name, component, path, pattern.kind, pattern.block.format(**groups),
                              event.post, event.tuple_output, pattern.element, kv))
    return sorted(sites, key=lambda s: s.order)


def latent_site(component: str, events: dict[str, Event]) -> Site:
    """The denoiser's input sample (`latent`), read or replaced before anything else in a step.

    Restoring it into another run makes that run denoise this run's latent: the aligned causal
    trace's donor is the clean prompt on the restored run's own latent (a "shadow" row).
    """
    return Site(LATENT, component, "", LATENT, order=events[""].pre, io="input")


def meta_twin(module: torch.nn.Module) -> torch.nn.Module:
    """A weightless copy of `module` on the meta device, built from its config (also for a module
    that accelerate offloaded: its meta weights come with hooks that fetch the real ones)."""
    if next(module.parameters()).device.type == "meta" and not hasattr(module, "_hf_hook"):
        return module
    with torch.device("meta"):
        if hasattr(module, "from_config"):  # diffusers
            return type(module).from_config(module.config)
        return type(module)(module.config)  # transformers
