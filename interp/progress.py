"""When progress bars show: on a terminal by default, anywhere when asked (`interp --progress`).

Bars written to a pipe, a file or a CI log are noise, so the project's own bars (chunks, denoising
steps) follow `default()`. Libraries' loading bars follow `loading()`: never for a local model,
which loads in a fraction of a second, and like the project's own for a hub download.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from models import BUNDLED

_requested = False  # set by `request()`: show bars even off a terminal


def request(show: bool = True) -> None:
    """Show progress bars even when stderr is not a terminal (the CLI's `--progress`)."""
    global _requested
    _requested = show


def default() -> bool:
    """Whether progress bars show where the caller does not say: stderr is a terminal, or requested."""
    return _requested or sys.stderr.isatty()


def is_local(source: object) -> bool:
    """Whether a model source loads from this machine (a folder, "tiny", "dummy"), not the hub."""
    return not isinstance(source, (str, Path)) or source in (*BUNDLED, "dummy") or Path(source).exists()


@contextmanager
def without_library_bars(quiet: bool = True) -> Iterator[None]:
    """diffusers' and transformers' (with huggingface_hub's) progress bars off inside the block when
    `quiet`, restored after it; otherwise left as the user set them."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = [diffusers_logging, transformers_logging]
    were_on = [library.is_progress_bar_enabled() for library in libraries]
    if quiet:
        for library in libraries:
            library.disable_progress_bar()
    try:
        yield
    finally:
        for library, was_on in zip(libraries, were_on):
            if quiet and was_on:
                library.enable_progress_bar()


def loading(source: object) -> AbstractContextManager[None]:
    """Library bars while loading `source`: off for a local model, as `default()` says for a hub id."""
    return without_library_bars(is_local(source) or not default())
