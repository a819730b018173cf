"""Shared fixtures: tiny random-weight pipelines built from configs (never downloaded)."""

import os

import pytest

import interp
from models.testing import dummy_sd_pipeline

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub

PROMPT = "a red circle in the style of van gogh"
STEPS = 3


@pytest.fixture(scope="session")
def model() -> interp.Model:
    return interp.load(dummy_sd_pipeline())
