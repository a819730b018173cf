"""Shared fixtures: tiny random-weight pipelines built from configs (never downloaded)."""

import os

import pytest

import interp
from models.testing import dummy_sd_pipeline
from models.tiny import JUDGE_PATH, WEIGHTS_DIR

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub

PROMPT = "a red circle in the style of van gogh"
STEPS = 3

tiny_built = pytest.mark.skipif(not (WEIGHTS_DIR / "model_index.json").is_file() or not JUDGE_PATH.is_file(),
                                reason="the bundled tiny model is not built (python -m models.tiny.train)")


@pytest.fixture(scope="session")
def model() -> interp.Model:
    return interp.load(dummy_sd_pipeline())
