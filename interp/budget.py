"""How many runs fit in one batched pipeline call under a memory budget.

The estimate replays one denoiser forward and one VAE decode on meta-device twins (no compute, no
memory), at the run's latent size and a batch of one, and follows the bytes of live tensors: a
storage counts from the op that makes it until the last tensor viewing it is gone. Each moment of
the pass is a constant plus bytes per batch row, so one pass gives the peak for any batch: the
denoiser's rows are 2 per run with classifier-free guidance, the decode's one image per run (or one
in all when the VAE decodes slice by slice).

What the kernels in use hold, as measured on CPU (`bench/memory.py`):
- `F.scaled_dot_product_attention` is fused (flash on CPU, flash / memory-efficient on CUDA) and
  holds only its output, never the (tokens x tokens) scores; an attention processor that forms
  scores itself (bmm + softmax) is counted as written, since its ops run on the twin;
- a CPU convolution (oneDNN) also holds a copy of its weight, reordered into a blocked layout for
  the call: the largest weight's copy is the `fixed` part of the estimate;
- glibc keeps freed blocks under its mmap threshold (32 MiB) resident for reuse: a CPU pass holds
  up to `HEAP` times its live bytes (at most `SLACK` more), and part of the denoiser's heap (at
  most `KEPT`) is still resident while the VAE decodes. Larger blocks are mmapped and returned.

Computed once per (denoiser, size, guidance, dtype, device, decode mode) and cached. Not counted:
the text encoders (77 tokens a row) and the captures a graph keeps. Pass `chunk_size` to the runner
to override the plan.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from interp.model import Model
from interp.sites import meta_twin


Lines = tuple[tuple[int, int], ...]  # (constant bytes, bytes per batch row) of each moment of a forward
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest mmap threshold: smaller blocks come from its heap
HEAP = 1.5  # resident bytes per live byte of heap blocks in a CPU pass (freed blocks stay; bench/memory.py)
SLACK = 3 * MMAP_THRESHOLD  # the most that fragmentation holds above the live bytes in one pass
KEPT = 8 * MMAP_THRESHOLD  # the most of a denoiser pass's heap still resident while the VAE decodes


@dataclass(frozen=True)
class Estimate:
    """Bytes a pipeline call needs beyond the weights, as a function of the runs it batches.

    A pass's memory at any moment is a constant (a kernel's copy of its weight) plus bytes that
    grow with the batch (activations); `denoise` and `decode` keep the moments that can be the
    peak, as (constant, per batch row) pairs. A run is `rows` denoiser rows (2 with guidance) and
    one decoded image; `sliced_decode`: the VAE decodes one image at a time (`decode` is () without
    a VAE). `cpu`: glibc's heap adds to the live bytes: freed blocks under its mmap threshold stay
    resident for reuse, so a pass holds up to `HEAP` times its live bytes, at most `SLACK` more, and
    up to `KEPT` of the denoiser's heap is still there while the VAE decodes (`bench/memory.py`).
    """

    denoise: Lines
    rows: int
    decode: Lines = ()
    sliced_decode: bool = False
    cpu: bool = False

    @property
    def per_run(self) -> int:
        """What each run adds to the peak of a call: its activations at the worst moment."""
        decode = 0 if self.sliced_decode else max((c for _, c in self.decode), default=0)
        return max(self.rows * max(c for _, c in self.denoise), decode)

    @property
    def fixed(self) -> int:
        """The largest constant at any moment (a kernel's copy of the largest weight)."""
        return max(constant for constant, _ in (*self.denoise, *self.decode))

    def peak(self, runs: int) -> int:
        """Estimated peak bytes above the weights of a call batching `runs` runs."""
        return max(self.denoise_peak(runs), self.decode_peak(runs))

    def denoise_peak(self, runs: int) -> int:
        """The estimated peak while denoising `runs` runs."""
        return _peak(self.denoise, runs * self.rows, self.cpu)

    def decode_peak(self, runs: int) -> int:
        """The estimated peak while decoding `runs` images (0 without a VAE)."""
        if not self.decode:
            return 0
        kept = min(runs * self.rows * max(c for _, c in self.denoise), KEPT) if self.cpu else 0
        return kept + _peak(self.decode, 1 if self.sliced_decode else runs, self.cpu)

    def runs_within(self, budget_bytes: float) -> int:
        """The most runs whose per-run bytes fit `budget_bytes` (at least 1); the constants (kernel
        copies of weights, the allocator's slack, one image of a sliced decode) come on top, like
        the weights."""
        return max(1, int(budget_bytes // self.per_run))


def _peak(lines: Lines, batch: int, cpu: bool) -> int:
    """The peak of a pass over `batch` rows, with glibc's slack on CPU."""
    live = batch * max(c for _, c in lines)
    slack = min(int((HEAP - 1) * live), SLACK) if cpu else 0
    return max(a + batch * c for a, c in lines) + slack


# denoiser module -> {(height, width, cfg, dtype, device, sliced decode, processors): Estimate}
_CACHE: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple, Estimate]] = weakref.WeakKeyDictionary()


def estimate(model: Model, height: int, width: int, cfg: bool) -> Estimate:
    """The memory estimate for runs of `height` x `width` pixels, with or without guidance; cached."""
    denoiser = model.denoiser
    vae = getattr(model.pipe, "vae", None)
    sliced = bool(getattr(vae, "use_slicing", False))
    device = next(denoiser.parameters()).device.type
    key = (height, width, cfg, denoiser.dtype, device, sliced, _processor_kinds(denoiser))
    cached = _CACHE.setdefault(denoiser, {})
    if key not in cached:
        cached[key] = _estimate(model, height, width, cfg, vae, sliced)
    return cached[key]


def bytes_per_run(model: Model, height: int, width: int, cfg: bool) -> int:
    """Estimated bytes that one more run adds to a batch (`Estimate.per_run`)."""
    return estimate(model, height, width, cfg).per_run


CACHE_CAP_GB = 16.0  # the default cache never takes more host memory than this
# On CPU a denoiser row costs more in a large batch; `interp.runner.plan` keeps chunks to this many
# bytes of estimated activations where the cache spares the sources' recomputation
CPU_CHUNK_GB = 1.0


def default_cache_gb() -> float:
    """Host memory for restore sources kept across chunks (`interp.runner.run`'s cache_budget_gb
    default): half of this machine's physical memory, at most `CACHE_CAP_GB` (a 70-site SD1.5 trace
    at 512 px keeps 8.7 GiB of clean activations)."""
    try:
        physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): keep the cap
        return CACHE_CAP_GB
    return min(CACHE_CAP_GB, physical / 2 / 2**30)


def runs_per_chunk(model: Model, height: int, width: int, cfg: bool, budget_bytes: float) -> int:
    """The largest number of runs whose estimated activations fit `budget_bytes` (at least 1)."""
    return estimate(model, height, width, cfg).runs_within(budget_bytes)


def _estimate(model: Model, height: int, width: int, cfg: bool, vae: Any, sliced: bool) -> Estimate:
    adapter, denoiser = model.adapter, model.denoiser
    _, latent_h, latent_w = adapter.latent_shape(model.pipe, height, width)
    twin = meta_twin(denoiser)
    _share_processors(denoiser, twin)
    cpu = on_cpu(denoiser)
    denoise = forward_lines(lambda: adapter.meta_forward(adapter.denoiser, twin, (latent_h, latent_w))(twin),
                            cpu, denoiser.dtype)
    decode: Lines = ()
    if isinstance(vae, torch.nn.Module) and hasattr(vae, "decode"):
        vae_twin = meta_twin(vae)
        latents = torch.zeros(1, vae.config.get("latent_channels", 4), latent_h, latent_w, device="meta")
        decode = forward_lines(lambda: vae_twin.decode(latents), on_cpu(vae), vae.dtype)
    return Estimate(denoise, 2 if cfg else 1, decode, sliced, cpu)


def on_cpu(module: torch.nn.Module) -> bool:
    """Whether `module` runs on CPU kernels (a meta-device model is planned as if on CPU)."""
    return next(module.parameters()).device.type in ("cpu", "meta")


def _processor_kinds(module: torch.nn.Module) -> tuple[str, ...]:
    processors = getattr(module, "attn_processors", None)
    return tuple(sorted({type(p).__name__ for p in processors.values()})) if isinstance(processors, dict) else ()


def _share_processors(real: torch.nn.Module, twin: torch.nn.Module) -> None:
    """Give the twin the real denoiser's attention processors where they hold no weights, so a
    processor that forms score matrices is counted as it runs."""
    processors = getattr(real, "attn_processors", None)
    if not isinstance(processors, dict) or twin is real or not hasattr(twin, "set_attn_processor"):
        return
    if any(isinstance(p, torch.nn.Module) for p in processors.values()):
        return
    try:
        twin.set_attn_processor(dict(processors))
    except (ValueError, KeyError):  # another layout of processors than the config builds
        pass


def forward_lines(forward: Callable[[], object], cpu: bool = True, dtype: torch.dtype = torch.float32) -> Lines:
    """The moments of `forward` (run on a batch of one, on meta tensors: no compute, no memory)
    that can be its peak, as (constant, per batch row) bytes for tensors of `dtype`.

    Counted: every tensor storage from the op that makes it until the last tensor viewing it is gone;
    fused scaled-dot-product attention holds only its output; on CPU, a convolution also holds a copy
    of its weight (oneDNN reorders it into a blocked layout for the call)."""
    live = _LiveBytes(cpu)
    with torch.no_grad(), _FusedAttention(), live:
        forward()
    scale = dtype.itemsize / torch.float32.itemsize  # the twin runs in float32
    return _envelope((int(a * scale), int(c * scale)) for a, c in live.moments.items())


def _envelope(lines: Any) -> Lines:
    """The (constant, slope) pairs not dominated by another (both no larger)."""
    kept: list[tuple[int, int]] = []
    for a, c in sorted(lines, key=lambda line: (-line[1], -line[0])):
        if not kept or a > max(k for k, _ in kept):
            kept.append((a, c))
    return tuple(kept)


class _FusedAttention(TorchFunctionMode):
    """`F.scaled_dot_product_attention` as the fused kernels allocate: its output only."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func is F.scaled_dot_product_attention:
            kwargs = kwargs or {}  # diffusers' attention dispatch (FLUX) passes them all by name
            query = args[0] if args else kwargs["query"]
            value = args[2] if len(args) > 2 else kwargs["value"]
            return query.new_empty((*query.shape[:-1], value.shape[-1]))
        return func(*args, **(kwargs or {}))


class _LiveBytes(TorchDispatchMode):
    """Bytes of the storages that ops under this mode made and that some tensor still views, at
    every op: `moments[constant]` is the most such bytes seen with that constant scratch (on CPU,
    the weight copy of a convolution; 0 for other ops). Storages made outside (weights, inputs)
    are not counted."""

    def __init__(self, cpu: bool = True) -> None:
        super().__init__()
        self.cpu = cpu
        self.live = 0
        self.moments: dict[int, int] = {0: 0}
        self._views: dict[int, int] = {}  # storage -> live tensors viewing it
        self._sizes: dict[int, int] = {}
        self._outside: set[int] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        for tensor in _tensors((args, kwargs)):
            storage = _storage(tensor)
            if storage is not None and storage not in self._views and storage not in self._outside:
                self._outside.add(storage)  # until this tensor goes: its storage's address may be reused
                weakref.finalize(tensor, self._outside.discard, storage)
        out = func(*args, **(kwargs or {}))
        for tensor in _tensors(out):
            storage = _storage(tensor)
            if storage is None or storage in self._outside:
                continue
            if storage not in self._views:
                self._views[storage] = 0
                self._sizes[storage] = tensor.untyped_storage().nbytes()
                self.live += self._sizes[storage]
            self._views[storage] += 1
            weakref.finalize(tensor, self._release, storage)
        constant = 0
        if self.cpu and func.overloadpacket is torch.ops.aten.convolution:
            constant = _nbytes(args[1])  # oneDNN's copy of the weight, in its blocked layout
        self.moments[constant] = max(self.moments.get(constant, 0), self.live)
        return out

    def _release(self, storage: int) -> None:
        self._views[storage] -= 1
        if not self._views[storage]:
            del self._views[storage]
            self.live -= self._sizes.pop(storage)


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _storage(tensor: torch.Tensor) -> int | None:
    try:
        return tensor.untyped_storage()._cdata
    except (RuntimeError, NotImplementedError):  # tensors without storage (sparse, nested)
        return None


def _tensors(tree: Any) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, (list, tuple)):
        return [t for item in tree for t in _tensors(item)]
    if isinstance(tree, dict):
        return [t for item in tree.values() for t in _tensors(item)]
    return []
