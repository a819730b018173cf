"""Causal tracing and LoCoGen on the bundled tiny model: the numbers issue 4 asks for.

  trace  - per attribute (style, object, color): the UNet sites and the text-encoder
           (site, token) states with the largest indirect effect (CLIP-score, tiny CLIP);
  locogen - for style, LoCoGen's curve over windows of m cross-attention layers fed "a painting",
           with the judge's van gogh hit rate per window; m grows from 2 until a window lowers the
           hit rate on "... in the style of van gogh" prompts by >= 50 points.

Run: ``python -m bench.recipes_tiny [--steps 25] [--seeds 2] [--out results/]``. Not a test.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

import interp
from interp.model import Model
from interp.scoring import CLIPScore
from interventions.causal_trace import TraceResult, trace_text_encoder, trace_unet
from interventions.evaluate import generate, tiny_judge
from interventions.locogen import LocalizeResult, localize
from models.tiny import Scene, caption, is_held_out
STYLE_ATTRIBUTE = "in the style of van gogh"  # what LoCoGen windows are scored against

# (prompt, subject) per attribute; two prompts each for the UNet trace, the first for the text trace.
TRACE_PROMPTS: dict[str, list[tuple[str, str]]] = {
    "style": [("a red circle in the style of van gogh", "van gogh"), ("a blue square in the style of monet", "monet")],
    "object": [("a green star", "star"), ("a photograph of a yellow heart", "heart")],
    "color": [("a purple triangle", "purple"), ("a picture of an orange house", "orange")],
}
STYLE_SCENES = [Scene("circle", "red", "van gogh", 1), Scene("square", "blue", "van gogh", 1),
                Scene("star", "yellow", "van gogh", 1), Scene("heart", "green", "van gogh", 2),
                Scene("house", "purple", "van gogh", 1), Scene("triangle", "orange", "van gogh", 2)]
DROP = 0.5  # LoCoGen target: the window lowers the van gogh hit rate by at least 50 points
Judge = Callable[[np.ndarray | torch.Tensor], list[dict]]


def style_prompts() -> list[str]:
    """'... in the style of van gogh' prompts of seen (not held-out) scenes."""
    return [caption(s, 0) for s in STYLE_SCENES if not is_held_out(s)]


def hit_rate(judge: Judge, images: np.ndarray | torch.Tensor, style: str = "van gogh") -> float:
    """Share of `images` (uint8 (N, H, W, 3) or float (N, 3, H, W)) the judge reads as `style`."""
    return float(np.mean([j["style"] == style for j in judge(images)]))


def judged_line(result: TraceResult, unit: int, attribute: str, judge: Judge) -> str:
    """The judge's reading of a unit's clean and corrupted images: does the corruption remove the subject?"""
    samples = result.settings["samples"]
    names = [f"u{unit}/clean", *(f"u{unit}/n{k}/corrupted" for k in range(samples))]
    readings = [j[attribute] for j in judge(np.stack([result.images[n] for n in names]))]
    subject = result.units[unit]["subject"]
    kept = sum(r == subject for r in readings[1:])
    return f"judge: clean {readings[0]!r}, corrupted keeps {subject!r} in {kept}/{samples}"


def trace_tables(model: Model, scorer: CLIPScore | None, judge: Judge, steps: int, seeds: Sequence[int],
                 samples: int, top: int, out: Path | None) -> dict[str, tuple[TraceResult, TraceResult]]:
    """UNet and text-encoder traces per attribute, printed as top-IE tables."""
    results = {}
    for attribute, pairs in TRACE_PROMPTS.items():
        common = dict(seeds=seeds, samples=samples, steps=steps, scorer=scorer, progress=False)
        unet = trace_unet(model, pairs, **common)
        text = trace_text_encoder(model, *pairs[0], **common)
        results[attribute] = (unet, text)
        for name, result in (("unet", unet), ("text", text)):
            if out is not None:
                result.save(out / f"trace-{name}-{attribute}")
        print(f"\n== {attribute}: UNet ({len(unet.units)} units: {[p for p, _ in pairs]} x seeds {list(seeds)}); "
              f"clean {unet.mean('clean'):.4f}, corrupted {unet.mean('corrupted'):.4f}")
        for u, (unit, clean, corrupted) in enumerate(zip(unet.units, unet.scores["clean"], unet.scores["corrupted"])):
            print(f"   {unit['prompt']!r} seed {unit['seed']}: CLIP clean {clean:.4f}, corrupted {corrupted:.4f}; "
                  + judged_line(unet, u, attribute, judge))
        print(f"{'UNet site':<22}{'IE':>9}{'+-':>8}{'norm IE':>9}")
        nie = dict(zip(unet.coords["site"], unet.normalized_ie))
        for (site,), ie, std in unet.top(top):
            print(f"{site:<22}{ie:>9.4f}{std:>8.4f}{nie[site]:>9.2f}")
        print(f"-- text encoder, {pairs[0][0]!r}; clean {text.mean('clean'):.4f}, "
              f"corrupted {text.mean('corrupted'):.4f}")
        print(f"{'text state':<22}{'token':<12}{'IE':>9}{'+-':>8}{'norm IE':>9}")
        total = text.total_effect
        for (site, token), ie, std in text.top(top):
            print(f"{site:<22}{token:<12}{ie:>9.4f}{std:>8.4f}{ie / total if total else float('nan'):>9.2f}")
    return results


def locogen_table(model: Model, scorer: CLIPScore | None, judge: Judge, steps: int, seeds: Sequence[int],
                  target: str, out: Path | None) -> list[LocalizeResult]:
    """LoCoGen for style, m from 2 up, with the judge's van gogh hit rate of every window."""
    prompts = style_prompts()
    layers = len(model.sites("cross-attn"))
    results = []
    own = hit_rate(judge, generate(model, [target], seeds, steps=steps))
    print(f"\n== LoCoGen, style: {len(prompts)} van gogh prompts x seeds {list(seeds)}, target {target!r} "
          f"(its own images: van gogh {100 * own:.0f}%), CLIP-score against {STYLE_ATTRIBUTE!r} (lowest wins); "
          f"{layers} cross-attention layers")
    for m in range(2, layers + 1):
        result = localize(model, prompts, target, window=m, attribute=STYLE_ATTRIBUTE, seeds=seeds, steps=steps,
                          scorer=scorer, progress=False)
        results.append(result)
        if out is not None:
            result.save(out / f"locogen-{target.replace(' ', '-')}-m{m}")
        base = hit_rate(judge, result.baseline_images())
        rates = {s: hit_rate(judge, result.window_images(s)) for s in result.coords["window start"]}
        print(f"m = {m}: unswapped van gogh hit rate {100 * base:.0f}%, CLIP-score {result.baseline:.4f}")
        print(f"{'start':>5}  {'layers':<8}{'first site':<20}{'CLIP':>8}{'hit %':>7}")
        for start, score in zip(result.coords["window start"], result.curve):
            mark = " <- CLIP's pick" if start == result.best_start else ""
            print(f"{start:>5}  {f'{start}-{start + m - 1}':<8}{result.layers[start]:<20}{score:>8.4f}"
                  f"{100 * rates[start]:>7.0f}{mark}")
        best = min(rates, key=rates.get)
        worst = max(rates, key=rates.get)
        print(f"lowest hit rate: window {best}-{best + m - 1} {100 * rates[best]:.0f}% "
              f"(drop {100 * (base - rates[best]):.0f} points); worst window {worst}-{worst + m - 1} "
              f"{100 * rates[worst]:.0f}%; CLIP's pick {result.best_start}: {100 * rates[result.best_start]:.0f}%")
        if base - rates[best] >= DROP:
            print(f"smallest window meeting the >= {100 * DROP:.0f}-point drop: m = {m}, layers "
                  f"{best}-{best + m - 1} ({', '.join(result.layers[best : best + m])})")
            break
    else:
        print(f"no window of any size lowered the hit rate by {100 * DROP:.0f} points")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--seeds", type=int, default=2, help="generator seeds 0 .. n-1 per prompt")
    parser.add_argument("--samples", type=int, default=3, help="corrupted samples averaged (ROME uses 10)")
    parser.add_argument("--top", type=int, default=5, help="rows per top-IE table")
    parser.add_argument("--only", choices=("trace", "locogen"), help="run one part")
    parser.add_argument("--target", action="append", help="LoCoGen target prompt(s) (default: 'a painting')")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="save every result here (JSON + PNG)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, seeds = interp.load("tiny"), tuple(range(args.seeds))
    scorer = CLIPScore.from_pretrained()
    if args.only in (None, "trace"):
        trace_tables(model, scorer, tiny_judge, args.steps, seeds, args.samples, args.top, args.out)
    if args.only in (None, "locogen"):
        for target in args.target or ["a painting"]:
            locogen_table(model, scorer, tiny_judge, args.steps, seeds, target, args.out)


if __name__ == "__main__":
    main()
