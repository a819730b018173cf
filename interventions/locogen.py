"""LoCoGen (Basu et al., ICML 2024): which window of m cross-attention layers controls an attribute.

For each contiguous window of m cross-attention layers (forward order, every start 0 .. L - m),
the window's layers see a target prompt's embedding ("a painting") in the conditional branch at
every step while all other layers see the original prompt. As in the paper, m grows from 1 until
the best window is good enough: here, until it does `threshold` (half) of what swapping every
layer does; `window=` fixes m instead.

Scores: on the bundled tiny model its judge's probability of the attribute value a text names
(ground truth), elsewhere CLIP-score. Mode "lowest" (style, objects) scores each image against
its own prompt, e.g. the judge's P(style = van gogh), and the lowest window wins; mode "highest"
(facts) scores against the target, e.g. P(object, color of "the king of vardo"), and the highest
wins. Every score has its mean, 95% interval and n over units (prompt x seed).

Two controls sit beside the chosen window: a random set of m layers (fixed seed) fed the same
target, and, on the tiny model, the collateral: the judge's P(value the prompt names) of the
attributes left alone (object and color for a style window), chosen window swapped vs. no swap.
All windows, prompts and seeds of one m are one graph.

On SD3 and FLUX the layers are the joint (FLUX: double-stream) blocks' attentions, and what a
swapped block reads for the target is its text stream averaged over a short generation (that stream
is recomputed in every block and step: an approximation); FLUX has no unconditional branch, so the
swap acts on its one row per image, and its single-stream blocks are never swapped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from interp import stats
from interp.errors import ScoringInputError, WindowSizeError
from interp.graph import Graph, Run, Swap
from interp.model import Model
from interp.results import ScoreGrid
from interp.scoring import Scorer
from interventions.sweep import default_scorer, run_and_score

Mode = Literal["lowest", "highest"]
JUDGED: dict[str, tuple[str, ...]] = {"lowest": ("style",), "highest": ("object", "color")}  # judge's default
COLLATERAL: tuple[str, ...] = ("object", "color", "style")  # read for collateral where not judged
Runs = Callable[[str], dict[str, list]]  # target prompt -> run suffix -> operations, for every unit


class LocalizeResult(ScoreGrid):
    """Window scores per (prompt, seed) unit over the axis "window start", with controls.

    scores: "window" (units, starts); per unit: "baseline" (no swap), "full" (every layer
    swapped), "random" (the random control's m layers swapped), "collateral:<attribute>" and
    "collateral baseline:<attribute>" (the judge's P(value the prompt names) with the chosen
    window swapped, and without). settings: m, the cross-attention site names in forward order,
    the mode, the scorer's name, `threshold`, `met`, `grown` (each m tried: its best window,
    score interval and share of the full effect), `random layers`, `control seed`, `collateral`.
    units: prompt, target, seed and the text scored against.
    """

    @property
    def m(self) -> int:
        return self.settings["m"]

    @property
    def layers(self) -> list[str]:
        """All cross-attention sites in forward order (the window indices refer to these)."""
        return self.settings["layers"]

    @property
    def scorer(self) -> str:
        """The name of the score, e.g. "judge P(style)" or "clip-score"."""
        return self.settings.get("scorer", "score")

    @property
    def curve(self) -> np.ndarray:
        """Mean score of each window start."""
        return self.mean("window")

    @property
    def baseline(self) -> float:
        """Mean score of the unswapped images."""
        return float(self.mean("baseline"))

    def intervals(self, name: str = "window") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(mean, low, high, n) of score `name` over units: a Student-t 95% interval per cell."""
        return stats.mean_interval(self.scores[name])

    def interval(self, name: str, start: int | None = None) -> stats.Interval:
        """One per-unit score's mean with its 95% interval, or window `start`'s with name "window"."""
        values = self.scores[name]
        return stats.interval(values if start is None else values[:, self.coords["window start"].index(start)])

    @property
    def share(self) -> np.ndarray:
        """Each window's share of the full swap's effect, (window - baseline) / (full - baseline)."""
        return _share(self.curve, self.baseline, float(self.mean("full")))

    @property
    def best_start(self) -> int:
        """The winning window's first layer: lowest or highest mean score, by `mode`."""
        return int(self.coords["window start"][best_window(self.curve, self.settings["mode"])])

    @property
    def best_layers(self) -> list[int]:
        """Layer indices of the winning window (LoCoGen's numbering, `cross-attn-<i>`)."""
        return list(range(self.best_start, self.best_start + self.m))

    @property
    def best_sites(self) -> list[str]:
        return [self.layers[i] for i in self.best_layers]

    @property
    def random_layers(self) -> list[int]:
        """Layer indices of the random control (m layers, not the chosen window where possible)."""
        return self.settings["random layers"]

    @property
    def collateral(self) -> dict[str, tuple[stats.Interval, stats.Interval]]:
        """Attribute -> (no swap, chosen window swapped): the judge's P(value the prompt names)."""
        return {a: (self.interval(f"collateral baseline:{a}"), self.interval(f"collateral:{a}"))
                for a in self.settings.get("collateral", [])}

    def window_images(self, start: int) -> np.ndarray:
        """The (units, H, W, 3) uint8 images of one window start, unit-major."""
        return self._images(f"w{start}")

    def baseline_images(self) -> np.ndarray:
        return self._images("baseline")

    def random_images(self) -> np.ndarray:
        """The random control's images, unit-major."""
        return self._images("random")

    def _images(self, run: str) -> np.ndarray:
        return np.stack([self.images[f"u{u}/{run}"] for u in range(len(self.units))])

    def table(self) -> str:
        """Every window's score with its 95% interval and n, the winner marked, then the controls."""
        lines = [f"LoCoGen scored by {self.scorer}; m = {self.m}{self._tried()}, {self.settings['mode']} wins; "
                 f"means with 95% intervals over units (prompt x seed)",
                 f"{'no swap':<18}{_cell(self.interval('baseline'))}"]
        if "full" in self.scores:
            lines.append(f"{'every layer':<18}{_cell(self.interval('full'))}")
        lines.append(f"{'start':>5}  {'layers':<11}{'score':>8}  {'95% interval':<18}{'n':>4}{'share':>7}")
        share = self.share if "full" in self.scores else np.full(len(self.curve), np.nan)
        for i, start in enumerate(self.coords["window start"]):
            mark = "  <- chosen" if start == self.best_start else ""
            layers = f"{start}-{start + self.m - 1}" if self.m > 1 else str(start)
            lines.append(f"{start:>5}  {layers:<11}{_cell(self.interval('window', start))}{share[i]:>7.2f}{mark}")
        return "\n".join(lines + self._control_lines())

    def _tried(self) -> str:
        """How m was found: the m tried and whether the best window's share met the threshold."""
        grown = self.settings.get("grown")
        if not grown:
            return ""
        met = "met" if self.settings["met"] else "not met"
        return f" (tried m = {grown[0]['m']}..{grown[-1]['m']}; share threshold {self.settings['threshold']} {met})"

    def _control_lines(self) -> list[str]:
        """The table's controls: the random layers' score and the collateral, where recorded."""
        lines = []
        if "random" in self.scores:
            lines.append(f"control, random layers {', '.join(map(str, self.random_layers))}: {self.interval('random')}")
        for attribute, (before, after) in self.collateral.items():
            lines.append(f"collateral, judge P({attribute}): no swap {before} -> chosen window {after}")
        return lines


def _cell(value: stats.Interval) -> str:
    """'score  [low, high]  n' in fixed widths."""
    return f"{value.value:>8.4f}  {f'[{value.low:.4f}, {value.high:.4f}]':<18}{value.n:>4}"


def best_window(curve: np.ndarray, mode: str) -> int:
    """Index of the winning window: the lowest mean score, or the highest with mode "highest"."""
    return int(np.argmin(curve) if mode == "lowest" else np.argmax(curve))


def _share(score: np.ndarray | float, baseline: float, full: float) -> np.ndarray:
    """How much of the full swap's effect a score shows: 0 at the baseline, 1 at the full swap."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return (np.asarray(score, dtype=np.float64) - baseline) / (full - baseline)


def window_starts(layers: int, window: int) -> list[int]:
    """Every start of a contiguous window of `window` layers among `layers`, the tail included."""
    if not 1 <= window <= layers:
        raise WindowSizeError(
            f"window={window} does not fit: the model has {layers} cross-attention layers; "
            f"pass a window between 1 and {layers}"
        )
    return list(range(layers - window + 1))


def random_layers(layers: int, m: int, avoid: Sequence[int], seed: int = 0) -> list[int]:
    """m distinct layer indices of `layers`, sorted, drawn with `seed`: the random control.

    Redrawn until they differ from `avoid` (the chosen window) unless m = `layers` leaves no other set.
    """
    window_starts(layers, m)
    rng = np.random.default_rng(seed)
    while True:
        picked = sorted(rng.choice(layers, size=m, replace=False).tolist())
        if picked != sorted(avoid) or math.comb(layers, m) == 1:
            return picked


def _named(texts: Sequence[str]) -> list[dict]:
    """What each tiny-world caption names (the judge reads only those)."""
    from models.tiny.scenes import parse_caption

    try:
        return [parse_caption(t) for t in texts]
    except ValueError as exc:
        raise ScoringInputError(f"the tiny model's judge reads captions of its world: {exc}") from None


def collateral_attributes(model: Model, collateral: Sequence[str] | None, judged: Sequence[str],
                           prompts: Sequence[str]) -> list[str]:
    """The attributes whose collateral the judge reads: `collateral`, or on the bundled tiny model
    those of COLLATERAL that are not judged and every prompt names; none on other models."""
    from models.tiny.scoring import is_bundled

    if not is_bundled(model.pipe):
        if collateral:
            raise ScoringInputError("collateral is read by the bundled tiny model's judge; this model has none")
        return []
    named = _named(prompts)
    if collateral is None:
        return [a for a in COLLATERAL if a not in judged and all(a in n for n in named)]
    for attribute in collateral:
        missing = [p for p, n in zip(prompts, named) if attribute not in n]
        if missing:
            raise ScoringInputError(f"collateral {attribute!r}: {missing[0]!r} does not name its {attribute}")
    return list(collateral)


def collateral_scores(attributes: Sequence[str], prompts: Sequence[str], swapped: list, baseline: list) -> dict:
    """Per attribute, the judge's P(value the prompt names) of the swapped and the unswapped images."""
    from models.tiny.scoring import JudgeScore

    scores = {}
    for attribute in attributes:
        judge = JudgeScore(attribute)
        scores[f"collateral:{attribute}"] = judge(swapped, prompts).tolist()
        scores[f"collateral baseline:{attribute}"] = judge(baseline, prompts).tolist()
    return scores


def _finite(value: float) -> float | None:
    """`value`, or None for NaN (results compare equal after a save and load)."""
    return None if math.isnan(value) else float(value)


def _pairs(prompts: str | Sequence[str], target_prompt: str | Sequence[str]) -> tuple[list[str], list[str]]:
    """The prompts and one target per prompt."""
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    targets = [target_prompt] * len(prompts) if isinstance(target_prompt, str) else list(target_prompt)
    if not prompts:
        raise ValueError("pass at least one prompt")
    if len(targets) != len(prompts):
        raise ValueError(f"got {len(targets)} target prompts for {len(prompts)} prompts; pass one, or one per prompt")
    return prompts, targets


@dataclass
class WindowSweep:
    """One experiment's fixed parts: it generates given swaps for every unit and scores them."""

    model: Model
    layers: list[str]
    units: list[tuple[str, str, int]]  # (prompt, target, seed)
    texts: list[str]  # what each unit's images are scored against
    scorer: Scorer
    steps: int
    guidance_scale: float
    chunk_size: int | None
    progress: bool

    def swap(self, indices: Sequence[int], target: str) -> list[Swap]:
        """Layers `indices` see `target` (the cond branch only; without guidance it is the only one)."""
        branch = "cond" if self.model.adapter.cfg(self.guidance_scale) else "both"
        return [Swap(tuple(self.layers[i] for i in indices), target, branch=branch)]

    def windows(self, m: int) -> Runs:
        """Every window of m layers, run "w<start>"."""
        return lambda t: {f"w{s}": self.swap(range(s, s + m), t) for s in window_starts(len(self.layers), m)}

    def generate(self, runs: Runs) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
        """Run, for every unit, the runs `runs(target)` names; score each against the unit's text.

        Returns run suffix -> per-unit scores, and run name ("u<unit>/<suffix>") -> image.
        """
        graph, run_texts, names = Graph(), {}, {}
        for u, ((prompt, target, seed), text) in enumerate(zip(self.units, self.texts)):
            for suffix, ops in runs(target).items():
                name = f"u{u}/{suffix}"
                graph.add(Run(name, prompt, seed, self.guidance_scale, self.steps, ops=ops))
                run_texts[name] = text
                names.setdefault(suffix, []).append(name)
        scores, images = run_and_score(self.model, graph, run_texts, self.scorer, self.chunk_size, self.progress)
        return {suffix: [scores[n] for n in group] for suffix, group in names.items()}, images


def _grow(sweep: WindowSweep, window: int | None, threshold: float, mode: str, reference: dict[str, list[float]]
          ) -> tuple[int, np.ndarray, dict[str, np.ndarray], list[dict], bool]:
    """Score every window of m layers, m = `window`, or from 1 up until the best window's share of
    the full swap's effect reaches `threshold` (never where the full swap moves the score against
    `mode`). Returns m, its (units, starts) grid, its images, each m's best window with its
    interval and share, and whether the threshold was met."""
    m, grown = window or 1, []
    while True:
        scores, images = sweep.generate(sweep.windows(m))
        starts = window_starts(len(sweep.layers), m)
        grid = np.array([scores[f"w{s}"] for s in starts]).T
        entry, met = assess_windows(m, starts, grid, mode, reference, threshold)
        grown.append(entry)
        if window is not None or met or m == len(sweep.layers):
            return m, grid, images, grown, met
        m += 1


def assess_windows(m: int, starts: list[int], grid: np.ndarray, mode: str, reference: dict[str, Sequence[float]],
                   threshold: float) -> tuple[dict, bool]:
    """The best window of m layers in a (units, starts) `grid`: its `settings["grown"]` entry (start,
    score with its interval, share of the full swap's effect over the `reference` baseline) and
    whether that share met `threshold` (never where the full swap moves the score against `mode`).
    Shared by `localize` and the LoCoGen sweep's aggregation."""
    best = best_window(grid.mean(0), mode)
    found = stats.interval(grid[:, best])
    baseline, full = np.mean(reference["baseline"]), np.mean(reference["full"])
    share = float(_share(found.value, baseline, full))
    entry = {"m": m, "best start": starts[best], "score": found.value, "low": found.low,
             "high": found.high, "n": found.n, "share": _finite(share)}
    towards = full < baseline if mode == "lowest" else full > baseline  # else no share means anything
    return entry, bool(towards and share >= threshold)


def localize(
    model: Model,
    prompts: str | Sequence[str],
    target_prompt: str | Sequence[str] = "a painting",
    window: int | None = None,
    attribute: str | None = None,
    mode: Mode = "lowest",
    seeds: Sequence[int] = (0, 1, 2, 3),
    steps: int = 25,
    guidance_scale: float = 7.5,
    threshold: float = 0.5,
    judged: str | Sequence[str] | None = None,
    collateral: Sequence[str] | None = None,
    control_seed: int = 0,
    scorer: Scorer | None = None,
    chunk_size: int | None = None,
    progress: bool = True,
    layers: Sequence[str] | None = None,
) -> LocalizeResult:
    """Slide windows of m cross-attention layers fed `target_prompt`; score every window.

    `layers`: what the windows slide over, in order: every cross-attention layer by default, or the
    heads of one layer (`interp.sites.head_names(model.site("mid-cross-attn"))`), whose key and value
    slices then see the target; with `window=1` that is one cell per head.

    `target_prompt` is one prompt for all, or one per prompt. With `window=None`, m grows from 1
    until the best window's share of the full swap's effect reaches `threshold` (or m reaches the
    layer count; `settings["met"]` says whether it passed); `window=m` fixes m. Images are scored
    against `attribute` if given, else their own prompt (`mode="lowest"`) or their target
    (`mode="highest"`), with `scorer`, by default the tiny model's judge reading `judged` (style
    for "lowest", object and color for "highest") or CLIP-score on other models. The random
    control draws m layers with `control_seed`; `collateral` names the attributes (default: the
    unjudged ones of object, color, style) whose judge score is compared, tiny model only.
    """
    prompts, targets = _pairs(prompts, target_prompt)
    if not seeds:
        raise ValueError("pass at least one seed")
    if mode not in JUDGED:
        raise ValueError(f"mode must be 'lowest' (objects, style) or 'highest' (facts), got {mode!r}")
    layers = ([model.site(s).name for s in layers] if layers is not None
              else [s.name for s in model.sites("cross-attn")])
    if window is not None:
        window_starts(len(layers), window)
    judged = JUDGED[mode] if judged is None else ((judged,) if isinstance(judged, str) else tuple(judged))
    units = [(p, t, int(s)) for p, t in zip(prompts, targets) for s in seeds]
    texts = [attribute or (p if mode == "lowest" else t) for p, t, _ in units]
    scorer = default_scorer(model, scorer, judged)
    collateral = collateral_attributes(model, collateral, judged, prompts)
    sweep = WindowSweep(model, layers, units, texts, scorer, steps, guidance_scale, chunk_size, progress)

    reference, unswapped = sweep.generate(lambda t: {"baseline": [], "full": sweep.swap(range(len(layers)), t)})
    m, grid, images, grown, met = _grow(sweep, window, threshold, mode, reference)
    start = window_starts(len(layers), m)[best_window(grid.mean(0), mode)]
    picked = random_layers(len(layers), m, range(start, start + m), control_seed)
    control, control_images = sweep.generate(lambda t: {"random": sweep.swap(picked, t)})
    chosen = [images[f"u{u}/w{start}"] for u in range(len(units))]
    no_swap = [unswapped[f"u{u}/baseline"] for u in range(len(units))]
    side_effects = collateral_scores(collateral, [p for p, _, _ in units], chosen, no_swap)

    settings = {"recipe": "localize", "m": m, "layers": layers, "mode": mode, "scorer": scorer.name,
                "attribute": attribute, "steps": steps, "guidance_scale": guidance_scale,
                "threshold": threshold, "met": met, "grown": grown, "random layers": picked,
                "control seed": control_seed, "collateral": collateral}
    unit_records = [{"prompt": p, "target": t, "seed": s, "text": x} for (p, t, s), x in zip(units, texts)]
    return LocalizeResult(("window start",), {"window start": window_starts(len(layers), m)},
                          {"window": grid, **reference, **control, **side_effects}, unit_records, settings,
                          {**unswapped, **images, **control_images})
