"""Prompt encoding in the runner: each distinct prompt once per chunk, the empty prompt once per call,
runs with the same text-site edits on one shared row, runs reading another's text row on their own, and
pixels bit-equal to plain diffusers encoding one row per run."""

from contextlib import contextmanager
from typing import Iterator

import torch

from interp.graph import Capture, Graph, Noise, Restore, Run
from interp.runner import run
from tests.conftest import PROMPT, STEPS
from tests.reference_hooks import first_call, generate, hooks

OTHER = "a blue square"


@contextmanager
def encoder_rows(model) -> Iterator[list[int]]:
    """The batch size of every forward of the (first) text encoder while the block runs."""
    sizes: list[int] = []
    handle = model.text_encoders[0].register_forward_hook(lambda _m, args, _out: sizes.append(len(args[0])))
    try:
        yield sizes
    finally:
        handle.remove()


def graph_of_clean_copies(model) -> Graph:
    """A clean source, five more op-free runs of its prompt, one of another prompt, and a corrupted
    run restoring one denoiser site from the source."""
    span = model.locate(PROMPT, "van gogh")
    graph = Graph([Run("clean", PROMPT, steps=STEPS)])
    for seed in range(1, 6):
        graph.add(Run(f"copy-{seed}", PROMPT, seed=seed, steps=STEPS))
    graph.add(Run("other", OTHER, seed=6, steps=STEPS))
    graph.add(Run("x", PROMPT, steps=STEPS, ops=[
        Noise("text-embed", tokens=span.positions, std=3.0, seed=7), Restore("down-0-resnet-0", source="clean")]))
    return graph


def test_identical_clean_runs_share_one_encoder_row_and_stay_bit_equal(model):
    graph = graph_of_clean_copies(model)
    graph.add(Run("y", PROMPT, seed=9, steps=STEPS, ops=[graph.runs["x"].ops[0], Restore("mid-resnet-0", source="clean")]))
    graph.add(Run("t", PROMPT, seed=10, steps=STEPS, ops=[Restore("text-hidden-1", source="x")]))
    with encoder_rows(model) as sizes:
        ours = run(model, graph, chunk_size=len(graph), progress=False).images
    # the empty prompt; PROMPT, OTHER, x and y corrupted alike, t's own (it reads x's row): was 10 + 10
    assert sorted(sizes) == [1, 4]

    span = model.locate(PROMPT, "van gogh")
    noise = torch.randn(len(span.positions), model.text_encoders[0].config.hidden_size,
                        generator=torch.Generator().manual_seed(7)) * 3.0
    names = list(graph.runs)
    x, y, t, n = names.index("x"), names.index("y"), names.index("t"), len(names)

    @first_call
    def noise_xy(out):
        out[[[x], [y]], list(span.positions)] += noise

    @first_call
    def restore_t(out):
        out[t] = out[x]

    def restore(row):
        def edit(out):  # [uncond rows..., cond rows...]: the run's rows from clean's (row 0 of each half)
            out[[row, n + row]] = out[[0, n]]
        return edit

    edits = {"text-embed": noise_xy, "text-hidden-1": restore_t, "down-0-resnet-0": restore(x), "mid-resnet-0": restore(y)}
    with hooks(model, edits):
        reference = generate(model, [graph.runs[r].prompt for r in names], [graph.runs[r].seed for r in names], STEPS)
    for i, name in enumerate(names):
        assert torch.equal(ours[name], reference[i]), name


def test_the_empty_prompt_is_encoded_once_per_call_and_a_capture_only_reads(model):
    graph = graph_of_clean_copies(model)
    graph.add(Run("read", PROMPT, seed=8, steps=STEPS, ops=[Capture("text-hidden-1", key="t")]))
    with encoder_rows(model) as sizes:
        result = run(model, graph, chunk_size=3, progress=False)
    # chunks [clean copy-1 copy-2] [copy-3 copy-4 copy-5] [other, x with its source clean] [read]: one
    # row per prompt and text edits (a capture only reads); the empty prompt once per call
    assert sorted(sizes) == [1, 1, 1, 1, 3]
    together = run(model, Graph([graph.runs["clean"], graph.runs["read"]]), progress=False).captures["read"]["t"]
    assert torch.equal(result.captures["read"]["t"], together)
