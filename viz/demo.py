"""The main job: trace, localize and edit one model, save every result as data, write the report.

`run_demo` runs the recipes (both causal traces for one prompt per attribute, LoCoGen for style,
DiffQuickFix and LoCoEdit removing one style, judged before/after); `DemoResults.save` writes the
results as JSON + PNG and the edits as safetensors deltas, so `build_report(DemoResults.load(folder))`
redraws the report without re-running anything.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from interp.editing import Edit
from interp.errors import ResultFormatError
from interp.model import Model
from interp.scoring import CLIPScore
from interventions import diffquickfix, locoedit
from interventions.causal_trace import TraceResult, trace_text_encoder, trace_unet
from interventions.locogen import LocalizeResult, localize
from viz.comparison import EditComparison, Judge, compare_edits
from viz.images import edit_images, trace_images
from viz.locogen import locogen_curve
from viz.report import Report
from viz.traces import denoiser_site_map, text_encoder_grid, token_label

# (prompt, subject) per attribute, in words both the tiny model and the dummy test pipeline know.
PROMPTS = {
    "style": ("a red circle in the style of van gogh", "van gogh"),
    "object": ("a green star in the style of monet", "star"),
    "color": ("a blue square", "blue"),
}
STYLE_PROMPTS = ("a red circle in the style of van gogh", "a blue square in the style of van gogh")
OLD, NEW, TARGET = "van gogh", "painting", "a painting"
# LoCoGen scores each window's images against the attribute text, as the paper does ("style of van
# gogh"); in the tiny world's phrasing. Scoring against the whole prompt also rewards windows that
# break the object or color and keep the style.
STYLE_ATTRIBUTE = "in the style of van gogh"
# DiffQuickFix's key templates, in words the tiny model knows (the papers' "a photo of {}" is not one of
# them, and its keys on unknown words spill the edit onto every prompt). LoCoEdit keeps the paper's:
# on the tiny model they remove more van gogh (25% left against 75%, 4 prompts x 2 seeds).
EDIT_TEMPLATES = ("{}", "in the style of {}", "a painting by {}", "a {} painting")
COMPARISON = {
    "a red circle in the style of van gogh": "edited", "a blue square in the style of van gogh": "edited",
    "a red circle in the style of monet": "neighbour", "a green star": "neighbour",
}
INDEX = "demo.json"


@dataclass
class DemoResults:
    """Everything the report shows: traces per attribute, LoCoGen for style, the edit comparison."""

    unet: dict[str, TraceResult]
    text: dict[str, TraceResult]
    locogen: dict[str, LocalizeResult]
    edits: EditComparison
    deltas: dict[str, Edit]  # name -> the edit compared in `edits`

    def save(self, folder: str | Path) -> Path:
        """Every result under `folder` (JSON + PNG), with `demo.json` listing the attributes in order."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / INDEX).write_text(json.dumps({"attributes": list(self.unet), "localized": list(self.locogen)}))
        for attribute in self.unet:
            self.unet[attribute].save(folder / f"trace-unet-{attribute}")
            self.text[attribute].save(folder / f"trace-text-{attribute}")
        for attribute, result in self.locogen.items():
            result.save(folder / f"locogen-{attribute}")
        self.edits.save(folder / "edits")
        for name, edit in self.deltas.items():
            edit.save(folder / f"{name}.safetensors")
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> DemoResults:
        """Read what `save` wrote; raises `ResultFormatError` if `folder` holds no demo results."""
        folder = Path(folder)
        if not (folder / INDEX).is_file():
            raise ResultFormatError(f"{folder / INDEX} does not exist; pass the data folder `interp demo` wrote")
        index = json.loads((folder / INDEX).read_text())
        comparison = EditComparison.load(folder / "edits")
        return cls(
            {a: TraceResult.load(folder / f"trace-unet-{a}") for a in index["attributes"]},
            {a: TraceResult.load(folder / f"trace-text-{a}") for a in index["attributes"]},
            {a: LocalizeResult.load(folder / f"locogen-{a}") for a in index["localized"]},
            comparison,
            {name: Edit.load(folder / f"{name}.safetensors") for name in comparison.edits[1:]},
        )


def run_demo(
    model: Model,
    scorer: CLIPScore,
    steps: int = 25,
    seeds: Sequence[int] = (0,),
    judge: Judge | None = None,
    progress: bool = True,
) -> DemoResults:
    """Run every recipe of the report on `model`; `judge` (the tiny model's) adds hit rates."""
    stages = tqdm(total=2 * len(PROMPTS) + 3, desc="demo", disable=not progress, position=0)
    unet, text = {}, {}
    common = dict(seeds=seeds, steps=steps, scorer=scorer, progress=progress)
    for attribute, (prompt, subject) in PROMPTS.items():
        stages.set_description(f"trace UNet: {attribute}")
        unet[attribute] = trace_unet(model, prompt, subject, **common)
        stages.update()
        stages.set_description(f"trace text encoder: {attribute}")
        text[attribute] = trace_text_encoder(model, prompt, subject, **common)
        stages.update()
    stages.set_description("LoCoGen: style")
    style = localize(model, list(STYLE_PROMPTS), TARGET, attribute=STYLE_ATTRIBUTE, **common)
    stages.update()
    stages.set_description("edits: DiffQuickFix, LoCoEdit")
    edits = {"DiffQuickFix": diffquickfix.edit(model, OLD, NEW, templates=EDIT_TEMPLATES),
             "LoCoEdit": locoedit.edit(model, OLD, NEW, layers=style.best_sites)}
    stages.update()
    stages.set_description("before / after")
    comparison = compare_edits(model, edits, COMPARISON, scorer, seeds[0], steps, judge=judge, watch=("style", OLD))
    stages.update()
    stages.close()
    return DemoResults(unet, text, {"style": style}, comparison, edits)


def _summary_rows(results: DemoResults) -> list[list[object]]:
    rows = []
    for attribute, unet in results.unet.items():
        text = results.text[attribute]
        (site,), site_ie, _ = unet.top(1)[0]
        (state, token), state_ie, _ = text.top(1)[0]
        rows.append([attribute, unet.units[0]["subject"],
                     float(np.mean(unet.scores["clean"])), float(np.mean(unet.scores["corrupted"])),
                     f"{site} ({site_ie:+.3f})", f"{state} @ {token_label(token)} ({state_ie:+.3f})"])
    return rows


def build_report(results: DemoResults, model_name: str = "") -> Report:
    """The report's sections, drawn from `results` alone."""
    first = next(iter(results.unet.values()))
    report = Report(f"Where {model_name or 'the model'} keeps style, object and color",
                    f"{first.settings['steps']} denoising steps · {len(first.units)} seed(s) per prompt · "
                    f"noise {first.settings['noise']} x the subject embeddings' std · scores: CLIP-score of "
                    "each image against its prompt")
    report.heading("Summary").table(
        ["attribute", "subject", "clean CLIP", "corrupted CLIP", "top UNet site (IE)", "top text state (IE)"],
        _summary_rows(results))
    report.heading("Causal tracing: UNet").text(
        "The subject's token embeddings are corrupted with noise; each site's clean activation is restored "
        "at every denoising step. Red cells bring the attribute back (indirect effect IE = restored - "
        "corrupted CLIP-score).")
    for attribute, result in results.unet.items():
        report.figure(denoiser_site_map(result, title=f"UNet sites: {attribute}"))
    report.figure(trace_images(results.unet))
    report.heading("Causal tracing: text encoder").text(
        "The same corruption; one text-encoder state (site kind x layer x token) is restored at a time.")
    for attribute, result in results.text.items():
        report.figure(text_encoder_grid(result, title=f"Text encoder: {attribute}"))
    report.heading("LoCoGen").text(
        "A window of m consecutive cross-attention layers sees the target prompt instead of the original; "
        "the window whose swap lowers the CLIP-score against the attribute's text most is where it is "
        "controlled.")
    for attribute, result in results.locogen.items():
        text = result.settings.get("attribute")
        scored = repr(text) if text else "each prompt"
        report.text(f"{attribute}: chosen window {', '.join(result.best_sites)} (m = {result.m}; "
                    f"scored against {scored}).")
    report.figure(locogen_curve(results.locogen))
    comparison = results.edits
    keys = "; ".join(f"{name}: {', '.join(repr(t) for t in edit['templates'])}"
                     for name, edit in comparison.settings["edits"].items())
    report.heading("Editing").text(
        f"DiffQuickFix edits the text encoder's first self-attention out-projection; LoCoEdit edits W_K and W_V "
        f"of the cross-attention layers LoCoGen found. Both map {OLD!r} onto {NEW!r} in one closed-form solve, "
        f"with keys from templates ({keys}).")
    roles = ("edited", "neighbour")
    report.table(["mean CLIP-score", *comparison.edits], [[r, *comparison.rate("clip", r).values()] for r in roles])
    for role in roles:
        rates = comparison.rate("hit", role)
        if rates:
            report.text(f"Judge: {OLD!r} seen in {role} prompts' images: "
                        + ", ".join(f"{edit} {100 * rate:.0f}%" for edit, rate in rates.items()))
    report.figure(edit_images(comparison))
    return report
