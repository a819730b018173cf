"""Causal tracing (Basu et al., ICLR 2024, with ROME's corruption): which states carry an attribute.

Three kinds of run per (prompt, seed) unit: *clean*; *corrupted* (Gaussian noise on the input
embeddings of the subject tokens in every text encoder, at the positions its own tokenizer gives
them, std = `noise` x the empirical std of those tokens' embedding rows, a fixed seed per corrupted
sample); *restored* (corrupted, but one state copied back from the clean run: a denoiser site at
every step, or one text-encoder (site, token) state). Each
image is CLIP-scored against its prompt; the indirect effect is IE = S_restored - S_corrupted,
normalised by S_clean - S_corrupted. Everything is one graph, so the runner batches all restored
runs with their clean source.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Union

import numpy as np

from interp.graph import Branch, Graph, Noise, Restore, Run
from interp.model import Model, SubjectSpan
from interp.results import ScoreGrid, unit_mean, unit_std
from interp.scoring import CLIPScore
from interp.sites import Site
from interventions.sweep import default_scorer, run_and_score

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
    """Clean, corrupted and restored CLIP-scores per unit; restored over the trace's grid axes.

    scores: "clean" (units,), "corrupted" (units,), "restored" (units, *grid). A cell a unit
    lacks (a token role its prompt has no token for) is NaN and left out of means.
    """

    @property
    def ie_samples(self) -> np.ndarray:
        """Per-unit indirect effect S_restored - S_corrupted, (units, *grid)."""
        corrupted = self.scores["corrupted"].reshape(-1, *[1] * len(self.axes))
        return self.scores["restored"] - corrupted

    @property
    def ie(self) -> np.ndarray:
        """Mean indirect effect over units."""
        return unit_mean(self.ie_samples)

    @property
    def ie_std(self) -> np.ndarray:
        """Spread of the indirect effect over units."""
        return unit_std(self.ie_samples)

    @property
    def total_effect(self) -> float:
        """Mean S_clean - S_corrupted: what the corruption removed."""
        return float(np.mean(self.scores["clean"] - self.scores["corrupted"]))

    @property
    def normalized_ie(self) -> np.ndarray:
        """Mean IE / mean (S_clean - S_corrupted): 1 = restores everything, 0 = nothing (NaN if no effect)."""
        total = self.total_effect
        return self.ie / total if total != 0 else np.full(self.shape, np.nan)

    def top(self, k: int = 5) -> list[tuple[tuple, float, float]]:
        """The `k` cells with the largest mean IE: (cell labels, IE, IE std)."""
        ie, std = self.ie.ravel(), self.ie_std.ravel()
        order = [i for i in np.argsort(-np.nan_to_num(ie, nan=-np.inf)) if not np.isnan(ie[i])]
        cells = self.cells()
        return [(cells[i], float(ie[i]), float(std[i])) for i in order[:k]]

    def table(self) -> str:
        """A text table of mean IE (a list for one axis, a matrix for two)."""
        head = (f"clean {np.mean(self.scores['clean']):.4f}  corrupted {np.mean(self.scores['corrupted']):.4f}  "
                f"({len(self.units)} units)")
        if len(self.axes) == 2:
            rows, cols = (self.coords[a] for a in self.axes)
            width = max(8, *(len(str(c)) + 1 for c in cols))
            lines = [f"{'IE':<20}" + "".join(f"{str(c):>{width}}" for c in cols)]
            for label, values in zip(rows, self.ie):
                lines.append(f"{str(label):<20}" + "".join(f"{v:>{width}.4f}" for v in values))
            return "\n".join([head, *lines])
        lines = [f"{self.axes[0]:<24}{'restored':>10}{'IE':>10}{'+-':>8}{'norm IE':>9}"]
        for cell, restored, ie, std, nie in zip(self.cells(), self.mean("restored").ravel(), self.ie.ravel(),
                                                self.ie_std.ravel(), self.normalized_ie.ravel()):
            lines.append(f"{' '.join(map(str, cell)):<24}{restored:>10.4f}{ie:>10.4f}{std:>8.4f}{nie:>9.3f}")
        return "\n".join([head, *lines])


# A cell's runs for one unit, restoring from the run named by the third argument: each inner list
# is one restored run's Restore ops (scores are averaged over the runs); no runs means the cell
# does not apply to that unit.
CellRuns = Callable[[Unit, tuple[int, ...], str], list[list[Restore]]]


def _trace(
    model: Model, units: list[Unit], axes: tuple[str, ...], coords: dict[str, list], cell_runs: CellRuns,
    noise: float, samples: int, steps: int, guidance_scale: float, scorer: CLIPScore | None,
    chunk_size: int | None, progress: bool, settings: dict,
) -> TraceResult:
    """Build the clean / corrupted / restored graph for every unit, run it once, score, aggregate."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    stds = {site.name: noise * embedding_std(model, units, site) for site in model.sites("text-embed")}
    shape = tuple(len(coords[a]) for a in axes)
    graph, texts = Graph(), {}
    layout: list[dict[tuple[int, ...], list[list[str]]]] = []  # unit -> cell -> sample -> run names

    def add(name: str, unit: Unit, ops: list) -> str:
        graph.add(Run(name, unit.prompt, unit.seed, guidance_scale, steps, ops=ops))
        texts[name] = unit.prompt
        return name

    for u, unit in enumerate(units):
        clean = add(f"u{u}/clean", unit, [])
        corruptions = [corruption(model, unit, stds, k) for k in range(samples)]
        for k, corrupt in enumerate(corruptions):
            add(f"u{u}/n{k}/corrupted", unit, corrupt)
        cells = {}
        for index in np.ndindex(*shape):
            label = "/".join(str(coords[a][i]) for a, i in zip(axes, index))
            restores = cell_runs(unit, index, clean)
            cells[index] = [
                [add(f"u{u}/n{k}/{label}/{j}", unit, [*corrupt, *ops]) for j, ops in enumerate(restores)]
                for k, corrupt in enumerate(corruptions)
            ]
        layout.append(cells)

    scores, images = run_and_score(model, graph, texts, default_scorer(scorer), chunk_size, progress)
    restored = np.full((len(units), *shape), np.nan)
    for u, cells in enumerate(layout):
        for index, per_sample in cells.items():
            values = [scores[n] for names in per_sample for n in names]
            if values:
                restored[(u, *index)] = np.mean(values)
    clean = [scores[f"u{u}/clean"] for u in range(len(units))]
    corrupted = [np.mean([scores[f"u{u}/n{k}/corrupted"] for k in range(samples)]) for u in range(len(units))]
    settings = {**settings, "noise": noise, "noise_std": stds, "samples": samples, "steps": steps,
                "guidance_scale": guidance_scale}
    return TraceResult(axes, coords, {"clean": clean, "corrupted": corrupted, "restored": restored},
                       [u.record() for u in units], settings, images)


def trace_unet(
    model: Model,
    prompt: Prompts,
    subject: str | None = None,
    sites: Sequence[SiteGroup] | None = None,
    seeds: Sequence[int] = (0,),
    noise: float = 3.0,
    samples: int = 1,
    steps: int = 25,
    guidance_scale: float = 7.5,
    scorer: CLIPScore | None = None,
    branch: Branch = "both",
    chunk_size: int | None = None,
    progress: bool = True,
) -> TraceResult:
    """Causal trace of denoiser sites: restore each site's clean activation at every step.

    `sites`: names, or groups of names restored together (a tuple, labelled by its names joined
    with "+"; `()` restores nothing and is labelled "none", all denoiser sites "all"); every
    denoiser site alone by default. `prompt` is one prompt (with `subject`) or a list of prompts and
    (prompt, subject) pairs; scores average over prompts x `seeds`, each image scored against its
    own prompt. `branch` picks the classifier-free-guidance rows restored.
    """
    denoiser = tuple(s.name for s in model.sites() if not s.is_text)
    groups = list(denoiser) if sites is None else list(sites)
    resolved = [(model.site(g).name,) if isinstance(g, str) else tuple(model.site(s).name for s in g) for g in groups]
    labels = [{(): "none", denoiser: "all"}.get(names) or "+".join(names) for names in resolved]
    units = make_units(model, prompt, subject, seeds)

    def cell_runs(_unit: Unit, index: tuple[int, ...], clean: str) -> list[list[Restore]]:
        return [[Restore(name, branch=branch, source=clean) for name in resolved[index[0]]]]

    settings = {"recipe": "trace_unet", "branch": branch}
    return _trace(model, units, ("site",), {"site": labels}, cell_runs, noise, samples, steps, guidance_scale,
                  scorer, chunk_size, progress, settings)


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


def trace_text_encoder(
    model: Model,
    prompt: Prompts,
    subject: str | None = None,
    layers: Sequence[int] | None = None,
    kinds: Sequence[str] = ("text-self-attn", "text-mlp", "text-hidden"),
    tokens: Sequence[int] | None = None,
    seeds: Sequence[int] = (0,),
    noise: float = 3.0,
    samples: int = 1,
    steps: int = 25,
    guidance_scale: float = 7.5,
    scorer: CLIPScore | None = None,
    chunk_size: int | None = None,
    progress: bool = True,
) -> TraceResult:
    """Causal trace of text-encoder states: restore one (site, token position) state, generate, score.

    Axes ("site", "token"). Positions are those of each site's own tokenizer. With one prompt that
    the sites' tokenizers split alike, the token axis is its positions up to EOS (or `tokens`);
    with several prompts, or tokenizers that differ (SD3's CLIP and T5), and `tokens=None` it is
    ROME's token roles ("last subject", "first after", ...), each unit's positions averaged within
    their role.
    """
    sites = text_sites(model, kinds, layers)
    tokenizer_of = [model.tokenizer_index(site) for site in sites]
    units = make_units(model, prompt, subject, seeds)
    splits = {units[0].token_lists[i] for i in tokenizer_of}
    by_role = tokens is None and (len({u.prompt for u in units}) > 1 or len(splits) > 1)
    if by_role:
        token_labels = list(ROLES)
    else:
        for site in sites if tokens is not None else ():
            model.check_positions(tokens, site)
        words = next(iter(splits)) if len(splits) == 1 else ()
        positions = list(tokens) if tokens is not None else list(range(len(words)))
        token_labels = [f"{p}:{words[p]}" if p < len(words) else str(p) for p in positions]

    def cell_runs(unit: Unit, index: tuple[int, ...], clean: str) -> list[list[Restore]]:
        site, tokenizer = sites[index[0]].name, tokenizer_of[index[0]]
        if by_role:
            span, length = unit.spans[tokenizer], len(unit.token_lists[tokenizer])
            chosen = [p for p in range(length) if token_role(p, span, length) == ROLES[index[1]]]
        else:
            chosen = [positions[index[1]]]
        return [[Restore(site, tokens=(p,), source=clean)] for p in chosen]

    settings = {"recipe": "trace_text_encoder", "kinds": list(kinds), "tokens": "roles" if by_role else "positions"}
    return _trace(model, units, ("site", "token"), {"site": [s.name for s in sites], "token": token_labels},
                  cell_runs, noise, samples, steps, guidance_scale, scorer, chunk_size, progress, settings)
