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
    return not isinstance(source, (str, Path)) or source in ("tiny", "dummy") or Path(source).exists()


@contextmanager
def library_bars(show: bool) -> Iterator[None]:
    """diffusers' and transformers' (with huggingface_hub's) progress bars on or off inside the block,
    restored after it."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    switches = [
        (diffusers_logging.is_progress_bar_enabled(), diffusers_logging),
        (transformers_logging.is_progress_bar_enabled(), transformers_logging),
    ]
    for _, library in switches:
        library.enable_progress_bar() if show else library.disable_progress_bar()
    try:
        yield
    finally:
        for was_on, library in switches:
            library.enable_progress_bar() if was_on else library.disable_progress_bar()


def loading(source: object) -> AbstractContextManager[None]:
    """Library bars while loading `source`: off for a local model, `default()` for a hub id."""
    return library_bars(not is_local(source) and default())
