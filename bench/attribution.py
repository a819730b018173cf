"""Benchmark: attribution patching against exact (batched) causal tracing, in one run.

  agreement - the bundled tiny model, judge score: style, object and color traces of every UNet
              site (the demo's 4 prompts each x 2 seeds x 3 noise samples, 10 steps), exact vs
              attribution (plain AtP, and with K=4 integrated-gradient points) vs hybrid (AtP's 10,
              and 15, largest estimates, in size, verified exactly). Spearman of the mean IEs over the cross-attention sites
              (95% bootstrap interval over units) and over all UNet sites, top-5 overlap, the sites
              that disagree most, whether hybrid's top 5 is exact's. Targets: Spearman >= 0.8 and
              top-5 overlap >= 4 over cross-attention sites; hybrid top 5 = exact top 5.
              With --text: the same for the text-encoder trace (every self-attn, mlp and hidden
              site by ROME token role: `trace_text_encoder(method=...)`), over all its cells.
  cost      - an SD1.5-width pipeline (full UNet config, real SD VAE config, random weights; see
              bench.memory), 64 px, few steps, one unit: wall time and peak memory (VmHWM above the
              RSS before, each in a fresh process) of one plain generation, exact batched tracing of
              every UNet site, and attribution of every UNet site (checkpointing each step, each step
              and each block, none);
              Spearman and top-5 overlap of the two maps (CLIP-score, random weights: a check of the
              linearisation, not of any localisation). Targets: attribution <= 5 generations' time;
              peak memory with checkpointing <= 2x one plain generation's.
  heads     - the same at SDXL width for a head-level map: the 20 heads of the first mid-block
              cross-attention layer (a 200-head layer set is past this CPU's budget for exact tracing).

Run from the repository root: ``python -m bench.attribution [agreement|cost|heads|both] [--text] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from bench.memory import PROMPT, _status, pipeline
from bench.timing import load_note
from interventions.attribution import agreement, attribute, candidates, verify_top
from interventions.causal_trace import TraceResult, trace_text_encoder, trace_unet

MiB = 2**20
WIDTHS = {"sd15": "SD1.5", "sdxl": "SDXL"}
HEAD_LAYERS = "mid-cross-attn.0"  # the head-level map: the heads of SDXL's first mid-block cross-attention layer
VERIFY = (10, 15)  # hybrid: how many cells to verify exactly (of 29 UNet sites; of ~40 text cells)


def _row(name: str, estimated: TraceResult, exact: TraceResult, focus: list[str] | None) -> str:
    """One method's agreement with exact tracing: over the `focus` sites' cells (and then all), or all."""
    on_all = agreement(estimated, exact)
    on = agreement(estimated, exact, focus) if focus else on_all
    top_10 = agreement(estimated, exact, focus, k=10, resamples=0)["top_overlap"]
    low, high = on["spearman_95"] or (np.nan, np.nan)
    gaps = sorted(on["ie"].items(), key=lambda kv: -abs(kv[1][0] - kv[1][1]))[:2]
    worst = ", ".join(f"{s} (est {a:+.3f} vs exact {b:+.3f})" for s, (a, b) in gaps)
    also = (f"; all {on_all['cells']} UNet sites: Spearman {on_all['spearman']:+.2f}, top-5 overlap "
            f"{on_all['top_overlap']}/5") if focus else ""
    return (f"  {name:<14} {'cross-attn ' if focus else ''}Spearman {on['spearman']:+.2f} [{low:+.2f}, {high:+.2f}] "
            f"(n={on['units']} units, {on['cells']} cells), top-5 overlap {on['top_overlap']}/5, top-10 {top_10}/10{also}\n"
            f"                 largest gaps: {worst}")


def _label(cell: tuple) -> str:
    return "/".join(map(str, cell))


def run_agreement(out: Path | None, steps: int, prompts: int, seeds: int, samples: int, text: bool = False) -> None:
    """Exact vs attribution vs hybrid on the tiny model: UNet sites, or text-encoder (site, token role) cells."""
    import interp
    from interventions.demo import PROMPTS

    model = interp.load("tiny")
    trace = trace_text_encoder if text else trace_unet
    focus = None if text else [s.name for s in model.sites("cross-attn")]
    common = dict(seeds=range(seeds), samples=samples, steps=steps, progress=False)
    print(f"agreement, bundled tiny model, judge, {'text-encoder (site, token role) cells' if text else 'UNet sites'}; "
          f"{prompts} prompts x {seeds} seeds x {samples} samples, {steps} steps; {load_note()}")
    for attribute_name, pairs in PROMPTS.items():
        exact_trace = partial(trace, model, list(pairs[:prompts]), **common)
        timings, results = {}, {}
        for name, run in [("exact", exact_trace), ("AtP", partial(exact_trace, method="attribution")),
                          ("AtP, K=4 IG", partial(exact_trace, method="attribution", points=4))]:
            start = time.perf_counter()
            results[name] = run()
            timings[name] = time.perf_counter() - start
        for verify in VERIFY:
            start = time.perf_counter()
            results[f"hybrid-{verify}"] = verify_top(results["AtP"], exact_trace, verify)
            timings[f"hybrid {verify}"] = timings["AtP"] + time.perf_counter() - start
        exact = results["exact"]
        print(f"{attribute_name}: {exact.summary()}")
        print("  time " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
              + f"; exact / AtP {timings['exact'] / timings['AtP']:.1f}x")
        for name in ("AtP", "AtP, K=4 IG"):
            print(_row(name, results[name], exact, focus))
        top_exact = [_label(c[0]) for c in exact.top(5)]
        order = [_label(exact.cells()[i]) for i in candidates(results["AtP"])]
        needed = max(order.index(s) for s in top_exact) + 1
        print(f"  exact top 5 {top_exact}; AtP's {needed} largest estimates (of {len(order)}) cover it")
        for verify in VERIFY:
            top_hybrid = [_label(c[0]) for c in results[f"hybrid-{verify}"].top(5)]
            verdict = ("reproduced, in order" if top_hybrid == top_exact else
                       "reproduced as a set" if set(top_hybrid) == set(top_exact) else "DIFFERS")
            print(f"  hybrid, AtP's {verify} largest verified exactly: top 5 {verdict} ({top_hybrid})")
        if out is not None:
            for name, result in results.items():
                result.save(out / attribute_name / name.replace(", ", "-").replace(" ", "").replace("=", ""))


def measure(mode: str, width: str, size: int, steps: int, heads: str | None) -> dict:
    """One cost point in this process (see the module docstring): every UNet site, or every head
    of the layers named in `heads` (comma-separated)."""
    import interp
    from interp.graph import Graph, Run
    from interp.runner import run

    pipe = pipeline(width)
    pipe.unet.register_to_config(sample_size=size // pipe.vae_scale_factor)  # the default size: recipes take none
    model = interp.load(pipe)
    if heads:
        layers = [model.site(name) for name in heads.split(",")]
        sites = [f"{layer.name}.head-{h}" for layer in layers for h in range(layer.heads)]
    else:
        sites = [s.name for s in model.sites() if not s.is_text]
    subject = "van gogh"
    options = dict(seeds=[0], samples=1, steps=steps, guidance_scale=7.5, progress=False, min_effect=-np.inf,
                   sites=sites)
    plain = Graph([Run("clean", PROMPT, steps=steps, height=size, width=size)])
    run(model, Graph([Run("warm", PROMPT, steps=1, height=size, width=size)]), progress=False)  # library init
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset VmHWM to the current RSS
    start = time.perf_counter()
    if mode == "plain":
        run(model, plain, progress=False)
        result = None
    elif mode == "exact":
        result = trace_unet(model, PROMPT, subject, **options)
    else:
        checkpoint = {"attribution": True, "attribution-blocks": "blocks"}.get(mode, False)
        result = attribute(model, PROMPT, subject, **options, checkpoint=checkpoint)
    seconds = time.perf_counter() - start
    point = {"mode": mode, "seconds": seconds, "peak": _status("VmHWM") - before, "sites": len(sites)}
    if result is not None:
        point["ie"] = result.ie.tolist()
        point["labels"] = result.coords["site"]
    return point


def run_cost(steps: int, threads: int, width: str = "sd15", heads: str | None = None) -> None:
    points = {}
    modes = ("plain", "attribution", "attribution-blocks", "attribution-no-checkpoint", "exact") if not heads else \
        ("plain", "attribution", "attribution-blocks", "exact")
    for mode in modes:
        command = [sys.executable, "-m", "bench.attribution", "--one", mode, "--steps", str(steps),
                   "--threads", str(threads), "--width", width, *(["--heads", heads] if heads else [])]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        points[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    plain, exact, atp = points["plain"], points["exact"], points["attribution"]
    from interventions.attribution import spearman

    a, b = np.array(atp["ie"]), np.array(exact["ie"])
    top_a, top_b = set(np.argsort(-a)[:5]), set(np.argsort(-b)[:5])
    what = f"the {exact['sites']} heads of {heads}" if heads else f"{exact['sites']} UNet sites"
    print(f"cost, {WIDTHS[width]} width (random weights), 64 px, {steps} steps, CFG, 1 unit, {what}; "
          f"{threads} thread(s); {load_note()}")
    for mode, p in points.items():
        print(f"  {mode:<26} {p['seconds']:7.1f} s = {p['seconds'] / plain['seconds']:5.1f} generations   "
              f"peak {p['peak'] / MiB:6.0f} MiB = {p['peak'] / plain['peak']:4.2f}x one generation")
    ratio, memory = atp["seconds"] / plain["seconds"], atp["peak"] / plain["peak"]
    print(f"attribution vs exact: {exact['seconds'] / atp['seconds']:.1f}x faster; Spearman {spearman(a, b):+.2f}, "
          f"top-5 overlap {len(top_a & top_b)}/5")
    blocks = points["attribution-blocks"]
    print(f"targets: attribution <= 5 generations: {ratio:.1f} ({'met' if ratio <= 5 else 'MISSED'}); "
          f"peak memory <= 2x one generation: {memory:.2f}x ({'met' if memory <= 2 else 'MISSED'}); with "
          f"checkpoint='blocks': {blocks['seconds'] / plain['seconds']:.1f} generations, "
          f"{blocks['peak'] / plain['peak']:.2f}x memory")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", nargs="?", default="both", choices=["agreement", "cost", "heads", "both"])
    parser.add_argument("--out", type=Path, default=None, help="save the agreement traces here")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (10 agreement, 2 cost)")
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--width", default="sd15", choices=list(WIDTHS), help=argparse.SUPPRESS)
    parser.add_argument("--heads", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--text", action="store_true", help="agreement: text-encoder (site, token role) cells "
                        "instead of UNet sites")
    parser.add_argument("--one", metavar="MODE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(args.one, args.width, 64, args.steps or 2, args.heads)))
        return
    if args.part in ("agreement", "both"):
        run_agreement(args.out, args.steps or 10, args.prompts, args.seeds, args.samples, args.text)
    if args.part in ("cost", "both"):
        run_cost(args.steps or 2, args.threads)
    if args.part in ("heads", "both"):
        run_cost(args.steps or 2, args.threads, "sdxl", HEAD_LAYERS)


if __name__ == "__main__":
    main()
