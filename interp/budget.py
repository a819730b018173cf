"""How many runs fit in one batched pipeline call under a memory budget.

The estimate replays one denoiser forward (and one VAE decode) on meta-device twins, at the run's
latent size and one batch row, and records the peak of the bytes held by live tensors, as an
allocator would see them: a tensor's storage counts from the op that makes it until the last
tensor viewing it is gone. Scaled by the rows a run takes (two with classifier-free guidance),
that is what each run adds while denoising; a decode adds one image's peak per run (or once, when
the VAE decodes slice by slice).

Attention is counted as the kernels in use compute it: `F.scaled_dot_product_attention` is fused
(flash / memory-efficient on CUDA, the flash kernel on CPU) and holds only its output, never the
(tokens x tokens) score matrices; an attention processor that forms scores itself (bmm + softmax)
is counted as written, since its ops run on the twin. On top of the runs comes `fixed`: the largest
weight once, the transient copy a CPU convolution or matmul kernel makes of its weight.

The estimate is computed once per (denoiser, size, guidance, dtype, decode mode) and cached. It
covers the denoising loop and the decode, not the text encoders (77 tokens a row) nor captures a
graph keeps; pass `chunk_size` to the runner to override it.
"""

from __future__ import annotations

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
HEAP = 1.5  # resident bytes per live byte in a CPU denoiser pass (glibc keeps freed blocks; bench/memory.py)


@dataclass(frozen=True)
class Estimate:
    """Bytes a pipeline call needs beyond the weights, as a function of the runs it batches.

    A forward's memory at any moment is a constant (a kernel's copy of its weight) plus bytes that
    grow with the batch (activations); `denoise` and `decode` keep the moments that can be the
    peak, as (constant, per batch row) pairs. A run is `rows` denoiser rows (2 with guidance) and
    one decoded image; `sliced_decode`: the VAE decodes one image at a time (`decode` is () without
    a VAE). `heap` is the resident memory per live byte of the denoiser pass: on CPU, glibc keeps
    freed blocks under its mmap threshold (32 MiB) for reuse, and fragmentation between a block's
    transients leaves resident memory above the live bytes (measured 1.4-1.6x for SD-width UNets
    by `bench/memory.py`); that heap also stays resident while the VAE decodes. 1 on other devices.
    """

    denoise: Lines
    rows: int
    decode: Lines = ()
    sliced_decode: bool = False
    heap: float = 1.0

    @property
    def _live(self) -> int:
        """The denoiser's most live bytes per run."""
        return self.rows * max(per_row for _, per_row in self.denoise)

    @property
    def _decode_image(self) -> int:
        return max((per_image for _, per_image in self.decode), default=0)

    @property
    def _kept(self) -> int:
        """Per run: what the denoiser pass leaves resident during the decode."""
        return self._live if self.heap > 1 else 0

    @property
    def per_run(self) -> int:
        """What each run adds to the peak of a call."""
        decode = self._kept + (0 if self.sliced_decode else self._decode_image)
        return max(int(self.heap * self._live), decode)

    @property
    def fixed(self) -> int:
        """The largest constant at any moment (a kernel's copy of the largest weight)."""
        return max(constant for constant, _ in (*self.denoise, *self.decode))

    def peak(self, runs: int) -> int:
        """Estimated peak bytes above the weights of a call batching `runs` runs."""
        return max(self.denoise_peak(runs), self.decode_peak(runs))

    def denoise_peak(self, runs: int) -> int:
        """The estimated peak while denoising `runs` runs."""
        return max(a + int(self.heap * runs * self.rows * c) for a, c in self.denoise)

    def decode_peak(self, runs: int) -> int:
        """The estimated peak while decoding `runs` images (0 without a VAE)."""
        if not self.decode:
            return 0
        images = 1 if self.sliced_decode else runs
        return runs * self._kept + max(a + images * c for a, c in self.decode)

    def runs_within(self, budget_bytes: float) -> int:
        """The most runs whose per-run bytes fit `budget_bytes` (at least 1); the constants (kernel
        copies of weights, one image of a sliced decode) come on top, like the weights."""
        return max(1, int(budget_bytes // self.per_run))


# denoiser module -> {(height, width, cfg, dtype, sliced decode, processors): Estimate}
_CACHE: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple, Estimate]] = weakref.WeakKeyDictionary()


def estimate(model: Model, height: int, width: int, cfg: bool) -> Estimate:
    """The memory estimate for runs of `height` x `width` pixels, with or without guidance; cached."""
    denoiser = model.denoiser
    vae = getattr(model.pipe, "vae", None)
    sliced = bool(getattr(vae, "use_slicing", False))
    key = (height, width, cfg, denoiser.dtype, sliced, _processor_kinds(denoiser))
    cached = _CACHE.setdefault(denoiser, {})
    if key not in cached:
        cached[key] = _estimate(model, height, width, cfg, vae, sliced)
    return cached[key]


def bytes_per_run(model: Model, height: int, width: int, cfg: bool) -> int:
    """Estimated bytes that one more run adds to a batch (`Estimate.per_run`)."""
    return estimate(model, height, width, cfg).per_run


def runs_per_chunk(model: Model, height: int, width: int, cfg: bool, budget_bytes: float) -> int:
    """The largest number of runs whose estimated activations fit `budget_bytes` (at least 1)."""
    return estimate(model, height, width, cfg).runs_within(budget_bytes)


def _estimate(model: Model, height: int, width: int, cfg: bool, vae: Any, sliced: bool) -> Estimate:
    adapter, denoiser = model.adapter, model.denoiser
    _, latent_h, latent_w = adapter.latent_shape(model.pipe, height, width)
    twin = meta_twin(denoiser)
    _share_processors(denoiser, twin)
    cpu = _on_cpu(denoiser)
    denoise = forward_lines(lambda: adapter.meta_forward(adapter.denoiser, twin, (latent_h, latent_w))(twin),
                            cpu, denoiser.dtype)
    decode: Lines = ()
    if isinstance(vae, torch.nn.Module) and hasattr(vae, "decode"):
        vae_twin = meta_twin(vae)
        latents = torch.zeros(1, vae.config.get("latent_channels", 4), latent_h, latent_w, device="meta")
        decode = forward_lines(lambda: vae_twin.decode(latents), _on_cpu(vae), vae.dtype)
    return Estimate(denoise, 2 if cfg else 1, decode, sliced, HEAP if cpu else 1.0)


def _on_cpu(module: torch.nn.Module) -> bool:
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
    of its weight and of its input (oneDNN reorders both into a blocked layout for the call)."""
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
            query, value = args[0], (args[2] if len(args) > 2 else kwargs["value"])
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
        constant, scratch = 0, 0
        if self.cpu and func.overloadpacket is torch.ops.aten.convolution:
            constant, scratch = _nbytes(args[1]), _nbytes(args[0])
        self.moments[constant] = max(self.moments.get(constant, 0), self.live + scratch)
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
