"""Shared by the recipes: pick a scorer, run an intervention graph and score every image against its text."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from interp.graph import Graph
from interp.model import Model
from interp.runner import run
from interp.scoring import CLIPScore, Scorer


def default_scorer(model: Model, scorer: Scorer | None = None, attributes: str | Sequence[str] | None = None) -> Scorer:
    """`scorer` if given; on the bundled tiny model its judge's P(`attributes` the prompt names)
    (ground truth); on any other model CLIP-score (the bundled tiny CLIP: pass a real one, e.g.
    `CLIPScore.from_pretrained("openai/clip-vit-large-patch14")`, for a real model)."""
    if scorer is not None:
        return scorer
    from models.tiny.scoring import JudgeScore, is_bundled

    if is_bundled(model.pipe):
        return JudgeScore(attributes)
    return CLIPScore.from_pretrained()


def subject_attributes(subjects: Sequence[str]) -> tuple[str, ...] | None:
    """The tiny world's attributes that all `subjects` decide ('monet' -> style), for judge
    scoring; None when they differ or are not words of that world (then every attribute a prompt
    names is scored)."""
    from models.tiny.scenes import attributes_named_by

    found = {attributes_named_by(s) for s in subjects}
    return found.pop() if len(found) == 1 else None


def run_and_score(
    model: Model,
    graph: Graph,
    texts: Mapping[str, str],
    scorer: Scorer,
    chunk_size: int | None = None,
    progress: bool = True,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Generate every run of `graph` in batches; score image `name` against `texts[name]`.

    Returns (scores, images): run name -> score and -> (3, H, W) float image.
    """
    images = run(model, graph, chunk_size=chunk_size, progress=progress).images
    names = list(graph.runs)
    values = scorer([images[n] for n in names], [texts[n] for n in names]).tolist()
    return dict(zip(names, values)), {n: images[n] for n in names}
