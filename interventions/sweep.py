"""Shared by the recipes: run an intervention graph and CLIP-score every image against its text."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from interp.graph import Graph
from interp.model import Model
from interp.runner import run
from interp.scoring import CLIPScore


def default_scorer(scorer: CLIPScore | None) -> CLIPScore:
    """`scorer`, or the bundled tiny model's CLIP (the papers' CLIP-score, at tiny scale)."""
    return scorer if scorer is not None else CLIPScore.from_pretrained()


def run_and_score(
    model: Model,
    graph: Graph,
    texts: Mapping[str, str],
    scorer: CLIPScore,
    chunk_size: int | None = None,
    progress: bool = True,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Generate every run of `graph` in batches; score image `name` against `texts[name]`.

    Returns (scores, images): run name -> CLIP-score and -> (3, H, W) float image.
    """
    images = run(model, graph, chunk_size=chunk_size, progress=progress).images
    names = list(graph.runs)
    values = scorer([images[n] for n in names], [texts[n] for n in names]).tolist()
    return dict(zip(names, values)), {n: images[n] for n in names}
