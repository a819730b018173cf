"""Every command starts clean: run as a user would on the bundled model, with stdout and stderr
redirected to files, it prints only its own output, and nothing on stderr but the real warnings
in ALLOWED (no library warnings, no loading or progress bars off a terminal)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
from typer.testing import CliRunner

from interp import progress
from interp.cli import app
from tests.test_cli import clip_folder, demo_report  # noqa: F401 - `report` redraws the dummy demo's data

PROMPT = "a red circle in the style of van gogh"
SMALL_DEMO = ("--steps", "1", "--prompts", "1", "--seeds", "1", "--samples", "1", "--images", "2")

# Real warnings a command may print, one stderr line each, with why each stays. None is expected
# from these runs on the bundled model; the CLI prints this one for a real model scored by the
# tiny CLIP, whose scores would otherwise mislead without a word.
ALLOWED = {
    r"warning: scoring with the tiny model's CLIP, .*": "a real model scored by a CLIP that cannot read it",
}
NOISE = re.compile(r"it/s|\d+%\||[Ww]arning|Loading|torchvision|accelerate")  # bars and library messages

# name: (arguments, what its stdout holds: a pattern each line matches, in order, the last repeating)
COMMANDS = {
    "sites": (["sites", "--kind", "cross-attn"], [r"\S+-cross-attn\S* +cross-attn +unet\.\S+.*"]),
    "trace": (["trace", "--prompt", PROMPT, "--subject", "van gogh", "--steps", "1", "--samples", "1"],
              [r"score .*", r".*"]),
    "locogen": (["locogen", "--prompt", PROMPT, "--window", "2", "--steps", "1"], [r"LoCoGen scored by .*", r".*"]),
    "edit": (["edit", "locoedit", "--old", "van gogh", "--new", "painting", "--layer", "0", "--layer", "1",
              "--save", "{tmp}/edit.safetensors"], [r"wrote \S+edit\.safetensors: locoedit changes .*"]),
    "apply": (["apply", "{tmp}/edit.safetensors", "--out", "{tmp}/edited", "--prompt", PROMPT, "--steps", "1"],
              [r"wrote the edited pipeline to \S+/", r"\S+/00\.png: " + PROMPT]),
    "report": (["report", "{demo_data}", "--out", "{tmp}/redrawn.html"], [r"wrote \S+redrawn\.html"]),
    "demo": (["demo", *SMALL_DEMO, "--out", "{tmp}/demo/report.html"],
             [r"wrote \S+report\.html \(data and edit deltas in \S+\); the demo took \d+ s"]),
}
NEEDS = {"apply": "edit"}  # a command whose input another writes


@pytest.fixture(scope="module")
def ran(tmp_path_factory) -> Callable[..., tuple[str, str, int]]:
    """Runs a command once per module, after what it needs: (name, demo_data=...) -> (stdout, stderr, status)."""
    tmp = tmp_path_factory.mktemp("quiet")
    done: dict[str, tuple[str, str, int]] = {}

    def run(name: str, demo_data: Path | str = "") -> tuple[str, str, int]:
        if name in NEEDS:
            run(NEEDS[name])
        if name not in done:
            args = [arg.format(tmp=tmp, demo_data=demo_data) for arg in COMMANDS[name][0]]
            done[name] = _run(args, tmp / name)
        return done[name]

    return run


def _run(args: list[str], files: Path) -> tuple[str, str, int]:
    """`interp <args>` in a subprocess, stdout and stderr redirected to files under `files`."""
    files.mkdir()
    with open(files / "stdout", "w") as out, open(files / "stderr", "w") as err:
        code = subprocess.run([sys.executable, "-m", "interp.cli", *args], stdout=out, stderr=err,
                              stdin=subprocess.DEVNULL, timeout=1800).returncode
    return (files / "stdout").read_text(), (files / "stderr").read_text(), code


def unexpected_stderr(stderr: str) -> list[str]:
    """stderr's lines that are not an allowed real warning."""
    return [line for line in stderr.splitlines() if not any(re.fullmatch(p, line) for p in ALLOWED)]


def stdout_problems(stdout: str, patterns: list[str]) -> list[str]:
    """stdout's lines that are not the command's own output (line i matches pattern i, the last repeats)."""
    lines = stdout.splitlines()
    expected = patterns + [patterns[-1]] * max(0, len(lines) - len(patterns))
    missing = [f"<missing: {p}>" for p in expected[len(lines) :]]
    return missing + [line for line, p in zip(lines, expected) if not re.fullmatch(p, line) or NOISE.search(line)]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "demo" else n for n in COMMANDS])
def test_command_prints_only_its_own_output(ran, request, name):
    # `report` redraws the data of the dummy model's small demo (shared with test_cli, test_report)
    demo_data = request.getfixturevalue("demo_report").parent / "report_data" if name == "report" else ""
    stdout, stderr, code = ran(name, demo_data)
    assert code == 0, stderr
    assert unexpected_stderr(stderr) == [], stderr
    assert stdout_problems(stdout, COMMANDS[name][1]) == [], stdout


def test_the_checks_catch_library_noise():
    bar = "Loading pipeline components...: 100%|##########| 5/5 [00:00<00:00, 11.31it/s]"
    assert unexpected_stderr(f"{bar}\nwarning: scoring with the tiny model's CLIP, which knows ...") == [bar]
    assert stdout_problems("wrote x.html\n" + bar, [r"wrote \S+"]) == [bar]
    assert stdout_problems("", [r"wrote \S+"]) == [r"<missing: wrote \S+>"]


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_bars_show_on_a_terminal_or_when_asked(monkeypatch):
    monkeypatch.setattr(progress, "_requested", False)
    monkeypatch.setattr(sys, "stderr", _Stream(tty=True))
    assert progress.default()
    monkeypatch.setattr(sys, "stderr", _Stream(tty=False))  # a pipe, a file, a CI log
    assert not progress.default()
    assert CliRunner().invoke(app, ["--progress", "sites", "--model", "dummy"]).exit_code == 0
    assert progress.default()


def test_library_loading_bars_are_off_for_local_models_and_restored(tmp_path):
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    assert progress.is_local("tiny") and progress.is_local(tmp_path) and not progress.is_local("org/model")
    before = diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    with progress.loading(tmp_path):
        assert not diffusers_logging.is_progress_bar_enabled() and not transformers_logging.is_progress_bar_enabled()
    assert (diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()) == before
