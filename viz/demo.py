"""The demo's report page, drawn from `interventions.demo.DemoResults` alone (live or loaded from
disk), so `interp report <data folder>` redraws it without running anything.

Every number on the page carries its 95% interval and n; the page states what was run (prompts x
seeds x noise samples per part, units kept and dropped, the protocol, the scorer) and, in its
footer, how long the demo took on the machine that ran it.
"""

from __future__ import annotations

import numpy as np

from interp.stats import interval
from interventions.causal_trace import TraceResult
from interventions.demo import (
    CAUSAL_STATE, NEW, OLD, TARGET, TEXT_KINDS, DemoResults, causal_state_verdict, state_name,
)
from interventions.locogen import LocalizeResult
from viz.evaluation import edit_evaluation, evaluation_table
from viz.images import trace_images
from viz.locogen import locogen_curve
from viz.report import Report
from viz.traces import denoiser_site_maps, ie_bars, text_encoder_grid


def design(result: TraceResult) -> str:
    """What a trace ran: '4 prompts x 2 seeds x 2 noise samples (16 units)'."""
    count = lambda key: len({u[key] for u in result.units})  # noqa: E731
    return (f"{count('prompt')} prompts x {count('seed')} seeds x {result.settings['samples']} noise samples "
            f"({len(result.units)} units)")


def _top(result: TraceResult) -> str:
    """The cell with the largest mean IE, with its interval: 'mid-cross-attn +0.412 [0.301, 0.523] (n=16)'."""
    found = result.top(1)
    if not found:
        return "no unit kept"
    cells = result.cells()
    mean, low, high, n = (a.ravel() for a in result.ie_interval())
    i = cells.index(found[0][0])
    name = state_name(*found[0][0]) if len(found[0][0]) == 2 else found[0][0][0]
    return f"{name} {mean[i]:+.3f} [{low[i]:+.3f}, {high[i]:+.3f}] (n={int(n[i])})"


def _separated(result: TraceResult) -> int:
    """How many cells have a 95% interval that excludes 0 (n >= 2)."""
    _, low, high, n = result.ie_interval()
    return int(np.sum((n >= 2) & ((low > 0) | (high < 0))))


def _runs(results: DemoResults) -> list[list[object]]:
    """The 'what was run' table: per part its design, units kept and dropped, protocol and scorer."""
    rows = []
    for attribute, traces in results.unet.items():
        for label, result in [*((f"UNet trace ({p})", r) for p, r in traces.items()),
                              ("text-encoder trace", results.text[attribute])]:
            rows.append([f"{attribute}: {label}", design(result), f"{int(result.kept.sum())} / {result.dropped}",
                         result.settings.get("protocol", "paper")
                         + ("" if result.settings.get("method", "exact") == "exact" else f", {result.method}"),
                         result.settings["scorer"]])
    for attribute, result in results.locogen.items():
        prompts, seeds = (len({u[k] for u in result.units}) for k in ("prompt", "seed"))
        rows.append([f"{attribute}: LoCoGen", f"{prompts} prompts x {seeds} seeds ({len(result.units)} units)",
                     f"{len(result.units)} / 0", f"swap fed {TARGET!r}", result.scorer])
    for name, evaluation in results.evaluations.items():
        size, groups = evaluation.settings["images_per_group"], len({r.group for r in evaluation.rows})
        rows.append([f"{name}: evaluation", f"{size} images x {groups} groups x {len(evaluation.conditions)} "
                     "conditions", "-", "held-out prompts", "tiny judge (hit rates)"])
    return rows


def _findings(results: DemoResults) -> list[list[object]]:
    """Per attribute: the clean and corrupted scores and the top cell of each trace, with intervals."""
    rows = []
    for attribute, traces in results.unet.items():
        paper = next(iter(traces.values()))
        kept = paper.kept
        clean, corrupted = (str(interval(paper.scores[k][kept])) if kept.any() else "-" for k in ("clean", "corrupted"))
        rows.append([attribute, clean, corrupted, *(_top(r) for r in traces.values()), _top(results.text[attribute])])
    return rows


def _locogen_lines(result: LocalizeResult) -> list[str]:
    """The chosen window, how m grew, the random control and the collateral, as sentences."""
    met = "met" if result.settings.get("met") else "not met"
    grown = "; ".join(f"m = {g['m']}: best window from {g['best start']}, {g['score']:.3f} [{g['low']:.3f}, "
                      f"{g['high']:.3f}] (n={g['n']}), share of the full swap "
                      + ("n/a" if g["share"] is None else f"{g['share']:.2f}") for g in result.settings.get("grown", []))
    lines = [f"Chosen window: {', '.join(result.best_sites)} (m = {result.m}; threshold "
             f"{result.settings.get('threshold')} of the full swap's effect {met}). Scored by {result.scorer}; "
             f"no swap {result.interval('baseline')}, every layer swapped {result.interval('full')}, chosen window "
             f"{result.interval('window', result.best_start)}.", f"Growing m: {grown}."]
    if "random" in result.scores:
        layers = ", ".join(result.layers[i] for i in result.random_layers)
        lines.append(f"Control, {result.m} random layer(s) ({layers}) fed the same target: "
                     f"{result.interval('random')}.")
    for attribute, (before, after) in result.collateral.items():
        lines.append(f"Collateral, judge P({attribute} the prompt names): no swap {before} -> chosen window {after}.")
    return lines


def _footer(results: DemoResults) -> str:
    """How long the demo took where it ran, stage by stage."""
    seconds = dict(results.seconds)
    total = seconds.pop("total", None)
    stages = ", ".join(f"{name} {value:.0f} s" for name, value in seconds.items())
    head = f"interp demo took {total:.0f} s" if total is not None else "interp demo's stages took"
    where = f" on {results.machine}" if results.machine else ""
    return f"{head}{where} (measured by the run that wrote this data; {stages})."


def build_report(results: DemoResults, model_name: str = "") -> Report:
    """The report's sections, drawn from `results` alone."""
    sizes = results.sizes
    scorers = sorted({r.settings["scorer"] for traces in results.unet.values() for r in traces.values()})
    report = Report(
        f"Where {model_name or 'the model'} keeps style, object and color",
        f"{sizes.steps} denoising steps · every trace: {sizes.units()} per attribute · noise "
        f"{next(iter(next(iter(results.unet.values())).values())).settings['noise']} x the subject embeddings' "
        f"std · scores: {', '.join(scorers)} of each image against its prompt · means with 95% intervals over units",
        footer=_footer(results),
    )
    report.heading("What was run").table(["part", "prompts x seeds x samples", "units kept / dropped", "protocol",
                                          "scorer"], _runs(results))
    report.text("A unit is one (prompt, seed, noise sample); units whose corruption lowers the score by less than "
                "the scorer's minimum effect have nothing to trace and are dropped (counted above, never averaged).")
    protocols = list(next(iter(results.unet.values())))
    report.heading("Summary").table(
        ["attribute", "clean score", "corrupted score", *(f"top UNet site ({p})" for p in protocols),
         "top text state"], _findings(results))
    report.heading("The paper's single causal state").text(
        f"Basu et al. find one causal state in the text encoder: {state_name(*CAUSAL_STATE)}. "
        f"Checked per attribute against every other traced state ({' and '.join(TEXT_KINDS)} outputs, every layer "
        "and token role):")
    for attribute, result in results.text.items():
        report.text(f"{attribute}: {causal_state_verdict(result)}")

    report.heading("Causal tracing: UNet").text(
        "The subject's token embeddings are corrupted with noise; one site's clean activation is restored at every "
        "denoising step. Red cells bring the attribute back (indirect effect IE = restored - corrupted score; hover "
        "for the 95% interval and n). Left, the paper's protocol copies the clean run's activation even after the "
        "two trajectories diverge; right, the aligned protocol takes it from the clean prompt on the restored run's "
        "own latent, so a site that never reads the text has no effect by construction.")
    for attribute, traces in results.unet.items():
        counts = ", ".join(f"{p}: {_separated(r)} of {len(r.cells())}" for p, r in traces.items())
        report.figure(denoiser_site_maps(traces, title=f"UNet sites: {attribute}"))
        report.text(f"{attribute}: sites whose IE interval excludes 0 — {counts}.")
        report.figure(ie_bars(traces, top=6, title=f"Largest UNet effects: {attribute}"))
    report.figure(trace_images({a: next(iter(t.values())) for a, t in results.unet.items()}))

    report.heading("Causal tracing: text encoder").text(
        "The same corruption; one text-encoder state (layer output x token role) is restored at a time. Token "
        "roles align prompts of different lengths (ROME's: before, first, middle and last subject token, first "
        "and further after, last).")
    for attribute, result in results.text.items():
        report.figure(text_encoder_grid(result, title=f"Text encoder: {attribute}"))
        report.figure(ie_bars({attribute: result}, top=8, title=f"Largest text-encoder effects: {attribute}"))

    report.heading("LoCoGen").text(
        f"A window of m consecutive cross-attention layers sees {TARGET!r} instead of the prompt; m grows from 1 "
        "until the best window does a set share of what swapping every layer does. The lowest score wins.")
    for attribute, result in results.locogen.items():
        for line in _locogen_lines(result):
            report.text(f"{attribute}: {line}")
    report.figure(locogen_curve(results.locogen))

    report.heading("Editing").text(
        f"DiffQuickFix edits the text encoder's first self-attention out-projection; LoCoEdit edits W_K and W_V of "
        f"the cross-attention layers LoCoGen found. Both map {OLD!r} onto {NEW!r} in one closed-form solve.")
    if not results.evaluations:
        report.text("No edit evaluation: it needs the tiny world's judge (run the demo on the bundled tiny model).")
    for name, evaluation in results.evaluations.items():
        header, rows = evaluation_table(evaluation)
        report.text(f"{name} (keys from {', '.join(map(repr, evaluation.edit.get('templates', [])))}): the judge's "
                    f"rates on held-out prompts, {evaluation.settings['images_per_group']} images per group and "
                    "condition, 95% Wilson intervals.").table(header, rows)
        for note in evaluation.notes:
            report.text(f"{name}: {note}")
    if results.evaluations:
        report.figure(edit_evaluation(results.evaluations))
    return report
