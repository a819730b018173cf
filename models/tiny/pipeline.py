"""Assemble, save, load and sample the tiny `StableDiffusionPipeline`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import interp.quiet  # noqa: F401  (before diffusers, whose imports would warn without torchvision)
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from interp.progress import without_library_bars
from models.tiny.tensors import as_uint8

STEPS = 25
GUIDANCE = 7.5  # diffusers' default guidance scale; the evaluation uses it too


def inference_scheduler() -> DDIMScheduler:
    """DDIM over SD 1.x's training schedule, good at ~25 steps."""
    return DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )


def assemble(
    vae: AutoencoderKL, encoder: CLIPTextModel, tokenizer: CLIPTokenizer, unet: UNet2DConditionModel
) -> StableDiffusionPipeline:
    """A genuine `StableDiffusionPipeline` of the tiny parts, without safety checker."""
    return StableDiffusionPipeline(
        vae=vae, text_encoder=encoder, tokenizer=tokenizer, unet=unet, scheduler=inference_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def load(
    folder: Path, device: str | torch.device = "cpu", unet: Path | None = None, **kwargs: Any
) -> StableDiffusionPipeline:
    """The pipeline saved in `folder`, offline, on `device`, with its progress bars (loading and
    sampling) off; `unet`: a UNet folder that replaces the pipeline's own; `kwargs` go to
    `from_pretrained` (e.g. `torch_dtype`)."""
    with without_library_bars():
        if unet is not None:
            dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))  # the pipeline's, if the caller gives one
            kwargs["unet"] = UNet2DConditionModel.from_pretrained(str(unet), local_files_only=True,
                                                                  **({"dtype": dtype} if dtype else {}))
        pipe = StableDiffusionPipeline.from_pretrained(
            str(folder), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
            local_files_only=True, **kwargs,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def generate(
    pipe: StableDiffusionPipeline, prompts: Sequence[str], seeds: Sequence[int],
    steps: int = STEPS, guidance: float = GUIDANCE, batch: int = 32,
) -> np.ndarray:
    """uint8 images (N, H, W, 3), image i from `prompts[i]` with a generator seeded `seeds[i]`."""
    out = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds[i : i + batch]]
        result = pipe(
            list(prompts[i : i + batch]), num_inference_steps=steps, guidance_scale=guidance,
            generator=gens, output_type="np",
        )
        out.append(as_uint8(result.images))
    return np.concatenate(out)
