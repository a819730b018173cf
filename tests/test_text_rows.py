"""Runs with the same prompt and text-encoder operations share one row of the text encoder's batch
(`interp.text_rows`): the encoder runs once per distinct row, the images stay those of a hand-written
hook reference, and text operations act once per shared row."""

import torch

from interp.graph import Add, Capture, Graph, Noise, Restore, Run, Set
from interp.runner import run
from interp.text_rows import first_runs, text_rows
from tests.conftest import PROMPT, STEPS
from tests.reference_hooks import hand_written_trace


def noise(model) -> Noise:
    return Noise("text-embed", tokens=model.locate(PROMPT, "van gogh").positions, std=3.0, seed=7)


def encoder_batches(model, graph: Graph, **options) -> tuple[list[int], dict]:
    """The batch sizes the text encoder saw while the runner executed `graph`, and the result."""
    seen = []
    handle = model.components["text_encoder"].register_forward_hook(lambda _m, args, _o: seen.append(len(args[0])))
    try:
        result = run(model, graph, progress=False, **options)
    finally:
        handle.remove()
    return seen, result


def test_a_trace_encodes_its_prompt_once_clean_once_corrupted_and_the_empty_prompt_once(model):
    sites = [s.name for s in model.sites() if not s.is_text][:6]
    clean = Run("clean", PROMPT, steps=STEPS)
    graph = Graph([clean, *[Run(s, PROMPT, steps=STEPS, ops=[noise(model), Restore(s, source="clean")]) for s in sites]])
    seen, result = encoder_batches(model, graph, chunk_size=len(graph))
    assert sorted(seen) == [1, 2]  # the empty prompt; [clean, corrupted]
    reference = hand_written_trace(model, sites, clean, noise(model))
    for row, site in enumerate(sites, 1):
        assert torch.equal(result.images[site], reference[row]), site


def test_text_operations_act_once_on_a_shared_row_and_every_run_captures_it(model):
    kept = Capture("text-embed", key="embed")
    graph = Graph([Run(name, PROMPT, steps=STEPS, ops=[noise(model), kept]) for name in ("a", "b")]
                  + [Run("c", PROMPT, steps=STEPS, ops=[noise(model)])])
    seen, shared = encoder_batches(model, graph, chunk_size=3)
    alone = run(model, Graph([graph.runs["a"]]), progress=False)
    assert 1 in seen and 3 not in seen  # one row for all three
    for name in ("a", "b"):
        assert torch.equal(shared.captures[name]["embed"], alone.captures["a"]["embed"])
    for name in ("a", "b", "c"):  # the UNet rounds by batch size (3 rows here, 1 alone)
        assert (shared.images[name] - alone.images["a"]).abs().max() <= 1e-5


def test_rows_split_by_prompt_and_text_operations_and_set_or_add_never_share(model):
    def site_of(op):
        return model.site(op.site)

    value = torch.zeros(1)
    runs = [Run("clean", PROMPT), Run("x", PROMPT, ops=[noise(model)]), Run("y", PROMPT, ops=[noise(model)]),
            Run("other", "a red circle", ops=[noise(model)]), Run("cap", PROMPT, ops=[Capture("text-embed")]),
            Run("unet", PROMPT, ops=[Restore("down-0-resnet-0", source="clean")]),
            Run("set1", PROMPT, ops=[Set("text-embed", value=value)]), Run("set2", PROMPT, ops=[Set("text-embed", value=value)]),
            Run("add", PROMPT, ops=[Add("text-embed", value=value)])]
    rows = text_rows(runs, site_of)
    assert rows == [0, 1, 1, 2, 0, 0, 3, 4, 5]
    assert first_runs(rows) == [0, 1, 3, 6, 7, 8]
