"""The `interp` command. User mistakes print one line on stderr and exit with status 2."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Callable, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

MODEL_HELP = "'tiny' (bundled), 'dummy' (random, config-built), a folder saved with save_pretrained, or a hub id"


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


def _load(model: str):
    import interp

    if model == "dummy":
        from models.testing import dummy_sd_pipeline

        return interp.load(dummy_sd_pipeline())
    return interp.load(model)


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
    prompt: str = typer.Option("a red circle in the style of van gogh", help="the prompt to trace"),
    subject: str = typer.Option("van gogh", help="the words to corrupt"),
    steps: int = typer.Option(10, help="denoising steps"),
    out: Path = typer.Option(Path("out"), help="folder for the images"),
) -> None:
    """Corrupt the subject, restore each UNet site in one batched run, save the images."""
    from interp.graph import Graph, Noise, Restore, Run
    from interp.runner import run

    loaded = _load(model)
    span = loaded.locate(prompt, subject)
    typer.echo(f"{loaded}: subject {subject!r} at tokens {list(span.positions)}")
    noise = Noise("text-embed", tokens=span.positions, std=3.0)
    graph = Graph([Run("clean", prompt, steps=steps), Run("corrupted", prompt, steps=steps, ops=[noise])])
    denoiser = [s for s in loaded.sites() if not s.is_text]
    for site in denoiser:
        graph.add(Run(site.name, prompt, steps=steps, ops=[noise, Restore(site.name, source="clean")]))
    result = run(loaded, graph)
    out.mkdir(parents=True, exist_ok=True)
    clean = result.images["clean"]
    for name in graph.runs:
        result.pil(name).save(out / f"{name}.png")
        distance = (result.images[name] - clean).abs().mean().item()
        typer.echo(f"{name:24} mean |image - clean| = {distance:.4f}")
    typer.echo(f"wrote {len(graph)} images to {out}/")


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="interp")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
