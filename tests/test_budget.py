"""The memory estimate (`interp.budget`): what the meta-device trace counts, the estimate's shape in
the number of runs, its cache, and the chunk plan it gives a full-size SD1.5 trace at 512 px.
Measured memory against the estimate is `bench/memory.py`'s job, not a test's."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor
from transformers import CLIPTextConfig, CLIPTextModel

import interp
from interp import budget
from interp.budget import (
    CACHE_CAP_GB, CPU_CHUNK_GB, HEAP, KEPT, SLACK, Estimate, default_cache_gb, estimate, forward_lines,
    runs_per_chunk,
)
from interp.graph import Graph, Restore, Run
from interp.chunks import plan_chunks, recomputed
from interp.runner import cache_needs, plan
from models.vocab import build_clip_tokenizer
from tests.configs import SD15_TEXT, SD15_UNET

MiB = 2**20
SD_VAE = {  # SD1.5's VAE architecture
    "block_out_channels": [128, 256, 512, 512], "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4, "sample_size": 512,
}


@pytest.fixture(scope="module")
def sd15() -> interp.Model:
    """Full-size SD1.5 (UNet, text encoder, VAE) on the meta device: sites and estimates, no weights."""
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(SD15_UNET)
        text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT))
        vae = AutoencoderKL(**SD_VAE)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=build_clip_tokenizer(["a", "photo"]), unet=unet, scheduler=None,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return interp.load(pipe)


def attention(processor=None) -> Attention:
    with torch.device("meta"):
        attn = Attention(query_dim=64, heads=8, dim_head=8)
    if processor is not None:
        attn.set_processor(processor)
    return attn


def test_fused_attention_holds_no_score_matrix_and_a_handwritten_one_does():
    tokens = 1024
    x = torch.zeros(1, tokens, 64, device="meta")
    scores = 8 * tokens * tokens * 4  # heads x tokens^2 float32
    fused = max(c for _, c in forward_lines(lambda: attention()(x)))
    assert fused < 8 * tokens * 64 * 4  # a handful of (tokens x 64) tensors
    explicit = max(c for _, c in forward_lines(lambda: attention(AttnProcessor())(x)))
    assert explicit >= scores


def test_cpu_convolution_holds_a_copy_of_its_weight():
    with torch.device("meta"):
        conv = torch.nn.Conv2d(64, 32, 3, padding=1)
    x = torch.zeros(1, 64, 16, 16, device="meta")
    weight, out = 32 * 64 * 9 * 4, 32 * 16 * 16 * 4
    assert forward_lines(lambda: conv(x), cpu=True) == ((weight, out),)
    assert forward_lines(lambda: conv(x), cpu=False) == ((0, out),)
    assert forward_lines(lambda: conv(x), cpu=False, dtype=torch.float16) == ((0, out // 2),)  # scaled


def test_estimate_is_linear_in_runs_above_its_constants():
    e = Estimate(denoise=((0, 100), (1000, 10)), rows=2, decode=((50, 300),))
    assert [e.peak(n) for n in (1, 2, 4)] == [max(200, 1020, 350), max(400, 1040, 650), max(800, 1080, 1250)]
    assert e.per_run == 300 and e.fixed == 1000
    assert e.runs_within(1000) == 3 and e.runs_within(10) == 1
    sliced = Estimate(denoise=((0, 100),), rows=2, decode=((50, 300),), sliced_decode=True)
    assert sliced.per_run == 200 and sliced.peak(10) == 2000


def test_cpu_estimate_adds_glibcs_heap_with_its_caps():
    mib = 2**20
    e = Estimate(denoise=((0, mib),), rows=2, decode=((0, 3 * mib),), cpu=True)
    assert e.denoise_peak(1) == 2 * mib + (HEAP - 1) * 2 * mib  # small: the heap's share of the live bytes
    assert e.denoise_peak(1000) == 2000 * mib + SLACK  # large: blocks are mmapped, the slack is bounded
    assert e.decode_peak(1) == 2 * mib + 3 * mib + (HEAP - 1) * 3 * mib  # the denoiser's heap is still there
    assert e.decode_peak(1000) == KEPT + 3000 * mib + SLACK
    assert e.per_run == 3 * mib  # the budget counts what runs add, not the bounded slack


def test_estimate_is_computed_once_per_model_shape_and_guidance(sd15, monkeypatch):
    calls = []
    real = budget._estimate
    monkeypatch.setattr(budget, "_estimate", lambda *a: calls.append(a[1:4]) or real(*a))
    first = estimate(sd15, 256, 256, True)
    assert estimate(sd15, 256, 256, True) is first
    runs_per_chunk(sd15, 256, 256, True, 2**30)
    estimate(sd15, 256, 256, False)
    assert calls == [(256, 256, True), (256, 256, False)]
    assert first.rows == 2 and first.cpu  # meta plans as CPU


def test_sd15_at_512px_estimate_has_no_attention_scores(sd15):
    e = estimate(sd15, 512, 512, True)
    per_row = max(c for _, c in e.denoise)
    scores = 8 * 4096 * 4096 * 4  # one self-attention's scores at 64 x 64 latents, 512 MiB
    assert per_row < scores / 2
    assert 100 * MiB < per_row < 200 * MiB  # GEGLU at 64 x 64 x 1280 is the peak: ~130 MiB a row
    assert e.fixed == 1280 * 2560 * 9 * 4  # the largest convolution weight's copy (up block 0)


def test_70_site_sd15_trace_at_512px_plans_each_chunk_with_its_clean_source(sd15):
    sites = [s.name for s in sd15.sites() if not s.is_text][:70]
    assert len(sites) == 70
    graph = Graph([Run("clean", "a photo", steps=25, height=512, width=512)])
    for site in sites:
        graph.add(Run(site, "a photo", steps=25, height=512, width=512, ops=[Restore(site, source="clean")]))
    per_chunk = runs_per_chunk(sd15, 512, 512, True, 4.0 * 2**30)  # the runner's default budget
    chunks = plan_chunks(graph, lambda run_: per_chunk)  # no cache: each chunk recomputes the clean run
    assert all(chunk[0] == "clean" and len(chunk) <= per_chunk for chunk in chunks)
    assert sorted(n for chunk in chunks for n in chunk[1:]) == sorted(sites)
    assert len(chunks) == math.ceil(70 / (per_chunk - 1))
    assert per_chunk >= 3  # no longer [clean, site] pairs: 140 runs
    total = sum(map(len, chunks))
    assert total == 70 + len(chunks) < 140
    needs = lambda target, source: cache_needs(sd15, graph, target, source)  # noqa: E731
    assert 8 * 2**30 < sum(sum(needs(s, "clean").values()) for s in sites) < 9 * 2**30  # every site, 25 steps, CFG
    cached = plan_chunks(graph, lambda run_: per_chunk, needs, CACHE_CAP_GB * 2**30)  # the default on >= 32 GB
    assert sum(map(len, cached)) == 71 and recomputed(cached) == 0  # the clean run once
    tight = plan_chunks(graph, lambda run_: per_chunk, needs, 4 * 2**30)  # a cache too small for all of it
    assert 71 < sum(map(len, tight)) == 71 + recomputed(tight) < total
    sliced = dataclasses.replace(estimate(sd15, 512, 512, True), sliced_decode=True)
    assert sliced.runs_within(4.0 * 2**30) > per_chunk  # decoding one image at a time fits more runs


def test_runner_plans_lean_cpu_chunks_only_where_the_cache_spares_the_clean_run(sd15):
    """On CPU (meta plans as CPU) the runner's chunks hold CPU_CHUNK_GB of activations when the
    cache keeps the clean run, so it is still computed once; without a cache the full budget's
    fewer, larger chunks recompute it less, and an explicit chunk_size is kept."""
    sites = [s.name for s in sd15.sites() if not s.is_text][:16]
    graph = Graph([Run("clean", "a photo", steps=2, height=512, width=512)])
    for site in sites:
        graph.add(Run(site, "a photo", steps=2, height=512, width=512, ops=[Restore(site, source="clean")]))
    lean_size = runs_per_chunk(sd15, 512, 512, True, CPU_CHUNK_GB * 2**30)
    assert lean_size < runs_per_chunk(sd15, 512, 512, True, 4.0 * 2**30)  # SD's VAE decode: 1 run a chunk
    lean = plan(sd15, graph, None, 4.0, CACHE_CAP_GB)
    assert max(map(len, lean)) == lean_size and sum(map(len, lean)) == 17 and recomputed(lean) == 0
    uncached = plan(sd15, graph, None, 4.0, 0.0)
    assert uncached == plan_chunks(graph, lambda run_: runs_per_chunk(sd15, 512, 512, True, 4.0 * 2**30))
    assert [len(c) for c in plan(sd15, graph, 5, 4.0, CACHE_CAP_GB)] == [5, 5, 5, 2]  # the clean run cached


def test_default_cache_is_half_the_machine_memory_at_most_the_cap():
    import os

    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    assert default_cache_gb() == min(CACHE_CAP_GB, physical / 2)
