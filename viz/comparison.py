"""Before / after an edit: the same prompts and seeds generated with each edit applied in turn.

Returns an `EditComparison`, a `ScoreGrid` over the axis "edit" ("before", then one column per
edit), so it saves and loads like every recipe result and the figure redraws from disk.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from interp.editing import Edit
from interp.model import Model
from interp.results import ScoreGrid
from interp.scoring import CLIPScore
from interventions import edits as edit_ops
from interventions.evaluate import generate

Judge = Callable[[torch.Tensor], list[dict]]
BEFORE = "before"


class EditComparison(ScoreGrid):
    """CLIP-scores (against each image's own prompt) per (prompt, seed) unit and edit.

    scores: "clip" (units, edits); with a judge also "hit" (units, edits), 1 where the judge reads
    the watched attribute value (e.g. style "van gogh") in the image. images: "u<i>/<edit>".
    units: prompt, seed and role ("edited" for prompts naming the removed concept, else "neighbour").
    """

    @property
    def edits(self) -> list[str]:
        return self.coords["edit"]

    def image(self, unit: int, edit: str) -> np.ndarray:
        return self.images[f"u{unit}/{edit}"]

    def rate(self, score: str, role: str) -> dict[str, float]:
        """Per edit, the mean of `score` ("clip" or "hit") over the units of `role`; empty if the
        score or the role is absent."""
        rows = [i for i, u in enumerate(self.units) if u["role"] == role]
        if score not in self.scores or not rows:
            return {}
        return dict(zip(self.edits, self.scores[score][rows].mean(axis=0).tolist()))


def compare_edits(
    model: Model,
    edits: Mapping[str, Edit],
    prompts: Mapping[str, str],
    scorer: CLIPScore,
    seed: int = 0,
    steps: int = 25,
    guidance_scale: float = 7.5,
    judge: Judge | None = None,
    watch: tuple[str, str] = ("style", "van gogh"),
) -> EditComparison:
    """Generate `prompts` (prompt -> role) before any edit and with each edit applied (then reverted)."""
    if not prompts:
        raise ValueError("pass at least one prompt")
    texts = list(prompts)
    columns: dict[str, torch.Tensor] = {BEFORE: generate(model, texts, [seed], steps, guidance_scale)}
    for name, edit in edits.items():
        with edit_ops.applied(model, edit):
            columns[name] = generate(model, texts, [seed], steps, guidance_scale)
    clip = np.stack([scorer(images, texts).numpy() for images in columns.values()], axis=1)
    scores = {"clip": clip}
    if judge is not None:
        attribute, value = watch
        scores["hit"] = np.stack([[float(j[attribute] == value) for j in judge(images)] for images in columns.values()],
                                 axis=1)
    images = {f"u{i}/{name}": batch[i] for name, batch in columns.items() for i in range(len(texts))}
    units = [{"prompt": p, "seed": seed, "role": role} for p, role in prompts.items()]
    settings = {"recipe": "compare_edits", "steps": steps, "guidance_scale": guidance_scale, "watch": list(watch),
                "edits": {name: e.metadata for name, e in edits.items()}}
    return EditComparison(("edit",), {"edit": list(columns)}, scores, units, settings, images)
