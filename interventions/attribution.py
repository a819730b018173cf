"""Attribution patching for diffusion models: every site's causal-trace effect from one backward pass.

Exact causal tracing (`interventions.causal_trace.trace_unet`) restores one site per generation.
Attribution patching (Nanda 2023; AtP, Kramár et al. 2024) estimates all of them at once by a
first-order Taylor expansion around the corrupted run:

    IE(site) ~ sum over steps t of (a_clean[t] - a_corrupted[t]) . d metric / d a[t]

where a[t] is the site's output at denoising step t (both classifier-free-guidance rows, as the
paper's restore), the gradient is taken on the corrupted run and flows back from the score through
the image decoder and the whole denoising loop. Per (prompt, seed): one clean pass (activations
kept), one corrupted pass with autograd on (the same corruption noise as the exact trace, so the
units match) and one backward pass; each denoiser call is checkpointed (`interp.gradients`), so
memory holds one step's activations, not the loop's. Per-step estimates come from the same pass.

The metric is a differentiable score: on the bundled tiny model the judge's log-probability of the
attribute value the prompt names (`metric="log"`, read on float pixels instead of uint8), elsewhere
CLIP-score (`metric="score"`). With "log" the estimated restored score is min(1, S_corrupted *
exp(IE)) (a probability); with "score" it is S_corrupted + IE, so results are the same
`TraceResult` grid as exact tracing.

Known failure modes (where estimate and exact patching part), with what bench/attribution.py
measured on the tiny model:
- trajectory divergence: restoring a site at every step moves the whole later trajectory; the
  linearisation holds the corrupted trajectory fixed, so an effect that builds up across steps is
  missed or gets the wrong sign. Restoring the UNet's last resnet at every step replays the clean
  noise predictions and so the clean image (style: exact IE +0.59), while each step's first-order
  term on the corrupted latent is negative (estimate -3.4 nats);
- saturation: where the score is flat at the corrupted point (the judge's P(value) near 0 or 1,
  a saturated softmax inside an attention layer) the gradient is ~0 and a large effect is missed.
  The log metric removes the judge's own flatness but is steep where P is tiny (color: corrupted
  P ~ 1e-5, estimates of tens of nats); `points > 1` (below) integrates along the corruption.
  In the text trace of object, the "further after" tokens restore P(object) from 1e-10..1e-4 to
  ~0.2 while their estimate stays ~0;
- cancellation: the estimate sums over steps, CFG rows and spatial positions or tokens; effects
  of opposite sign cancel in the sum although restoring them does something (`per_step=True`
  shows the steps);
- nonlinearity between site and score in general: the estimate is exact only when the score is
  linear in the site's activation (tests/test_attribution.py).

Corrections offered (AtP*-style): `points=K > 1` averages the gradient over K runs whose
corruption noise is scaled from full to 1/K of itself (integrated gradients along the corruption,
as EAP-IG), at K times the cost. AtP*'s QK fix for saturated attention (recomputing the attention
pattern with clean queries/keys) needs query/key sites, which `Model.sites()` does not offer: not
implemented. Head sites (`<attention site>.head-H`, a slice of the out projection's input) and
neuron sites (`<ff site>.neuron`) are attributed like any site (a head: its columns only).
`verify_top` (`method="hybrid"` of either trace) takes an attribution map and measures its k largest
estimates (by size: a wrong sign still says the score is sensitive there) by exact patching.

Text-encoder traces (`attribute_text`, `trace_text_encoder(method="attribution")`) scale
(clean - corrupted) at a text site by one alpha per (sample, token position): the gradient per
position is the first-order effect of restoring that state alone, estimated for every (site,
token) cell from the same three passes; token roles average their positions as the exact trace does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from interp.errors import ScoringInputError
from interp.gradients import CHECKPOINTS, Checkpoint, generate
from interp.model import Model
from interp.results import unit_mean
from interp.runner import call_steps
from interp.scoring import CLIPScore, Scorer, _features
from interp.sites import Site
from interventions.causal_trace import (
    Prompts, SiteGroup, TextGrid, TraceResult, Unit, corruption, embedding_std, make_units, site_groups, unit_records,
)
from interventions.sweep import default_scorer, subject_attributes

Metric = Literal["auto", "score", "log"]
Differentiable = Callable[[torch.Tensor, Sequence[str]], torch.Tensor]


def _judge_metric(scorer: Scorer, log: bool) -> Differentiable:
    """The judge's P(value the text names) (its log with `log`), differentiable in float pixels."""
    from models.tiny.judge import load_judge
    from models.tiny.scenes import ATTRIBUTES, VALUES, parse_caption

    net = load_judge(scorer.judge_path)

    def metric(images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        probs = {a: logits.softmax(-1) for a, logits in net(images.clamp(0, 1) * 2 - 1).items()}
        rows = []
        for i, text in enumerate(texts):
            named = parse_caption(text)
            wanted = scorer.attributes or tuple(a for a in ATTRIBUTES if a in named)
            rows.append(torch.stack([probs[a][i, VALUES[a].index(named[a])] for a in wanted]).mean())
        p = torch.stack(rows)
        return p.clamp_min(1e-12).log() if log else p

    return metric


def _clip_metric(scorer: CLIPScore) -> Differentiable:
    """CLIP-score (cosine of image and text embeddings), differentiable in the images."""

    def metric(images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        pixels = scorer._preprocess(images.to(scorer.device, torch.float32)).to(scorer.model.dtype)
        embedded = F.normalize(_features(scorer.model.get_image_features(pixel_values=pixels)).float(), dim=-1)
        return (embedded * scorer.embed_texts(list(texts)).to(embedded.device)).sum(-1)

    return metric


def differentiable(scorer: Scorer, metric: Metric = "auto") -> tuple[Differentiable, str]:
    """(a differentiable version of `scorer`, the metric's name: "score" or "log").

    "auto" is "log" for the tiny judge (its probabilities saturate) and "score" otherwise. A scorer
    of your own can bring its own: a `differentiable(images, texts)` method (images (N, 3, H, W) in
    [0, 1] with gradients), used as "score".
    """
    from models.tiny.scoring import JudgeScore

    if metric not in ("auto", "score", "log"):
        raise ValueError(f"metric must be 'auto', 'score' or 'log', got {metric!r}")
    if isinstance(scorer, JudgeScore):
        chosen = "log" if metric == "auto" else metric
        return _judge_metric(scorer, chosen == "log"), chosen
    if metric == "log":
        raise ValueError(f"metric='log' needs a probability score (the tiny judge); {scorer.name} is not one")
    if isinstance(scorer, CLIPScore):
        return _clip_metric(scorer), "score"
    if callable(getattr(scorer, "differentiable", None)):
        return scorer.differentiable, "score"
    raise ScoringInputError(f"attribution needs a differentiable score; {scorer.name} has none. Use CLIPScore, "
                            "the tiny JudgeScore, or give your scorer a differentiable(images, texts) method")


def _part(site: Site, activation: torch.Tensor) -> torch.Tensor:
    """The site's part of its hook point's tensor: a head site's columns, else all of it."""
    columns = getattr(site, "columns", None)
    return activation[..., columns[0]:columns[1]] if columns else activation


def _cfg_rows(value: torch.Tensor, cfg: bool) -> torch.Tensor:
    """A per-run vector (runs,) laid out as the denoiser's batch: [uncond rows..., cond rows...]."""
    return value.repeat(2) if cfg else value


@dataclass(frozen=True)
class _Setup:
    """What every pass of one attribution shares: the units, the generation, the scorer and its
    differentiable metric, the corruption."""

    model: Model
    units: list[Unit]
    noise: float
    samples: int
    steps: int
    guidance_scale: float
    scorer: Scorer
    score_grad: Differentiable
    metric: str
    min_effect: float
    stds: dict[str, float]
    points: int
    checkpoint: Checkpoint
    progress: bool


def _prepare(model: Model, units: list[Unit], noise: float, samples: int, steps: int, guidance_scale: float,
             scorer: Scorer | None, min_effect: float | None, progress: bool, metric: Metric = "auto",
             points: int = 1, checkpoint: Checkpoint = True) -> _Setup:
    """Check the options, resolve the scorer (and its differentiable metric) and the corruption's std."""
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {CHECKPOINTS}, got {checkpoint!r}")
    if points < 1:
        raise ValueError(f"points must be >= 1, got {points}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    scorer = default_scorer(model, scorer, subject_attributes([u.span.subject for u in units]))
    score_grad, metric = differentiable(scorer, metric)
    min_effect = getattr(scorer, "min_effect", 0.0) if min_effect is None else min_effect
    stds = {site.name: noise * embedding_std(model, units, site) for site in model.sites("text-embed")}
    return _Setup(model, units, noise, samples, steps, guidance_scale, scorer, score_grad, metric, min_effect, stds,
                  points, checkpoint, progress)


def _unit_estimates(setup: _Setup, unit: Unit, members: list[Site], per_token: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One (prompt, seed): (clean image (3, H, W), corrupted images (samples, 3, H, W), estimates
    (samples, sites, calls)) from a clean pass and `points` gradient passes of `samples` rows.

    With `per_token` (text-encoder sites only) each site's scale is per (sample, token position),
    so the estimates are (samples, sites, positions): the first-order effect of restoring the site
    at that position alone (its features summed); their sum over positions is the whole site's."""
    model, samples, steps, guidance_scale = setup.model, setup.samples, setup.steps, setup.guidance_scale
    cfg = model.adapter.cfg(guidance_scale)
    calls = len(call_steps(model.pipe.scheduler, steps))
    prompts, seeds = [unit.prompt] * samples, [unit.seed] * samples
    corrupts = [corruption(model, unit, setup.stds, k) for k in range(samples)]

    def capture(noises: list) -> tuple[torch.Tensor, dict]:
        kept: dict[tuple[str, int | None], torch.Tensor] = {}

        def keep(site: Site, call: int | None, out: torch.Tensor) -> None:
            kept[(site.name, call)] = _part(site, out).detach().clone()

        images = generate(model, [unit.prompt] * len(noises), [unit.seed] * len(noises), steps, guidance_scale,
                          noises, members, keep)
        return images, kept

    clean_image, clean = capture([[]])
    # rows of the denoiser's batch per run: [uncond..., cond...]; text sites have one row per run
    clean = {key: (a.repeat_interleave(samples, 0) if key[1] is None or not cfg else
                   torch.cat([a[:1].expand(samples, *a.shape[1:]), a[1:].expand(samples, *a.shape[1:])]))
             for key, a in clean.items()}
    corrupted_acts = capture(corrupts)[1] if setup.points > 1 else None
    # a text site's activation is (rows, positions, features)
    scales = {s.name: (samples, clean[(s.name, None)].shape[1]) if per_token else (samples,) for s in members}
    estimates = torch.zeros(samples, len(members), max(n[-1] for n in scales.values()) if per_token else calls)
    corrupted_images = None
    for j in range(setup.points):
        scale = 1 - j / setup.points
        noises = [[replace(op, std=op.std * scale) for op in ops] for ops in corrupts]
        alphas = {(s.name, c): torch.zeros(scales[s.name], requires_grad=True)
                  for s in members for c in ([None] if s.is_text else range(calls))}

        def edit(site: Site, call: int | None, out: torch.Tensor) -> torch.Tensor:
            base = _part(site, out).detach() if corrupted_acts is None else corrupted_acts[(site.name, call)]
            delta = clean[(site.name, call)] - base
            alpha = alphas[(site.name, call)]
            alpha = alpha if site.is_text else _cfg_rows(alpha, cfg)
            step = alpha.to(out.device, out.dtype).view(*alpha.shape, *[1] * (out.ndim - alpha.ndim)) * delta
            columns = getattr(site, "columns", None)
            return out + (F.pad(step, (columns[0], out.shape[-1] - columns[1])) if columns else step)

        keys = list(alphas)

        def backward(images: torch.Tensor) -> tuple[torch.Tensor, tuple]:
            grads = torch.autograd.grad(setup.score_grad(images, prompts).sum(), [alphas[k] for k in keys],
                                        allow_unused=True)
            return images.detach(), grads

        images, grads = generate(model, prompts, seeds, steps, guidance_scale, noises, members, edit, grad=True,
                                 checkpoint=setup.checkpoint, within=backward)
        if j == 0:
            corrupted_images = images
        for (name, call), grad in zip(keys, grads):
            if grad is not None:
                start, row = call or 0, grad.float().reshape(samples, -1) / setup.points
                estimates[:, [s.name for s in members].index(name), start:start + row.shape[1]] += row
    return clean_image[0].detach(), corrupted_images, estimates


def _passes(setup: _Setup, members: list[Site], per_token: bool = False
            ) -> tuple[np.ndarray, np.ndarray, torch.Tensor, dict[str, torch.Tensor]]:
    """Every unit's passes: per (unit, noise sample) row the clean and corrupted scores, the
    estimates (rows, sites, calls or positions: `_unit_estimates`), and the images by name."""
    clean, corrupted, estimates, images = [], [], [], {}
    for u, unit in enumerate(tqdm(setup.units, desc="attribution", disable=not setup.progress or len(setup.units) < 2)):
        clean_image, corrupted_images, est = _unit_estimates(setup, unit, members, per_token)
        estimates.append(est)
        clean += [float(setup.scorer([clean_image], [unit.prompt])[0])] * setup.samples
        corrupted += setup.scorer(list(corrupted_images), [unit.prompt] * setup.samples).tolist()
        images[f"u{u}/clean"] = clean_image
        images.update({f"u{u}/n{k}/corrupted": image for k, image in enumerate(corrupted_images)})
    return np.array(clean), np.array(corrupted), torch.cat(estimates), images


def _restored(metric: str, corrupted: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Estimated restored scores from raw IEs (rows, ...): S_corrupted + IE for "score"; for "log"
    min(1, S_corrupted * exp(IE)) (a log-probability maps back to a probability, at most 1)."""
    base = corrupted.reshape(-1, *[1] * (raw.ndim - 1))
    return np.minimum(base * np.exp(raw), 1.0) if metric == "log" else base + raw


def _result(setup: _Setup, axes: tuple[str, ...], coords: dict[str, list], raw: np.ndarray, restored: np.ndarray,
            clean: np.ndarray, corrupted: np.ndarray, images: dict, settings: dict) -> TraceResult:
    """The estimates as a trace's grid, with the attribution's settings after `settings`."""
    records = unit_records(setup.units, setup.samples, clean, corrupted, setup.min_effect)
    settings = {**settings, "noise": setup.noise, "noise_std": setup.stds, "samples": setup.samples,
                "steps": setup.steps, "guidance_scale": setup.guidance_scale, "scorer": setup.scorer.name,
                "protocol": "paper", "min_effect": setup.min_effect, "method": "attribution", "metric": setup.metric,
                "points": setup.points, "checkpoint": setup.checkpoint}
    scores = {"clean": clean, "corrupted": corrupted, "restored": restored, "estimate": raw}
    return TraceResult(axes, coords, scores, records, settings, images)


def attribute(
    model: Model,
    prompt: Prompts,
    subject: str | None = None,
    sites: Sequence[SiteGroup] | None = None,
    seeds: Sequence[int] = (0,),
    noise: float = 3.0,
    samples: int = 10,
    steps: int = 25,
    guidance_scale: float = 7.5,
    scorer: Scorer | None = None,
    metric: Metric = "auto",
    per_step: bool = False,
    points: int = 1,
    checkpoint: Checkpoint = True,
    min_effect: float | None = None,
    progress: bool = True,
) -> TraceResult:
    """Attribution-patching estimate of `trace_unet`'s map (paper protocol), for every site at once.

    Arguments, units (prompt x seed x noise sample, the same corruption noise as exact tracing) and
    dropped units as in `trace_unet`; `sites` may also name text-encoder sites (their state at every
    token restored at once; `attribute_text` estimates each token position). Returns a
    `TraceResult` over ("site",), or ("site", "step") with `per_step`
    (the estimate of restoring the site at that step only), whose "restored" scores are estimates
    (see the module docstring) and whose "estimate" holds the raw first-order IE in metric units.
    A group of sites is estimated as the sum of its members (the linearisation is additive).
    `points`: gradient evaluation points along the corruption (1: plain AtP; K: integrated gradients).
    `checkpoint`: True checkpoints each denoiser call, "blocks" each call and each of its blocks
    (less memory, one more forward per step), False nothing (`interp.gradients.generate`).
    """
    groups, labels = site_groups(model, sites)
    members = sorted({model.site(n) for g in groups for n in g}, key=lambda s: (not s.is_text, s.order))
    setup = _prepare(model, make_units(model, prompt, subject, seeds), noise, samples, steps, guidance_scale, scorer,
                     min_effect, progress, metric, points, checkpoint)
    clean, corrupted, per_call, images = _passes(setup, members)
    # calls -> steps (second-order schedulers call the denoiser more than once per step)
    by_step = torch.tensor(call_steps(model.pipe.scheduler, steps))[:per_call.shape[-1]]
    per_site = torch.zeros(*per_call.shape[:2], steps).index_add_(2, by_step, per_call).numpy().astype(np.float64)
    index = {s.name: i for i, s in enumerate(members)}
    grouped = np.stack([per_site[:, [index[n] for n in g]].sum(1) for g in groups], 1)  # (rows, groups, steps)
    raw = grouped if per_step else grouped.sum(-1)
    axes, coords = (("site", "step"), {"site": labels, "step": list(range(steps))}) if per_step else \
        (("site",), {"site": labels})
    return _result(setup, axes, coords, raw, _restored(setup.metric, corrupted, raw), clean, corrupted, images,
                   {"recipe": "trace_unet", "branch": "both"})


def _cell_means(per_position: np.ndarray, setup: _Setup, grid: TextGrid) -> np.ndarray:
    """(rows, sites, positions) -> (rows, sites, tokens): each cell the mean over the positions it
    restores in the row's unit (`TextGrid.cell_positions`), NaN where it has none, as the exact
    trace averages its restored runs."""
    lengths = [setup.model.adapter.token_length(setup.model.pipe, t) for t in grid.tokenizers]
    cells = np.full((len(per_position), *grid.shape), np.nan)
    for u, unit in enumerate(setup.units):
        rows = slice(u * setup.samples, (u + 1) * setup.samples)
        for index in np.ndindex(*grid.shape):
            chosen = [p % lengths[index[0]] for p in grid.cell_positions(unit, index)]
            if chosen:
                cells[rows, index[0], index[1]] = per_position[rows, index[0]][:, chosen].mean(-1)
    return cells


def attribute_text(model: Model, units: list[Unit], grid: TextGrid, settings: dict, **options: Any) -> TraceResult:
    """Attribution-patching estimate of `trace_text_encoder`'s (site, token) map, every cell at once.

    `options` as `attribute`'s but `sites`, `seeds` and `per_step`. Each position's estimate is the
    gradient of the metric with respect to a per-(sample, position) scale on (clean - corrupted) at
    the site, from the same passes as `attribute`; a token role's cell is the mean over the unit's
    positions in that role, for the raw "estimate" and for the "restored" scores it maps to (each
    position mapped, then averaged, as the exact trace averages its runs). `settings` go first in
    the result's settings."""
    setup = _prepare(model, units, **options)
    clean, corrupted, per_position, images = _passes(setup, list(grid.sites), per_token=True)
    raw = per_position.numpy().astype(np.float64)
    restored = _restored(setup.metric, corrupted, raw)
    return _result(setup, ("site", "token"), grid.coords, _cell_means(raw, setup, grid),
                   _cell_means(restored, setup, grid), clean, corrupted, images, settings)


def candidates(estimated: TraceResult) -> list[int]:
    """Grid cells (flat, row-major indices) by mean |estimate| over kept units, largest first.

    By magnitude, not signed value: where the linearisation fails (trajectory divergence, cancellation
    across steps) a site that matters gets a large estimate of the wrong sign; its size still says
    the score is sensitive to it, so exact patching should look at it."""
    magnitude = unit_mean(np.abs(estimated.scores["estimate"][estimated.kept])).ravel()
    return [int(i) for i in np.argsort(-np.nan_to_num(magnitude, nan=-np.inf), kind="stable")]


def verify_top(estimated: TraceResult, exact: Callable[..., TraceResult], verify: int = 10) -> TraceResult:
    """`estimated` (an attribution map, `attribute` or `attribute_text`) with its `verify` largest
    cells (`candidates`: by the size of the estimate) restored exactly by `exact(cells=...)`: the
    matching exact trace over the same grid and units (`trace_unet` or `trace_text_encoder` with the
    same sites, prompts, seeds, samples, steps, noise and scorer, e.g. through `functools.partial`).
    The grid holds the exact scores of the verified cells (`settings["verified"]`, cell labels
    joined by "/") and NaN elsewhere (left out of means and `top`, blank in figures), so it ranks
    measured effects only; "estimate" keeps every cell's raw estimate. Clean, corrupted and dropped
    units come from the exact trace."""
    if verify < 1:
        raise ValueError(f"verify must be >= 1, got {verify}")
    if "step" in estimated.axes:
        raise ValueError("verify a whole-loop map, not a per-step one")
    top = candidates(estimated)[:verify]
    measured = exact(cells=top)
    labels = estimated.cells()
    settings = {**estimated.settings, "method": "hybrid", "verified": ["/".join(map(str, labels[i])) for i in top]}
    return TraceResult(estimated.axes, estimated.coords, {**measured.scores, "estimate": estimated.scores["estimate"]},
                       measured.units, settings, {**estimated.images, **measured.images})


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two score vectors over the entries finite in both (ties get
    their average rank)."""

    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=float)
        for value in np.unique(x):  # average ranks of ties
            tied = x == value
            r[tied] = r[tied].mean()
        return r

    a, b = np.asarray(a, float), np.asarray(b, float)
    finite = np.isfinite(a) & np.isfinite(b)
    ra, rb = ranks(a[finite]), ranks(b[finite])
    return float(np.corrcoef(ra, rb)[0, 1])


def agreement(estimated: TraceResult, exact: TraceResult, sites: Sequence[str] | None = None, k: int = 5,
              resamples: int = 1000, seed: int = 0) -> dict:
    """How well an attribution map ranks grid cells like the exact one, over the cells of `sites`
    (all by default; cells no kept unit has, such as a token role no prompt has, are left out).

    Returns Spearman of the mean IEs with a 95% bootstrap interval over units kept by both (units
    resampled in pairs), the overlap of the top `k`, the two top-k lists, n (units, cells), and per
    cell (labels joined by "/") both mean IEs. Both results must come from the same units (same
    prompts, seeds, samples) and grid.
    """
    if estimated.coords != exact.coords or len(estimated.units) != len(exact.units):
        raise ValueError("compare maps of the same grid and units")
    kept = estimated.kept & exact.kept
    a, b = (r.ie_samples[kept].reshape(int(kept.sum()), -1) for r in (estimated, exact))
    mean_a, mean_b = unit_mean(a), unit_mean(b)
    cells = estimated.cells()
    chosen = [i for i, c in enumerate(cells) if (sites is None or c[0] in sites)
              and np.isfinite(mean_a[i]) and np.isfinite(mean_b[i])]
    a, b, mean_a, mean_b = a[:, chosen], b[:, chosen], mean_a[chosen], mean_b[chosen]
    labels = ["/".join(map(str, cells[i])) for i in chosen]
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(resamples if len(a) > 1 else 0):
        pick = rng.integers(0, len(a), len(a))
        boot.append(spearman(unit_mean(a[pick]), unit_mean(b[pick])))
    boot = np.array([x for x in boot if np.isfinite(x)])
    top_a = [labels[i] for i in np.argsort(-mean_a, kind="stable")[:k]]
    top_b = [labels[i] for i in np.argsort(-mean_b, kind="stable")[:k]]
    return {"spearman": spearman(mean_a, mean_b),
            "spearman_95": (float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975))) if len(boot) else None,
            "top_overlap": len(set(top_a) & set(top_b)), "top_estimated": top_a, "top_exact": top_b,
            "units": int(kept.sum()), "cells": len(chosen),
            "ie": {label: (float(x), float(y)) for label, x, y in zip(labels, mean_a, mean_b)}}
