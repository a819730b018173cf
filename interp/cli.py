"""The `interp` command. User mistakes print one line on stderr and exit with status 2."""

from __future__ import annotations

import enum
import functools
import sys
from pathlib import Path
from typing import Any, Callable, List, Optional

import typer

from models import BUNDLED

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

MODEL_HELP = ("'tiny' (bundled; 'tiny-grounded': with the UNet whose object words' attention finds their objects), "
              "'dummy' (random, config-built), a folder saved with save_pretrained, or a hub id")
CLIP_HELP = "CLIP for CLIP-scores: a hub id or folder (default: the bundled tiny model's CLIP)"
OUT_HELP = "folder for the result (JSON + PNG) and its figure (report.html)"
DEVICE_HELP = "torch device for the model and the CLIP, e.g. cuda"


@app.callback()
def main_options(
    progress: bool = typer.Option(False, "--progress", help="show progress bars even when stderr is not a "
                                  "terminal (by default they show only on one)"),
) -> None:
    """Options for every command."""
    if progress:
        from interp.progress import request

        request()


def _progress() -> bool:
    """Whether this command shows the project's progress bars (`interp.progress.default`)."""
    from interp.progress import default

    return default()


class Target(str, enum.Enum):
    unet = "unet"
    text = "text"


class Protocol(str, enum.Enum):
    paper = "paper"
    aligned = "aligned"


class TraceMethod(str, enum.Enum):
    exact = "exact"
    attribution = "attribution"
    hybrid = "hybrid"


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
        except (InterpError, OSError, ValueError) as error:  # OSError: files, folders, hub ids not cached
            typer.echo(f"error: {_one_line(error)}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _one_line(error: Exception) -> str:
    """An error's message on one line (library messages often span several)."""
    return " ".join(str(error).split()) or type(error).__name__


def _writable(out: Optional[Path]) -> Optional[Path]:
    """Check an --out folder before any computing (typer callback): a clear error, exit 2."""
    from interp.errors import ResultFormatError
    from interp.results import writable_folder

    if out is not None:
        try:
            writable_folder(out)
        except ResultFormatError as error:
            typer.echo(f"error: --out: {error}", err=True)
            raise typer.Exit(2) from None
    return out


def _device(name: str):
    """A torch device this machine has, or `ValueError` naming the problem."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{name!r} is not a torch device; use cpu, cuda, cuda:1, mps, ...") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} is not available: this machine has no CUDA GPU; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} is not available: this machine has no Apple GPU; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {name!r} cannot generate images; use cpu, cuda or mps")
    return device


def _load(model: str, device: str = "cpu"):
    """The model `--model` names, on `device`."""
    import interp

    device = _device(device)
    if model == "dummy":
        from models.testing import dummy_sd_pipeline

        return interp.load(dummy_sd_pipeline().to(device))
    if model in BUNDLED:
        from interp.errors import BundledModelMissingError
        from models.tiny import GROUNDED_UNET_DIR, WEIGHTS_DIR

        needed = [WEIGHTS_DIR / "model_index.json"] + [GROUNDED_UNET_DIR / "config.json"] * (model == "tiny-grounded")
        missing = [path.parent for path in needed if not path.is_file()]
        if missing:
            stages = " --stages grounded_unet" * (missing[0] == GROUNDED_UNET_DIR)
            raise BundledModelMissingError(
                f"the bundled tiny model is not built ({missing[0]} is missing); build it with "
                f"`python -m models.tiny.train{stages}`, or pass --model <folder or hub id>"
            )
    from interp.progress import loading

    with loading(model):
        loaded = interp.load(model)
    loaded.pipe.to(device)
    return loaded


def _scorer(clip: Optional[str], model: str, device: str = "cpu"):
    """The CLIP-scorer `--clip` names; on the tiny model without --clip None (the recipes then score with
    its judge, the ground truth); else the tiny model's CLIP (with a warning for real models)."""
    from interp.scoring import CLIPScore

    if clip is None and model in BUNDLED:
        return None
    if clip is None and model != "dummy":
        typer.echo("warning: scoring with the tiny model's CLIP, which knows only its own words; pass --clip "
                   "(e.g. openai/clip-vit-large-patch14) for real models", err=True)
    return CLIPScore.from_pretrained(clip, device=device)


def _judge(model: str):
    """The tiny model's attribute judge where the model is the bundled one (it reads only its scenes)."""
    from interventions.evaluate import tiny_judge

    return tiny_judge if model in BUNDLED else None


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
    finer: bool = typer.Option(False, "--finer", help="also name each layer's head or neuron sites"),
) -> None:
    """List a model's sites in forward order: name, kind, module path, aliases; with --finer, the
    head sites (`<site>.head-H`, `.head-H.k/.v`) and neuron sites (`<site>.neuron`) each layer offers."""
    from interp.sites import finer_sites

    loaded = _load(model)
    for site in loaded.sites(kind=kind):
        aliases = f"  ({', '.join(site.aliases)})" if site.aliases else ""
        typer.echo(f"{site.name:24} {site.kind:16} {site.qualified_path}{aliases}")
        if finer and finer_sites(site):
            typer.echo(f"{'':24} {finer_sites(site)}")


@app.command()
@user_errors
def demo(
    model: str = typer.Option("tiny", help=MODEL_HELP),
    out: Path = typer.Option(Path("report.html"), help="the HTML report; its data goes to <name>_data/"),
    steps: int = typer.Option(10, min=1, help="denoising steps"),
    prompts: int = typer.Option(4, min=1, max=4, help="prompts per attribute (style, object, color)"),
    seeds: int = typer.Option(2, min=1, help="seeds 0 .. n-1 per prompt"),
    samples: int = typer.Option(2, min=1, help="noise samples per (prompt, seed) in the traces"),
    images: int = typer.Option(16, min=1, help="images per group and condition in each edit's evaluation"),
    chunk_size: int = typer.Option(128, min=1, help="runs per batched pipeline call (larger only pays on a GPU)"),
    clip: Optional[str] = typer.Option(None, help=CLIP_HELP + "; on the tiny model its judge scores unless given"),
    device: str = typer.Option("cpu", help=DEVICE_HELP),
) -> None:
    """The main job: trace style, object and color (both UNet protocols, the text encoder by token
    role), localize style, remove it with both editors and evaluate them; write the report and its
    data. The defaults take about 2 minutes on an idle 2-core CPU with the tiny model."""
    import time

    from interp.results import writable_folder
    from interventions.demo import INDEX, Sizes, run_demo
    from viz.demo import build_report

    start = time.perf_counter()
    sizes = Sizes(steps=steps, prompts=prompts, seeds=seeds, samples=samples, images_per_group=images,
                  chunk_size=chunk_size)
    data = out.with_name(f"{out.stem}_data")
    writable_folder(data, INDEX)  # before computing: a path that cannot take the data costs nothing
    loaded, scorer = _load(model, device), _scorer(clip, model, device)
    results = run_demo(loaded, scorer, sizes, _judge(model), progress=_progress())
    results.seconds["total"] = time.perf_counter() - start  # for the footer: loading and the recipes
    results.save(data)
    build_report(results, model).write(out)
    typer.echo(f"wrote {out} (data and edit deltas in {data}/); the demo took {time.perf_counter() - start:.0f} s")


@app.command()
@user_errors
def report(
    data: Path = typer.Argument(..., help="the data folder `interp demo` wrote, or an `interp sweep` --out folder"),
    out: Optional[Path] = typer.Option(None, help="the HTML report (default report.html; for a sweep <folder>/report.html)"),
    title: str = typer.Option("", help="the model's name in the title"),
) -> None:
    """Redraw the demo report from its saved data, or draw a sweep's (aggregating its units into
    <folder>/result/), without running anything."""
    from interventions.demo import DemoResults
    from viz.demo import build_report

    if (data / "sweep.json").is_file():
        from interventions.sweep_recipes import write_report

        typer.echo(f"wrote {data}/result/result.json and {write_report(data, out)}")
        return
    out = out or Path("report.html")
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
    samples: int = typer.Option(10, min=1, help="noise samples per (prompt, seed): the units are their product"),
    protocol: Protocol = typer.Option(Protocol.paper, help="UNet traces: 'paper' restores the clean run's "
                                      "activation; 'aligned' the clean prompt's on the restored run's own latent"),
    min_effect: Optional[float] = typer.Option(None, help="drop units whose clean - corrupted score is below "
                                               "this (default: 0.1 for the tiny judge, 0 for CLIP)"),
    method: TraceMethod = typer.Option(TraceMethod.exact, help="'exact' restores each site, or (site, token) state "
                                  "(a generation each); 'attribution' estimates all of them from one backward "
                                  "pass; 'hybrid' attributes, then restores the --verify top cells exactly"),
    verify: int = typer.Option(10, min=1, help="--method hybrid: how many top cells to restore exactly"),
    clip: Optional[str] = typer.Option(None, help=CLIP_HELP),
    out: Optional[Path] = typer.Option(None, help=OUT_HELP, callback=_writable),
    device: str = typer.Option("cpu", help=DEVICE_HELP),
) -> None:
    """Causal tracing: corrupt the subject, restore one state at a time (or estimate every state's
    effect by attribution patching), print the indirect effects with 95% intervals over units
    (prompt x seed x noise sample)."""
    from interventions.causal_trace import trace_text_encoder, trace_unet
    from viz.traces import denoiser_site_map, text_encoder_grid

    loaded = _load(model, device)
    loaded.locate(prompt, subject)  # a subject not in the prompt fails before the CLIP loads
    options = dict(seeds=range(seeds), steps=steps, samples=samples, min_effect=min_effect,
                   scorer=_scorer(clip, model, device), progress=_progress(), method=method.value, verify=verify)
    if target is Target.unet:
        result = trace_unet(loaded, prompt, subject, protocol=protocol.value, **options)
        figure = denoiser_site_map
    else:
        if protocol is not Protocol.paper:
            raise typer.BadParameter("text-encoder states are computed once per prompt; only --protocol paper applies",
                                     param_hint="--protocol")
        result, figure = trace_text_encoder(loaded, prompt, subject, **options), text_encoder_grid
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
    out: Optional[Path] = typer.Option(None, help=OUT_HELP, callback=_writable),
    device: str = typer.Option("cpu", help=DEVICE_HELP),
) -> None:
    """LoCoGen: slide windows of cross-attention layers fed the target prompt; print each window's
    score with its 95% interval, and the controls."""
    from interventions.locogen import localize
    from viz.locogen import locogen_curve

    loaded = _load(model, device)
    scorer = _scorer(clip, model, device)
    result = localize(loaded, prompt, target_prompt, window, attribute, mode.value, seeds=range(seeds), steps=steps,
                      threshold=threshold, judged=judged or None, control_seed=control_seed, scorer=scorer,
                      progress=_progress())
    typer.echo(result.table())
    typer.echo(f"best window: {', '.join(result.best_sites)}")
    _save(result, locogen_curve(result), out)


@app.command()
@user_errors
def attention(
    prompt: str = typer.Option(..., help="the prompt"),
    token: List[str] = typer.Option(..., help="a word or phrase of the prompt whose map to draw (repeat for several)"),
    model: str = typer.Option("tiny", help=MODEL_HELP),
    layer: List[str] = typer.Option([], help="a cross-attention layer to capture (repeat; default: every one)"),
    steps: int = typer.Option(25, min=1, help="denoising steps"),
    seeds: int = typer.Option(1, min=1, help="seeds 0 .. n-1, one image each"),
    out: Path = typer.Option(Path("attention.html"), help="the HTML page of the maps over each image"),
    device: str = typer.Option("cpu", help=DEVICE_HELP),
) -> None:
    """Cross-attention maps (DAAM): where in each image every token acts, aggregated over layers,
    heads and steps, and per layer; the user's attention processors stay in place."""
    from interventions.attention_maps import attention_maps
    from viz.attention import attention_heatmaps, attention_layers
    from viz.report import Report

    loaded = _load(model, device)
    maps = attention_maps(loaded, prompt, token, seeds=range(seeds), layers=layer or None, steps=steps,
                          progress=_progress())
    page = Report(f"Cross-attention maps: {prompt}", subtitle=maps.settings["aggregation"])
    for index in range(seeds):
        page.figure(attention_heatmaps(maps, index))
        for word in maps.tokens:
            page.figure(attention_layers(maps, word, index))
    for word, positions in maps.tokens.items():
        typer.echo(f"{word}: positions {list(positions)}, {len(maps.layers)} layers, {len(maps.steps)} steps")
    typer.echo(f"wrote {page.write(out)}")


@app.command()
@user_errors
def edit(
    method: Method = typer.Argument(..., help="diffquickfix (text encoder) or locoedit (cross-attention W_K, W_V)"),
    old: List[str] = typer.Option(..., help="a concept to remove (repeat for several)"),
    new: str = typer.Option(..., help="what it should read as instead"),
    save: Path = typer.Option(..., help="where to write the edit (safetensors delta of the changed weights)"),
    model: str = typer.Option("tiny", help=MODEL_HELP),
    layer: List[str] = typer.Option([], help="locoedit: a cross-attention layer (name or index; repeat); "
                                             "'all' for every one; CONCEPT=LAYER for one concept's own window "
                                             "(e.g. --layer 'van gogh=4' --layer monet=0); default SD1.x's style "
                                             "window"),
    lam: Optional[float] = typer.Option(None, help="closeness to the current weights (lambda; locoedit: for W_K and "
                                                   "W_V); default the papers' 0.01, or the tiny world's for its kind"),
    encoder: Optional[str] = typer.Option(None, help="diffquickfix: the CLIP text encoder component to edit "
                                                     "(e.g. text_encoder_2 on SDXL/SD3); default the first"),
    template: List[str] = typer.Option([], help="a prompt template with one '{}' slot for the concept (repeat); "
                                                "default the method's own"),
    positions: Optional[str] = typer.Option(None, help="key positions: subject, subject+eos or from-subject; "
                                                       "default the method's own (diffquickfix from-subject, "
                                                       "locoedit subject)"),
    preserve: List[str] = typer.Option([], help="a prompt whose states the edit must keep (repeat)"),
    preserve_file: Optional[Path] = typer.Option(None, help="a text file of prompts to preserve, one per line"),
    preserve_weight: Optional[float] = typer.Option(None, help="weight of keeping the preserved prompts against "
                                                    "the edit (default 1)"),
    lora: Optional[Path] = typer.Option(None, help="also export the edit as a diffusers LoRA adapter into this "
                                                   "folder (pipe.load_lora_weights(folder))"),
) -> None:
    """Compute a closed-form edit mapping the old concept(s) onto the new one; save it, do not apply it.

    On the tiny model, without --template / --preserve the world's own phrasings and its neighbouring
    concepts are used (models/tiny/edit_defaults.py)."""
    given = {"preserve": preserve + _lines(preserve_file), "preserve_weight": preserve_weight,
             "templates": template, "positions": positions}
    options = {k: v for k, v in given.items() if v}  # else the method's own (or the tiny world's) default
    if lam is not None:
        options["lam"] = lam
    if model in BUNDLED:
        from models.tiny import edit_defaults

        options = {**edit_defaults.options(method.value, old, new), **options}
    loaded = _load(model)
    if method is Method.diffquickfix:
        if layer:
            raise ValueError("--layer is for locoedit; diffquickfix edits the first text self-attention layer")
        from interventions import diffquickfix

        result = diffquickfix.edit(loaded, old, new, encoder=encoder, **options)
    else:
        if encoder:
            raise ValueError("--encoder is for diffquickfix; locoedit edits the denoiser's cross-attention layers")
        from interventions import locoedit

        if not layer and not all(name in loaded.site_map for name in locoedit.STYLE_WINDOW):
            raise ValueError(f"this model has no {', '.join(locoedit.STYLE_WINDOW)} (the default, SD1.x's style window); "
                             f"pass --layer (repeat it for the window `interp locogen` finds) or --layer all")
        layers = _layers(layer, old)
        lams = {"lam_k": options["lam"], "lam_v": options.pop("lam")} if "lam" in options else {}
        result = locoedit.edit(loaded, old, new, layers, **lams, **options)
    save.parent.mkdir(parents=True, exist_ok=True)
    result.save(save)
    changed = result.changed_parameters
    typer.echo(f"wrote {save}: {method.value} changes {len(changed)} weight(s) of {result.metadata['component']}: "
               f"{', '.join(changed)}")
    if lora is not None:
        from interventions.edits import export_lora

        ranks = export_lora(result, lora)
        typer.echo(f"wrote the LoRA adapter {lora}/ (rank {max(ranks.values())}; load it with "
                   f"pipe.load_lora_weights({str(lora)!r}))")


def _layers(given: list[str], olds: list[str]) -> Any:
    """`--layer` values as `locoedit.edit` takes them: None, "all", a list of names or indices, or
    with CONCEPT=LAYER entries a window per old concept (every one of them must get one)."""
    def one(x: str) -> str | int:
        return int(x) if x.strip().isdigit() else x.strip()

    if not any("=" in x for x in given):
        layers = [one(x) for x in given] or None
        return "all" if layers == ["all"] else layers
    if not all("=" in x for x in given):
        raise ValueError("--layer: give every layer as CONCEPT=LAYER or none of them")
    windows: dict[str, list] = {}
    for entry in given:
        concept, value = entry.rsplit("=", 1)
        if concept.strip() not in olds:
            raise ValueError(f"--layer {entry!r}: {concept.strip()!r} is not an --old concept ({olds})")
        windows.setdefault(concept.strip(), []).append(one(value))
    missing = [o for o in olds if o not in windows]
    if missing:
        raise ValueError(f"--layer: no window for {missing}; give each --old concept CONCEPT=LAYER entries")
    return windows


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
    force: bool = typer.Option(False, help="add the edit's change even to weights other than the ones it was "
                                           "computed from"),
) -> None:
    """Apply a saved edit to a model and save the edited pipeline (and optional images)."""
    from PIL import Image

    from interp.editing import Edit
    from interp.progress import loading
    from interp.results import as_uint8
    from interventions import edits
    from interventions.evaluate import generate

    if not delta.is_file():
        raise FileNotFoundError(f"{delta} does not exist; write one with `interp edit ... --save {delta}`")
    loaded = edits.apply(_load(model, device), Edit.load(delta), force=force)
    with loading(model):  # the writing bars follow the loading ones
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
    out: Optional[Path] = typer.Option(None, help="folder for the evaluation (result.json)", callback=_writable),
    device: str = typer.Option("cpu", help=DEVICE_HELP),
) -> None:
    """Evaluate a saved edit with the tiny world's judge: efficacy, generalization and specificity
    on held-out prompts, against the unedited model and two controls; print rates with intervals."""
    from interp.editing import Edit
    from interventions.edit_eval import evaluate_edit
    from interventions.evaluate import tiny_judge

    if not delta.is_file():
        raise FileNotFoundError(f"{delta} does not exist; write one with `interp edit ... --save {delta}`")
    if model not in BUNDLED:
        typer.echo("warning: judging with the tiny world's judge, which reads only the tiny world's scenes", err=True)
    result = evaluate_edit(_load(model, device), Edit.load(delta), concept or None, images_per_group=images, seed=seed,
                           controls=controls, control_seed=control_seed, judge=tiny_judge, steps=steps)
    typer.echo(result.table())
    if out is not None:
        typer.echo(f"wrote {result.save(out)}")


class SweepRecipe(str, enum.Enum):
    trace_unet = "trace-unet"
    trace_text = "trace-text"
    locogen = "locogen"
    edit_eval = "edit-eval"


class SweepEngine(str, enum.Enum):
    local = "local"
    ray = "ray"


@app.command()
@user_errors
def sweep(
    recipe: SweepRecipe = typer.Argument(..., help="trace-unet (denoiser sites), trace-text (text-encoder states "
                                         "by token role), locogen (windows of --window cross-attention layers "
                                         "fed each row's target, default 'a painting') or edit-eval (the --edit's "
                                         "evaluation: its own held-out prompts under each condition)"),
    prompts: Optional[str] = typer.Option(None, help="traces, locogen: a CSV/JSONL prompt set (prompt, subject, attribute, target) or a bundled "
                                "one: tiny/style, tiny/object, tiny/color, tiny/facts, tiny/characters, real/objects, "
                                "real/styles, real/colors, real/actions, real/facts"),
    out: Path = typer.Option(..., help="the sweep folder: sweep.json, units/<key>.parquet, failed/, result/"),
    model: str = typer.Option("tiny", help=MODEL_HELP),
    engine: SweepEngine = typer.Option(SweepEngine.local, help="local (in this process) or ray"),
    address: Optional[str] = typer.Option(None, help="ray: join this cluster (host:port, or 'auto' after `ray start` "
                                          "here); default a new local instance"),
    workers: Optional[int] = typer.Option(None, help="ray: actors (default one per GPU slot, else one per CPU)"),
    gpus_per_actor: Optional[float] = typer.Option(None, help="ray: GPUs each actor requests (default 1 where the "
                                                   "cluster has GPUs, else 0); use with --device cuda"),
    resume: bool = typer.Option(False, help="finish the sweep in --out: units on file are skipped"),
    seeds: int = typer.Option(1, min=1, help="seeds 0 .. n-1 per prompt"),
    samples: int = typer.Option(10, min=1, help="noise samples per (prompt, seed)"),
    steps: int = typer.Option(25, min=1, help="denoising steps"),
    site: List[str] = typer.Option([], help="trace-unet: a denoiser site or kind (cross-attn, ...; repeat); default all"),
    layer: List[int] = typer.Option([], help="trace-text: a text-encoder layer index (repeat); default all"),
    protocol: Protocol = typer.Option(Protocol.paper, help="trace-unet: paper or aligned (see `interp trace`)"),
    min_effect: Optional[float] = typer.Option(None, help="drop units whose clean - corrupted score is below this "
                                               "(default: 0.1 for the tiny judge, 0 for CLIP)"),
    threads: int = typer.Option(1, min=1, help="torch threads per worker (the local engine uses as many)"),
    clip: Optional[str] = typer.Option(None, help=CLIP_HELP + "; on the tiny model its judge scores unless given"),
    device: str = typer.Option("cpu", help=DEVICE_HELP),
    window: Optional[int] = typer.Option(None, min=1, help="locogen: m, the consecutive cross-attention layers "
                                         "swapped (required: a sweep keeps m fixed; sweep each m in its own --out)"),
    mode: Wins = typer.Option(Wins.lowest, help="locogen: lowest score wins (style, objects) or highest (facts)"),
    control_seed: int = typer.Option(0, help="locogen: seed of the random control's layers; edit-eval: of the "
                                     "random-layer control's choice"),
    edit: Optional[Path] = typer.Option(None, help="edit-eval: an edit written by `interp edit --save`"),
    images: int = typer.Option(128, min=1, help="edit-eval: images per group and condition (prompts x seeds)"),
) -> None:
    """Run a recipe over a prompt set as units (prompt x seed x noise sample; locogen: prompt x
    seed; edit-eval: the evaluation's prompt x seed x condition), each stored as it finishes;
    --resume finishes a killed sweep. Prints the aggregate and writes <out>/result/."""
    from interventions.sweep_edit_eval import plan_edit_eval
    from interventions.sweep_locogen import plan_locogen
    from interventions.sweep_recipes import aggregate, plan, run_sweep

    if (recipe is SweepRecipe.edit_eval) != (edit is not None) or (recipe is SweepRecipe.edit_eval) == bool(prompts):
        raise ValueError("edit-eval takes --edit (its prompts are the evaluation's own); the other recipes take "
                         "--prompts and no --edit")
    if recipe is SweepRecipe.locogen and window is None:
        raise ValueError("a locogen sweep needs --window M: m is fixed for a sweep (sweep each m in its own --out)")
    traced = recipe in (SweepRecipe.trace_unet, SweepRecipe.trace_text)
    if (not traced and (site or layer)) or (recipe is not SweepRecipe.locogen and window is not None):
        raise ValueError("--window is for locogen, --site and --layer for the traces; drop the ones your recipe "
                         "does not take")
    _writable_sweep(out, resume)
    if recipe is SweepRecipe.edit_eval and model not in BUNDLED:
        typer.echo("warning: judging with the tiny world's judge, which reads only the tiny world's scenes", err=True)
    elif clip is None and model not in (*BUNDLED, "dummy"):
        typer.echo("warning: scoring with the tiny model's CLIP, which knows only its own words; pass --clip "
                   "(e.g. openai/clip-vit-large-patch14) for real models", err=True)
    _device(device)
    if recipe is SweepRecipe.edit_eval:
        planned = plan_edit_eval(model, edit, images_per_group=images, control_seed=control_seed, steps=steps,
                                 device=device, threads=threads)
    elif recipe is SweepRecipe.locogen:
        planned = plan_locogen(model, prompts, window, range(seeds), steps, mode=mode.value, control_seed=control_seed,
                               clip=clip, device=device, threads=threads)
    else:
        planned = plan(recipe.value, model, prompts, range(seeds), samples, steps, sites=site or None,
                       layers=layer or None, protocol=protocol.value, clip=clip, min_effect=min_effect,
                       device=device, threads=threads)
    stats = run_sweep(planned, out, engine.value, address, workers, gpus_per_actor, resume, _progress())
    result = aggregate(out)
    result.save(out / "result")
    typer.echo(result.table())
    typer.echo(f"{stats.computed} units computed, {stats.skipped} on file before, {stats.failed} failed "
               f"(errors in {out}/failed/), {stats.wall_seconds:.1f} s; wrote {out}/result/result.json; draw it "
               f"with `interp report {out}`")


def _writable_sweep(out: Path, resume: bool) -> None:
    """Check a sweep's --out before loading anything."""
    from interp.results import writable_folder

    writable_folder(out, "sweep.json")
    if not resume and (out / "units").is_dir() and any((out / "units").glob("*.parquet")):
        raise ValueError(f"{out} already holds units of a sweep; pass --resume to finish it, or choose a new --out")


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="interp")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
