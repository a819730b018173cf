"""Result grids: per-unit scores over named axes, with images and settings, saved as JSON + PNG.

A *unit* is one (prompt, subject, seed) repetition of an experiment; every score array has the
units as its first axis, so means and spreads over prompts x seeds come from one place. Recipes
subclass `ScoreGrid` to add their own readings (indirect effects, best window, ...); saving and
loading are shared, so a sweep can stop and resume from disk.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image

from interp.errors import ResultFormatError
from interp.stats import mean_interval

FORMAT = "interp.score-grid/1"
G = TypeVar("G", bound="ScoreGrid")


def as_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """An image as (H, W, 3) uint8, from a (3, H, W) float tensor in [0, 1] or a uint8 array."""
    if isinstance(image, np.ndarray) and image.dtype == np.uint8:
        return image
    pixels = (torch.as_tensor(image).detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return pixels.permute(1, 2, 0).cpu().numpy()


def writable_folder(folder: str | Path, marker: str = "result.json") -> Path:
    """`folder` as an absolute path that output can be written to (replacing an existing folder only
    if it holds `marker`, i.e. is an earlier output), or `ResultFormatError` naming what is in the
    way. Call it before computing, so a bad path costs nothing."""
    path = Path(folder).resolve()
    if path == Path.cwd() or path in Path.cwd().parents:
        raise ResultFormatError(f"{folder} is the current folder or above it; write output into a new folder")
    if path.is_dir() and any(path.iterdir()) and not (path / marker).is_file():
        raise ResultFormatError(f"{folder} exists and is not an earlier output (it has no {marker}); choose a new "
                                f"folder, so nothing of yours is replaced")
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            raise ResultFormatError(f"{part} is a file, so {folder} cannot be a folder; choose another path")
        if part.exists():
            if not os.access(part, os.W_OK | os.X_OK):
                raise ResultFormatError(f"{part} is not writable; choose another path for {folder}")
            break
    return path


@contextmanager
def atomic_folder(folder: str | Path, marker: str = "result.json") -> Iterator[Path]:
    """Yield a fresh temporary folder next to `folder`; on success it replaces `folder` by renames, on
    failure it is removed. Readers see the old folder, no folder (between the two renames), or the
    new one: never a half-written or mixed folder. An existing `folder` must be an earlier output
    (hold `marker`; `writable_folder`)."""
    target = writable_folder(folder, marker)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    old = target.with_name(f"{temporary.name}.old")
    if target.exists():
        target.rename(old)
    temporary.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def unit_mean(values: np.ndarray) -> np.ndarray:
    """Mean over the first (unit) axis, skipping NaN; an all-NaN cell stays NaN without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=0)


def unit_std(values: np.ndarray) -> np.ndarray:
    """Population std over the first (unit) axis, skipping NaN (0 for one unit)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanstd(values, axis=0)


def _plain(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples become lists), so saved and loaded compare equal."""
    return json.loads(json.dumps(value))


@dataclass(eq=False)
class ScoreGrid:
    """Scores of units (prompt x seed) over named axes.

    `coords[axis]` labels each axis; `scores[name]` has shape (units,) for per-unit baselines or
    (units, *axis lengths) for the grid; `images` maps run names to (H, W, 3) uint8 images.
    """

    axes: tuple[str, ...]
    coords: dict[str, list]
    scores: dict[str, np.ndarray]
    units: list[dict]
    settings: dict = field(default_factory=dict)
    images: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.axes = tuple(self.axes)
        self.coords = _plain(self.coords)
        self.units = _plain(self.units)
        self.settings = _plain(self.settings)
        self.scores = {k: np.asarray(v, dtype=np.float64) for k, v in self.scores.items()}
        self.images = {k: as_uint8(v) for k, v in self.images.items()}
        shape = self.shape
        for name, array in self.scores.items():
            if array.shape not in ((len(self.units),), (len(self.units), *shape)):
                raise ResultFormatError(
                    f"scores[{name!r}] has shape {array.shape}; expected ({len(self.units)},) or "
                    f"({len(self.units)}, {', '.join(map(str, shape))}) for {len(self.units)} units "
                    f"and axes {self.axes}"
                )

    @property
    def shape(self) -> tuple[int, ...]:
        """The grid's shape, one length per axis."""
        return tuple(len(self.coords[axis]) for axis in self.axes)

    def mean(self, name: str) -> np.ndarray:
        """Mean of a score over units (NaN cells, where a unit has no value, are skipped)."""
        return unit_mean(self.scores[name])

    def std(self, name: str) -> np.ndarray:
        """Spread of a score over units (population std; 0 for a single unit)."""
        return unit_std(self.scores[name])

    def interval(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(mean, low, high, n) of a score over units: a Student-t 95% interval per cell."""
        return mean_interval(self.scores[name])

    def cells(self) -> list[tuple]:
        """Every grid cell's labels, in row-major order."""
        return [tuple(self.coords[a][i] for a, i in zip(self.axes, index)) for index in np.ndindex(*self.shape)]

    # disk -----------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> Path:
        """Write `result.json` and `images/NNNNN.png` as `folder`, atomically (`atomic_folder`): a
        folder there before is replaced whole."""
        with atomic_folder(folder) as temporary:
            self._write(temporary)
        return Path(folder)

    def _write(self, folder: Path) -> None:
        (folder / "images").mkdir()
        names = list(self.images)
        for index, name in enumerate(names):
            Image.fromarray(self.images[name]).save(folder / "images" / f"{index:05d}.png")
        document = {
            "format": FORMAT,
            "type": type(self).__name__,
            "axes": list(self.axes),
            "coords": self.coords,
            "scores": {k: v.tolist() for k, v in self.scores.items()},
            "units": self.units,
            "settings": self.settings,
            "images": names,
        }
        (folder / "result.json").write_text(json.dumps(document, indent=1))

    @classmethod
    def load(cls: type[G], folder: str | Path) -> G:
        """Read a result written by `save`; it compares equal to the one saved."""
        path = Path(folder) / "result.json"
        if not path.is_file():
            raise ResultFormatError(f"{path} does not exist; pass the folder given to result.save()")
        document = json.loads(path.read_text())
        if document.get("format") != FORMAT:
            raise ResultFormatError(
                f"{path} is not a saved result (format {document.get('format')!r}, expected {FORMAT!r})"
            )
        if document["type"] != cls.__name__:
            raise ResultFormatError(f"{path} holds a {document['type']}; load it with {document['type']}.load")
        images = {
            name: np.asarray(Image.open(Path(folder) / "images" / f"{index:05d}.png").convert("RGB"))
            for index, name in enumerate(document["images"])
        }
        return cls(tuple(document["axes"]), document["coords"], document["scores"], document["units"],
                   document["settings"], images)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return (
            (self.axes, self.coords, self.units, self.settings)
            == (other.axes, other.coords, other.units, other.settings)
            and self.scores.keys() == other.scores.keys()
            and all(np.array_equal(v, other.scores[k], equal_nan=True) for k, v in self.scores.items())
            and list(self.images) == list(other.images)
            and all(np.array_equal(v, other.images[k]) for k, v in self.images.items())
        )
