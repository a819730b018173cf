"""The runner: exactness against plain diffusers and torch hooks, batching, failures, errors."""

from contextlib import contextmanager

import pytest
import torch

from interp import runner
from interp.errors import GraphValidationError, MissingRunError, TokenRangeError, UnknownSiteError
from interp.graph import Add, Capture, Graph, Noise, Restore, Run, Scale, Set, Swap, Zero
from interp.runner import run
from tests.conftest import PROMPT, STEPS
from tests.reference_hooks import first_call, generate, hooks, swap_inputs


def corrupt(model, name: str, *ops, seed: int = 0) -> Run:
    """A run whose subject tokens are noised, plus extra operations."""
    span = model.locate(PROMPT, "van gogh")
    noise = Noise("text-embed", tokens=span.positions, std=3.0, seed=7)
    return Run(name, PROMPT, seed=seed, steps=STEPS, ops=[noise, *ops])


def denoiser_sites(model) -> list[str]:
    return [s.name for s in model.sites() if not s.is_text]


def test_no_operations_reproduce_plain_pipeline_bit_for_bit(model):
    graph = Graph([Run("a", PROMPT, seed=3, steps=STEPS)])
    images = run(model, graph, progress=False).images
    with torch.no_grad():
        plain = model.pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=7.5,
                           generator=torch.Generator().manual_seed(3), output_type="pt").images
    assert torch.equal(images["a"], plain[0])


def test_restore_everything_gives_clean_nothing_gives_corrupted(model):
    graph = Graph([Run("clean", PROMPT, steps=STEPS), corrupt(model, "corrupted")])
    graph.add(corrupt(model, "restored", *[Restore(s.name, source="clean") for s in model.sites()]))
    graph.add(corrupt(model, "restored_none"))
    images = run(model, graph, progress=False).images
    assert (images["corrupted"] - images["clean"]).abs().max() > 1e-3  # the corruption matters
    assert (images["restored"] - images["clean"]).abs().max() <= 1e-5
    assert torch.equal(images["restored_none"], images["corrupted"])


def test_batching_is_invisible(model):
    sites = denoiser_sites(model)
    assert len(sites) == 20
    graph = Graph([Run("clean", PROMPT, steps=STEPS)])
    for site in sites:
        graph.add(corrupt(model, site, Restore(site, source="clean")))
    together = run(model, graph, chunk_size=len(graph), progress=False).images
    in_threes = run(model, graph, chunk_size=3, progress=False).images
    for site in sites:
        alone = run(model, Graph([Run("clean", PROMPT, steps=STEPS), corrupt(model, site, Restore(site, source="clean"))]),
                    progress=False).images
        assert (together[site] - alone[site]).abs().max() <= 1e-4, site
        assert (together[site] - in_threes[site]).abs().max() <= 1e-4, site


def test_restore_matches_torch_hooks(model):
    """Restore one UNet site at every step, both branches: same pixels as a hand-written hook."""
    graph = Graph([Run("clean", PROMPT, steps=STEPS), corrupt(model, "x", Restore("down-0-resnet-0", source="clean"))])
    ours = run(model, graph, progress=False).images
    span = model.locate(PROMPT, "van gogh")
    noise = torch.randn(len(span.positions), model.text_encoders[0].config.hidden_size,
                        generator=torch.Generator().manual_seed(7)) * 3.0

    @first_call
    def noise_row1(out):
        out[1, list(span.positions)] += noise

    def restore(out):  # rows [uncond clean, uncond x, cond clean, cond x]
        out[[1, 3]] = out[[0, 2]]

    with hooks(model, {"text-embed": noise_row1, "down-0-resnet-0": restore}):
        reference = generate(model, [PROMPT, PROMPT], [0, 0], STEPS)
    assert torch.equal(ours["x"], reference[1])


@pytest.mark.parametrize(
    "op, edit",
    [
        (Zero("mid-cross-attn"), lambda out: out.__setitem__([0, 1], 0)),
        (Scale("up-1-ff-0", factor=0.5), lambda out: out.__setitem__([0, 1], out[[0, 1]] * 0.5)),
        (Add("mid-resnet-0", value=0.25), lambda out: out.__setitem__([0, 1], out[[0, 1]] + 0.25)),
        (Set("down-0-self-attn-0", value=1.0, branch="cond"), lambda out: out.__setitem__([1], 1.0)),
        (Zero("text-mlp-0", tokens=(2, 3)), first_call(lambda out: out[0].__setitem__(slice(2, 4), 0))),
    ],
)
def test_row_operations_match_torch_hooks(model, op, edit):
    ours = run(model, Graph([Run("x", PROMPT, steps=STEPS, ops=[op])]), progress=False).images["x"]
    with hooks(model, {op.site: edit}):
        reference = generate(model, [PROMPT], [0], STEPS)
    assert torch.equal(ours, reference[0])


def test_swap_matches_torch_hooks(model):
    layers = ["cross-attn-2", "cross-attn-3"]
    ours = run(model, Graph([Run("x", PROMPT, steps=STEPS, ops=[Swap(layers, "a painting")])]),
               progress=False).images["x"]
    ids = model.token_ids(["a painting"])
    with torch.no_grad():
        context = model.text_encoders[0](ids)[0]
    with swap_inputs(model, layers, rows=[1], context=context):  # cond row of a CFG batch of one
        reference = generate(model, [PROMPT], [0], STEPS)
    assert torch.equal(ours, reference[0])
    assert not torch.equal(ours, generate(model, [PROMPT], [0], STEPS)[0])


def test_a_swap_and_other_operations_in_one_chunk(model):
    """A swap before other operations of the chunk (its own run's and later runs'): each acts as alone."""
    swap = Swap(["cross-attn-2"], "a painting")
    graph = Graph([Run("clean", PROMPT, steps=STEPS),
                   corrupt(model, "both", swap, Restore("down-0-resnet-0", source="clean")),
                   corrupt(model, "restored", Restore("down-0-resnet-0", source="clean"))])
    together = run(model, graph, chunk_size=3, progress=False).images
    for name in ("both", "restored"):
        alone = run(model, Graph([graph.runs["clean"], graph.runs[name]]), progress=False).images[name]
        assert (together[name] - alone).abs().max() <= 1e-5, name


def test_capture_steps_and_text(model):
    graph = Graph([Run("x", PROMPT, steps=STEPS, ops=[
        Capture("mid-resnet-1", key="mid", steps=(0, 2)),
        Capture("text-hidden-1", key="text", tokens=(1, 2)),
        Capture("down-0-cross-attn-0", key="cond", branch="cond"),
    ])])
    captures = run(model, graph, progress=False).captures["x"]
    assert captures["mid"].shape[:2] == (2, 2)  # 2 steps x (uncond, cond)
    assert captures["text"].shape == (1, 1, 2, model.text_encoders[0].config.hidden_size)
    assert captures["cond"].shape[:2] == (STEPS, 1)


def test_failure_half_way_leaves_no_hook_and_same_outputs(model, monkeypatch):
    before = generate(model, [PROMPT], [0], STEPS)
    scheduler = model.pipe.scheduler
    calls = {"n": 0}
    step = scheduler.step

    def failing_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated failure at step 2")
        return step(*args, **kwargs)

    monkeypatch.setattr(scheduler, "step", failing_step)
    graph = Graph([Run("clean", PROMPT, steps=STEPS), corrupt(model, "x", *[Restore(s, source="clean") for s in denoiser_sites(model)])])
    with pytest.raises(Exception, match="simulated failure"):
        run(model, graph, progress=False)
    monkeypatch.undo()
    for component in model.components.values():
        for module in component.modules():
            assert not module._forward_hooks and not module._forward_pre_hooks
            assert "forward" not in module.__dict__ and "__nnsight__" not in module.__dict__
    assert torch.equal(generate(model, [PROMPT], [0], STEPS), before)


def test_only_the_hooked_modules_are_instrumented(model, monkeypatch):
    """nnsight wraps the hooked modules (below the runner's root, `points.N`), not their submodules."""
    instrumented: list[str] = []
    plain = runner._instrumented

    @contextmanager
    def spying(root):
        with plain(root):
            yield
            instrumented.extend(name for name, m in root.named_modules() if "__nnsight__" in m.__dict__)

    monkeypatch.setattr(runner, "_instrumented", spying)
    resnet, attention = model.site("mid-resnet-0"), model.site("up-1-cross-attn-0")
    ops = [Capture(resnet.name), Capture(f"{attention.name}.head-0"), Zero(attention.name)]
    run(model, Graph([Run("x", PROMPT, steps=STEPS, ops=ops)]), progress=False)
    assert set(instrumented) <= {"", "points", "points.0", "points.1", "points.1.to_out", "points.1.to_out.0"}
    assert {"points.0", "points.1", "points.1.to_out.0"} <= set(instrumented)


def test_errors_of_their_own_type(model):
    with pytest.raises(UnknownSiteError, match="closest"):
        run(model, Graph([Run("x", PROMPT, ops=[Zero("mid-crossattn")])]))
    with pytest.raises(TokenRangeError):
        run(model, Graph([Run("x", PROMPT, ops=[Noise("text-embed", tokens=(99,))])]))
    with pytest.raises(MissingRunError, match="clean"):
        run(model, Graph([Run("x", PROMPT, ops=[Restore("mid-resnet-0", source="clean")])]))
    with pytest.raises(GraphValidationError, match="steps"):
        run(model, Graph([Run("x", PROMPT, steps=2, ops=[Zero("mid-resnet-0", steps=(5,))])]))
    with pytest.raises(GraphValidationError, match="cross-attention"):
        run(model, Graph([Run("x", PROMPT, ops=[Swap(["mid-resnet-0"], "a painting")])]))
    with pytest.raises(GraphValidationError, match="unique"):
        Graph([Run("x", PROMPT), Run("x", PROMPT)])


def test_memory_budget_sets_the_chunk_size(model):
    from interp.budget import bytes_per_run, runs_per_chunk
    from interp.runner import plan_chunks

    per_run = bytes_per_run(model, 32, 32, cfg=True)
    assert per_run > bytes_per_run(model, 32, 32, cfg=False) > 0
    assert bytes_per_run(model, 64, 64, cfg=True) > 3 * per_run  # 4x the pixels
    assert runs_per_chunk(model, 32, 32, True, 3.5 * per_run) == 3
    graph = Graph([Run("clean", PROMPT, steps=STEPS)])
    for site in denoiser_sites(model)[:5]:
        graph.add(Run(site, PROMPT, steps=STEPS, ops=[Restore(site, source="clean")]))
    chunks = plan_chunks(graph, lambda run_: 3)  # no cache: each chunk carries its source
    assert all("clean" in chunk and len(chunk) <= 3 for chunk in chunks)
    assert sorted({n for chunk in chunks for n in chunk}) == sorted(graph.runs)
    budgeted = run(model, graph, memory_budget_gb=3.5 * per_run / 2**30, progress=False).images
    assert set(budgeted) == set(graph.runs)


def test_a_source_computed_once_and_read_from_the_cache_gives_the_same_images(model):
    """Restores (whole layers, tokens, heads, one branch, some steps) from a clean run computed in the
    first chunk only equal the same graph with the clean run recomputed in every chunk."""
    from interp.chunks import plan_chunks, recomputed
    from interp.runner import cache_needs

    sites = denoiser_sites(model)[:4]
    graph = Graph([Run("clean", PROMPT, steps=STEPS)])
    for site in sites:
        graph.add(corrupt(model, site, Restore(site, source="clean")))
    graph.add(corrupt(model, "cond-late", Restore(sites[0], source="clean", branch="cond", steps=(1, 2))))
    graph.add(corrupt(model, "heads", Restore("mid-cross-attn", source="clean", heads=(0,))))
    subject = tuple(model.locate(PROMPT, "van gogh").positions)  # the noised tokens
    graph.add(corrupt(model, "text", Restore("text-hidden-0", source="clean", tokens=subject)))
    graph.add(corrupt(model, "corrupted"))
    needs = lambda target, source: cache_needs(model, graph, target, source)  # noqa: E731
    cached, again = plan_chunks(graph, lambda _: 3, needs, 2**30), plan_chunks(graph, lambda _: 3, needs, 0)
    assert [n for c in cached for n in c].count("clean") == 1 and recomputed(cached) == 0
    assert sum(c.count("clean") for c in again) == len(again) > 1 and recomputed(again) == len(again) - 1
    assert all(c.cached == {"clean"} for c in cached[1:])
    once = run(model, graph, chunk_size=3, progress=False).images
    every = run(model, graph, chunk_size=3, cache_budget_gb=0, progress=False).images
    for name in graph.runs:  # float32 kernels round by batch size (a chunk of 3 runs or 2): 1.04e-6 seen on one CPU
        assert (once[name] - every[name]).abs().max() <= 5e-6, name
    for name in [*sites, "cond-late", "heads", "text"]:  # every restore read from the cache acted
        assert (once[name] - once["corrupted"]).abs().max() > 1e-4, name


def test_cache_budget_must_not_be_negative(model):
    with pytest.raises(GraphValidationError, match="cache_budget_gb must be >= 0"):
        run(model, Graph([Run("clean", PROMPT, steps=STEPS)]), cache_budget_gb=-1, progress=False)
