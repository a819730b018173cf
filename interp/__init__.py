"""Mechanistic interpretability for text-to-image diffusion models: the core.

`load` a pipeline, list its `sites`, declare an intervention `Graph` and `run` it.
"""

from interp.errors import (
    GraphValidationError, InterpError, MissingRunError, SubjectNotFoundError, TokenRangeError,
    UnknownSiteError, UnsupportedModelError,
)
from interp.model import Model, SubjectSpan, load
from interp.sites import Site

__all__ = [
    "GraphValidationError", "InterpError", "MissingRunError", "Model", "Site", "SubjectNotFoundError",
    "SubjectSpan", "TokenRangeError", "UnknownSiteError", "UnsupportedModelError", "load",
]
