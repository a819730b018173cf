"""The bundled tiny text-to-image model: a Stable-Diffusion-shaped pipeline trained on synthetic
scenes with known attributes, its own small CLIP, and a judge that reads attributes back.

`python -m models.tiny.train` rebuilds the weights; `python -m models.tiny.evaluate` measures them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from models.tiny.scenes import (
    ATTRIBUTES,
    CAPTIONED,
    CHARACTERS,
    COLORS,
    COUNTS,
    FACTS,
    FLAGS,
    KINGS,
    LANDS,
    MARKS,
    NAMED,
    OBJECTS,
    PLAIN_TEMPLATES,
    PLURALS,
    SIZE,
    STYLE_TEMPLATES,
    STYLES,
    VALUES,
    Scene,
    caption,
    change_one,
    held_out_combos,
    held_out_named,
    is_held_out,
    named_scene,
    render,
    render_batch,
    sample_scene,
    subject,
    templates_of,
    vocabulary,
)

if TYPE_CHECKING:
    from diffusers import StableDiffusionPipeline

ROOT = Path(__file__).resolve().parent / "weights"
WEIGHTS_DIR = ROOT / "pipeline"  # StableDiffusionPipeline.save_pretrained folder
CLIP_DIR = ROOT / "clip"  # CLIPModel + CLIPProcessor folder
JUDGE_PATH = ROOT / "judge.safetensors"
# UNet2DConditionModel folder: a UNet trained with two-object scenes and the token and pixel losses,
# whose object words' cross-attention maps find their objects (`models.tiny.grounding`); the
# pipeline's own UNet's do not.
GROUNDED_UNET_DIR = ROOT / "grounded_unet"


def load_pipeline(device: str = "cpu", grounded: bool = False, root: Path = ROOT, **kwargs) -> StableDiffusionPipeline:
    """The shipped tiny `StableDiffusionPipeline` (the weights under `root`), loaded offline (progress
    bar off); `grounded`: with the grounded UNet (`GROUNDED_UNET_DIR`) in place of its own. `kwargs`
    go to `from_pretrained` (e.g. `torch_dtype`)."""
    from models.tiny.pipeline import load

    return load(root / WEIGHTS_DIR.name, device, unet=root / GROUNDED_UNET_DIR.name if grounded else None, **kwargs)


def clip_dir() -> Path:
    """Folder of the tiny CLIP, loadable by `CLIPModel.from_pretrained` / `CLIPProcessor.from_pretrained`."""
    return CLIP_DIR


def judge_images(images) -> list[dict]:
    """Attributes read from `images` (PIL images, uint8 (N, H, W, 3) arrays, or float (N, 3, H, W)
    tensors in [0, 1]): one dict per image with keys "object", "color", "style", "count".

    Not named `judge`: that is the submodule `models.tiny.judge`, which importing would rebind."""
    from models.tiny.judge import load_judge, predict

    return predict(load_judge(JUDGE_PATH), images)


__all__ = [
    "ATTRIBUTES", "CAPTIONED", "CHARACTERS", "CLIP_DIR", "COLORS", "COUNTS", "FACTS", "FLAGS", "GROUNDED_UNET_DIR", "JUDGE_PATH", "KINGS",
    "LANDS", "MARKS", "NAMED", "OBJECTS", "PLAIN_TEMPLATES", "PLURALS", "SIZE", "STYLES", "STYLE_TEMPLATES", "Scene",
    "VALUES", "WEIGHTS_DIR", "caption", "change_one", "clip_dir", "held_out_combos", "held_out_named",
    "is_held_out", "judge_images", "load_pipeline", "named_scene", "render", "render_batch", "sample_scene",
    "subject", "templates_of", "vocabulary",
]
