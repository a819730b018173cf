"""Plain torch-hook versions of the runner's operations: the reference the nnsight runner must match.

Each helper registers forward hooks that do what one graph operation does, so a test can run the
same batch through `pipe(...)` by hand and compare pixels with the runner's output.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import torch
from diffusers import PNDMScheduler

import interp
from interp.graph import Noise, Run, run_size


@contextmanager
def hooks(model: interp.Model, edits: dict[str, Callable[[torch.Tensor], None]]) -> Iterator[None]:
    """In-place `edit(output)` on each named site's output at every call."""
    handles = []
    for name, edit in edits.items():
        site = model.site(name)
        module = model.components[site.component].get_submodule(site.path)

        def hook(_m, _args, out, edit=edit, site=site):
            edit(out[site.element] if site.tuple_output else out)

        handles.append(module.register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def module_hooks(edits: dict[torch.nn.Module, Callable[[torch.Tensor], None]], io: str = "input") -> Iterator[None]:
    """In-place `edit(tensor)` on each module's first input (a clone, passed on) or its output, at every
    call: the reference for head sites (an attention's out projection input, last dim split into heads)
    and neuron sites (a feed-forward's output projection input)."""
    handles = []
    for module, edit in edits.items():
        if io == "input":
            def pre(_m, args, edit=edit):
                new = args[0].clone()
                edit(new)
                return (new, *args[1:])

            handles.append(module.register_forward_pre_hook(pre))
        else:
            def post(_m, _args, out, edit=edit):
                edit(out)

            handles.append(module.register_forward_hook(post))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def head_columns(attention: torch.nn.Module, head: int) -> slice:
    """Head `head`'s columns of a diffusers `Attention`'s inner width, from the module itself."""
    width = attention.to_out[0].in_features // attention.heads
    return slice(head * width, (head + 1) * width)


@contextmanager
def swap_inputs(model: interp.Model, site_names: list[str], rows: list[int], context: torch.Tensor) -> Iterator[None]:
    """Replace the key/value projections' input rows of cross-attention sites with `context`."""
    handles = []
    for name in site_names:
        site = model.site(name)
        for path in site.kv_paths:
            module = model.denoiser.get_submodule(path)

            def pre(_m, args):
                new = args[0].clone()
                new[rows] = context
                return (new, *args[1:])

            handles.append(module.register_forward_pre_hook(pre))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def first_call(edit: Callable[[torch.Tensor], None]) -> Callable[[torch.Tensor], None]:
    """Apply `edit` on the first call only: the pipeline encodes the prompts, then the empty negatives."""
    calls: list[int] = []

    def once(out: torch.Tensor) -> None:
        if not calls:
            edit(out)
        calls.append(1)

    return once


def generate(model: interp.Model, prompts: list[str], seeds: list[int], steps: int, guidance: float = 7.5) -> torch.Tensor:
    """Plain diffusers generation of a batch with per-row seeds, as the runner lays it out."""
    with torch.no_grad():
        return model.pipe(prompts, generator=model.generators(seeds), num_inference_steps=steps, guidance_scale=guidance,
                          output_type="pt").images


def _continues_step(scheduler: Any) -> bool:
    """Whether the next denoiser call belongs to the step already begun, from the scheduler's own
    state: the correction call of a second-order scheduler (Heun, KDPM2), or calls 2-4 of a
    Runge-Kutta step of PNDM (four calls per step for its first twelve calls)."""
    if hasattr(scheduler, "state_in_first_order"):
        return not scheduler.state_in_first_order
    if isinstance(scheduler, PNDMScheduler) and not scheduler.config.skip_prk_steps:
        return scheduler.counter < 12 and scheduler.counter % 4 != 0
    return False


@contextmanager
def counting_steps(model: interp.Model) -> Iterator[Callable[[], int]]:
    """Yield a function giving the current denoising step during generation, counted by a denoiser
    pre-hook from the scheduler's own state (independent of the runner's call map)."""
    scheduler, current = model.pipe.scheduler, [-1]

    def pre(_m, _args):
        if not _continues_step(scheduler):
            current[0] += 1

    handle = model.denoiser.register_forward_pre_hook(pre)
    try:
        yield lambda: current[0]
    finally:
        handle.remove()


def at_steps(step: Callable[[], int], steps: set[int], edit: Callable[[torch.Tensor], None]) -> Callable[[torch.Tensor], None]:
    """`edit` on every denoiser call of the given steps only (`step` from `counting_steps`)."""

    def maybe(out: torch.Tensor) -> None:
        if step() in steps:
            edit(out)

    return maybe


def hand_written_trace(model: interp.Model, sites: list[str], clean: Run, noise: Noise) -> torch.Tensor:
    """Images of [clean, corrupted + restore(site) for each site] from one pipeline call with torch
    hooks: the text encoder sees [clean, corrupted] once (the noise drawn as the runner draws it),
    the empty prompt once; row i + 1 of each guidance branch takes the clean row at site i."""
    pipe, n = model.pipe, len(sites) + 1
    embedding = model.site(noise.site)
    tokens = list(noise.tokens)

    def corrupt(_module, _args, out: torch.Tensor) -> None:  # out: rows x tokens x features
        drawn = torch.randn(len(tokens), out.shape[-1], generator=torch.Generator().manual_seed(noise.seed))
        out[1, tokens] += noise.std * drawn

    def restore(row: int):
        def hook(_module, _args, out):
            out = out[0] if isinstance(out, tuple) else out  # rows [uncond x n, cond x n] x ...
            out[[row, n + row]] = out[[0, n]]
        return hook

    handles = [model.components[embedding.component].get_submodule(embedding.path).register_forward_hook(corrupt)]
    try:
        with torch.no_grad():
            pair = model.adapter.encode(pipe, [model.token_ids([clean.prompt] * 2, 0)])["prompt_embeds"]
            handles.pop().remove()
            empty = model.adapter.encode(pipe, [model.token_ids([""], 0)])["prompt_embeds"]
            for row, name in enumerate(sites, 1):
                site = model.site(name)
                handles.append(model.components[site.component].get_submodule(site.path)
                               .register_forward_hook(restore(row)))
            height, width = run_size(model, clean)
            images = pipe(prompt_embeds=torch.cat([pair[:1], pair[1:].expand(n - 1, -1, -1)]),
                          negative_prompt_embeds=empty.expand(n, -1, -1), generator=model.generators([clean.seed] * n),
                          num_inference_steps=clean.steps, guidance_scale=clean.guidance_scale, height=height,
                          width=width, output_type="pt", **model.adapter.call_kwargs(pipe)).images
    finally:
        for handle in handles:
            handle.remove()
    return model.adapter.postprocess(images)


def joint_text_probs(attention: torch.nn.Module, hidden_states: torch.Tensor,
                     encoder_hidden_states: torch.Tensor) -> torch.Tensor:
    """SD3's joint attention written out from the module's projections (diffusers'
    `JointAttnProcessor2_0`: image tokens first, then text): the image queries' probabilities on the
    text keys, (batch, heads, image tokens, text tokens)."""

    def by_head(x: torch.Tensor, norm: torch.nn.Module | None) -> torch.Tensor:
        x = x.unflatten(-1, (attention.heads, -1)).transpose(1, 2)  # (batch, heads, tokens, head dim)
        return x if norm is None else norm(x)

    query = by_head(attention.to_q(hidden_states), attention.norm_q)
    key = torch.cat([by_head(attention.to_k(hidden_states), attention.norm_k),
                     by_head(attention.add_k_proj(encoder_hidden_states), attention.norm_added_k)], dim=2)
    probs = (query @ key.transpose(-1, -2) / query.shape[-1] ** 0.5).softmax(-1)
    return probs[..., hidden_states.shape[1]:]
