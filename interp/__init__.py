"""Mechanistic interpretability for text-to-image diffusion models: the core.

`load` a pipeline, list its `sites`, declare an intervention `Graph` of `Run`s with operations
(`Noise`, `Restore`, `Swap`, `Set`, `Add`, `Zero`, `Scale`, `Capture`) and `run` it.
"""

import interp.quiet  # noqa: F401  (first: it keeps diffusers' imports from warning)
from interp.errors import (
    GraphValidationError, InterpError, MissingRunError, SubjectNotFoundError, TokenRangeError,
    UnknownSiteError, UnsupportedModelError,
)
from interp.graph import Add, Capture, Graph, Noise, Restore, Run, Scale, Set, Swap, Zero
from interp.model import Model, SubjectSpan, load
from interp.runner import GraphResult, run
from interp.sites import Site

__all__ = [
    "Add", "Capture", "Graph", "GraphResult", "GraphValidationError", "InterpError", "MissingRunError", "Model",
    "Noise", "Restore", "Run", "Scale", "Set", "Site", "SubjectNotFoundError", "SubjectSpan", "Swap",
    "TokenRangeError", "UnknownSiteError", "UnsupportedModelError", "Zero", "load", "run",
]
