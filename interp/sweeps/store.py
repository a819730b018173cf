"""A sweep's folder: `sweep.json` (what is swept), `units/<key>.parquet` (one finished unit each),
`failed/<key>.parquet` (a unit's last error). Every file appears whole or not at all (written
beside, then renamed), and a unit's file is named by its key, so a unit can never be on file twice."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from interp.errors import ResultFormatError
from interp.results import writable_folder
from interp.sweeps.task import Outcome

FORMAT = "interp.sweep/1"
MANIFEST = "sweep.json"


def _atomic_write(path: Path, write) -> None:
    """Call `write(temporary)` on a hidden file beside `path`, then rename it to `path`."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _row(outcome: Outcome, attempts: int) -> dict[str, Any]:
    unit = outcome.unit
    row = {"key": unit.key, "index": unit.index, "prompt": unit.prompt, "subject": unit.subject,
           "attribute": unit.attribute, "seed": unit.seed, "sample": unit.sample, "attempts": attempts,
           "seconds": outcome.seconds, "worker": outcome.worker}
    if outcome.ok:
        return {**row, **{f"extra_{k}": v for k, v in unit.extra.items()}, **outcome.payload}
    return {**row, "error": outcome.error}


class SweepStore:
    """The results folder of one sweep (see the module docstring)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.units = self.folder / "units"
        self.failed = self.folder / "failed"

    # the manifest ------------------------------------------------------------------------------
    def open(self, manifest: dict[str, Any], resume: bool) -> None:
        """Create the folder for `manifest`, or (with `resume`) check that it holds the same sweep.
        Without `resume` a folder with finished units is refused, so nothing is silently mixed."""
        writable_folder(self.folder, MANIFEST)
        manifest = {"format": FORMAT, **json.loads(json.dumps(manifest))}
        existing = self.manifest() if (self.folder / MANIFEST).is_file() else None
        if existing is not None and self.finished_keys() and not resume:
            raise ResultFormatError(f"{self.folder} already holds {len(self.finished_keys())} finished units of a "
                                    f"sweep; pass --resume to finish it, or choose a new --out folder")
        if existing is not None and resume:
            changed = [k for k in ("recipe", "arguments", "model_fingerprint") if existing.get(k) != manifest.get(k)]
            if changed:
                raise ResultFormatError(f"{self.folder} holds another sweep ({', '.join(changed)} differ); resume it "
                                        f"with its own settings, or choose a new --out folder")
        for folder in (self.units, self.failed):
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.glob(".*.tmp"):  # left by a killed writer: never a finished unit
                stale.unlink(missing_ok=True)
        _atomic_write(self.folder / MANIFEST, lambda p: p.write_text(json.dumps(manifest, indent=1)))

    def manifest(self) -> dict[str, Any]:
        """The sweep's `sweep.json`, or `ResultFormatError` if the folder holds none."""
        path = self.folder / MANIFEST
        if not path.is_file():
            raise ResultFormatError(f"{self.folder} holds no sweep ({MANIFEST} is missing); pass the --out folder "
                                    f"of `interp sweep`")
        document = json.loads(path.read_text())
        if document.get("format") != FORMAT:
            raise ResultFormatError(f"{path} is not a sweep manifest (format {document.get('format')!r})")
        return document

    # units ---------------------------------------------------------------------------------------
    def finished_keys(self) -> set[str]:
        """Keys of the units on file (from file names: no file is read)."""
        return {p.stem for p in self.units.glob("*.parquet")} if self.units.is_dir() else set()

    def write(self, outcome: Outcome, attempts: int) -> None:
        """Record a finished unit (and forget an earlier failure of it), or a failed one."""
        table = pa.Table.from_pylist([_row(outcome, attempts)])
        folder = self.units if outcome.ok else self.failed
        _atomic_write(folder / f"{outcome.unit.key}.parquet", lambda p: pq.write_table(table, p))
        if outcome.ok:
            (self.failed / f"{outcome.unit.key}.parquet").unlink(missing_ok=True)

    def rows(self, failed: bool = False) -> list[dict[str, Any]]:
        """Every unit row on file (finished, or with `failed` the failures), in sweep order."""
        folder = self.failed if failed else self.units
        files = sorted(folder.glob("*.parquet")) if folder.is_dir() else []
        rows = [row for path in files for row in pq.read_table(path).to_pylist()]
        return sorted(rows, key=lambda row: row["index"])
