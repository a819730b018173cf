"""The `interp` command. User mistakes print one line on stderr and exit with status 2."""

from __future__ import annotations

import enum
import functools
import sys
from pathlib import Path
from typing import Callable, List, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

MODEL_HELP = "'tiny' (bundled), 'dummy' (random, config-built), a folder saved with save_pretrained, or a hub id"
CLIP_HELP = "CLIP for CLIP-scores: a hub id or folder (default: the bundled tiny model's CLIP)"
OUT_HELP = "folder for the result (JSON + PNG) and its figure (report.html)"
DEVICE_HELP = "torch device for the model and the CLIP, e.g. cuda"


class Target(str, enum.Enum):
    unet = "unet"
    text = "text"


class Method(str, enum.Enum):
    diffquickfix = "diffquickfix"
    locoedit = "locoedit"


def user_errors(command: Callable) -> Callable:
    """Turn the project's errors and missing files into one stderr line and exit status 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from interp.errors import InterpError

        try:
            return command(*args, **kwargs)
        except (InterpError, FileNotFoundError, ValueError) as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _device(name: str):
    """A torch device this machine has, or `ValueError` naming the problem."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{name!r} is not a torch device; use cpu, cuda, cuda:1, mps, ...") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} is not available: this machine has no CUDA GPU; use --device cpu")
    return device


def _load(model: str, device: str = "cpu"):
    """The model `--model` names, on `device`."""
    import interp

    device = _device(device)
    if model == "dummy":
        from models.testing import dummy_sd_pipeline

        return interp.load(dummy_sd_pipeline().to(device))
    if model == "tiny":
        from interp.errors import BundledModelMissingError
        from models.tiny import WEIGHTS_DIR

        if not (WEIGHTS_DIR / "model_index.json").is_file():
            raise BundledModelMissingError(
                f"the bundled tiny model is not built ({WEIGHTS_DIR} is missing); build it with "
                f"`python -m models.tiny.train`, or pass --model <folder or hub id>"
            )
    loaded = interp.load(model)
    loaded.pipe.to(device)
    return loaded


def _scorer(clip: Optional[str], model: str, device: str = "cpu"):
    """The CLIP-scorer `--clip` names; the tiny model's CLIP by default (with a warning for other models)."""
    from interp.scoring import CLIPScore

    if clip is None and model not in ("tiny", "dummy"):
        typer.echo("warning: scoring with the tiny model's CLIP, which knows only its own words; pass --clip "
                   "(e.g. openai/clip-vit-large-patch14) for real models", err=True)
    return CLIPScore.from_pretrained(clip, device=device)


def _judge(model: str):
    """The tiny model's attribute judge where the model is the bundled one (it reads only its scenes)."""
    from interventions.evaluate import tiny_judge

    return tiny_judge if model == "tiny" else None


def _save(result, figure, out: Optional[Path]) -> None:
    """Save `result` and a one-figure report under `out`, if given."""
    if out is None:
        return
    from viz.report import Report

    result.save(out)
    Report(out.name).figure(figure).write(out / "report.html")
    typer.echo(f"wrote {out}/result.json and {out}/report.html")


@app.command()
@user_errors
def sites(
    model: str = typer.Option("tiny", help=MODEL_HELP),
    kind: Optional[str] = typer.Option(None, help="only sites of this kind, e.g. cross-attn, text-mlp"),
) -> None:
    """List a model's sites in forward order: name, kind, module path, aliases."""
    loaded = _load(model)
    for site in loaded.sites(kind=kind):
        aliases = f"  ({', '.join(site.aliases)})" if site.aliases else ""
        typer.echo(f"{site.name:24} {site.kind:16} {site.qualified_path}{aliases}")


@app.command()
@user_errors
def demo(
    model: str = typer.Option("tiny", help=MODEL_HELP),
    out: Path = typer.Option(Path("report.html"), help="the HTML report; its data goes to <name>_data/"),
    steps: int = typer.Option(25, min=1, help="denoising steps (25: ~2.5 min on one CPU core for the tiny model)"),
    seeds: int = typer.Option(1, min=1, help="seeds 0 .. n-1 per prompt"),
    clip: Optional[str] = typer.Option(None, help=CLIP_HELP),
    device: str = typer.Option("cpu", help=DEVICE_HELP),
) -> None:
    """The main job: trace style, object and color, localize style, edit it out, write the report."""
    from viz.demo import build_report, run_demo

    loaded, scorer = _load(model, device), _scorer(clip, model, device)
    data = out.with_name(f"{out.stem}_data")
    results = run_demo(loaded, scorer, steps, tuple(range(seeds)), _judge(model))
    results.save(data)
    build_report(results, model).write(out)
    typer.echo(f"wrote {out} (data and edit deltas in {data}/)")


@app.command()
@user_errors
def report(
    data: Path = typer.Argument(..., help="the data folder `interp demo` wrote"),
    out: Path = typer.Option(Path("report.html"), help="the HTML report"),
    title: str = typer.Option("", help="the model's name in the title"),
) -> None:
    """Redraw the demo report from its saved data, without running anything."""
    from viz.demo import DemoResults, build_report

    build_report(DemoResults.load(data), title).write(out)
    typer.echo(f"wrote {out}")


@app.command()
@user_errors
def trace(
    prompt: str = typer.Option(..., help="the prompt"),
    subject: str = typer.Option(..., help="the words of the prompt to corrupt"),
    model: str = typer.Option("tiny", help=MODEL_HELP),
    target: Target = typer.Option(Target.unet, help="trace UNet sites or text-encoder (site, token) states"),
    steps: int = typer.Option(25, min=1, help="denoising steps"),
    seeds: int = typer.Option(1, min=1, help="seeds 0 .. n-1"),
    clip: Optional[str] = typer.Option(None, help=CLIP_HELP),
    out: Optional[Path] = typer.Option(None, help=OUT_HELP),
    device: str = typer.Option("cpu", help=DEVICE_HELP),
) -> None:
    """Causal tracing: corrupt the subject, restore one state at a time, print the indirect effects."""
    from interventions.causal_trace import trace_text_encoder, trace_unet
    from viz.traces import denoiser_site_map, text_encoder_grid

    loaded = _load(model, device)
    loaded.locate(prompt, subject)  # a subject not in the prompt fails before the CLIP loads
    recipe, figure = (trace_unet, denoiser_site_map) if target is Target.unet else (trace_text_encoder, text_encoder_grid)
    result = recipe(loaded, prompt, subject, seeds=range(seeds), steps=steps, scorer=_scorer(clip, model, device))
    typer.echo(result.table())
    _save(result, figure(result), out)


class Wins(str, enum.Enum):
    lowest = "lowest"
    highest = "highest"


@app.command()
@user_errors
def locogen(
    prompt: List[str] = typer.Option(..., help="a prompt with the attribute (repeat for several)"),
    target_prompt: str = typer.Option("a painting", help="what the window's layers see instead"),
    model: str = typer.Option("tiny", help=MODEL_HELP),
    window: Optional[int] = typer.Option(None, help="fix m, the number of consecutive cross-attention layers "
                                         "swapped (default: grow m from 1 until --threshold is met)"),
    threshold: float = typer.Option(0.5, help="grow m until the best window does this share of what "
                                    "swapping every layer does"),
    mode: Wins = typer.Option(Wins.lowest, help="lowest score wins (style, objects: scored against each prompt) "
                              "or highest (facts: scored against the target)"),
    judged: Optional[List[str]] = typer.Option(None, help="on the tiny model, the attribute the judge reads "
                                               "(repeat for several; default: style, or object and color "
                                               "with --mode highest)"),
    attribute: Optional[str] = typer.Option(None, help="score against this text instead"),
    control_seed: int = typer.Option(0, help="seed of the random control's layers"),
    steps: int = typer.Option(25, min=1, help="denoising steps"),
    seeds: int = typer.Option(1, min=1, help="seeds 0 .. n-1 per prompt"),
    clip: Optional[str] = typer.Option(None, help=CLIP_HELP + "; on the tiny model its judge scores unless given"),
    out: Optional[Path] = typer.Option(None, help=OUT_HELP),
    device: str = typer.Option("cpu", help=DEVICE_HELP),
) -> None:
    """LoCoGen: slide windows of cross-attention layers fed the target prompt; print each window's
    score with its 95% interval, and the controls."""
    from interventions.locogen import localize
    from viz.locogen import locogen_curve

    loaded = _load(model, device)
    scorer = None if clip is None and model == "tiny" else _scorer(clip, model, device)
    result = localize(loaded, prompt, target_prompt, window, attribute, mode.value, seeds=range(seeds), steps=steps,
                      threshold=threshold, judged=judged or None, control_seed=control_seed, scorer=scorer)
    typer.echo(result.table())
    typer.echo(f"best window: {', '.join(result.best_sites)}")
    _save(result, locogen_curve(result), out)


@app.command()
@user_errors
def edit(
    method: Method = typer.Argument(..., help="diffquickfix (text encoder) or locoedit (cross-attention W_K, W_V)"),
    old: List[str] = typer.Option(..., help="a concept to remove (repeat for several)"),
    new: str = typer.Option(..., help="what it should read as instead"),
    save: Path = typer.Option(..., help="where to write the edit (safetensors delta of the changed weights)"),
    model: str = typer.Option("tiny", help=MODEL_HELP),
    layer: List[str] = typer.Option([], help="locoedit: a cross-attention layer (name or index; repeat); "
                                             "'all' for every one; default SD1.x's style window"),
    lam: float = typer.Option(0.01, help="closeness to the current weights (lambda; locoedit: for W_K and W_V)"),
    encoder: Optional[str] = typer.Option(None, help="diffquickfix: the CLIP text encoder component to edit "
                                                     "(e.g. text_encoder_2 on SDXL/SD3); default the first"),
    template: List[str] = typer.Option([], help="a prompt template with one '{}' slot for the concept (repeat); "
                                                "default the method's own"),
    positions: Optional[str] = typer.Option(None, help="key positions: subject, subject+eos or from-subject; "
                                                       "default the method's own (diffquickfix from-subject, "
                                                       "locoedit subject)"),
    preserve: List[str] = typer.Option([], help="a prompt whose states the edit must keep (repeat)"),
    preserve_file: Optional[Path] = typer.Option(None, help="a text file of prompts to preserve, one per line"),
    preserve_weight: float = typer.Option(1.0, help="weight of keeping the preserved prompts against the edit"),
) -> None:
    """Compute a closed-form edit mapping the old concept(s) onto the new one; save it, do not apply it."""
    options = dict(preserve=preserve + _lines(preserve_file), preserve_weight=preserve_weight)
    options.update({k: v for k, v in (("templates", template), ("positions", positions)) if v})  # else the method's
    loaded = _load(model)
    if method is Method.diffquickfix:
        if layer:
            raise ValueError("--layer is for locoedit; diffquickfix edits the first text self-attention layer")
        from interventions import diffquickfix

        result = diffquickfix.edit(loaded, old, new, lam=lam, encoder=encoder, **options)
    else:
        if encoder:
            raise ValueError("--encoder is for diffquickfix; locoedit edits the denoiser's cross-attention layers")
        from interventions import locoedit

        layers = [int(x) if x.isdigit() else x for x in layer] or None
        layers = "all" if layers == ["all"] else layers
        result = locoedit.edit(loaded, old, new, layers, lam_k=lam, lam_v=lam, **options)
    save.parent.mkdir(parents=True, exist_ok=True)
    result.save(save)
    changed = result.changed_parameters
    typer.echo(f"wrote {save}: {method.value} changes {len(changed)} weight(s) of {result.metadata['component']}: "
               f"{', '.join(changed)}")


def _lines(path: Optional[Path]) -> list[str]:
    """The non-blank lines of a text file, stripped (none without a file)."""
    if path is None:
        return []
    if not path.is_file():
        raise FileNotFoundError(f"--preserve-file {path} is not a file; pass a text file with one prompt per line")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@app.command()
@user_errors
def apply(
    delta: Path = typer.Argument(..., help="an edit written by `interp edit --save`"),
    out: Path = typer.Option(..., help="folder for the edited pipeline (save_pretrained; usable as --model)"),
    model: str = typer.Option("tiny", help=MODEL_HELP),
    prompt: List[str] = typer.Option([], help="also generate this prompt with the edit (repeat; PNGs in <out>/images)"),
    steps: int = typer.Option(25, min=1, help="denoising steps for --prompt"),
    device: str = typer.Option("cpu", help=DEVICE_HELP),
) -> None:
    """Apply a saved edit to a model and save the edited pipeline (and optional images)."""
    from PIL import Image

    from interp.editing import Edit
    from interp.results import as_uint8
    from interventions import edits
    from interventions.evaluate import generate

    if not delta.is_file():
        raise FileNotFoundError(f"{delta} does not exist; write one with `interp edit ... --save {delta}`")
    loaded = edits.apply(_load(model, device), Edit.load(delta))
    loaded.pipe.save_pretrained(out)
    typer.echo(f"wrote the edited pipeline to {out}/")
    if prompt:
        (out / "images").mkdir(exist_ok=True)
        for i, image in enumerate(generate(loaded, prompt, [0], steps)):
            path = out / "images" / f"{i:02d}.png"
            Image.fromarray(as_uint8(image)).save(path)
            typer.echo(f"{path}: {prompt[i]}")


@app.command()
@user_errors
def evaluate(
    delta: Path = typer.Argument(..., help="an edit written by `interp edit --save`"),
    model: str = typer.Option("tiny", help=MODEL_HELP + "; the edit's unedited model"),
    concept: List[str] = typer.Option([], help="evaluate only this old concept (repeat); default every one"),
    images: int = typer.Option(128, min=1, help="images per group (prompts x seeds)"),
    seed: int = typer.Option(0, help="first generation seed"),
    controls: bool = typer.Option(True, help="also run the recipe at every layer and at a random one"),
    control_seed: int = typer.Option(0, help="seed of the random-layer control's choice"),
    steps: int = typer.Option(25, min=1, help="denoising steps"),
    out: Optional[Path] = typer.Option(None, help="folder for the evaluation (result.json)"),
    device: str = typer.Option("cpu", help=DEVICE_HELP),
) -> None:
    """Evaluate a saved edit with the tiny world's judge: efficacy, generalization and specificity
    on held-out prompts, against the unedited model and two controls; print rates with intervals."""
    from interp.editing import Edit
    from interventions.edit_eval import evaluate_edit
    from interventions.evaluate import tiny_judge

    if not delta.is_file():
        raise FileNotFoundError(f"{delta} does not exist; write one with `interp edit ... --save {delta}`")
    if model != "tiny":
        typer.echo("warning: judging with the tiny world's judge, which reads only the tiny world's scenes", err=True)
    result = evaluate_edit(_load(model, device), Edit.load(delta), concept or None, images_per_group=images, seed=seed,
                           controls=controls, control_seed=control_seed, judge=tiny_judge, steps=steps)
    typer.echo(result.table())
    if out is not None:
        typer.echo(f"wrote {result.save(out)}")


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="interp")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
