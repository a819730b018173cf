"""Keep freed memory in the process heap while a run computes on CPU (glibc only).

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh mapping and
unmaps it on free, so each op on a large activation pays page faults for its output. At SD1.5 width
and 512 px a UNet row in a batch of 8 took 5.7-6.3 s, 2.1-2.3 s of it in the kernel; with mmap and
trimming off, 4.2-4.4 s with 0.0-0.6 s in the kernel (one thread pair, `python -m bench.native`).
`retained_heap()` turns both off for its duration, then restores glibc's defaults and gives the
free memory back to the system (`malloc_trim`). Elsewhere (macOS, musl) it does nothing.
The cost is memory: freed blocks stay and fragment, so the peak RSS of a call is about twice what
`interp.budget` estimates (SD1.5 width, 256/512 px, 1-17 runs: estimate/measured 0.50-0.58, against
0.86-1.23 without it). `interp.run(..., retain_heap=True)` opts in; it is off by default.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt's parameter numbers (malloc.h)
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536  # glibc's defaults
KEEP_UP_TO = 2**31 - 1  # bytes of free heap top kept rather than trimmed (mallopt takes an int)


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


@contextmanager
def retained_heap(enabled: bool = True) -> Iterator[None]:
    """Within the block, large allocations come from the heap and freed memory stays there for the
    next op; afterwards glibc's defaults are back and the free memory is returned."""
    libc = _glibc() if enabled else None
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, KEEP_UP_TO)
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
        libc.malloc_trim(0)
