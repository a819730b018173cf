"""LoCoEdit (Basu et al., ICML 2024): remove a concept by a closed-form update of the key and value
projections (W_K, W_V) of the cross-attention layers LoCoGen localizes it to.

Keys are what each edited layer's key/value projections read (`Adapter.kv_input`) at the last
subject token of the old concept in a few templates ("a painting in the style of van gogh"); each
key's value, per matrix, is the unedited matrix applied to the same layer's input for the target
prompt at its last subject token ("painting" in "a painting"). So after the edit the localized
layers see "painting" where the prompt says "van gogh", and every other layer is untouched. W_K and
W_V have separate lambdas, as in the paper (its code ignores lam_v). The edit is returned, not
applied (see `interventions.edits.apply`); its parameter names are relative to the denoiser.

What a layer reads differs per family: SD/SDXL, the prompt embedding (one set of keys for every
layer, one solve); PixArt, the caption-projected T5 states (also shared); DeepFloyd IF, the
projected T5 states group-normed by each attention (keys per layer); SD3, each joint block's own
text stream, averaged over a short fixed-seed generation (see `StableDiffusion3Adapter.kv_inputs`).
Layers whose keys and targets agree share one solve. Where the sequence joins several tokenizers'
tokens (SD3: CLIP, then T5), each part gives a key at its own last subject token, mapped onto the
same part's target, so the concept cannot pass through the unedited part.

    edit = locoedit.edit(model, ["van gogh", "monet"], "painting", layers=("cross-attn-8", "cross-attn-9"))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from interp.editing import Edit, _check_positive, solve_shared_keys
from interp.errors import UnknownSiteError
from interp.model import Model
from interp.sites import Site
from interventions.edits import is_clip, pairs, template_prompts

TEMPLATES = ("{}", "a painting in the style of {}", "a photo in the style of {}", "a picture in the style of {}")
STYLE_WINDOW = ("cross-attn-8", "cross-attn-9")  # LoCoGen's style window in SD1.5 and SD2.1
TARGET_PROMPT = "a {}"
LAM = 0.01

Layers = str | int | Sequence[str | int] | None
Pairs = tuple[Tensor, Tensor]  # keys (n, d), targets (n, d)


def edit(
    model: Model,
    old: str | Sequence[str] = ("van gogh",),
    new: str | Sequence[str] = "painting",
    layers: Layers = None,
    lam_k: float = LAM,
    lam_v: float = LAM,
    templates: Sequence[str] = TEMPLATES,
    target_prompt: str = TARGET_PROMPT,
) -> Edit:
    """The LoCoEdit edit of W_K and W_V of `layers` mapping each `old` concept onto its `new` one.

    `layers`: cross-attention site names or LoCoGen indices (`cross-attn-8` or 8), "all" for every
    cross-attention layer, or None for LoCoGen's SD1.x style window `STYLE_WINDOW`. `new` is one
    concept for all, or one per old concept; `target_prompt` holds it ("a {}" -> "a painting").
    Raises `UnknownSiteError` for layers the model lacks, `SubjectNotFoundError` for a concept
    missing from its prompt, `EditInputError` for a lambda <= 0; nothing is written in any case.
    """
    _check_positive("lam_k", lam_k)
    _check_positive("lam_v", lam_v)
    sites = cross_attention_layers(model, layers)
    collected = collect(model, old, new, templates, target_prompt, [s.name for s in sites])
    weights: dict[str, Tensor] = {}
    for group, (keys, targets) in _shared(sites, collected):
        k_weights, v_weights = ({name: model.denoiser.get_parameter(name) for name in _weight_names(group, i)}
                                for i in (0, 1))  # to_k, to_v
        weights.update(solve(k_weights, v_weights, keys, targets, lam_k, lam_v))
    metadata = {
        "method": "locoedit", "component": model.adapter.denoiser, "layers": [s.name for s in sites],
        "lam_k": lam_k, "lam_v": lam_v, "concepts": [list(p) for p in pairs(old, new)],
        "templates": list(templates), "target_prompt": target_prompt,
    }
    return Edit(weights, metadata)


def _weight_names(sites: list[Site], which: int) -> list[str]:
    """The weight names of the sites' key (`which` 0) or value (1) projections."""
    return [f"{s.kv_paths[which]}.weight" for s in sites]


def _shared(sites: list[Site], collected: Mapping[str, Pairs]) -> list[tuple[list[Site], Pairs]]:
    """Sites grouped by identical (keys, targets), in order: each group is one solve."""
    groups: list[tuple[list[Site], Pairs]] = []
    for site in sites:
        keys, targets = collected[site.name]
        for members, (k, t) in groups:
            if torch.equal(k, keys) and torch.equal(t, targets):
                members.append(site)
                break
        else:
            groups.append(([site], (keys, targets)))
    return groups


def solve(
    k_weights: Mapping[str, Tensor], v_weights: Mapping[str, Tensor], keys: Tensor, targets: Tensor,
    lam_k: float = LAM, lam_v: float = LAM,
) -> dict[str, Tensor]:
    """New key and value projections: each maps every key row to its own output on the matching
    target row. One shared-keys float64 solve per lambda."""
    solved = {}
    for weights, lam in ((k_weights, lam_k), (v_weights, lam_v)):
        values = {name: targets.to(w.dtype) @ w.detach().T for name, w in weights.items()}
        solved.update(solve_shared_keys(weights, keys, values, lam))
    return solved


def collect(
    model: Model,
    old: str | Sequence[str],
    new: str | Sequence[str],
    templates: Sequence[str] = TEMPLATES,
    target_prompt: str = TARGET_PROMPT,
    layers: Layers = "all",
) -> dict[str, Pairs]:
    """Per cross-attention site of `layers` (by name): keys (n, d), the site's key/value input at the
    last subject token of every old concept in every template, and targets (n, d), its input at the
    matching new concept in `target_prompt`; one pair per token stream of the sequence
    (`Adapter.context_offsets`: SD3's CLIP and T5 parts).

    Subjects are located in every prompt first; all prompts share one text-encoder pass, which for
    causal (CLIP) encoders stops at the last subject token instead of running the padding, and one
    `Adapter.kv_inputs` call for all sites.
    """
    sites = cross_attention_layers(model, layers)
    located = []
    for old_concept, new_concept in pairs(old, new):
        target = (target_prompt.format(new_concept), new_concept)
        for prompt in template_prompts(templates, old_concept):
            located.append(((prompt, old_concept), target))
    unique = list(dict.fromkeys(p for row in located for p in row))
    streams = model.adapter.context_offsets(model.pipe).items()
    positions = torch.tensor([[offset + model.locate(prompt, subject, i).last for i, offset in streams]
                              for prompt, subject in unique])  # (prompts, streams)
    ids = [model.token_ids([p for p, _ in unique], i) for i in range(len(model.tokenizers))]
    # SD/SDXL: no CLIP state depends on a later token and the layers read the states as they are
    if all(map(is_clip, model.text_encoders)):
        ids = [i[:, : int(positions.max()) + 1] for i in ids]
    row = {pair: i for i, pair in enumerate(unique)}
    key_rows, target_rows = [row[key] for key, _ in located], [row[target] for _, target in located]
    with torch.no_grad():
        inputs = model.adapter.kv_inputs(model.pipe, sites, model.adapter.encode(model.pipe, ids))
    collected = {}
    for site, kv in zip(sites, inputs):
        states = kv[torch.arange(len(unique))[:, None], positions.to(kv.device)]  # (prompts, streams, d)
        collected[site.name] = (states[key_rows].flatten(0, 1), states[target_rows].flatten(0, 1))
    return collected


def cross_attention_layers(model: Model, layers: Layers = None) -> list[Site]:
    """The cross-attention sites `layers` names, in the given order, without repeats."""
    available = model.sites("cross-attn")
    span = f"the model has {len(available)} cross-attention layers (cross-attn-0 .. cross-attn-{len(available) - 1})"
    if layers is None:
        if not all(name in model.site_map for name in STYLE_WINDOW):
            raise UnknownSiteError(
                f"the default window {', '.join(STYLE_WINDOW)} (LoCoGen's style window in SD1.x/2.x) does not "
                f"exist: {span}; pass layers= (the window interventions.locogen finds) or layers='all'"
            )
        layers = STYLE_WINDOW
    elif layers == "all":
        return available
    requested = [layers] if isinstance(layers, (str, int)) else list(layers)
    if not requested:
        raise UnknownSiteError(f"layers is empty; {span}")
    sites = []
    for layer in requested:
        if isinstance(layer, int) and not 0 <= layer < len(available):
            raise UnknownSiteError(f"cross-attention layer {layer} does not exist: {span}")
        site = model.site(f"cross-attn-{layer}" if isinstance(layer, int) else layer)
        if not site.kv_paths:
            raise UnknownSiteError(
                f"{layer!r} is a {site.kind} site, not a cross-attention layer; {span}, e.g. "
                f"{', '.join(s.name for s in available[:4])}"
            )
        if site not in sites:
            sites.append(site)
    return sites
