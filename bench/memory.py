"""Benchmark: measured peak memory of a batched trace against `interp.budget`'s estimate.

Pipelines of SD1.5's and SDXL's width (UNet from the real configs, the real SD VAE config; text
encoders of the real widths with one layer each, their activations being negligible), random
weights. Every parameter of the UNet and VAE is a view of one shared random buffer, so the weights
cost one matrix of memory and no build time; what is measured is activations.

Each point is a fresh process: build, warm up on a 64 px run (library initialisation), then one
`interp.runner.run` of a graph of a clean run and n-1 runs restoring one site each from it, all in
one chunk, 1 step with guidance. Measured: peak RSS (VmHWM, reset before the call) minus the RSS
before it, for the whole call and for the denoising loop alone (VmHWM when the decode starts);
with a CUDA device, also `max_memory_allocated` above what was allocated before. The estimates are
`Estimate.peak(n)` and `Estimate.denoise_peak(n)`. Target: within 25%.

Run from the repository root: ``python -m bench.memory [--widths sd15 sdxl] [--sizes 256 512]``
(`--runs` per size, default 1 4 17 at 256 px and 1 3 at 512 px; a 512 px SD1.5 run is ~1 min of
one CPU core per run).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time

import torch
from diffusers import (
    AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

import interp
from bench.timing import load_note
from interp.budget import estimate
from interp.graph import Graph, Restore, Run
from interp.runner import run
from models.vocab import build_clip_tokenizer
from tests.configs import SD15_TEXT, SD15_UNET, SDXL_TEXT_G, SDXL_UNET

PROMPT = "a photo of a cat in the style of van gogh"
SD_VAE = {  # runwayml/stable-diffusion-v1-5 and SDXL's VAE architecture
    "block_out_channels": [128, 256, 512, 512], "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4, "sample_size": 512,
}
DEFAULT_RUNS = {256: (1, 4, 17), 512: (1, 3)}
MiB = 2**20


def shared_weights(module: torch.nn.Module) -> torch.nn.Module:
    """`module` (built on the meta device) with every parameter a view of one random CPU buffer."""
    if list(module.buffers()):
        raise ValueError(f"{type(module).__name__} has buffers; build it with real weights instead")
    size = max(p.numel() for p in module.parameters())
    buffer = torch.randn(size, generator=torch.Generator().manual_seed(0)) * 0.02
    for child in module.modules():
        for name, param in list(child._parameters.items()):
            if param is not None:
                child._parameters[name] = torch.nn.Parameter(buffer[: param.numel()].view(param.shape),
                                                             requires_grad=False)
    return module.eval()


def fresh_weights(module: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """`module` (built on the meta device) on `device` with the weights its layers get at construction
    (each layer's `reset_parameters`), drawn there: a full-size UNet in seconds on a GPU, and random
    weights that carry the text through to the image (the shared buffer's do barely)."""
    module = module.to_empty(device=device)
    with torch.no_grad():
        for layer in module.modules():
            if list(layer.parameters(recurse=False)):
                layer.reset_parameters()
    return module.eval()


def text_encoder(config: dict, tokenizer, projection: bool = False) -> torch.nn.Module:
    """A one-layer CLIP text tower of the config's width (random weights)."""
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(CLIPTextConfig(**{**config, "num_hidden_layers": 1}, **ids)).eval()


def pipeline(width: str, words: list[str] | None = None, device: torch.device | str | None = None):
    """An SD1.5- or SDXL-width pipeline (see the module docstring); its tokenizers know `words`
    (default: the prompt's). With `device`, the UNet and VAE get `fresh_weights` there instead of
    views of one shared buffer."""
    torch.manual_seed(0)
    words = words or PROMPT.split()
    tokenizer = build_clip_tokenizer(words, max_length=77)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(SD15_UNET if width == "sd15" else SDXL_UNET)
        vae = AutoencoderKL(**SD_VAE)
    unet, vae = (shared_weights(m) if device is None else fresh_weights(m, device) for m in (unet, vae))
    scheduler = DDIMScheduler(steps_offset=1, clip_sample=False)
    if width == "sd15":
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=text_encoder(SD15_TEXT, tokenizer), tokenizer=tokenizer, unet=unet,
            scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    else:
        tokenizer_2 = build_clip_tokenizer(words, max_length=77, pad_token="!")
        pipe = StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoder(SD15_TEXT, tokenizer), tokenizer=tokenizer,
            text_encoder_2=text_encoder(SDXL_TEXT_G, tokenizer_2, projection=True), tokenizer_2=tokenizer_2,
            unet=unet, scheduler=scheduler, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def graph(model: interp.Model, runs: int, size: int) -> Graph:
    """A clean run and runs-1 runs restoring one denoiser site each from it, 1 step."""
    sites = [s.name for s in model.sites() if not s.is_text and s.kind != "latent"]
    g = Graph([Run("clean", PROMPT, steps=1, height=size, width=size)])
    for site in sites[: runs - 1]:
        g.add(Run(site, PROMPT, steps=1, height=size, width=size, ops=[Restore(site, source="clean")]))
    return g


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(width: str, size: int, runs: int) -> dict:
    """One point, in this process: measured and estimated bytes above the weights."""
    model = interp.load(pipeline(width))
    if torch.cuda.is_available():
        model.pipe.to("cuda")
    return measure_model(model, size, runs)


def measure_model(model: interp.Model, size: int, runs: int, warm_up: int = 64) -> dict:
    """Measured and estimated bytes above the weights of one `runs`-run chunk of `graph` at `size`
    px, after a `warm_up`-px run (library initialisation). The RSS numbers are process-wide: in a
    process that did other work first, freed heap it reuses makes them low; they are left out
    where the kernel cannot reset the high-water mark (`/proc/self/clear_refs`, e.g. under gVisor).
    On CUDA, `cuda_measured` (`cuda_denoise_measured`: when the decode starts) is
    `max_memory_allocated` above what was allocated before."""
    cuda = next(model.denoiser.parameters()).device.type == "cuda"
    run(model, graph(model, 2, warm_up), chunk_size=2, progress=False)
    gc.collect()
    est = estimate(model, size, size, cfg=True)
    g = graph(model, runs, size)
    before = _status("VmRSS")
    rss = _reset_high_water_mark()
    decoding = []  # (VmHWM, CUDA peak) when the decode starts: the denoising loop's peaks

    def at_decode(*_: object) -> None:
        decoding.append((_status("VmHWM") if rss else 0, torch.cuda.max_memory_allocated() if cuda else 0))

    if cuda:
        torch.cuda.synchronize()
        allocated = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    hook = model.pipe.vae.post_quant_conv.register_forward_pre_hook(at_decode)
    start = time.perf_counter()
    try:
        run(model, g, chunk_size=runs, progress=False)
    finally:
        hook.remove()
    seconds = time.perf_counter() - start
    point = {"size": size, "runs": runs, "seconds": seconds, "load": os.getloadavg()[0],
             "estimate": est.peak(runs), "denoise_estimate": est.denoise_peak(runs),
             "fixed": est.fixed, "per_run": est.per_run}
    if rss:
        point.update(measured=_status("VmHWM") - before, denoise_measured=decoding[0][0] - before)
    if cuda:
        point.update(cuda_measured=torch.cuda.max_memory_allocated() - allocated,
                     cuda_denoise_measured=decoding[0][1] - allocated)
    return point


def _reset_high_water_mark() -> bool:
    """Reset VmHWM to the current RSS; False where the kernel does not support it."""
    try:
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", nargs="+", default=["sd15", "sdxl"], choices=["sd15", "sdxl"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--runs", nargs="+", type=int, default=None, help="runs per point (default: by size)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--one", nargs=3, metavar=("WIDTH", "SIZE", "RUNS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]), int(args.one[2]))))
        return
    print(f"peak memory above the weights, measured vs estimated; {args.threads} thread(s); {load_note()}")
    print(f"  {'width':5} {'px':>4} {'runs':>4}  {'measured':>8}  {'estimate':>8}  {'est/meas':>8}  "
          f"{'denoising: measured':>19}  {'estimate':>8}  {'est/meas':>8}  {'s':>5}  {'load':>4}   (MiB)")
    worst = 0.0
    for width in args.widths:
        for size in args.sizes:
            for runs in args.runs or DEFAULT_RUNS.get(size, (1, 4)):
                command = [sys.executable, "-m", "bench.memory", "--threads", str(args.threads),
                           "--one", width, str(size), str(runs)]
                done = subprocess.run(command, capture_output=True, text=True, check=True)
                p = json.loads(done.stdout.strip().splitlines()[-1])
                ratio, denoise = p["estimate"] / p["measured"], p["denoise_estimate"] / p["denoise_measured"]
                worst = max(worst, abs(ratio - 1))
                cuda = f"  cuda {p['cuda_measured'] / MiB:.0f} MiB" if "cuda_measured" in p else ""
                print(f"  {width:5} {size:4} {runs:4}  {p['measured'] / MiB:8.0f}  {p['estimate'] / MiB:8.0f}  "
                      f"{ratio:8.2f}  {p['denoise_measured'] / MiB:19.0f}  {p['denoise_estimate'] / MiB:8.0f}  "
                      f"{denoise:8.2f}  {p['seconds']:5.0f}  {p['load']:4.1f}{cuda}", flush=True)
    print(f"worst |estimate/measured - 1| = {worst:.0%} (target <= 25%: {'met' if worst <= 0.25 else 'MISSED'}); "
          f"{load_note()}")


if __name__ == "__main__":
    main()
