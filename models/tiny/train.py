"""Train every part of the tiny model from scratch and save the weights: `python -m models.tiny.train`.

Stages, each seeded on its own and saved as soon as it is trained: vae (on renders) -> judge (on
renders and VAE reconstructions); clip (tokenizer + contrastive CLIP, both towers, on renders) ->
clip_vision (the vision tower alone, on scenes next to one-attribute-changed twins; the text tower
is the diffusion model's encoder and stays as the clip stage left it); unet (on cached VAE latents,
text from the CLIP's text tower) -> the assembled pipeline. `--stages` retrains some stages from the
saved others. grounded_unet (after unet) trains a second UNet whose object words' cross-attention
maps find their objects: two-object scenes beside each batch (`models.tiny.pairs`) and the token and
pixel losses (`models.tiny.grounding`); `--pairs`, `--grounding` and `--pixel` change its recipe for
experiments. A full run reproduces the shipped weights (up to CPU floating-point nondeterminism).

A full run uses both cores the way these small models use them best: two processes of one thread
each (a second thread speeds a stage up only 1.15-1.5x here). Phase 1 trains the VAE here and the CLIP
in a child process; phase 2 trains the UNet here and the judge and the CLIP's vision tower in a
child, then the grounded UNet here, and the UNets take both threads once the child is done.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from tqdm import tqdm
from transformers import CLIPModel

from models.tiny import CLIP_DIR, GROUNDED_UNET_DIR, JUDGE_PATH, ROOT, WEIGHTS_DIR
from models.tiny.clip import save_clip, text_encoder_of, train_clip, tune_vision
from models.tiny.grounding import GROUNDING_PAIRS, GROUNDING_WEIGHT, PIXEL_WEIGHT
from models.tiny.judge import labels, save_judge, train_judge
from models.tiny.pairs import Pair, random_pair, render_pair
from models.tiny.pipeline import assemble
from models.tiny.scenes import Scene, is_held_out, render, sample_scene
from models.tiny.tensors import from_signed, to_signed
from models.tiny.tokenizer import build_tokenizer
from models.tiny.unet import train_unet
from models.tiny.vae import decode, encode, train_vae

SEED = 0
SCENES = 16_000
PAIRS = 4_000  # two-object scenes (models.tiny.pairs), for the UNet only
STEPS = {"vae": 1500, "judge": 1000, "clip": 800, "clip_vision": 3000, "unet": 6000, "grounded_unet": 6000}
STAGES = tuple(STEPS)
# (stages run here, stages run in a child process) per phase; a phase needs only earlier phases.
PHASES = ((("vae",), ("clip",)), (("unet", "grounded_unet"), ("judge", "clip_vision")))


def render_dataset(n: int, seed: int) -> tuple[list[Scene], np.ndarray]:
    """`n` random scenes (held-out combos included; callers mask them) and their renders."""
    rng = random.Random(seed)
    scenes = [sample_scene(rng, held_out=None) for _ in range(n)]
    images = np.stack([render(s) for s in tqdm(scenes, desc="render", mininterval=2.0)])
    return scenes, images


def render_pairs(n: int, seed: int) -> tuple[list[Pair], np.ndarray]:
    """`n` random two-object scenes and their renders."""
    rng = random.Random(seed)
    pairs = [random_pair(rng) for _ in range(n)]
    return pairs, np.stack([render_pair(p)[0] for p in tqdm(pairs, desc="render pairs", mininterval=2.0)])


def main(stages: tuple[str, ...] = STAGES, scale: float = 1.0, out: Path = ROOT, threads: int = 2,
         pairs: int = GROUNDING_PAIRS, grounding: float = GROUNDING_WEIGHT, pixel: float = PIXEL_WEIGHT) -> None:
    """Train `stages` with step counts multiplied by `scale`, reading earlier stages from `out`: all
    of them in two parallel processes when `threads` >= 2, else one after another. The grounded UNet
    sees `pairs` two-object scenes beside each batch and the grounding terms at weight `grounding`
    (the pixel loss at `pixel` times it)."""
    if set(stages) == set(STAGES) and threads >= 2:
        train_in_parallel(scale, out, threads, pairs, grounding, pixel)
    else:
        run_stages(stages, scale, out, threads, pairs=pairs, grounding=grounding, pixel=pixel)


def train_in_parallel(scale: float, out: Path, threads: int, pairs: int, grounding: float, pixel: float) -> None:
    """Every stage, phase by phase, half of each phase in a one-thread child process."""
    start = time.time()
    for here, there in PHASES:
        command = [sys.executable, "-m", "models.tiny.train", "--stages", *there, "--scale", str(scale),
                   "--out", str(out), "--threads", "1"]
        child = subprocess.Popen(command, cwd=Path(__file__).resolve().parents[2])
        try:
            run_stages(here, scale, out, threads=1, on_unet_step=widen_when_done(child, threads), pairs=pairs,
                       grounding=grounding, pixel=pixel)
        except BaseException:
            child.kill()
            raise
        if child.wait() != 0:
            raise SystemExit(f"stages {' '.join(there)} failed (exit {child.returncode}); see the log above")
    print(json.dumps({"minutes_in_all": round((time.time() - start) / 60, 1)}))


def widen_when_done(child: subprocess.Popen, threads: int) -> Callable[[int], None]:
    """A step hook that gives this process `threads` threads once `child` has exited."""

    def widen(step: int) -> None:
        if torch.get_num_threads() < threads and child.poll() is not None:
            torch.set_num_threads(threads)

    return widen


def run_stages(
    stages: tuple[str, ...], scale: float, out: Path, threads: int,
    on_unet_step: Callable[[int], None] | None = None, pairs: int = GROUNDING_PAIRS,
    grounding: float = GROUNDING_WEIGHT, pixel: float = PIXEL_WEIGHT,
) -> None:
    """Train `stages` in this process, in the order of `STAGES`; the grounded UNet with `pairs` per
    batch and the grounding terms at weight `grounding` (the pixel loss at `pixel` times it)."""
    torch.set_num_threads(threads)
    steps = {k: max(1, round(v * scale)) for k, v in STEPS.items()}
    start, times = time.time(), {}
    pipeline_dir, clip_dir, judge_path = out / WEIGHTS_DIR.name, out / CLIP_DIR.name, out / JUDGE_PATH.name
    scenes, images = render_dataset(max(1024, round(SCENES * min(1.0, scale))), SEED)
    seen = np.array([not is_held_out(s) for s in scenes])
    seen_scenes = [s for s, keep in zip(scenes, seen) if keep]
    pixels = to_signed(images)

    if "vae" in stages:
        shutil.rmtree(pipeline_dir, ignore_errors=True)
        train_vae(pixels[torch.from_numpy(seen)], steps["vae"], seed=SEED).save_pretrained(str(pipeline_dir / "vae"))
        times["vae"] = time.time() - start
    unets = [stage for stage in ("unet", "grounded_unet") if stage in stages]
    if "judge" in stages or unets:
        vae = AutoencoderKL.from_pretrained(str(pipeline_dir / "vae")).eval().requires_grad_(False)
        latents = encode(vae, pixels)

    if "judge" in stages:
        recon = from_signed(decode(vae, latents))
        targets = {a: torch.cat([v, v]) for a, v in labels(scenes).items()}
        save_judge(train_judge(torch.cat([pixels, to_signed(recon)]), targets, steps["judge"], seed=SEED), judge_path)
        times["judge"] = time.time() - start

    tokenizer = build_tokenizer()
    if "clip" in stages:
        shutil.rmtree(clip_dir, ignore_errors=True)
        clip = train_clip(images[seen], seen_scenes, tokenizer, steps["clip"], seed=SEED)
        save_clip(clip, tokenizer, clip_dir)
        times["clip"] = time.time() - start
    if "clip_vision" in stages:
        clip = CLIPModel.from_pretrained(str(clip_dir))
        clip = tune_vision(clip, images[seen], seen_scenes, tokenizer, steps["clip_vision"], seed=SEED + 1)
        save_clip(clip, tokenizer, clip_dir)
        times["clip_vision"] = time.time() - start
    if unets:  # the text tower is the same before and after clip_vision, which may run meanwhile
        encoder = text_encoder_of(CLIPModel.from_pretrained(str(clip_dir)))
    for stage in unets:
        grounded = stage == "grounded_unet"
        two = None
        if grounded and pairs:
            drawn_pairs, pair_images = render_pairs(max(256, round(PAIRS * min(1.0, scale))), SEED + 1)
            two = (encode(vae, to_signed(pair_images)), drawn_pairs, pairs)
        unet = train_unet(
            latents[torch.from_numpy(seen)], seen_scenes, encoder, tokenizer, steps[stage], seed=SEED,
            on_step=on_unet_step, pairs=two, grounding=grounding if grounded else 0.0, pixel=pixel,
        )
        if grounded:
            unet.save_pretrained(str(out / GROUNDED_UNET_DIR.name), safe_serialization=True)
        else:
            assemble(vae, encoder, tokenizer, unet).save_pretrained(str(pipeline_dir), safe_serialization=True)
        times[stage] = time.time() - start
    print(json.dumps({"stages": stages, "steps": {k: steps[k] for k in stages},
                      "seconds_elapsed_after": {k: round(v) for k, v in times.items()}}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES), help="stages to (re)train")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every stage's step count (quick runs)")
    parser.add_argument("--out", type=Path, default=ROOT, help="weights folder (default: the shipped one)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (1 on a shared, busy CPU: stages then run one after another)")
    parser.add_argument("--pairs", type=int, default=GROUNDING_PAIRS, help="grounded_unet: two-object scenes beside each batch")
    parser.add_argument("--grounding", type=float, default=GROUNDING_WEIGHT,
                        help="grounded_unet: weight of the grounding terms on object words' attention (models.tiny.grounding)")
    parser.add_argument("--pixel", type=float, default=PIXEL_WEIGHT,
                        help="grounded_unet: the pixel loss's weight relative to the token loss's (0: the token loss alone)")
    args = parser.parse_args()
    main(tuple(args.stages), args.scale, args.out, args.threads, args.pairs, args.grounding, args.pixel)
