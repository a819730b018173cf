"""Causal tracing (Basu et al., ICLR 2024, with ROME's corruption): which states carry an attribute.

Three kinds of run per (prompt, seed) unit: *clean*; *corrupted* (Gaussian noise on the input
embeddings of the subject tokens in every text encoder, at the positions its own tokenizer gives
them, std = `noise` x the empirical std of those tokens' embedding rows, a fixed seed per corrupted
sample); *restored* (corrupted, but one state copied back from the clean run: a denoiser site at
every step, or one text-encoder (site, token) state). Each image is scored against its prompt (the
judge's probability of the subject's attribute on the bundled tiny model, CLIP-score elsewhere);
the indirect effect is IE = S_restored - S_corrupted, normalised by S_clean - S_corrupted, with a
95% interval over units (prompt x seed x noise sample). Everything is one graph, so the runner
batches all restored runs with their clean source (and, under the aligned protocol, their shadows).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Literal, Union

import numpy as np

from interp.graph import Branch, Graph, Noise, Restore, Run
from interp.model import Model, SubjectSpan
from interp.results import ScoreGrid, unit_mean, unit_std
from interp.scoring import Scorer
from interp.sites import LATENT, Site
from interp.stats import Interval, interval, mean_interval
from interventions.sweep import default_scorer, run_and_score, subject_attributes

Prompts = Union[str, Sequence[Union[str, Sequence[str]]]]
SiteGroup = Union[str, Sequence[str]]
# ROME's token roles, used to align token positions across prompts of different lengths.
ROLES = ("before subject", "first subject", "middle subject", "last subject", "first after", "further after", "last")


@dataclass(frozen=True)
class Unit:
    """One (prompt, subject, seed) repetition of a trace, with the subject's span and the prompt's
    tokens (up to EOS) per tokenizer: positions differ between tokenizers (T5 has no BOS)."""

    prompt: str
    seed: int
    spans: tuple[SubjectSpan, ...]
    token_lists: tuple[tuple[str, ...], ...]

    @property
    def span(self) -> SubjectSpan:
        """The subject in the first tokenizer's sequence, which results are labelled with."""
        return self.spans[0]

    @property
    def tokens(self) -> tuple[str, ...]:
        """The prompt's tokens in the first tokenizer's split, which results are labelled with."""
        return self.token_lists[0]

    def record(self) -> dict:
        return {"prompt": self.prompt, "subject": self.span.subject, "seed": self.seed,
                "positions": list(self.span.positions), "tokens": list(self.tokens)}


def make_units(model: Model, prompt: Prompts, subject: str | None, seeds: Sequence[int]) -> list[Unit]:
    """Units for `prompt` (a string, or a list of strings and (prompt, subject) pairs) x `seeds`.

    Raises `SubjectNotFoundError` if a subject is not in its prompt.
    """
    pairs = [(prompt, subject)] if isinstance(prompt, str) else [
        (item, subject) if isinstance(item, str) else tuple(item) for item in prompt
    ]
    if not pairs or not seeds:
        raise ValueError("pass at least one prompt and one seed")
    for text, subj in pairs:
        if subj is None:
            raise ValueError(f"prompt {text!r} has no subject; pass subject= or (prompt, subject) pairs")
    tokenizers = range(len(model.tokenizers))
    units = []
    for text, subj in pairs:
        spans = tuple(model.locate(text, subj, i) for i in tokenizers)
        token_lists = tuple(tuple(t.removesuffix("</w>") for t in model.tokens(text, i)) for i in tokenizers)
        units += [Unit(text, int(seed), spans, token_lists) for seed in seeds]
    return units


def embedding_std(model: Model, units: Sequence[Unit], site: Site | None = None) -> float:
    """Empirical std of the subject tokens' rows in `site`'s input embedding (the first text
    encoder's by default), pooled over all units' subjects."""
    site = site or model.sites("text-embed")[0]
    index = model.tokenizer_index(site)
    weight = model.components[site.component].get_submodule(site.path).weight
    ids = {int(model.token_ids([u.prompt], index)[0][p]) for u in units for p in u.spans[index].positions}
    return float(weight[sorted(ids)].detach().float().std())


def corruption(model: Model, unit: Unit, stds: dict[str, float], seed: int) -> list[Noise]:
    """Noise on the subject's input embeddings in every text encoder (`stds`: per embedding site)."""
    return [Noise(name, tokens=unit.spans[model.tokenizer_index(name)].positions, std=std, seed=seed)
            for name, std in stds.items()]


class TraceResult(ScoreGrid):
    """Clean, corrupted and restored scores per unit; restored over the trace's grid axes.

    A unit is one (prompt, seed, noise sample). scores: "clean" (units,), "corrupted" (units,),
    "restored" (units, *grid). A cell a unit lacks (a token role its prompt has no token for) is
    NaN and left out of means. Units whose total effect (clean - corrupted) is below
    `settings["min_effect"]` are dropped: kept on file (`units[i]["dropped"]`), never averaged in.
    """

    @property
    def kept(self) -> np.ndarray:
        """Per unit: whether it counts (its corruption removed enough to trace)."""
        return np.array([not u.get("dropped", False) for u in self.units], dtype=bool)

    @property
    def dropped(self) -> int:
        """How many units were dropped for too small a total effect."""
        return int((~self.kept).sum())

    @property
    def ie_samples(self) -> np.ndarray:
        """Per-unit indirect effect S_restored - S_corrupted, (units, *grid); NaN for dropped units."""
        corrupted = self.scores["corrupted"].reshape(-1, *[1] * len(self.axes))
        ie = self.scores["restored"] - corrupted
        ie[~self.kept] = np.nan
        return ie

    @property
    def ie(self) -> np.ndarray:
        """Mean indirect effect over kept units."""
        return unit_mean(self.ie_samples)

    @property
    def ie_std(self) -> np.ndarray:
        """Spread of the indirect effect over kept units."""
        return unit_std(self.ie_samples)

    def ie_interval(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(mean, low, high, n) of the indirect effect per cell: Student-t 95% over kept units."""
        return mean_interval(self.ie_samples)

    def total_interval(self) -> Interval:
        """S_clean - S_corrupted over kept units, with its 95% interval."""
        return interval((self.scores["clean"] - self.scores["corrupted"])[self.kept])

    @property
    def total_effect(self) -> float:
        """Mean S_clean - S_corrupted over kept units: what the corruption removed."""
        kept = self.kept
        return float(np.mean((self.scores["clean"] - self.scores["corrupted"])[kept])) if kept.any() else float("nan")

    @property
    def normalized_ie(self) -> np.ndarray:
        """Mean IE / mean (S_clean - S_corrupted): 1 = restores everything, 0 = nothing (NaN if no effect)."""
        total = self.total_effect
        return self.ie / total if total and not np.isnan(total) else np.full(self.shape, np.nan)

    def top(self, k: int = 5) -> list[tuple[tuple, float, float]]:
        """The `k` cells with the largest mean IE: (cell labels, IE, IE std)."""
        ie, std = self.ie.ravel(), self.ie_std.ravel()
        order = [i for i in np.argsort(-np.nan_to_num(ie, nan=-np.inf)) if not np.isnan(ie[i])]
        cells = self.cells()
        return [(cells[i], float(ie[i]), float(std[i])) for i in order[:k]]

    @property
    def method(self) -> str:
        """How the restored scores were made: exact patching, attribution patching (estimates), or
        hybrid (estimates, the top cells verified by exact patching)."""
        settings = self.settings
        method = settings.get("method", "exact")
        if method == "attribution":
            return f"attribution patching (estimates; metric {settings.get('metric')}, {settings.get('points', 1)} point(s))"
        if method == "hybrid":
            return (f"hybrid (attribution, then its {len(settings.get('verified', []))} largest cells by exact "
                    "patching; the others not measured)")
        return "exact patching"

    def summary(self) -> str:
        """One line: score, protocol, method, clean and corrupted means, units kept and dropped."""
        kept = self.kept
        clean, corrupted = (interval(self.scores[k][kept]) if kept.any() else None for k in ("clean", "corrupted"))
        scores = f"clean {clean}  corrupted {corrupted}" if clean else "no unit kept"
        return (f"score {self.settings.get('scorer', 'clip-score')} · protocol {self.settings.get('protocol', 'paper')} · "
                f"method {self.method} · "
                f"{scores} · {int(kept.sum())} units kept, {self.dropped} dropped "
                f"(total effect < {self.settings.get('min_effect', 0.0)})")

    def table(self) -> str:
        """A text table of mean IE (a matrix for two axes; a list with 95% intervals for one)."""
        head = self.summary()
        if len(self.axes) == 2:
            rows, cols = (self.coords[a] for a in self.axes)
            width = max(8, *(len(str(c)) + 1 for c in cols))
            lines = [f"{'IE':<20}" + "".join(f"{str(c):>{width}}" for c in cols)]
            for label, values in zip(rows, self.ie):
                lines.append(f"{str(label):<20}" + "".join(f"{v:>{width}.4f}" for v in values))
            return "\n".join([head, *lines])
        mean, low, high, n = self.ie_interval()
        lines = [f"{self.axes[0]:<24}{'restored':>10}{'IE':>9}{'95% interval':>20}{'n':>5}{'norm IE':>9}"]
        for cell, restored, ie, lo, hi, count, nie in zip(
            self.cells(), self.mean("restored").ravel(), mean.ravel(), low.ravel(), high.ravel(), n.ravel(),
            self.normalized_ie.ravel(),
        ):
            lines.append(f"{' '.join(map(str, cell)):<24}{restored:>10.4f}{ie:>9.4f}"
                         f"{f'[{lo:.4f}, {hi:.4f}]':>20}{int(count):>5}{nie:>9.3f}")
        return "\n".join([head, *lines])


# A cell's runs for one unit, restoring from the run named by the third argument: each inner list
# is one restored run's Restore ops (scores are averaged over the runs); no runs means the cell
# does not apply to that unit.
CellRuns = Callable[[Unit, tuple[int, ...], str], list[list[Restore]]]
Protocol = Literal["paper", "aligned"]
PROTOCOLS = ("paper", "aligned")
Method = Literal["exact", "attribution", "hybrid"]
METHODS = ("exact", "attribution", "hybrid")
AddRun = Callable[[str, list], str]  # (run name, ops) -> the name, after adding the run to a graph


def add_sample_runs(
    add: AddRun, prefix: str, corrupt: list[Noise], cells: Sequence[tuple[tuple[int, ...], str]],
    runs_of: Callable[[tuple[int, ...]], list[list[Restore]]], protocol: Protocol,
) -> dict[tuple[int, ...], list[str]]:
    """Add one noise sample's runs of a unit: `prefix`corrupted, then each cell's restored runs
    (`prefix`<label>/<j>, corrupted by `corrupt` and restoring `runs_of(index)`). Under the aligned
    protocol each restored run first gets a shadow (<name>/shadow: the clean prompt on the restored
    run's own latent) to restore from instead. Returns cell index -> its restored run names.
    Shared by the in-memory traces (`_trace`) and the sweeps' units (`interventions.sweep_recipes`)."""
    add(f"{prefix}corrupted", corrupt)
    names: dict[tuple[int, ...], list[str]] = {}
    for index, label in cells:
        names[index] = []
        for j, restores in enumerate(runs_of(index)):
            name = f"{prefix}{label}/{j}"
            if protocol == "aligned":
                shadow = add(f"{name}/shadow", [Restore(LATENT, source=name)])
                restores = [replace(op, source=shadow) for op in restores]
            names[index].append(add(name, [*corrupt, *restores]))
    return names


def restored_scores(cells: dict[tuple[int, ...], list[str]], scores: dict[str, float],
                    shape: tuple[int, ...]) -> np.ndarray:
    """A (shape) grid of each cell's mean score over its restored runs; NaN where it has none."""
    restored = np.full(shape, np.nan)
    for index, names in cells.items():
        if names:
            restored[index] = np.mean([scores[n] for n in names])
    return restored


def role_positions(unit: Unit, tokenizer: int, role: str) -> list[int]:
    """The positions of `unit`'s prompt (in tokenizer `tokenizer`'s split) that have ROME's `role`."""
    span, length = unit.spans[tokenizer], len(unit.token_lists[tokenizer])
    return [p for p in range(length) if token_role(p, span, length) == role]


def _trace(
    model: Model, units: list[Unit], axes: tuple[str, ...], coords: dict[str, list], cell_runs: CellRuns,
    noise: float, samples: int, steps: int, guidance_scale: float, scorer: Scorer | None,
    chunk_size: int | None, progress: bool, settings: dict, protocol: Protocol = "paper",
    min_effect: float | None = None, cells: Collection[int] | None = None,
) -> TraceResult:
    """Build the clean / corrupted / restored graph for every unit, run it once, score, aggregate.

    `protocol="aligned"` gives every restored run a shadow run (the clean prompt on the restored
    run's own latent, through a `latent` restore) and restores from the shadow instead of the clean run.
    `cells`: restore only these grid cells (flat, row-major indices); the others are NaN.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    scorer = default_scorer(model, scorer, subject_attributes([u.span.subject for u in units]))
    min_effect = getattr(scorer, "min_effect", 0.0) if min_effect is None else min_effect
    stds = {site.name: noise * embedding_std(model, units, site) for site in model.sites("text-embed")}
    shape = tuple(len(coords[a]) for a in axes)
    graph, texts = Graph(), {}
    layout: list[dict[tuple[int, ...], list[str]]] = []  # (unit, sample) -> cell -> restored run names
    labelled = [(index, "/".join(str(coords[a][i]) for a, i in zip(axes, index)))
                for flat, index in enumerate(np.ndindex(*shape)) if cells is None or flat in cells]

    for u, unit in enumerate(units):
        def add(name: str, ops: list, unit: Unit = unit) -> str:
            graph.add(Run(name, unit.prompt, unit.seed, guidance_scale, steps, ops=ops))
            texts[name] = unit.prompt
            return name

        clean = add(f"u{u}/clean", [])
        for k in range(samples):
            layout.append(add_sample_runs(
                add, f"u{u}/n{k}/", corruption(model, unit, stds, k), labelled,
                lambda index, unit=unit, clean=clean: cell_runs(unit, index, clean), protocol))

    scores, images = run_and_score(model, graph, texts, scorer, chunk_size, progress)
    rows = [(u, k) for u in range(len(units)) for k in range(samples)]
    restored = np.array([restored_scores(names, scores, shape) for names in layout]).reshape(len(rows), *shape)
    clean = np.array([scores[f"u{u}/clean"] for u, _ in rows])
    corrupted = np.array([scores[f"u{u}/n{k}/corrupted"] for u, k in rows])
    records = unit_records(units, samples, clean, corrupted, min_effect)
    settings = {**settings, "noise": noise, "noise_std": stds, "samples": samples, "steps": steps,
                "guidance_scale": guidance_scale, "scorer": scorer.name, "protocol": protocol,
                "min_effect": min_effect, "method": "exact"}
    shown = {n: image for n, image in images.items() if not n.endswith("/shadow")}
    return TraceResult(axes, coords, {"clean": clean, "corrupted": corrupted, "restored": restored},
                       records, settings, shown)


def unit_records(units: Sequence[Unit], samples: int, clean: np.ndarray, corrupted: np.ndarray,
                 min_effect: float) -> list[dict]:
    """One record per (unit, noise sample) row: the unit, its sample, whether its total effect
    (clean - corrupted) fell below `min_effect` (dropped)."""
    rows = [(u, k) for u in range(len(units)) for k in range(samples)]
    return [{**units[u].record(), "sample": k, "dropped": bool(c - x < min_effect)}
            for (u, k), c, x in zip(rows, clean, corrupted)]


def _check_method(method: str, cells: Collection[int] | None, attribution: dict[str, Any]) -> None:
    """Raise for a method the traces lack, attribution options given to an exact trace, `cells`
    given to an estimate, or a hybrid of per-step estimates."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "exact" and attribution:
        raise TypeError(f"the trace got {sorted(attribution)}, which only method='attribution' or 'hybrid' takes")
    if method != "exact" and cells is not None:
        raise ValueError(f"cells restricts an exact trace; method={method!r} estimates every cell")
    if method == "hybrid" and attribution.get("per_step"):
        raise ValueError("hybrid verifies whole-loop restores; per_step applies to method='attribution' only")


def _estimated_trace(method: Method, verify: int, estimate: Callable[[], TraceResult],
                    exact: Callable[..., TraceResult]) -> TraceResult:
    """`estimate()` (an attribution map), or for "hybrid" that map with its `verify` largest cells
    measured by `exact(cells=...)` (`interventions.attribution.verify_top`)."""
    from interventions.attribution import verify_top

    estimated = estimate()
    return estimated if method == "attribution" else verify_top(estimated, exact, verify)


def site_groups(model: Model, sites: Sequence[SiteGroup] | None) -> tuple[list[tuple[str, ...]], list[str]]:
    """(canonical names of each group, each group's label) for `trace_unet`'s `sites` (every denoiser
    site alone by default; a tuple is a group, `()` is "none", all denoiser sites "all")."""
    denoiser = tuple(s.name for s in model.sites() if not s.is_text)
    groups = list(denoiser) if sites is None else list(sites)
    resolved = [(model.site(g).name,) if isinstance(g, str) else tuple(model.site(s).name for s in g) for g in groups]
    labels = [{(): "none", denoiser: "all"}.get(names) or "+".join(names) for names in resolved]
    return resolved, labels


def trace_unet(
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
    branch: Branch = "both",
    chunk_size: int | None = None,
    progress: bool = True,
    protocol: Protocol = "paper",
    min_effect: float | None = None,
    method: Method = "exact",
    verify: int = 10,
    cells: Collection[int] | None = None,
    **attribution: Any,
) -> TraceResult:
    """Causal trace of denoiser sites: restore each site's clean activation at every step.

    `sites`: names, or groups of names restored together (a tuple, labelled by its names joined
    with "+"; `()` restores nothing and is labelled "none", all denoiser sites "all"); every
    denoiser site alone by default. `prompt` is one prompt (with `subject`) or a list of prompts and
    (prompt, subject) pairs; units are prompts x `seeds` x `samples` noise samples (10 by default,
    as ROME), each image scored against its own prompt (`scorer`: the judge's probability of the
    subject's attribute on the bundled tiny model, CLIP-score elsewhere). Units whose total effect
    is below `min_effect` (the scorer's `min_effect`, else 0) are dropped and counted.

    `protocol`: "paper" copies the clean run's activation at every step, even after the clean and
    corrupted trajectories diverge, so a site that never reads the text can get a spurious effect;
    "aligned" takes the donor from the clean prompt evaluated on the restored run's own latent at
    each step (a shadow run), so such a site has IE 0 by construction. `branch` picks the
    classifier-free-guidance rows restored.

    `method`: "exact" restores each site (one generation per site and unit, batched); "attribution"
    estimates every site at once from one clean pass, one corrupted pass and one backward pass per
    (prompt, seed) (`interventions.attribution.attribute`; extra keyword arguments such as `metric`,
    `points`, `checkpoint` go to it); "hybrid" attributes everything, then restores the `verify`
    sites with the largest estimates (in size) exactly and keeps only those (other cells NaN). The
    result is the same grid; `settings["method"]` says which, for hybrid `settings["verified"]`
    lists the exactly restored cells. `cells` (exact only): restore just these sites (flat indices
    into `sites`), the other cells NaN; hybrid measures its verified cells so.
    """
    _check_method(method, cells, attribution)
    if method != "exact":
        from interventions.attribution import attribute

        if protocol != "paper" or branch != "both":
            raise ValueError(f"method={method!r} estimates the paper protocol with both CFG branches restored; "
                             "pass protocol='paper', branch='both', or method='exact'")
        options = dict(sites=sites, seeds=seeds, noise=noise, samples=samples, steps=steps,
                       guidance_scale=guidance_scale, scorer=scorer, min_effect=min_effect, progress=progress)
        return _estimated_trace(method, verify, lambda: attribute(model, prompt, subject, **options, **attribution),
                               partial(trace_unet, model, prompt, subject, chunk_size=chunk_size, **options))
    resolved, labels = site_groups(model, sites)
    units = make_units(model, prompt, subject, seeds)

    def cell_runs(_unit: Unit, index: tuple[int, ...], clean: str) -> list[list[Restore]]:
        return [[Restore(name, branch=branch, source=clean) for name in resolved[index[0]]]]

    settings = {"recipe": "trace_unet", "branch": branch}
    return _trace(model, units, ("site",), {"site": labels}, cell_runs, noise, samples, steps, guidance_scale,
                  scorer, chunk_size, progress, settings, protocol, min_effect, cells)


def token_role(position: int, span: SubjectSpan, length: int) -> str:
    """ROME's role of a token position in a prompt of `length` tokens (EOS last)."""
    first, last = span.positions[0], span.last
    if position == length - 1:
        return "last"
    if position < first:
        return "before subject"
    if position == last:
        return "last subject"
    if position == first:
        return "first subject"
    if position < last:
        return "middle subject"
    return "first after" if position == last + 1 else "further after"


def text_sites(model: Model, kinds: Sequence[str], layers: Sequence[int] | None) -> list[Site]:
    """Text-encoder sites of `kinds`, kind by kind, keeping layer indices `layers` (all if None)."""
    chosen = []
    for kind in kinds:
        of_kind = model.sites(kind)
        if layers is None or kind == "text-embed":
            chosen += of_kind
            continue
        missing = [i for i in layers if not 0 <= i < len(of_kind)]
        if missing:
            raise ValueError(f"layers {missing} do not exist: {kind} has layers 0 .. {len(of_kind) - 1}")
        chosen += [of_kind[i] for i in layers]
    return chosen


@dataclass(frozen=True)
class TextGrid:
    """A text-encoder trace's grid: its sites (each with its tokenizer's index), the token axis's
    labels, and the fixed positions its cells restore (None: the axis is ROME's token roles)."""

    sites: tuple[Site, ...]
    tokenizers: tuple[int, ...]
    tokens: tuple[str, ...]
    positions: tuple[int, ...] | None

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.sites), len(self.tokens)

    @property
    def coords(self) -> dict[str, list]:
        return {"site": [s.name for s in self.sites], "token": list(self.tokens)}

    def cell_positions(self, unit: Unit, index: tuple[int, ...]) -> list[int]:
        """The positions of `unit`'s prompt that cell (site, token) `index` restores, one at a time
        (its role's positions, or the fixed one); none where the unit lacks the role."""
        if self.positions is None:
            return role_positions(unit, self.tokenizers[index[0]], ROLES[index[1]])
        return [self.positions[index[1]]]


def text_grid(model: Model, units: Sequence[Unit], kinds: Sequence[str], layers: Sequence[int] | None,
              tokens: Sequence[int] | None) -> TextGrid:
    """`trace_text_encoder`'s grid for `units` (see its docstring for when the token axis is roles)."""
    sites = text_sites(model, kinds, layers)
    tokenizer_of = tuple(model.tokenizer_index(site) for site in sites)
    splits = {units[0].token_lists[i] for i in tokenizer_of}
    if tokens is None and (len({u.prompt for u in units}) > 1 or len(splits) > 1):
        return TextGrid(tuple(sites), tokenizer_of, ROLES, None)
    for site in sites if tokens is not None else ():
        model.check_positions(tokens, site)
    words = next(iter(splits)) if len(splits) == 1 else ()
    positions = tuple(tokens) if tokens is not None else tuple(range(len(words)))
    labels = tuple(f"{p}:{words[p]}" if p < len(words) else str(p) for p in positions)
    return TextGrid(tuple(sites), tokenizer_of, labels, positions)


def trace_text_encoder(
    model: Model,
    prompt: Prompts,
    subject: str | None = None,
    layers: Sequence[int] | None = None,
    kinds: Sequence[str] = ("text-self-attn", "text-mlp", "text-hidden"),
    tokens: Sequence[int] | None = None,
    seeds: Sequence[int] = (0,),
    noise: float = 3.0,
    samples: int = 10,
    steps: int = 25,
    guidance_scale: float = 7.5,
    scorer: Scorer | None = None,
    chunk_size: int | None = None,
    progress: bool = True,
    min_effect: float | None = None,
    method: Method = "exact",
    verify: int = 10,
    cells: Collection[int] | None = None,
    **attribution: Any,
) -> TraceResult:
    """Causal trace of text-encoder states: restore one (site, token position) state, generate, score.

    Units, scores and dropped units as in `trace_unet`. Text states are computed once per prompt,
    before any denoising, so the paper's protocol is the only one here.

    Axes ("site", "token"). Positions are those of each site's own tokenizer. With one prompt that
    the sites' tokenizers split alike, the token axis is its positions up to EOS (or `tokens`);
    with several prompts, or tokenizers that differ (SD3's CLIP and T5), and `tokens=None` it is
    ROME's token roles ("last subject", "first after", ...), each unit's positions averaged within
    their role.

    `method`, `verify` and extra keyword arguments (`metric`, `points`, `checkpoint`) as in
    `trace_unet`: "attribution" estimates every (site, token) cell from the same passes
    (`interventions.attribution.attribute_text`: the first-order effect of restoring the site at
    one position), "hybrid" then restores the `verify` largest cells exactly. `cells` (exact only):
    restore just these cells (flat, row-major indices of the grid), the others NaN.
    """
    _check_method(method, cells, attribution)
    units = make_units(model, prompt, subject, seeds)
    grid = text_grid(model, units, kinds, layers, tokens)
    settings = {"recipe": "trace_text_encoder", "kinds": list(kinds),
                "tokens": "roles" if grid.positions is None else "positions"}
    options = dict(noise=noise, samples=samples, steps=steps, guidance_scale=guidance_scale, scorer=scorer,
                   min_effect=min_effect, progress=progress)
    if method != "exact":
        from interventions.attribution import attribute_text

        return _estimated_trace(
            method, verify, lambda: attribute_text(model, units, grid, settings, **options, **attribution),
            partial(trace_text_encoder, model, prompt, subject, layers, kinds, tokens, seeds, chunk_size=chunk_size,
                    **options))

    def cell_runs(unit: Unit, index: tuple[int, ...], clean: str) -> list[list[Restore]]:
        site = grid.sites[index[0]].name
        return [[Restore(site, tokens=(p,), source=clean)] for p in grid.cell_positions(unit, index)]

    return _trace(model, units, ("site", "token"), grid.coords, cell_runs, noise, samples, steps, guidance_scale,
                  scorer, chunk_size, progress, settings, min_effect=min_effect, cells=cells)
