"""Prompt sets for sweeps: CSV or JSONL rows of prompt, subject (the words a trace corrupts),
attribute (what the subject decides: style, object, color, action, fact) and target (what a
recipe scores against or swaps in, where it needs one). Bundled: the tiny world's attributes
(`tiny/style`, ...) and, for real models, sets per attribute written for this project
(`real/objects`, `real/styles`, `real/colors`, `real/actions`, `real/facts`)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
COLUMNS = ("prompt", "subject", "attribute", "target")


@dataclass(frozen=True)
class PromptRow:
    """One prompt of a set."""

    prompt: str
    subject: str
    attribute: str = ""
    target: str = ""


def bundled() -> list[str]:
    """Names of the bundled sets, e.g. 'tiny/style', 'real/objects'."""
    return sorted(f"{p.parent.name}/{p.stem}" for p in HERE.glob("*/*.csv"))


def _records(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        records = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                records += [json.loads(line)] if line.strip() else []
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} line {number} is not JSON ({error.msg}); write one object per line") from None
        return records
    if path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as file:
            return list(csv.DictReader(file))
    raise ValueError(f"{path} is neither .csv nor .jsonl; write the prompt set as one of them "
                     f"(columns {', '.join(COLUMNS)})")


def load_prompt_set(source: str | Path) -> list[PromptRow]:
    """The rows of a CSV/JSONL file, or of a bundled set by name ('tiny/style'). Every row needs a
    prompt and a subject; attribute and target are optional."""
    path = Path(source)
    if not path.is_file():
        candidate = HERE / f"{source}.csv"
        if not candidate.is_file():
            raise FileNotFoundError(f"prompt set {source} is neither a file nor a bundled set; bundled: "
                                    f"{', '.join(bundled())}")
        path = candidate
    rows = []
    for number, record in enumerate(_records(path), start=1):
        if not isinstance(record, dict):
            raise ValueError(f"{path} row {number} is not an object with {', '.join(COLUMNS)}")
        unknown = set(record) - set(COLUMNS)
        if unknown:
            raise ValueError(f"{path} row {number} has unknown columns {sorted(unknown)}; use {', '.join(COLUMNS)}")
        values = {k: str(record.get(k) or "").strip() for k in COLUMNS}
        missing = [k for k in ("prompt", "subject") if not values[k]]
        if missing:
            raise ValueError(f"{path} row {number} has no {' and no '.join(missing)}; every row needs a prompt and "
                             f"the subject words in it")
        rows.append(PromptRow(**values))
    if not rows:
        raise ValueError(f"{path} holds no prompts; add rows with columns {', '.join(COLUMNS)}")
    return rows
