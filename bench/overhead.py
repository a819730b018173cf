"""Benchmark: the runner's overhead for a per-step restore, against hand-written hooks and plain diffusers.

A config-built pipeline of SD1.5's width (UNet 320-1280 channels, CLIP ViT-L/14 text encoder, random
weights) at a small resolution; a batch of two images (clean source, restored target), 20 steps, CFG.
  plain   - `pipe(...)` with no intervention;
  hooks   - the same call with a torch forward hook copying the clean rows of one UNet site into
            the target rows at every step;
  runner  - the same restore declared as a graph and executed by `interp.runner.run` through nnsight.
Target: runner / plain <= 1.10. Run: ``python -m bench.overhead [--size 128] [--steps 20]``.
"""

from __future__ import annotations

import argparse
from typing import Callable

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

import interp
from bench.timing import load_note, timed_interleaved
from interp.graph import Graph, Restore, Run
from interp.runner import run
from models.vocab import build_clip_tokenizer
from bench.edit_speed import vit_l14_text_encoder
from tests.configs import SD15_UNET

PROMPT = "a photo of a cat in the style of van gogh"
SITE = "down-1-resnet-1"


def sd15_width_pipeline() -> StableDiffusionPipeline:
    """SD1.5's UNet and text encoder from their configs; a small VAE (decoding is not what is measured)."""
    torch.manual_seed(0)
    tokenizer = build_clip_tokenizer(PROMPT.split())
    text = vit_l14_text_encoder(tokenizer)
    vae = AutoencoderKL(block_out_channels=(32, 64, 64, 64), latent_channels=4, norm_num_groups=32,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    pipe = StableDiffusionPipeline(
        vae=vae.eval(), text_encoder=text.eval(), tokenizer=tokenizer, unet=UNet2DConditionModel(**SD15_UNET).eval(),
        scheduler=DDIMScheduler(steps_offset=1, clip_sample=False), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def plain_call(model: interp.Model, prompts: list[str], seeds: list[int], steps: int, size: int) -> torch.Tensor:
    """`pipe(...)` with no intervention: rows seeded as the runner seeds them, CFG 7.5, images in [0, 1].
    Copies of one prompt go in as diffusers batches them (`num_images_per_prompt`: encoded once), as
    the runner encodes each distinct prompt once (float32 encoders round by batch size, ~1e-6)."""
    one = len(set(prompts)) == 1
    with torch.no_grad():
        return model.pipe(prompts[0] if one else prompts, num_images_per_prompt=len(prompts) if one else 1,
                          generator=model.generators(seeds), num_inference_steps=steps, guidance_scale=7.5,
                          height=size, width=size, output_type="pt").images


def restore_variants(model: interp.Model, site_name: str, size: int, steps: int,
                     prompt: str = PROMPT) -> dict[str, Callable[[], torch.Tensor]]:
    """The three ways of the module docstring to generate [clean, target restoring `site_name` at
    every step]; each returns the target image."""
    site = model.site(site_name)
    module = model.denoiser.get_submodule(site.path)

    def plain() -> torch.Tensor:
        return plain_call(model, [prompt, prompt], [0, 0], steps, size)[1]

    def hooks() -> torch.Tensor:
        def restore(_m, _a, out):  # rows: [uncond clean, uncond target, cond clean, cond target]
            out = out[site.element] if site.tuple_output else out
            out[[1, 3]] = out[[0, 2]]

        handle = module.register_forward_hook(restore)
        try:
            return plain()
        finally:
            handle.remove()

    graph = Graph([Run("clean", prompt, steps=steps, height=size, width=size)])
    graph.add(Run("target", prompt, steps=steps, height=size, width=size, ops=[Restore(site.name, source="clean")]))

    def runner() -> torch.Tensor:
        return run(model, graph, progress=False).images["target"]

    return {"plain": plain, "hooks": hooks, "runner": runner}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model = interp.load(sd15_width_pipeline())
    variants = restore_variants(model, SITE, args.size, args.steps)
    assert torch.equal(variants["runner"](), variants["hooks"]()), "runner and hooks disagree"
    times = timed_interleaved(variants, repeats=args.repeats)
    print(f"SD1.5-width UNet, {args.size}px, {args.steps} steps, batch 2 + CFG; {load_note()}")
    for name, seconds in times.items():
        print(f"  {name:7} {seconds:7.3f} s   ({seconds / times['plain']:.3f} x plain)")
    ratio = times["runner"] / times["plain"]
    print(f"runner/plain = {ratio:.3f} (target <= 1.10: {'met' if ratio <= 1.10 else 'MISSED'}); "
          f"runner/hooks = {times['runner'] / times['hooks']:.3f}")


if __name__ == "__main__":
    main()
