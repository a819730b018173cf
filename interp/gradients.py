"""Generation with gradients: the runner's generation, differentiable end to end.

The runner executes graphs with nnsight under `torch.no_grad()`. Attribution needs the gradient of
a score with respect to site activations at every denoising step, so `generate` makes the same
images (same prompts, seeds, corruption noise, classifier-free-guidance layout
[uncond rows..., cond rows...]) through plain torch hooks, with autograd on. Each denoiser call is
wrapped in `torch.utils.checkpoint` (non-reentrant): the backward pass recomputes one step at a
time, so memory holds one step's activations plus each step's inputs, not the whole loop's; the
VAE's decode is checkpointed the same way. With `checkpoint="blocks"` each of the denoiser's
blocks (the UNet's down, mid and up blocks; a DiT's transformer blocks) is checkpointed inside the
step as well: the recomputed step then holds its block boundaries and one block's activations, at
the price of a third forward pass per step.

`edit(site, call, activation)` sees every listed site's output (`call` is the index of the
denoiser call, `interp.runner.call_steps` maps it to its denoising step; None for text-encoder
sites, which run once) and may return a replacement; during a checkpoint's recomputation it is
called again with the same call, so it must be a pure function of its arguments. Every hook and
the wrapped forward and decode are removed when `generate` returns or fails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint as checkpointed

from interp.errors import UnsupportedSchedulerError
from interp.graph import Noise
from interp.model import Model
from interp.runner import _encode, _index, _noise, call_steps
from interp.sites import LATENT, Site

SiteEdit = Callable[[Site, "int | None", torch.Tensor], "torch.Tensor | None"]


def _replace(site: Site, output: Any, value: torch.Tensor) -> Any:
    """`output` with the site's activation replaced by `value` (tuples rebuilt, not mutated)."""
    if not site.tuple_output:
        return value
    items = list(output)
    items[site.element] = value
    return type(output)(items) if not isinstance(output, tuple) else tuple(items)


def _activation(site: Site, output: Any) -> torch.Tensor:
    return output[site.element] if site.tuple_output else output


@contextmanager
def _site_hooks(model: Model, sites: Sequence[Site], edit: SiteEdit, step: Callable[[], int | None]) -> Iterator[None]:
    """Forward (or forward-pre, for input sites) hooks calling `edit` on each site."""
    handles = []
    try:
        for site in sites:
            if site.kind == LATENT:
                raise ValueError("the latent site is the denoiser's input, not a layer; attribute layer sites")
            module = model.components[site.component].get_submodule(site.path)
            when = (lambda s=site: None) if site.is_text else step
            if site.io == "input":
                def pre(_m, args, site=site, when=when):
                    new = edit(site, when(), args[0])
                    return None if new is None else (new, *args[1:])

                handles.append(module.register_forward_pre_hook(pre))
            else:
                def post(_m, _args, output, site=site, when=when):
                    new = edit(site, when(), _activation(site, output))
                    return None if new is None else _replace(site, output, new)

                handles.append(module.register_forward_hook(post))
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def _noised(model: Model, noises: Sequence[Sequence[Noise]]) -> Iterator[None]:
    """Add each run's `Noise` ops (text-encoder sites) to its row, exactly as the runner does."""
    by_site: dict[str, list[tuple[int, Noise]]] = {}
    for row, ops in enumerate(noises):
        for op in ops:
            by_site.setdefault(model.site(op.site).name, []).append((row, op))

    def edit(site: Site, _step: int | None, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        for row, op in by_site[site.name]:
            index = _index([row], op.tokens)
            out[index] = out[index] + _noise(op, out[index])
        return out

    with _site_hooks(model, [model.site(name) for name in by_site], edit, lambda: None):
        yield


@contextmanager
def _patched(module: torch.nn.Module, name: str, replacement: Callable[..., Any]) -> Iterator[None]:
    """`module.<name>` replaced on the instance for the block; what was there (an instance attribute
    of the user's, or none) is put back whatever happens."""
    had, saved = name in module.__dict__, module.__dict__.get(name)
    setattr(module, name, replacement)
    try:
        yield
    finally:
        if had:
            setattr(module, name, saved)
        else:
            delattr(module, name)


Checkpoint = bool | str  # True / "steps": each denoiser call; "blocks": each call and each block in it; False: none
CHECKPOINTS = (True, False, "steps", "blocks")


def _blocks(denoiser: torch.nn.Module) -> list[torch.nn.Module]:
    """The denoiser's top-level blocks: the members of its module lists and its mid block."""
    blocks = []
    for name, child in denoiser.named_children():
        if isinstance(child, torch.nn.ModuleList):
            blocks += list(child)
        elif name == "mid_block" and child is not None:
            blocks.append(child)
    return blocks


@contextmanager
def _checkpointed_blocks(denoiser: torch.nn.Module, on: bool) -> Iterator[None]:
    """With `on` and gradients on, every block's forward under a (nested, non-reentrant) checkpoint."""
    with ExitStack() as stack:
        for block in _blocks(denoiser) if on else ():
            def forward(*args: Any, original=block.forward, **kwargs: Any) -> Any:
                if torch.is_grad_enabled():
                    return checkpointed(original, *args, use_reentrant=False, **kwargs)
                return original(*args, **kwargs)

            stack.enter_context(_patched(block, "forward", forward))
        yield


def _stepped(denoiser: torch.nn.Module, steps: list[int], checkpoint: Checkpoint, state: dict
             ) -> AbstractContextManager[None]:
    """Wrap the denoiser's forward: set `state["call"]` (also when a checkpoint recomputes the call)
    and, with gradients on and `checkpoint`, checkpoint the call."""
    original = denoiser.forward

    def forward(*args: Any, **kwargs: Any) -> Any:
        call = state["calls"]
        state["calls"] += 1
        if call >= len(steps):
            raise UnsupportedSchedulerError(f"the pipeline called the denoiser more than the {len(steps)} times "
                                            "interp.runner.call_steps expected; use a scheduler it knows")

        def run(*a: Any, **k: Any) -> Any:
            state["call"] = call
            return original(*a, **k)

        if checkpoint and torch.is_grad_enabled():
            return checkpointed(run, *args, use_reentrant=False, **kwargs)
        return run(*args, **kwargs)

    return _patched(denoiser, "forward", forward)


def _checkpointed_decode(vae: torch.nn.Module, checkpoint: bool) -> AbstractContextManager[None]:
    """With gradients on and `checkpoint`, the VAE's decode under a checkpoint too: at SDXL width its
    activations outweigh one denoiser step's, and backward can recompute them once."""
    original = vae.decode

    def decode(*args: Any, **kwargs: Any) -> Any:
        if checkpoint and torch.is_grad_enabled():
            return checkpointed(original, *args, use_reentrant=False, **kwargs)
        return original(*args, **kwargs)

    return _patched(vae, "decode", decode)


def generate(
    model: Model,
    prompts: Sequence[str],
    seeds: Sequence[int],
    steps: int,
    guidance_scale: float,
    noises: Sequence[Sequence[Noise]] | None = None,
    sites: Sequence[Site] = (),
    edit: SiteEdit | None = None,
    grad: bool = False,
    checkpoint: Checkpoint = True,
    height: int | None = None,
    width: int | None = None,
    within: Callable[[torch.Tensor], Any] | None = None,
) -> Any:
    """Images (N, 3, H, W) in [0, 1] for `prompts` x `seeds` (one row each), as the runner makes them.

    `noises[i]`: run i's corruption (`Noise` on text-encoder embedding sites). `edit` is called on
    every site of `sites` (see the module docstring). With `grad`, autograd records the whole
    generation (denoiser calls checkpointed if `checkpoint`, and their blocks too with "blocks") so
    the images can be differentiated.
    `within(images)`, if given, runs while the hooks are in place and its result is returned instead
    of the images: a backward pass must run there, since checkpointed steps recompute through them.
    """
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {CHECKPOINTS}, got {checkpoint!r}")
    pipe, adapter = model.pipe, model.adapter
    call = getattr(type(pipe).__call__, "__wrapped__", None)
    if call is None:
        raise TypeError(f"{type(pipe).__name__}.__call__ is not a no_grad-wrapped diffusers pipeline call; "
                        "gradient generation needs one")
    n = len(prompts)
    default_h, default_w = model.default_size()
    state = {"calls": 0, "call": None}
    bar_config = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(disable=True)
    try:
        with torch.enable_grad() if grad else torch.no_grad():
            uncond = adapter.uncond_kwargs(pipe, lambda: _encode(model, [""] * n)) if adapter.cfg(guidance_scale) else {}
            with _noised(model, noises or [[] for _ in prompts]), (
                _site_hooks(model, [s for s in sites if s.is_text], edit, lambda: None) if edit else nullcontext()
            ):
                cond = adapter.encode(pipe, [model.token_ids(list(prompts), i) for i in range(len(model.tokenizers))])
            denoiser_sites = [s for s in sites if not s.is_text]
            with _stepped(model.denoiser, call_steps(pipe.scheduler, steps), checkpoint, state), \
                    _checkpointed_blocks(model.denoiser, checkpoint == "blocks"), (
                _checkpointed_decode(pipe.vae, checkpoint) if hasattr(pipe, "vae") else nullcontext()
            ), _site_hooks(model, denoiser_sites, edit, lambda: state["call"]) if edit else nullcontext():
                images = call(pipe, **cond, **uncond, generator=model.generators(list(seeds)),
                              num_inference_steps=steps, guidance_scale=guidance_scale,
                              height=height or default_h, width=width or default_w, output_type="pt",
                              **adapter.call_kwargs(pipe)).images
                expected = len(call_steps(pipe.scheduler, steps))
                if state["calls"] != expected:
                    raise UnsupportedSchedulerError(
                        f"{type(pipe.scheduler).__name__} called the denoiser {state['calls']} times, not the "
                        f"{expected} interp expected; use a scheduler interp.runner.call_steps knows")
                images = adapter.postprocess(images)
                return within(images) if within is not None else images
    finally:
        pipe._progress_bar_config = bar_config
