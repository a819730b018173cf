"""Sites: named places in a model whose activations can be read or replaced.

A site is data: which component it lives in, the module path there, what kind of layer it is and
where it sits in forward order. `SiteMap` holds a model's sites and resolves canonical names,
aliases (LoCoGen's cross-attention index) and raw dotted module paths; an unknown name is an
`UnknownSiteError` listing the closest real names.

Finer sites are derived from a layer's site by a suffix (see `SiteMap.derived`):
- `<attention site>.head-H`: head H's slice of the attention output before the out projection (the
  out projection's input, its last dim split into the module's heads);
- `<cross-attention site>.head-H.k` / `.head-H.v`: head H's slice of the key / value projection's
  output (what the head reads from the text);
- `<feed-forward site>.neuron`: the hidden activation after the nonlinearity (the input of the
  feed-forward's output projection); an op's `units=` picks hidden units (all by default).
Head counts and widths are read from the modules (`HEAD_LAYOUTS`, `NEURON_LAYOUTS`), so they are
known for the full-size layout on the meta device too.
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
ATTENTION_KINDS = ("self-attn", "cross-attn", "text-self-attn")
FEED_FORWARD_KINDS = ("ff", "text-mlp")
HEAD, NEURON = "head", "neuron"  # kinds of the derived sites
# Per output element of an attention module: (its out projection inside the module, the attribute
# holding the head count), tried in order. Element 0: diffusers `Attention` (UNets, DiTs, MMDiT),
# transformers CLIP, T5; element 1: the text stream of a joint (MMDiT / FLUX) attention. An attention
# without an out projection (FLUX's single-stream blocks) has its heads side by side in its own output.
HEAD_LAYOUTS = {0: (("to_out.0", "heads"), ("out_proj", "num_heads"), ("o", "n_heads")), 1: (("to_add_out", "heads"),)}
# The output projection of a feed-forward: diffusers `FeedForward`, CLIP's MLP, T5's (gated) dense. A
# feed-forward site that is itself the activation (FLUX's single-stream `act_mlp`) is its own neurons.
NEURON_LAYOUTS = ("net.2", "fc2", "wo")
_DERIVED = re.compile(r"(?P<base>.+?)\.(?:head-(?P<head>\d+)(?:\.(?P<kv>[kv]))?|(?P<neuron>neuron))")


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
    projection: str = ""  # attention / feed-forward: its out projection's path, relative to `path`
    heads: int = 0  # attention: number of heads
    head_dim: int = 0  # attention: width of one head (the out projection's input is heads x head_dim)
    units: int = 0  # feed-forward: hidden units (the out projection's input width)
    parent: str = ""  # a derived site (head, neuron): the layer site it slices
    columns: tuple[int, int] | None = None  # a head site: (start, stop) of its slice of the last dim

    @property
    def is_text(self) -> bool:
        """Whether the site belongs to a text encoder (acts once per prompt, not per step)."""
        return self.kind in TEXT_KINDS or self.component.startswith("text_encoder")

    @property
    def head(self) -> int | None:
        """A head site's head index (None for other sites)."""
        return None if self.columns is None else self.columns[0] // self.head_dim

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

    def __init__(self, sites: Iterable[Site], modules: dict[str, torch.nn.Module],
                 events: dict[str, dict[str, "Event"]] | None = None):
        self._sites = list(sites)
        self._modules = modules  # component name -> root module, for raw paths
        self._events = events or {}  # component -> module path -> Event, to order derived sites
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
        derived = _DERIVED.fullmatch(name)
        if derived is not None and derived["base"] in self:
            return self.derived(self[derived["base"]], derived["head"], derived["kv"], bool(derived["neuron"]))
        close = difflib.get_close_matches(name, list(self._by_name), n=5, cutoff=0.5)
        hint = f"closest: {', '.join(close)}" if close else f"e.g. {', '.join(self.names()[:5])}"
        raise UnknownSiteError(
            f"unknown site {name!r}; {hint}. List all with model.sites() or `interp sites`."
        )

    def derived(self, base: Site, head: str | int | None = None, kv: str | None = None,
                neuron: bool = False) -> Site:
        """`base.head-H` (`kv`: "k" or "v" for its key/value slice) or `base.neuron`; raises
        `UnknownSiteError` naming the valid heads, or the sites that have heads or neurons."""
        if neuron:
            if not base.units:
                raise UnknownSiteError(f"{base.name} ({base.kind}) has no neurons; feed-forward sites do, e.g. "
                                       f"{', '.join([s.name + '.neuron' for s in self._sites if s.units][:4])}")
            return Site(f"{base.name}.neuron", kind=NEURON, units=base.units, parent=base.name,
                        **self._inner(base))
        if not base.heads:
            raise UnknownSiteError(f"{base.name} ({base.kind}) has no heads; attention sites do, e.g. "
                                   f"{', '.join([s.name + '.head-0' for s in self._sites if s.heads][:4])}")
        index = int(head)
        if not 0 <= index < base.heads:
            raise UnknownSiteError(f"{base.name} has heads 0 .. {base.heads - 1}; there is no head {index}")
        columns = (index * base.head_dim, (index + 1) * base.head_dim)
        common = dict(heads=base.heads, head_dim=base.head_dim, parent=base.name, columns=columns)
        if kv is None:
            return Site(f"{base.name}.head-{index}", kind=HEAD, kv_paths=tuple(base.kv_paths), **common,
                        **self._inner(base))
        if not base.kv_paths:
            raise UnknownSiteError(f"{base.name} is not a cross-attention site: its heads have no text key/value "
                                   f"slices; use {base.name}.head-{index} for the head's output")
        path = base.kv_paths["kv".index(kv)]
        return Site(f"{base.name}.head-{index}.{kv}", kind=f"{HEAD}-{kv}", component=base.component, path=path,
                    block=base.block, order=self._order(base.component, path, "output"), **common)

    def _inner(self, base: Site) -> dict[str, object]:
        """Where a head or neuron site of `base` reads and writes: its out projection's input, or, without
        one (`projection` ""), `base`'s own activation."""
        if not base.projection:
            return dict(component=base.component, path=base.path, block=base.block, order=base.order,
                        io=base.io, tuple_output=base.tuple_output, element=base.element)
        path = f"{base.path}.{base.projection}"
        return dict(component=base.component, path=path, block=base.block, io="input",
                    order=self._order(base.component, path, "input"))

    def _order(self, component: str, path: str, io: str) -> int:
        """Forward order of a module (entering it for inputs, leaving it for outputs)."""
        event = self._events.get(component, {}).get(path)
        if event is None:
            raise UnknownSiteError(f"{component}.{path} is not called in a forward pass of {component} (or this "
                                   "site map was built without forward events), so it has no place to act")
        return event.pre if io == "input" else event.post

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


Shape = tuple[int, ...]


@dataclass(frozen=True)
class Event:
    """When a module is entered (`pre`) and left (`post`) in one forward pass, its output type, and
    the per-row shapes (batch dim dropped) of its first input and of its output (one per tuple
    element; () where an element is not a tensor)."""

    pre: int
    post: int
    tuple_output: bool
    in_shape: Shape = ()
    out_shapes: tuple[Shape, ...] = ()

    def shape(self, io: str, element: int = 0) -> Shape:
        """Per-row shape of the first input (`io="input"`) or of output element `element`."""
        if io == "input":
            return self.in_shape
        return self.out_shapes[element] if element < len(self.out_shapes) else ()


def _row_shape(value: object) -> Shape:
    return tuple(value.shape[1:]) if isinstance(value, torch.Tensor) and value.ndim else ()


def forward_events(module: torch.nn.Module, run: Callable[[torch.nn.Module], object]) -> dict[str, Event]:
    """Module path -> its first call's `Event`, recorded during `run(module)`.

    `run` calls `module` (usually a meta-device twin, so this costs no memory or compute). Module
    registration order is not forward order in diffusers UNets, hence a real pass.
    """
    entered: dict[str, int] = {}
    inputs: dict[str, Shape] = {}
    events: dict[str, Event] = {}
    counter = iter(range(1 << 30))
    handles = []
    for path, sub in module.named_modules():
        def pre(_m, args, path=path):
            if path not in entered:
                entered[path] = next(counter)
                inputs[path] = _row_shape(args[0]) if args else ()

        def post(_m, _a, out, path=path):
            if path not in events:
                shapes = tuple(_row_shape(o) for o in out) if isinstance(out, tuple) else (_row_shape(out),)
                events[path] = Event(entered[path], next(counter), isinstance(out, tuple), inputs[path], shapes)

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
                              event.post, event.tuple_output, pattern.element, kv,
                              **inner_layout(pattern.kind, module.get_submodule(path), event, pattern.element)))
    return sorted(sites, key=lambda s: s.order)


def head_names(site: Site) -> list[str]:
    """The names of an attention site's head sites, `<site>.head-0` .. (one cell per head in a trace)."""
    return [f"{site.name}.head-{h}" for h in range(site.heads)]


def finer_sites(site: Site) -> str:
    """The derived sites a layer site offers, in a few words for listings ("" if none): its heads
    (and their key/value slices on cross-attention) or its feed-forward neurons."""
    if site.heads:
        kv = " (+ .k / .v)" if site.kv_paths else ""
        return f"heads: {site.name}.head-0 .. .head-{site.heads - 1}{kv}"
    if site.units:
        return f"neurons: {site.name}.neuron (units 0 .. {site.units - 1})"
    return ""


def _linear(module: torch.nn.Module, path: str) -> torch.nn.Linear | None:
    try:
        found = module.get_submodule(path)
    except AttributeError:
        return None
    return found if isinstance(found, torch.nn.Linear) else None


def inner_layout(kind: str, module: torch.nn.Module, event: Event, element: int = 0) -> dict[str, object]:
    """`Site` fields of an attention's heads or a feed-forward's hidden units, read from the module
    (meta or real) and its output shape: the out projection's path ("" for the site's own output),
    head count and width, or hidden width; {} if none."""
    width = (event.shape("output", element) or (0,))[-1]
    if kind in ATTENTION_KINDS:
        heads = None
        for projection, attribute in HEAD_LAYOUTS.get(element, ()):
            linear, heads = _linear(module, projection), getattr(module, attribute, None)
            if linear is not None and isinstance(heads, int) and heads > 0 and linear.in_features % heads == 0:
                return dict(projection=projection, heads=heads, head_dim=linear.in_features // heads)
        heads = getattr(module, "heads", None)
        if getattr(module, "pre_only", False) and isinstance(heads, int) and heads > 0 and width % heads == 0:
            return dict(projection="", heads=heads, head_dim=width // heads)
    if kind in FEED_FORWARD_KINDS:
        for projection in NEURON_LAYOUTS:
            linear = _linear(module, projection)
            if linear is not None:
                return dict(projection=projection, units=linear.in_features)
        if width and not any(True for _ in module.parameters()):  # an activation: its output is the neurons
            return dict(projection="", units=width)
    return {}


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
