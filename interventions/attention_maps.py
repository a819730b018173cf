"""Cross-attention maps (DAAM, Tang et al., ACL 2023): where in the image each prompt token acts.

    maps = attention_maps(model, "a red circle in the style of van gogh", ["circle", "van gogh"], seeds=(0, 1))
    maps.heatmaps["circle"]                  # (seeds, H, W) in [0, 1]: DAAM's aggregate over the image
    maps.per_layer["circle"]["mid-cross-attn"]  # the same from one layer

Capture. For the length of one generation, each chosen cross-attention layer (the modules that read
the text: UNet `attn2`, PixArt's `attn2`) gets a capturing processor: diffusers' own `AttnProcessor`,
which computes the attention probabilities explicitly (softmax(QKᵀ/√d), then P·V), with a recorder
that keeps, for the chosen tokens, the conditional branch's probabilities per denoiser call, head and
image position. Joint attention (SD3's blocks, FLUX's double- and single-stream blocks: one softmax
over the image and text tokens together) keeps the user's processor, whose attention kernel is
swapped for the call by an explicit one (`JOINT_KERNELS`); the map is the image queries'
probabilities on the text keys. Every other layer keeps the user's processor (SDPA by default). Afterwards, even
when the run fails, every module holds the very processor object it had. The captured layers'
outputs are the explicit path's, equal to SDPA's up to float rounding (the tests bound the image
difference). Only the chosen tokens are kept (a multi-token phrase keeps each of its positions).
Tokens are positions along the context the layers read (`Adapter.context_offsets`): a word is found
in every token stream of it (SD3: CLIP, then T5; FLUX: T5), a number is a position of the context.

Aggregation, as DAAM: a layer's probabilities for a token are summed over heads and steps (and the
phrase's positions), upsampled bicubically to the image's resolution and clamped at 0; the heatmap
sums these over layers and is min-max normalised per image to [0, 1]. Upsampling is linear, so
summing before upsampling is DAAM's sum of upsampled maps up to its per-head clamp. Runs go through
`interp.run` (one batched pipeline call, all seeds), so `ops` (a `Swap`, `Noise`) apply as anywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from types import ModuleType

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import (
    AttnProcessor, AttnProcessor2_0, AttnProcessorNPU, JointAttnProcessor2_0, SlicedAttnProcessor,
    XFormersAttnProcessor,
)
from diffusers.models.transformers import transformer_flux
from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

from interp.attention_probs import CapturingProcessor
from interp.errors import AttentionCaptureError, TokenRangeError
from interp.graph import Graph, Operation, Run
from interp.model import Model
from interp.runner import call_steps, run
from interp.sites import Site

# Processors whose math is plain softmax attention, the capture's own: swapping one of them for the
# capture changes nothing but float rounding. Anything else (IP-Adapter, a LoRA processor) is refused.
PLAIN_PROCESSORS = (AttnProcessor, AttnProcessor2_0, AttnProcessorNPU, SlicedAttnProcessor, XFormersAttnProcessor)
STEPS = 25
GUIDANCE = 7.5

Token = str | int  # a word or phrase of the prompt, or a token position


@dataclass(frozen=True)
class JointKernel:
    """How a joint-attention processor class attends: the module global its kernel is looked up
    under (swapped for the call), whether the kernel takes (batch, heads, tokens, dim) as torch's SDPA
    or (batch, tokens, heads, dim), whether the text tokens come before the image's, and whether a
    layer of it without text projections of its own (`add_k_proj`) reads a sequence that already
    holds the text (FLUX's single-stream blocks; SD3.5's second attention reads the image alone)."""

    module: ModuleType
    name: str
    heads_first: bool
    text_first: bool
    single_stream: bool = False


JOINT_KERNELS = {
    JointAttnProcessor2_0: JointKernel(F, "scaled_dot_product_attention", heads_first=True, text_first=False),  # SD3
    FluxAttnProcessor: JointKernel(transformer_flux, "dispatch_attention_fn", heads_first=False, text_first=True,
                                   single_stream=True),
}


class JointCapturingProcessor:
    """The user's joint-attention processor, run with its kernel swapped, for the call, for an
    explicit softmax(QKᵀ·scale)·V that hands the image queries' probabilities on the text keys
    ((batch * heads, image tokens, text tokens)) to `keep`. The text is the call's
    `encoder_hidden_states`, or in a single-stream layer the first `text_tokens` of its sequence."""

    def __init__(self, inner: object, kernel: JointKernel, keep: Callable[[torch.Tensor], None],
                 text_tokens: int | None = None) -> None:
        self.inner, self.kernel, self.keep, self.text_tokens = inner, kernel, keep, text_tokens

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):
        text = self.text_tokens if encoder_hidden_states is None else encoder_hidden_states.shape[1]
        if text is None:
            raise AttentionCaptureError("a joint attention was called without text tokens: nothing to map")
        kernel = self.kernel

        def explicit(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
            if dropout_p or is_causal:
                raise AttentionCaptureError("attention maps capture inference attention: no dropout, not causal")
            if not kernel.heads_first:  # (batch, tokens, heads, dim) -> (batch, heads, tokens, dim)
                query, key, value = (x.transpose(1, 2) for x in (query, key, value))
            scores = query @ key.transpose(-1, -2) * (query.shape[-1] ** -0.5 if scale is None else scale)
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
                    else scores + attn_mask
            probs = scores.softmax(-1)  # (batch, heads, queries, keys)
            image, words = (slice(text, None), slice(None, text)) if kernel.text_first else \
                (slice(None, -text), slice(-text, None))
            self.keep(probs[:, :, image, words].flatten(0, 1))
            out = probs @ value
            return out if kernel.heads_first else out.transpose(1, 2)

        original = getattr(kernel.module, kernel.name)
        setattr(kernel.module, kernel.name, explicit)
        try:
            return self.inner(attn, hidden_states, encoder_hidden_states, *args, **kwargs)
        finally:
            setattr(kernel.module, kernel.name, original)


def cross_attention_layers(model: Model, layers: Sequence[str | Site] | None = None) -> list[Site]:
    """The attention sites to capture (default: every one that reads the text, in forward order), each
    checked to be a diffusers attention module that reads the text through its own keys with a plain
    processor, or a joint (or single-stream) attention whose processor `JOINT_KERNELS` knows."""
    readers = [s for s in model.sites() if _reads_text(model, s) or _joint(model, s) or _single_stream(model, s)]
    if not readers:
        raise AttentionCaptureError(
            f"{model.adapter.family} has no cross-attention or joint-attention layers that read the text as keys; "
            "attention maps need a UNet, a PixArt-style DiT, SD3 or FLUX"
        )
    sites = readers if layers is None else [model.site(layer) for layer in layers]
    for site in sites:
        if site not in readers:
            raise AttentionCaptureError(
                f"{site.name} is not a cross-attention layer that reads the text through its own keys; choose "
                f"among {[s.name for s in readers]}"
            )
        processor = _module(model, site).processor
        known = tuple(JOINT_KERNELS) if _joint(model, site) or _single_stream(model, site) else PLAIN_PROCESSORS
        if not isinstance(processor, known):
            raise AttentionCaptureError(
                f"{site.name} runs {type(processor).__name__}, whose output the capture's plain softmax attention "
                f"would change (it captures layers running {[c.__name__ for c in known]}); leave the "
                f"layer out with layers=..."
            )
    return sites


def _reads_text(model: Model, site: Site) -> bool:
    """Whether `site` is a diffusers `Attention` whose keys and values come from the text alone."""
    module = _module(model, site)
    return bool(getattr(module, "is_cross_attention", False)) and hasattr(module, "processor")


def _joint(model: Model, site: Site) -> bool:
    """Whether `site` is a joint attention: its own projections of the text (`add_k_proj`) join the
    image tokens' keys in one softmax."""
    if site.kind != "cross-attn":
        return False
    module = _module(model, site)
    return getattr(module, "add_k_proj", None) is not None and not getattr(module, "is_cross_attention", False)


def _single_stream(model: Model, site: Site) -> bool:
    """Whether `site` is a single-stream attention: one sequence of text then image tokens, read by a
    processor class whose `JointKernel` says its layers without text projections hold the text."""
    if site.kind != "self-attn" or site.component != model.adapter.denoiser:
        return False
    module = _module(model, site)
    kernel = JOINT_KERNELS.get(type(getattr(module, "processor", None)))
    return kernel is not None and kernel.single_stream and getattr(module, "add_k_proj", None) is None


def _module(model: Model, site: Site) -> torch.nn.Module:
    return model.components[site.component].get_submodule(site.path)


@contextmanager
def capturing(
    model: Model, sites: Sequence[Site], keep: Callable[[Site, int], Callable[[torch.Tensor], None]]
) -> Iterator[None]:
    """Inside the block, `sites`' modules run a `CapturingProcessor` (a `JointCapturingProcessor` around
    their own on joint attention) handing probabilities to `keep(site, heads)`; on exit, even by an
    exception, each module gets back its own processor object."""
    modules = [(site, _module(model, site)) for site in sites]
    originals = [module.processor for _, module in modules]
    try:
        for (site, module), original in zip(modules, originals):
            kept = keep(site, module.heads)
            if _joint(model, site):
                module.processor = JointCapturingProcessor(original, JOINT_KERNELS[type(original)], kept)
            elif _single_stream(model, site):
                module.processor = JointCapturingProcessor(original, JOINT_KERNELS[type(original)], kept,
                                                           text_tokens=context_length(model))
            else:
                module.processor = CapturingProcessor(kept)
        yield
    finally:
        for (_, module), original in zip(modules, originals):
            module.processor = original


@dataclass
class AttentionMaps:
    """Cross-attention probabilities of one prompt's conditional branch, and their DAAM heatmaps.

    `probs[layer]` is (calls, seeds, heads, h, w, positions): one row per denoiser call (`steps`
    says which denoising step each call belongs to), the layer's own resolution, and the captured
    token `positions`; `tokens` maps each requested token's label to its positions."""

    prompt: str
    seeds: tuple[int, ...]
    tokens: dict[str, tuple[int, ...]]
    positions: tuple[int, ...]
    steps: tuple[int, ...]
    probs: dict[str, torch.Tensor]
    images: torch.Tensor  # (seeds, 3, H, W) in [0, 1]
    settings: dict = field(default_factory=dict)

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.probs)

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.images.shape[-2:])

    def layer_map(self, token: Token, layer: str, steps: Sequence[int] | None = None,
                  heads: Sequence[int] | None = None) -> torch.Tensor:
        """`token`'s probabilities in `layer`, summed over `heads` and `steps` (default all) and its
        positions, upsampled bicubically to the image and clamped at 0: (seeds, H, W), unnormalised."""
        probs = self._probs(layer)
        calls = self._calls(steps)
        if heads is not None:
            bad = [h for h in heads if not 0 <= h < probs.shape[2]]
            if bad:
                raise AttentionCaptureError(f"heads {bad} out of range: {layer} has {probs.shape[2]} heads")
        chosen = probs[calls][:, :, list(heads) if heads is not None else slice(None)]
        columns = [self.positions.index(p) for p in self._positions(token)]
        summed = chosen[..., columns].sum(dim=(0, 2, -1))  # (seeds, h, w)
        return F.interpolate(summed[:, None], size=self.size, mode="bicubic", align_corners=False)[:, 0].clamp_min(0)

    def heatmap(self, token: Token, layers: Sequence[str] | None = None, steps: Sequence[int] | None = None,
                heads: Sequence[int] | None = None) -> torch.Tensor:
        """DAAM's heatmap of `token`: `layer_map` summed over `layers` (default all), min-max
        normalised per image to [0, 1]: (seeds, H, W)."""
        chosen = self.layers if layers is None else layers
        if not chosen:
            raise AttentionCaptureError(f"no layers chosen; captured layers are {list(self.layers)}")
        return normalise(sum(self.layer_map(token, layer, steps, heads) for layer in chosen))

    @cached_property
    def heatmaps(self) -> dict[str, torch.Tensor]:
        """Every token's heatmap over every layer, head and step."""
        return {token: self.heatmap(token) for token in self.tokens}

    @cached_property
    def per_layer(self) -> dict[str, dict[str, torch.Tensor]]:
        """token -> layer -> that layer's normalised map (seeds, H, W)."""
        return {token: {layer: normalise(self.layer_map(token, layer)) for layer in self.layers}
                for token in self.tokens}

    def _probs(self, layer: str) -> torch.Tensor:
        if layer not in self.probs:
            raise AttentionCaptureError(f"layer {layer!r} was not captured; captured layers are {list(self.layers)}")
        return self.probs[layer]

    def _positions(self, token: Token) -> tuple[int, ...]:
        if isinstance(token, int):
            if token not in self.positions:
                raise AttentionCaptureError(
                    f"position {token} was not captured; captured positions are {list(self.positions)}"
                )
            return (token,)
        if token not in self.tokens:
            raise AttentionCaptureError(f"token {token!r} was not captured; captured tokens are {list(self.tokens)}")
        return self.tokens[token]

    def _calls(self, steps: Sequence[int] | None) -> list[int]:
        if steps is None:
            return list(range(len(self.steps)))
        missing = sorted(set(steps) - set(self.steps))
        if missing:
            raise AttentionCaptureError(f"steps {missing} are not in this run's steps 0 .. {max(self.steps)}")
        return [call for call, step in enumerate(self.steps) if step in set(steps)]


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each image's map (..., H, W) min-max scaled to [0, 1]; a constant map becomes 0."""
    flat = maps.flatten(-2)
    low, high = flat.min(-1).values[..., None, None], flat.max(-1).values[..., None, None]
    return torch.where(high > low, (maps - low) / (high - low).clamp_min(1e-12), torch.zeros_like(maps))


def token_positions(model: Model, prompt: str, tokens: Sequence[Token]) -> dict[str, tuple[int, ...]]:
    """Label -> positions along the context the attention layers read, of each token: a word or phrase
    located in `prompt` (its first occurrence) in every token stream of the context, or a position
    of the context (labelled "position:token", e.g. "3:circle</w>", "12:pad")."""
    if isinstance(tokens, (str, int)):
        tokens = [tokens]
    if not tokens:
        raise AttentionCaptureError("name at least one token of the prompt, e.g. tokens=['circle']")
    streams = _streams(model)
    length = context_length(model)
    out: dict[str, tuple[int, ...]] = {}
    for token in tokens:
        if isinstance(token, int):
            if not -length <= token < length:
                raise TokenRangeError(f"token position {token} is out of range: the context has {length} positions "
                                      f"(0 .. {length - 1})")
            position = token % length
            offset, index, _ = next(s for s in reversed(streams) if s[0] <= position)
            words = model.tokens(prompt, index)
            at = position - offset
            out[f"{position}:{words[at] if at < len(words) else 'pad'}"] = (position,)
        else:
            out[token] = tuple(offset + p for offset, index, _ in streams
                               for p in model.locate(prompt, token, index).positions)
    return out


def _streams(model: Model) -> list[tuple[int, int, int]]:
    """(offset, tokenizer index, length) of each token stream of the context, in order."""
    return sorted((offset, index, model.adapter.token_length(model.pipe, index))
                  for index, offset in model.adapter.context_offsets(model.pipe).items())


def context_length(model: Model) -> int:
    """How many text tokens the denoiser's attention layers read (every stream of the context)."""
    return max(offset + n for offset, _, n in _streams(model))


class _Store:
    """Per layer, the conditional rows' probabilities at the kept positions, one entry per call."""

    def __init__(self, runs: int, positions: tuple[int, ...]) -> None:
        self.runs, self.positions = runs, list(positions)
        self.calls: dict[str, list[torch.Tensor]] = {}

    def keeper(self, site: Site, heads: int) -> Callable[[torch.Tensor], None]:
        kept = self.calls.setdefault(site.name, [])

        def keep(probs: torch.Tensor) -> None:
            rows = probs.shape[0] // heads
            if rows not in (self.runs, 2 * self.runs):
                raise AttentionCaptureError(
                    f"{site.name} saw {rows} batch rows for {self.runs} runs; attention maps expect one row per run, "
                    "or the pipeline's [uncond, cond] pair under classifier-free guidance"
                )
            cond = probs.unflatten(0, (rows, heads))[rows - self.runs:]  # [uncond..., cond...]: the cond rows
            kept.append(cond[..., self.positions].detach().float().cpu())

        return keep


def attention_maps(
    model: Model,
    prompt: str,
    tokens: Token | Sequence[Token],
    seeds: Sequence[int] = (0,),
    layers: Sequence[str | Site] | None = None,
    steps: int = STEPS,
    guidance_scale: float = GUIDANCE,
    ops: Sequence[Operation] = (),
    progress: bool = False,
) -> AttentionMaps:
    """Generate `prompt` at each seed (all in one batched pipeline call: pass fewer seeds on a big
    model) while capturing the cross-attention probabilities of `tokens` (words or phrases of the
    prompt, or positions) in `layers` (default: every cross-attention layer that reads the text);
    the conditional branch under classifier-free guidance. `ops` act on every run, as in a graph."""
    if not seeds:
        raise AttentionCaptureError("need at least one seed")
    found = token_positions(model, prompt, tokens)
    positions = tuple(sorted({p for ps in found.values() for p in ps}))
    sites = cross_attention_layers(model, layers)
    graph = Graph([Run(f"{i}", prompt, int(seed), guidance_scale, steps, ops=list(ops))
                   for i, seed in enumerate(seeds)])
    store = _Store(len(graph.runs), positions)
    with capturing(model, sites, store.keeper):
        result = run(model, graph, chunk_size=len(graph.runs), progress=progress)
    images = torch.stack([result.images[f"{i}"] for i in range(len(seeds))])
    height, width = images.shape[-2:]
    probs = {site.name: _spatial(torch.stack(store.calls[site.name]), height, width, site.name) for site in sites}
    return AttentionMaps(
        prompt, tuple(int(s) for s in seeds), found, positions, tuple(call_steps(model.pipe.scheduler, steps)),
        probs, images,
        {"steps": steps, "guidance_scale": guidance_scale, "branch": "cond",
         "aggregation": "DAAM: sum over heads, steps, positions; bicubic upsampling, clamp >= 0; sum over layers; "
                        "min-max per image"},
    )


def _spatial(probs: torch.Tensor, height: int, width: int, layer: str) -> torch.Tensor:
    """(calls, seeds, heads, queries, positions) -> (calls, seeds, heads, h, w, positions), the
    queries laid out on the layer's grid, whose aspect ratio is the image's."""
    queries = probs.shape[3]
    h = round((queries * height / width) ** 0.5)
    w = queries // max(h, 1)
    if h * w != queries:
        raise AttentionCaptureError(
            f"{layer} has {queries} image positions, not a grid of the image's aspect {height}x{width}"
        )
    return probs.unflatten(3, (h, w))


def binarize(maps: torch.Tensor, rule: str | float = "otsu") -> torch.Tensor:
    """Each image's map (..., H, W) thresholded to a mask: `"otsu"` (the threshold that best splits
    its values in two classes, parameter-free), `"mean"` (above its mean), or a number in [0, 1]
    (DAAM's τ = 0.4 on normalised maps)."""
    flat = maps.flatten(-2)
    if rule == "mean":
        cut = flat.mean(-1)
    elif rule == "otsu":
        cut = torch.stack([_otsu(row) for row in flat.reshape(-1, flat.shape[-1])]).reshape(flat.shape[:-1])
    elif isinstance(rule, (int, float)) and 0 <= rule <= 1:
        cut = torch.full(flat.shape[:-1], float(rule))
    else:
        raise AttentionCaptureError(f"threshold rule must be 'otsu', 'mean' or a number in [0, 1], got {rule!r}")
    return maps > cut[..., None, None]


def _otsu(values: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Otsu's threshold of a 1-D sample: the cut maximising the between-class variance."""
    low, high = values.min(), values.max()
    if high <= low:
        return high
    edges = torch.linspace(float(low), float(high), bins + 1, dtype=torch.float64)
    counts = torch.histc(values.double(), bins, float(low), float(high))
    centers = (edges[:-1] + edges[1:]) / 2
    weight = counts.cumsum(0)[:-1]
    mass = (counts * centers).cumsum(0)[:-1]
    total, total_mass = counts.sum(), (counts * centers).sum()
    mean_low = mass / weight.clamp_min(1e-12)
    mean_high = (total_mass - mass) / (total - weight).clamp_min(1e-12)
    between = weight * (total - weight) * (mean_low - mean_high) ** 2
    return edges[1:-1][between.argmax()].to(values.dtype)
