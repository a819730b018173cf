"""The README's Python examples run as written, top to bottom in one namespace, on the bundled tiny
model. Executing them is marked slow (about a minute): CI runs it beside the notebooks."""

import re
from pathlib import Path

import pytest

from tests.conftest import tiny_built

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    """The ```python fenced blocks of a Markdown text, in order."""
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_readme_shows_python_examples():
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 3 and all(block.strip() for block in blocks)


@pytest.mark.slow
@tiny_built
def test_the_readme_python_examples_run():
    namespace: dict = {}
    for block in python_blocks(README.read_text()):
        exec(compile(block, str(README), "exec"), namespace)
    assert set(namespace["images"]) == {"clean", "corrupted", "restored"}
    assert namespace["maps"].heatmaps["circle"].shape == (2, 32, 32)
