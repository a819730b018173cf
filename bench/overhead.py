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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    model = interp.load(sd15_width_pipeline())
    site = model.site(SITE)
    module = model.denoiser.get_submodule(site.path)

    def plain() -> torch.Tensor:
        with torch.no_grad():
            return model.pipe([PROMPT, PROMPT], generator=model.generators([0, 0]), num_inference_steps=args.steps,
                              guidance_scale=7.5, height=args.size, width=args.size, output_type="pt").images

    def hooks() -> torch.Tensor:
        def restore(_m, _a, out):  # rows: [uncond clean, uncond target, cond clean, cond target]
            out[[1, 3]] = out[[0, 2]]

        handle = module.register_forward_hook(restore)
        try:
            return plain()
        finally:
            handle.remove()

    graph = Graph([Run("clean", PROMPT, steps=args.steps, height=args.size, width=args.size)])
    graph.add(Run("target", PROMPT, steps=args.steps, height=args.size, width=args.size,
                  ops=[Restore(SITE, source="clean")]))

    def runner() -> dict:
        return run(model, graph, progress=False).images

    assert torch.equal(runner()["target"], hooks()[1]), "runner and hooks disagree"
    times = timed_interleaved({"plain": plain, "hooks": hooks, "runner": runner}, repeats=args.repeats)
    print(f"SD1.5-width UNet, {args.size}px, {args.steps} steps, batch 2 + CFG; {load_note()}")
    for name, seconds in times.items():
        print(f"  {name:7} {seconds:7.3f} s   ({seconds / times['plain']:.3f} x plain)")
    ratio = times["runner"] / times["plain"]
    print(f"runner/plain = {ratio:.3f} (target <= 1.10: {'met' if ratio <= 1.10 else 'MISSED'}); "
          f"runner/hooks = {times['runner'] / times['hooks']:.3f}")


if __name__ == "__main__":
    main()
