"""LoCoGen (Basu et al., ICML 2024): which window of m cross-attention layers controls an attribute.

For each contiguous window of m cross-attention layers (forward order, every start 0 .. L - m),
the window's layers see a target prompt's embedding ("a painting") in the conditional branch at
every step while all other layers see the original prompt. Each image is CLIP-scored against
the attribute text (default: its own prompt; the lowest window wins for objects and style) or,
with `mode="highest"`, against the target (facts). All windows, prompts and seeds are one graph.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from interp.errors import WindowSizeError
from interp.graph import Graph, Run, Swap
from interp.model import Model
from interp.results import ScoreGrid
from interp.scoring import CLIPScore
from interventions.sweep import default_scorer, run_and_score

Mode = Literal["lowest", "highest"]


class LocalizeResult(ScoreGrid):
    """Window scores per (prompt, seed) unit over the axis "window start", plus the unswapped baseline.

    scores: "window" (units, starts), "baseline" (units,). settings: m, the cross-attention site
    names in forward order, the mode, the target prompt(s), and `grown` (m tried -> best score).
    """

    @property
    def m(self) -> int:
        return self.settings["m"]

    @property
    def layers(self) -> list[str]:
        """All cross-attention sites in forward order (the window indices refer to these)."""
        return self.settings["layers"]

    @property
    def curve(self) -> np.ndarray:
        """Mean score of each window start."""
        return self.mean("window")

    @property
    def baseline(self) -> float:
        """Mean score of the unswapped images."""
        return float(self.mean("baseline"))

    @property
    def best_start(self) -> int:
        """The winning window's first layer: lowest or highest mean score, by `mode`."""
        pick = np.argmin if self.settings["mode"] == "lowest" else np.argmax
        return int(self.coords["window start"][int(pick(self.curve))])

    @property
    def best_layers(self) -> list[int]:
        """Layer indices of the winning window (LoCoGen's numbering, `cross-attn-<i>`)."""
        return list(range(self.best_start, self.best_start + self.m))

    @property
    def best_sites(self) -> list[str]:
        return [self.layers[i] for i in self.best_layers]

    def window_images(self, start: int) -> np.ndarray:
        """The (units, H, W, 3) uint8 images of one window start, unit-major."""
        return np.stack([self.images[f"u{u}/w{start}"] for u in range(len(self.units))])

    def baseline_images(self) -> np.ndarray:
        return np.stack([self.images[f"u{u}/baseline"] for u in range(len(self.units))])

    def table(self) -> str:
        """Window starts, their layers and mean score (+- spread), the winner marked."""
        lines = [f"baseline (no swap) {self.baseline:.4f}; m = {self.m}; {self.settings['mode']} wins",
                 f"{'start':>5}  {'layers':<12}{'score':>9}{'+-':>8}"]
        for start, score, std in zip(self.coords["window start"], self.curve, self.std("window")):
            mark = "  <- best" if start == self.best_start else ""
            layers = f"{start}-{start + self.m - 1}"
            lines.append(f"{start:>5}  {layers:<12}{score:>9.4f}{std:>8.4f}{mark}")
        return "\n".join(lines)


def window_starts(layers: int, window: int) -> list[int]:
    """Every start of a contiguous window of `window` layers among `layers`, the tail included."""
    if not 1 <= window <= layers:
        raise WindowSizeError(
            f"window={window} does not fit: the model has {layers} cross-attention layers; "
            f"pass a window between 1 and {layers}"
        )
    return list(range(layers - window + 1))


def localize(
    model: Model,
    prompts: str | Sequence[str],
    target_prompt: str | Sequence[str] = "a painting",
    window: int = 2,
    attribute: str | None = None,
    mode: Mode = "lowest",
    seeds: Sequence[int] = (0, 1, 2, 3),
    steps: int = 25,
    guidance_scale: float = 7.5,
    grow_until: float | None = None,
    scorer: CLIPScore | None = None,
    chunk_size: int | None = None,
    progress: bool = True,
) -> LocalizeResult:
    """Slide a window of `window` cross-attention layers fed `target_prompt`; score every window.

    `target_prompt` is one prompt for all, or one per prompt. Images are scored against
    `attribute` if given, else against their own prompt (`mode="lowest"`) or their target
    (`mode="highest"`). With `grow_until`, m grows from `window` until the best window's mean
    score passes the threshold (<= for lowest, >= for highest) or m reaches the layer count;
    the result is that of the last m tried (`settings["met"]` says whether it passed).
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    targets = [target_prompt] * len(prompts) if isinstance(target_prompt, str) else list(target_prompt)
    if not prompts or not seeds:
        raise ValueError("pass at least one prompt and one seed")
    if len(targets) != len(prompts):
        raise ValueError(f"got {len(targets)} target prompts for {len(prompts)} prompts; pass one, or one per prompt")
    if mode not in ("lowest", "highest"):
        raise ValueError(f"mode must be 'lowest' (objects, style) or 'highest' (facts), got {mode!r}")
    layers = [s.name for s in model.sites("cross-attn")]
    window_starts(len(layers), window)
    units = [(p, t, int(s)) for p, t in zip(prompts, targets) for s in seeds]
    texts = [attribute or (p if mode == "lowest" else t) for p, t, _ in units]
    scorer = default_scorer(scorer)
    branch = "cond" if guidance_scale > 1 else "both"  # without guidance the cond branch is all there is

    def sweep(m: int, with_baseline: bool) -> tuple[dict[str, float], dict]:
        graph, run_texts = Graph(), {}
        windows = [tuple(layers[s : s + m]) for s in window_starts(len(layers), m)]
        for u, ((prompt, target, seed), text) in enumerate(zip(units, texts)):
            runs = [(f"u{u}/baseline", [])] if with_baseline else []
            runs += [(f"u{u}/w{s}", [Swap(sites, target, branch=branch)]) for s, sites in enumerate(windows)]
            for name, ops in runs:
                graph.add(Run(name, prompt, seed, guidance_scale, steps, ops=ops))
                run_texts[name] = text
        return run_and_score(model, graph, run_texts, scorer, chunk_size, progress)

    scores, images = sweep(window, with_baseline=True)
    baseline = [scores[f"u{u}/baseline"] for u in range(len(units))]
    baseline_images = {f"u{u}/baseline": images[f"u{u}/baseline"] for u in range(len(units))}
    m, grown = window, []
    while True:
        starts = window_starts(len(layers), m)
        grid = [[scores[f"u{u}/w{s}"] for s in starts] for u in range(len(units))]
        curve = np.mean(grid, axis=0)
        best = float(curve.min() if mode == "lowest" else curve.max())
        grown.append({"m": m, "best": best})
        met = grow_until is None or (best <= grow_until if mode == "lowest" else best >= grow_until)
        if met or m == len(layers):
            break
        m += 1
        scores, images = sweep(m, with_baseline=False)

    settings = {"recipe": "localize", "m": m, "layers": layers, "mode": mode, "attribute": attribute,
                "steps": steps, "guidance_scale": guidance_scale, "grow_until": grow_until, "met": met,
                "grown": grown}
    unit_records = [{"prompt": p, "target": t, "seed": s, "text": x} for (p, t, s), x in zip(units, texts)]
    return LocalizeResult(("window start",), {"window start": starts}, {"window": grid, "baseline": baseline},
                          unit_records, settings, {**baseline_images, **images})
