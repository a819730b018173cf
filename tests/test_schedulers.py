"""Steps are scheduler steps for every scheduler, including those that call the denoiser several
times per step (Heun, KDPM2: twice; PNDM with Runge-Kutta steps: four times in its first three)."""

import pytest
import torch
from diffusers import (
    DDIMScheduler, DPMSolverMultistepScheduler, EulerAncestralDiscreteScheduler, HeunDiscreteScheduler,
    KDPM2DiscreteScheduler, PNDMScheduler, StableDiffusionPipeline,
)

import interp
from interp.errors import GraphValidationError
from interp.graph import Capture, Graph, Noise, Restore, Run, Zero
from interp.runner import call_steps, run
from tests.conftest import PROMPT
from tests.reference_hooks import at_steps, counting_steps, generate, hooks

STEPS = 4  # PNDM's Runge-Kutta warm-up needs at least 4
SCHEDULERS = {
    "ddim": DDIMScheduler, "euler-ancestral": EulerAncestralDiscreteScheduler,
    "dpm-solver++": lambda **c: DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", **c),
    "heun": HeunDiscreteScheduler, "kdpm2": KDPM2DiscreteScheduler,
    "pndm-prk": lambda **c: PNDMScheduler(skip_prk_steps=False, **c),
}


@pytest.fixture(scope="module", params=list(SCHEDULERS))
def scheduled(request, model) -> interp.Model:
    """The test model's parts with another scheduler."""
    config = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    pipe = StableDiffusionPipeline(**{**model.pipe.components, "scheduler": SCHEDULERS[request.param](**config)})
    pipe.set_progress_bar_config(disable=True)
    return interp.load(pipe)


def test_call_map_covers_every_call(scheduled):
    calls = call_steps(scheduled.pipe.scheduler, STEPS)
    scheduled.pipe.scheduler.set_timesteps(STEPS)
    assert len(calls) == len(scheduled.pipe.scheduler.timesteps)
    assert sorted(set(calls)) == list(range(STEPS)) and calls == sorted(calls)


def test_no_op_is_plain_diffusers(scheduled):
    ours = run(scheduled, Graph([Run("a", PROMPT, seed=2, steps=STEPS)]), progress=False).images["a"]
    assert torch.equal(ours, generate(scheduled, [PROMPT], [2], STEPS)[0])


def test_restore_everything_is_clean(scheduled):
    span = scheduled.locate(PROMPT, "van gogh")
    noise = Noise("text-embed", tokens=span.positions, std=3.0, seed=7)
    restores = [Restore(s.name, source="clean") for s in scheduled.sites()]
    graph = Graph([Run("clean", PROMPT, steps=STEPS), Run("corrupted", PROMPT, steps=STEPS, ops=[noise]),
                   Run("restored", PROMPT, steps=STEPS, ops=[noise, *restores])])
    images = run(scheduled, graph, progress=False).images
    assert (images["corrupted"] - images["clean"]).abs().max() > 1e-3
    assert (images["restored"] - images["clean"]).abs().max() == 0


@pytest.mark.parametrize("step", [1, STEPS - 1])
def test_zero_at_one_step_matches_hooks(scheduled, step):
    op = Zero("mid-resnet-0", steps=(step,))
    ours = run(scheduled, Graph([Run("x", PROMPT, steps=STEPS, ops=[op])]), progress=False).images["x"]
    with counting_steps(scheduled) as current:
        with hooks(scheduled, {op.site: at_steps(current, {step}, lambda out: out.zero_())}):
            reference = generate(scheduled, [PROMPT], [0], STEPS)
    assert torch.equal(ours, reference[0])
    assert not torch.equal(ours, generate(scheduled, [PROMPT], [0], STEPS)[0])


def test_capture_records_step_and_call(scheduled):
    graph = Graph([Run("x", PROMPT, steps=STEPS, ops=[Capture("mid-resnet-1", key="mid", steps=(1,))])])
    result = run(scheduled, graph, progress=False)
    per_step = call_steps(scheduled.pipe.scheduler, STEPS).count(1)
    assert result.calls["x"]["mid"] == [(1, call) for call in range(per_step)]
    assert result.captures["x"]["mid"].shape[0] == per_step


def test_steps_are_validated_in_scheduler_steps(scheduled):
    with pytest.raises(GraphValidationError, match="steps"):
        run(scheduled, Graph([Run("x", PROMPT, steps=STEPS, ops=[Zero("mid-resnet-0", steps=(STEPS,))])]))
