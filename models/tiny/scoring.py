"""The tiny model's ground-truth scorer: the judge's probability of what the prompt names.

A `Scorer` (see `interp.scoring`) like CLIP-score, but it reads the attribute back instead of
comparing embeddings: for 'a green star in the style of monet' and attribute "object" the score is
the judge's P(object = star). CLIP-score barely registers a corrupted attribute on this model
(0.834 -> 0.806 where the judge reads P(star) 1.0 -> 0.0); the judge is the tiny world's truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from interp.errors import ScoringInputError
from models.tiny import JUDGE_PATH, WEIGHTS_DIR
from models.tiny.judge import load_judge, probabilities
from models.tiny.scenes import ATTRIBUTES, VALUES, parse_caption


class JudgeScore:
    """P(the attribute value each text names), averaged over `attributes` (default: every
    attribute the text names). Texts are captions of the tiny world ('two red squares', 'wumbo in
    the style of monet'); images anything the judge reads (uint8 arrays, [0, 1] float tensors).

    `min_effect`: a causal-trace unit whose corruption lowers this probability by less than 0.1
    has nothing to trace (the corrupted image still shows the attribute) and is dropped."""

    min_effect = 0.1

    def __init__(self, attributes: str | Sequence[str] | None = None, judge_path: Path = JUDGE_PATH) -> None:
        self.attributes = (attributes,) if isinstance(attributes, str) else tuple(attributes or ())
        unknown = [a for a in self.attributes if a not in ATTRIBUTES]
        if unknown:
            raise ScoringInputError(f"unknown attributes {unknown}; the judge reads {list(ATTRIBUTES)}")
        self.judge_path = judge_path
        self.name = f"judge P({'+'.join(self.attributes) or 'prompt'})"

    def __repr__(self) -> str:
        return f"JudgeScore({self.name})"

    def __call__(self, images, texts: Sequence[str]) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        probs = probabilities(load_judge(self.judge_path), images)
        count = len(next(iter(probs.values())))
        if count != len(texts):
            raise ScoringInputError(f"got {count} images but {len(texts)} texts; pair them one to one")
        scores = []
        for i, text in enumerate(texts):
            try:
                named = parse_caption(text)
            except ValueError as exc:
                raise ScoringInputError(f"the judge scores captions of the tiny world: {exc}") from None
            wanted = self.attributes or tuple(a for a in ATTRIBUTES if a in named)
            missing = [a for a in wanted if a not in named]
            if missing:
                raise ScoringInputError(f"{text!r} does not name its {', '.join(missing)}; score another attribute")
            scores.append(torch.stack([probs[a][i, VALUES[a].index(named[a])] for a in wanted]).mean())
        return torch.stack(scores).float()


def is_bundled(pipe: object) -> bool:
    """Whether `pipe` is the bundled tiny pipeline (loaded from its shipped folder)."""
    source = getattr(getattr(pipe, "config", None), "_name_or_path", None)
    return bool(source) and Path(source).resolve() == WEIGHTS_DIR.resolve()
