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
text stream, averaged over a short fixed-seed generation (see `StableDiffusion3Adapter.kv_inputs`);
FLUX, the same in its double-stream blocks, and nothing in its single-stream blocks, whose one
key/value projection serves text and image tokens alike (an approximation: see `models.flux`).
Layers whose keys and targets agree share one solve. Where the sequence joins several tokenizers'
tokens (SD3: CLIP, then T5), each part gives a key at its own last subject token, mapped onto the
same part's target, so the concept cannot pass through the unedited part.

Beyond the paper: `positions="subject+eos"` or `"from-subject"` adds the EOS and padding states,
which the layers also read and which carry the concept in a causal encoder (see
`interventions.edits.aligned`); `preserve` prompts (UCE-style) keep every edited matrix's output on
their states at every position. Concepts are located in each template's slot, so "painting" in
"a painting in the style of {}" is the slot's "painting", not the first one.

    edit = locoedit.edit(model, ["van gogh", "monet"], "painting", layers=("cross-attn-8", "cross-attn-9"))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from interp.editing import (
    PRESERVE_ROLE, Edit, _check_matrix, _check_positive, _float64, solve_shared_keys,
)
from interp.errors import EditInputError, UnknownSiteError
from interp.model import Model
from interp.sites import Site
from interventions.edits import (
    aligned, check_positions, check_template, check_templates, is_clip, pairs, place, preserve_prompts,
)

TEMPLATES = ("{}", "a painting in the style of {}", "a photo in the style of {}", "a picture in the style of {}")
STYLE_WINDOW = ("cross-attn-8", "cross-attn-9")  # LoCoGen's style window in SD1.5 and SD2.1
TARGET_PROMPT = "a {}"
LAM = 0.01
POSITIONS = "subject"  # the paper's keys: the last subject token only

Layers = str | int | Sequence[str | int] | None
Windows = Layers | Mapping[str, Layers]  # one window for every concept, or one per old concept
Pairs = tuple[Tensor, Tensor]  # keys (n, d), targets (n, d)
Problem = tuple[Tensor, Tensor, Tensor | None]  # keys, targets, preservation keys (m, d)


def edit(
    model: Model,
    old: str | Sequence[str] = ("van gogh",),
    new: str | Sequence[str] = "painting",
    layers: Windows = None,
    lam_k: float = LAM,
    lam_v: float = LAM,
    templates: Sequence[str] = TEMPLATES,
    target_prompt: str | None = TARGET_PROMPT,
    positions: str = POSITIONS,
    preserve: str | Sequence[str] = (),
    preserve_weight: float = 1.0,
) -> Edit:
    """The LoCoEdit edit of W_K and W_V of `layers` mapping each `old` concept onto its `new` one.

    `layers`: cross-attention site names or LoCoGen indices (`cross-attn-8` or 8), "all" for every
    cross-attention layer, or None for LoCoGen's SD1.x style window `STYLE_WINDOW`; or a mapping from
    each old concept to its own window ({"van gogh": [4], "monet": [0, 1, 2, 3, 4]}): a layer then
    takes the keys of the concepts whose window holds it, one solve for them together. `new` is one
    concept for all, or one per old concept; `target_prompt` holds it ("a {}" -> "a painting"), or
    None: each template holds it, so the keys' template words meet their own states (DiffQuickFix's
    pairing).
    `positions` picks the keys (`interventions.edits.aligned`): "subject" (the paper's), or
    "subject+eos" / "from-subject", which add the EOS and padding states the layers also read.
    `preserve` prompts keep what the edited layers read from them: their keys and values at every
    position stay as they were, weighted by `preserve_weight` (UCE-style).
    Raises `UnknownSiteError` for layers the model lacks, `SubjectNotFoundError` for a concept
    missing from its template's slot, `EditInputError` for a lambda <= 0, bad positions or bad
    preservation input; nothing is written in any case.
    """
    _check_positive("lam_k", lam_k)
    _check_positive("lam_v", lam_v)
    preserved = preserve_prompts(preserve, preserve_weight)
    windows = _windows(model, pairs(old, new), layers)
    names = [s.name for s in model.sites("cross-attn") if any(s.name in w for w in windows.values())]
    sites = [model.site(name) for name in names]
    collected = _collect_windows(model, pairs(old, new), windows, templates, target_prompt, positions)
    kept = collect_preserved(model, preserved, names) if preserved else {}
    weights: dict[str, Tensor] = {}
    base: dict[str, Tensor] = {}
    problems = {name: (*collected[name], kept.get(name)) for name in names}
    for group, (keys, targets, preserve_keys) in _shared(sites, problems):
        k_weights, v_weights = ({name: model.denoiser.get_parameter(name) for name in _weight_names(group, i)}
                                for i in (0, 1))  # to_k, to_v
        weights.update(solve(k_weights, v_weights, keys, targets, lam_k, lam_v, preserve_keys, preserve_weight))
        base.update({**k_weights, **v_weights})
    recorded = names if not isinstance(layers, Mapping) else {c: w for c, w in windows.items()}
    metadata = {
        "method": "locoedit", "component": model.adapter.denoiser, "layers": recorded,
        "lam_k": lam_k, "lam_v": lam_v, "concepts": [list(p) for p in pairs(old, new)],
        "templates": list(templates), "target_prompt": target_prompt, "positions": positions,
        "preserve": preserved, "preserve_weight": preserve_weight,
    }
    return Edit(weights, metadata, base=base)


def _windows(model: Model, concepts: list[tuple[str, str]], layers: Windows) -> dict[str, list[str]]:
    """Each old concept's cross-attention site names: the one window `layers`, or its own."""
    if not isinstance(layers, Mapping):
        names = [s.name for s in cross_attention_layers(model, layers)]
        return {old: names for old, _ in concepts}
    olds = [old for old, _ in concepts]
    if set(layers) != set(olds):
        raise EditInputError(f"per-concept layers must name every old concept once: got {sorted(layers)}, the "
                             f"concepts are {olds}")
    return {old: [s.name for s in cross_attention_layers(model, layers[old])] for old in olds}


def _collect_windows(
    model: Model, concepts: list[tuple[str, str]], windows: Mapping[str, list[str]], templates: Sequence[str],
    target_prompt: str | None, positions: str,
) -> dict[str, Pairs]:
    """`collect` once per distinct window, for the concepts that share it; the keys and targets of a
    layer stacked over the windows that hold it (one window: one collection for every concept)."""
    sharing: dict[tuple[str, ...], list[tuple[str, str]]] = {}
    for old, new in concepts:
        sharing.setdefault(tuple(windows[old]), []).append((old, new))
    parts = [collect(model, [o for o, _ in group], [n for _, n in group], templates, target_prompt, list(window),
                     positions) for window, group in sharing.items()]
    return {name: tuple(torch.cat([p[name][i] for p in parts if name in p]) for i in (0, 1))  # type: ignore[misc]
            for name in dict.fromkeys(n for p in parts for n in p)}


def _weight_names(sites: list[Site], which: int) -> list[str]:
    """The weight names of the sites' key (`which` 0) or value (1) projections."""
    return [f"{s.kv_paths[which]}.weight" for s in sites]


def _shared(sites: list[Site], problems: Mapping[str, Problem]) -> list[tuple[list[Site], Problem]]:
    """Sites grouped by identical (keys, targets, preservation keys), in order: each group is one solve."""
    groups: list[tuple[list[Site], Problem]] = []
    for site in sites:
        problem = problems[site.name]
        for members, other in groups:
            if all(a is b or (a is not None and b is not None and torch.equal(a, b)) for a, b in zip(problem, other)):
                members.append(site)
                break
        else:
            groups.append(([site], problem))
    return groups


def solve(
    k_weights: Mapping[str, Tensor], v_weights: Mapping[str, Tensor], keys: Tensor, targets: Tensor,
    lam_k: float = LAM, lam_v: float = LAM, preserve_keys: Tensor | None = None, preserve_weight: float = 1.0,
) -> dict[str, Tensor]:
    """New key and value projections: each maps every key row to its own output on the matching
    target row and keeps its output on every `preserve_keys` row. One shared-keys float64 solve per
    lambda.

    With fewer key and preservation rows (r) than inputs (d), the solve is the r x r form
    (`low_rank_solve`): only the keys are converted to float64, and each weight gets a rank-r update
    in its own precision; otherwise the d x d form of `interp.editing.solve_shared_keys`.
    """
    solved = {}
    rows = len(keys) + (0 if preserve_keys is None else len(preserve_keys))
    for weights, lam in ((k_weights, lam_k), (v_weights, lam_v)):
        if rows < keys.shape[1]:
            solved.update(low_rank_solve(weights, keys, targets, lam, preserve_keys, preserve_weight))
            continue
        values = {name: targets.to(w.dtype) @ w.detach().T for name, w in weights.items()}
        solved.update(solve_shared_keys(weights, keys, values, lam, preserve_keys, preserve_weight))
    return solved


def low_rank_solve(
    weights: Mapping[str, Tensor], keys: Tensor, targets: Tensor, lam: float,
    preserve_keys: Tensor | None = None, preserve_weight: float = 1.0,
) -> dict[str, Tensor]:
    """`solve_shared_keys` for values W' t (each weight applied to the targets), in the r x r form.

    W* = W' + R^T K A^-1 with A = lam I + K^T K + w P^T P and residuals R = (T - K) W'^T (the
    preservation rows have none). Stacking S = [K; sqrt(w) P] (r rows), K A^-1 is the first n rows
    of (lam I_r + S S^T)^-1 S (push-through identity): an r x r float64 solve. The residuals and
    the update are float64 too (the solve amplifies their rounding when keys are nearly collinear),
    but each weight is converted a block of rows at a time, so no float64 copy of a whole matrix
    is made; results are in each weight's dtype and device.
    """
    _check_positive("lam", lam)
    _check_positive("preserve_lam", preserve_weight, PRESERVE_ROLE)
    _check_matrix("keys", keys, None, "")
    _check_matrix("targets", targets, keys.shape[1], f"the keys {tuple(keys.shape)}")
    if len(targets) != len(keys):
        raise EditInputError(f"keys {tuple(keys.shape)} and targets {tuple(targets.shape)} need one target per key")
    if preserve_keys is not None:
        _check_matrix("preserve_keys", preserve_keys, keys.shape[1], "the keys' size")
    for name, weight in weights.items():
        _check_matrix(f"weight {name!r}", weight, keys.shape[1], f"the keys {tuple(keys.shape)}")
    solved: dict[str, Tensor] = {}
    factors: dict[torch.device, tuple[Tensor, Tensor]] = {}  # device -> ((T - K)^T, K A^-1) there
    for name, weight in weights.items():
        w = weight.detach()
        if w.device not in factors:
            k = _float64("keys", keys, w.device)
            stacked = k
            if preserve_keys is not None:
                stacked = torch.cat([k, preserve_weight ** 0.5 * _float64("preserve_keys", preserve_keys, w.device)])
            system = torch.addmm(torch.eye(len(stacked), dtype=torch.float64, device=w.device), stacked, stacked.T,
                                 beta=lam)
            gain = torch.linalg.solve(system, stacked)[: len(keys)]
            factors[w.device] = ((_float64("targets", targets, w.device) - k).T.contiguous(), gain)
        difference, gain = factors[w.device]
        out = torch.empty_like(w)
        for rows in range(0, len(w), _BLOCK_ROWS):
            block = w[rows : rows + _BLOCK_ROWS].to(torch.float64)
            residual = block @ difference  # (rows, n): R^T for these outputs
            out[rows : rows + _BLOCK_ROWS] = torch.addmm(block, residual, gain)
        solved[name] = out
    return solved


_BLOCK_ROWS = 128  # rows of a weight converted to float64 at once (128 x 768 float64: 768 KiB)


def collect(
    model: Model,
    old: str | Sequence[str],
    new: str | Sequence[str],
    templates: Sequence[str] = TEMPLATES,
    target_prompt: str | None = TARGET_PROMPT,
    layers: Layers = "all",
    positions: str = POSITIONS,
) -> dict[str, Pairs]:
    """Per cross-attention site of `layers` (by name): keys (n, d), the site's key/value input at
    `positions` of every old concept in every template, and targets (n, d), its input at the aligned
    positions of the matching new concept in `target_prompt` (None: in the same template); pairs for
    each token stream of the sequence in turn (`Adapter.context_offsets`: SD3's CLIP and T5 parts).

    Concepts are located in each template's slot first; all prompts share one text-encoder pass,
    which for causal (CLIP) encoders stops at the last position needed instead of running the
    padding, and one `Adapter.kv_inputs` call for all sites.
    """
    check_positions(positions)
    check_templates(templates)
    if target_prompt is not None:
        check_template(target_prompt, "target_prompt")
    sites = cross_attention_layers(model, layers)
    streams = model.adapter.context_offsets(model.pipe)
    rows = []  # (old prompt, target prompt, key positions, target positions) along the whole sequence
    for old_concept, new_concept in pairs(old, new):
        for template in templates:
            for i, offset in streams.items():
                placed = place(model, template, old_concept, i)
                target = place(model, template if target_prompt is None else target_prompt, new_concept, i)
                key_positions, target_positions = aligned(positions, placed, target)
                rows.append((placed.prompt, target.prompt,
                             [offset + p for p in key_positions], [offset + p for p in target_positions]))
    prompts = list(dict.fromkeys(p for row in rows for p in row[:2]))
    row = {prompt: i for i, prompt in enumerate(prompts)}
    inputs = _kv_inputs(model, sites, prompts, 1 + max(p for r in rows for p in r[2] + r[3]))
    return {site.name: (torch.cat([kv[row[o], k] for o, _, k, _ in rows]),
                        torch.cat([kv[row[t], v] for _, t, _, v in rows])) for site, kv in zip(sites, inputs)}


def collect_preserved(model: Model, prompts: Sequence[str], layers: Layers = "all") -> dict[str, Tensor]:
    """Per cross-attention site of `layers` (by name): preservation keys (n, d), the site's key/value
    input for each prompt at every position of the sequence (every state the layer reads)."""
    sites = cross_attention_layers(model, layers)
    return {site.name: kv.flatten(0, 1) for site, kv in zip(sites, _kv_inputs(model, sites, list(prompts)))}


def _kv_inputs(model: Model, sites: list[Site], prompts: list[str], length: int | None = None) -> list[Tensor]:
    """`Adapter.kv_inputs` of `sites` for `prompts` (prompts, sequence, d), in one pass. With `length`
    and only causal (CLIP) encoders, the text encoders stop after `length` positions: no CLIP state
    depends on a later token and SD/SDXL's layers read the states as they are."""
    ids = [model.token_ids(prompts, i) for i in range(len(model.tokenizers))]
    if length is not None and all(map(is_clip, model.text_encoders)):
        ids = [i[:, :length] for i in ids]
    with torch.no_grad():
        return model.adapter.kv_inputs(model.pipe, sites, model.adapter.encode(model.pipe, ids))


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


ROW_GROUPS = ("row", "head")


def neuron_edit(
    model: Model,
    old: str | Sequence[str] = ("van gogh",),
    new: str | Sequence[str] = "painting",
    layers: Layers = None,
    fraction: float = 0.25,
    by: str = "row",
    heads: Sequence[int] | None = None,
    **options: object,
) -> Edit:
    """Neuron-level LoCoEdit: the layer-level edit (`edit`, same arguments) kept only on the output
    rows of each W_K and W_V (channels, or whole heads with `by="head"`) that an attribution selects.

    The attribution of an output row is how far the full update moves it on the edit's own keys,
    sum_i ((W* - W) k_i)_j^2; the top `fraction` of rows (or heads) of each matrix keep their update,
    the rest keep their weights, so `fraction` of each matrix's entries change. The closed-form
    problem is separable by output row (each row of W fits its own targets under its own
    lambda-closeness term, preservation included), so this is the exact solution with the other rows
    held fixed, not an approximation of it. `heads` names the heads to edit in every layer instead
    (e.g. the top cells of a head-level trace, `trace_unet(..., sites=head_names(site))`), overriding
    `fraction` and `by`. The selected rows are recorded in the metadata ("rows").
    """
    if not 0 < fraction <= 1:
        raise EditInputError(f"fraction must be in (0, 1], got {fraction}: the share of each matrix's rows edited")
    if by not in ROW_GROUPS:
        raise EditInputError(f"by must be one of {ROW_GROUPS}, got {by!r}")
    full = edit(model, old, new, layers, **options)
    meta = full.metadata
    concepts = pairs(old, new)
    windows = _windows(model, concepts, layers)
    keys = _collect_windows(model, concepts, windows, meta["templates"], meta["target_prompt"], meta["positions"])
    weights, base, selected = {}, {}, {}
    for name in keys:
        site = model.site(name)
        for which in (0, 1):
            parameter = _weight_names([site], which)[0]
            original = model.denoiser.get_parameter(parameter).detach()
            edited = full.weights[parameter]
            effect = ((edited.double() - original.double()) @ keys[name][0].double().T).pow(2).sum(1)
            group = site.head_dim if by == "head" or heads is not None else 1
            scores = effect.view(-1, group).sum(1)
            picked = (_heads(site, heads) if heads is not None
                      else scores.topk(max(1, round(fraction * len(scores)))).indices.sort().values)
            rows = (picked[:, None] * group + torch.arange(group)).flatten()
            weights[parameter] = original.clone()
            weights[parameter][rows] = edited[rows]
            base[parameter] = original
            selected[parameter] = rows.tolist()
    chosen = {"heads": sorted(heads)} if heads is not None else {"by": by, "fraction": fraction}
    metadata = {**meta, "rows": {**chosen, "selected": selected}}
    return Edit(weights, metadata, base=base)


def _heads(site: Site, heads: Sequence[int]) -> Tensor:
    """The head indices `heads` of `site`, sorted, or `EditInputError` naming its valid range."""
    bad = [h for h in heads if not 0 <= h < site.heads]
    if bad or not heads:
        raise EditInputError(f"heads {list(heads)} do not select heads of {site.name}, which has heads 0 .. "
                             f"{site.heads - 1}")
    return torch.tensor(sorted(set(heads)))
