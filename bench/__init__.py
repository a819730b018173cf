"""Benchmarks: ratios measured in one run (see each module's docstring)."""

import interp.quiet  # noqa: F401  (first: benchmarks importing diffusers directly start as quietly as interp)
