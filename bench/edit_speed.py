"""Benchmark: time per closed-form edit at full size, with random weights, on this machine.

Measured in one run:
(a) solve + apply (+ revert) of `interp.editing` on DiffQuickFix's shape (the 768x768 `out_proj` of
    a CLIP ViT-L/14 text-encoder layer, keys from 4 templates x ~70 positions) and LoCoEdit's
    (SD1.5 cross-attention `to_k`/`to_v`, 768 in), for 1 and for 100 concepts in one edit;
(b) key/value collection through a full-size random CLIPTextModel by the recipes' own functions
    (`interventions.diffquickfix.collect_pairs`, `interventions.locoedit.collect`);
(c) per-edit totals (collection + solve + apply) against the targets: DiffQuickFix < 0.5 s
    (`interventions.diffquickfix.edit` end to end), LoCoEdit < 1 s (its collection and solve, on
    stand-in SD1.5-shaped to_k/to_v weights), and 100 concepts in one edit < 3x one (solve + apply;
    collection grows with the number of prompts).
(d) old against new, in one run: DiffQuickFix at 100 concepts (one shared "painting"), collection
    and whole edit, against the former collection that encoded the shared new prompts once per
    concept (kept below, only here); LoCoEdit on all 16 SD1.5 layers, one concept and 100, against
    the former d x d solve of whole float64 weights; each with its error against the float64 formula
    (relative to the update and to the weight), and `solve_closed_form`'s two-GEMM form (K^T R =
    K^T V - K^T K W^T) against its former three, and the shared-values form `diffquickfix.edit` uses (the
    new concept's values once, K^T V a scatter-add).
Run from the repository root: ``python -m bench.edit_speed [--threads N] [--compare-only]``. On a machine whose
cores are busy with other work, 2 OpenMP threads can be 10x slower than 1, so use ``--threads 1``
there and read the CPU-time column; the load average is printed so the numbers can be read against it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor, nn
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

import interp
from interp.editing import Edit, solve_closed_form, solve_shared_keys
from interp.model import Model
from interventions import diffquickfix, edits, locoedit
from models.testing import dummy_sd_pipeline
from models.vocab import build_clip_tokenizer
from tests.configs import SD15_TEXT

LAM = 0.01
TEXT_DIM = 768
OLD, NEW = "van gogh", "painting"
DIFFQUICKFIX_TEMPLATES = diffquickfix.TEMPLATES
LOCOEDIT_TEMPLATES = locoedit.TEMPLATES
LOCOEDIT_TARGET = locoedit.TARGET_PROMPT  # "a {}": "a painting"
KEYS_PER_PROMPT = 70  # DiffQuickFix: the last subject token and every later position, of 77
OUT_PROJ_LAYER = 0
OUT_PROJ = f"encoder.layers.{OUT_PROJ_LAYER}.self_attn.out_proj.weight"
# SD1.5's 16 cross-attention layers in forward order (down 0-5, mid 6, up 7-15) and their widths.
SD15_CROSS_ATTENTION = (
    *(f"down_blocks.{b}.attentions.{i}" for b in range(3) for i in range(2)),
    "mid_block.attentions.0",
    *(f"up_blocks.{b}.attentions.{i}" for b in range(1, 4) for i in range(3)),
)
SD15_WIDTHS = (320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320)
LOCOGEN_WINDOW = (8, 9)  # the style window LoCoGen finds in SD1.5
CONCEPTS = tuple(f"style{a}{b}" for a in "abcd" for b in "abcdefghijklmnopqrstuvwxy")  # 100 one-token concepts


class Timing(NamedTuple):
    """Median seconds of one call: wall clock, and this process's CPU time. With one thread on a
    busy machine, CPU time is the steadier estimate of the wall time the machine would give alone."""

    wall: float
    cpu: float


def timed(fn: Callable[[], object], repeats: int = 5) -> Timing:
    """Median wall and CPU time of `fn`, after one warm-up call."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return Timing(statistics.median(walls), statistics.median(cpus))


def vit_l14_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    """CLIP ViT-L/14's text encoder (SD1.x's) from its config, random weights, eval mode."""
    torch.manual_seed(0)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    return CLIPTextModel(CLIPTextConfig(**SD15_TEXT, **ids)).eval()


def cross_attention_stub(layers: tuple[int, ...]) -> nn.Module:
    """Only the to_k/to_v weights of those SD1.5 cross-attention layers, under diffusers' parameter
    names (a full random UNet would cost 3.4 GB and minutes to build for four matrices)."""
    root = nn.Module()
    for layer in layers:
        parent = root
        for part in f"{SD15_CROSS_ATTENTION[layer]}.transformer_blocks.0.attn2".split("."):
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        for name in ("to_k", "to_v"):
            parent.add_module(name, nn.Linear(TEXT_DIM, SD15_WIDTHS[layer], bias=False))
    return root.requires_grad_(False)


def vit_l14_model(tokenizer: CLIPTokenizer) -> Model:
    """A `Model` of an SD pipeline whose text encoder is the full-size ViT-L/14 one, so the recipes'
    own collection runs at full size; its UNet is a small one with 768-d cross-attention (sites
    resolve; LoCoEdit's solve uses the SD1.5-shaped stub's weights instead)."""
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, cross_attention_dim=TEXT_DIM,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=8, norm_num_groups=8,
    )
    small = dummy_sd_pipeline()
    pipe = StableDiffusionPipeline(
        unet=unet.eval(), vae=small.vae, text_encoder=vit_l14_text_encoder(tokenizer), tokenizer=tokenizer,
        scheduler=small.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    return interp.load(pipe)


def kv_weights(stub: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The stub's to_k and to_v weights by name."""
    weights = dict(stub.named_parameters())
    return ({n: w for n, w in weights.items() if f".{p}." in n} for p in ("to_k", "to_v"))


def edit_round_trip(module: nn.Module, weights: dict[str, Tensor]) -> None:
    """Apply the solved weights as an edit, then revert it so the next repeat starts from the same
    weights (revert is a copy; it is a small part of the time)."""
    edit = Edit(weights)
    edit.apply(module)
    edit.revert(module)


def diffquickfix_solve(model: Model, keys: Tensor, values: Tensor) -> None:
    """Solve and apply DiffQuickFix's out_proj update for given keys and values."""
    text_encoder = model.pipe.text_encoder
    weight = text_encoder.get_parameter(OUT_PROJ)
    edit_round_trip(text_encoder, {OUT_PROJ: solve_closed_form(weight, keys, values, LAM)})


def diffquickfix_whole(model: Model) -> None:
    """The recipe end to end: collection, solve, apply (and revert)."""
    edit = diffquickfix.edit(model, OLD, NEW, OUT_PROJ_LAYER, LAM, DIFFQUICKFIX_TEMPLATES)
    with edits.applied(model, edit):
        pass


def locoedit_solve(stub: nn.Module, keys: Tensor, targets: Tensor) -> None:
    """Solve and apply LoCoEdit's update of every to_k/to_v in `stub` (one shared-keys solve per
    lambda): every key maps to W_old applied to its target embedding."""
    edit_round_trip(stub, locoedit.solve(*kv_weights(stub), keys, targets, LAM, LAM))


def locoedit_whole(model: Model, stub: nn.Module) -> None:
    """The recipe's collection through the full-size text encoder, then solve and apply on `stub`."""
    pairs = locoedit.collect(model, OLD, NEW, LOCOEDIT_TEMPLATES, LOCOEDIT_TARGET, layers=0)
    keys, targets = next(iter(pairs.values()))  # SD layers all read the prompt embedding: one pair serves all
    locoedit_solve(stub, keys, targets)


# --- (d) old against new -----------------------------------------------------------------------
# The former paths, kept here only for the comparison.


def former_dqf_collect(model: Model, old, new, layer: int, templates) -> tuple[Tensor, Tensor]:
    """DiffQuickFix's former collection: every (old, new) pair's two prompts, repeats included."""
    component, path = diffquickfix.out_proj(model, layer)
    placed = [(edits.place(model, t, o, 0), edits.place(model, t, n, 0)) for o, n in edits.pairs(old, new)
              for t in templates]
    inputs = diffquickfix._inputs(model, component, path, [p.prompt for row in placed for p in row])
    weight = model.components[component].get_submodule(path).weight.detach()
    keys, values = [], []
    for i, (old_placed, new_placed) in enumerate(placed):
        key_positions, value_positions = edits.aligned(diffquickfix.POSITIONS, old_placed, new_placed)
        keys.append(inputs[2 * i, key_positions])
        values.append(inputs[2 * i + 1, value_positions] @ weight.T)
    return torch.cat(keys), torch.cat(values)


def former_locoedit_solve(k_weights, v_weights, keys: Tensor, targets: Tensor, lam: float = LAM) -> dict[str, Tensor]:
    """LoCoEdit's former solve: values W' t, then the d x d float64 solve of the stacked weights."""
    solved = {}
    for weights in (k_weights, v_weights):
        values = {name: targets.to(w.dtype) @ w.detach().T for name, w in weights.items()}
        solved.update(solve_shared_keys(weights, keys, values, lam))
    return solved


def former_three_gemm_solve(weight: Tensor, keys: Tensor, values: Tensor, lam: float) -> Tensor:
    """`solve_closed_form`'s former path for n > out: residuals R = V - K W^T, then K^T R (three
    products over the n key rows: K^T K, K W^T, K^T R)."""
    w, k, v = weight.detach().double(), keys.double(), values.double()
    lhs = lam * torch.eye(k.shape[1], dtype=torch.float64) + k.T @ k
    return (w + torch.linalg.solve(lhs, k.T @ (v - k @ w.T)).T).to(weight.dtype)


def locoedit_reference(weights: dict[str, Tensor], keys: Tensor, targets: Tensor, lam: float) -> dict[str, Tensor]:
    """The float64 formula W* = W' + ((T - K) W'^T)^T K (lam I + K^T K)^-1, every matrix in float64."""
    k, t = keys.double(), targets.double()
    gain = torch.linalg.solve(lam * torch.eye(k.shape[1], dtype=torch.float64) + k.T @ k, k.T).T  # K A^-1
    return {n: w.detach().double() + ((t - k) @ w.detach().double().T).T @ gain for n, w in weights.items()}


def errors(solved: dict[str, Tensor], reference: dict[str, Tensor], weights: dict[str, Tensor]) -> tuple[float, float]:
    """Largest error against the float64 reference, relative to the update and to the weight."""
    solved, weights = {n: t.detach() for n, t in solved.items()}, {n: t.detach() for n, t in weights.items()}
    update = max(float((solved[n].double() - reference[n]).norm() / (reference[n] - weights[n].double()).norm())
                 for n in reference)
    weight = max(float((solved[n].double() - reference[n]).norm() / reference[n].norm()) for n in reference)
    return update, weight


def old_against_new(model: Model, stub: nn.Module) -> None:
    """(d): DiffQuickFix at 100 concepts and LoCoEdit on all 16 layers, former path against current."""
    concepts = list(CONCEPTS)
    print(f"\n(d) old against new ({os.getloadavg()[0]:.1f} load average)")

    def new_collect() -> tuple[Tensor, Tensor]:
        return diffquickfix.collect_pairs(model, concepts, NEW, OUT_PROJ_LAYER, DIFFQUICKFIX_TEMPLATES)

    def old_collect() -> tuple[Tensor, Tensor]:
        return former_dqf_collect(model, concepts, NEW, OUT_PROJ_LAYER, DIFFQUICKFIX_TEMPLATES)

    (k_new, v_new), (k_old, v_old) = new_collect(), old_collect()
    same = max(float((k_new - k_old).abs().max()), float((v_new - v_old).abs().max()))
    weight = model.pipe.text_encoder.get_parameter(OUT_PROJ)
    t = {"collect old": timed(old_collect, 3), "collect new": timed(new_collect, 3)}
    t["solve (3 GEMMs, former)"] = timed(lambda: former_three_gemm_solve(weight, k_new, v_new, LAM), 3)
    t["solve (2 GEMMs, interp.editing)"] = timed(lambda: solve_closed_form(weight, k_new, v_new, LAM), 3)
    k64 = k_new.double()
    gain = torch.linalg.solve(LAM * torch.eye(k64.shape[1], dtype=torch.float64) + k64.T @ k64, k64.T).T  # K A^-1
    w64 = weight.detach().double()
    exact = {OUT_PROJ: w64 + (v_new.double() - k64 @ w64.T).T @ gain}  # the float64 formula, term by term
    keys, distinct, index = diffquickfix.collect_indexed(model, concepts, NEW, OUT_PROJ_LAYER, DIFFQUICKFIX_TEMPLATES)
    t["solve (shared values, diffquickfix.edit's)"] = timed(
        lambda: solve_closed_form(weight, keys, distinct, LAM, value_index=index), 3)
    for label, got in (("3 GEMMs (former)", former_three_gemm_solve(weight, k_new, v_new, LAM)),
                       ("2 GEMMs (interp.editing)", solve_closed_form(weight, k_new, v_new, LAM)),
                       ("shared values (K^T V by scatter-add)",
                        solve_closed_form(weight, keys, distinct, LAM, value_index=index))):
        update, whole = errors({OUT_PROJ: got}, exact, {OUT_PROJ: weight})
        print(f"  DiffQuickFix solve, {label}: error {update:.1e} of the update, {whole:.1e} of the weight")
    t["edit old (old collect + 3-GEMM solve)"] = timed(
        lambda: former_three_gemm_solve(weight, *old_collect(), LAM), 3)
    t["edit new (diffquickfix.edit)"] = timed(
        lambda: diffquickfix.edit(model, concepts, NEW, OUT_PROJ_LAYER, LAM, DIFFQUICKFIX_TEMPLATES), 3)
    print(f"  DiffQuickFix, 100 concepts -> '{NEW}', {len(k_new)} keys; old and new keys/values differ by "
          f"at most {same:.1e}")
    for label, timing in t.items():
        print(f"    {label:<40} wall {timing.wall * 1000:8.1f} ms  cpu {timing.cpu * 1000:8.1f} ms")
    for label, a, b in (("collection", "collect old", "collect new"),
                        ("whole edit", "edit old (old collect + 3-GEMM solve)", "edit new (diffquickfix.edit)"),
                        ("solve", "solve (3 GEMMs, former)", "solve (2 GEMMs, interp.editing)"),
                        ("solve, shared values", "solve (3 GEMMs, former)", "solve (shared values, diffquickfix.edit's)")):
        print(f"  DiffQuickFix {label} old/new: wall {t[a].wall / t[b].wall:.2f}x, cpu {t[a].cpu / t[b].cpu:.2f}x")

    k_weights, v_weights = kv_weights(stub)
    weights = {**k_weights, **v_weights}
    for label, old in (("1 concept", OLD), ("100 concepts", concepts)):
        collected = locoedit.collect(model, old, NEW, LOCOEDIT_TEMPLATES, LOCOEDIT_TARGET, layers=0)
        keys, targets = next(iter(collected.values()))
        reference = locoedit_reference(weights, keys, targets, LAM)
        former = former_locoedit_solve(k_weights, v_weights, keys, targets)
        current = locoedit.solve(k_weights, v_weights, keys, targets, LAM, LAM)
        old_t = timed(lambda: former_locoedit_solve(k_weights, v_weights, keys, targets), 3)
        new_t = timed(lambda: locoedit.solve(k_weights, v_weights, keys, targets, LAM, LAM), 3)
        print(f"  LoCoEdit all 16 layers (32 matrices), {label} ({len(keys)} keys): old {old_t.wall * 1000:.1f} ms "
              f"(cpu {old_t.cpu * 1000:.1f}), new {new_t.wall * 1000:.1f} ms (cpu {new_t.cpu * 1000:.1f}): "
              f"wall {old_t.wall / new_t.wall:.2f}x, cpu {old_t.cpu / new_t.cpu:.2f}x")
        for name, solved in (("old", former), ("new", current)):
            update, whole = errors(solved, reference, weights)
            print(f"    {name} error against float64: {update:.1e} of the update, {whole:.1e} of the weight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--compare-only", action="store_true", help="only (d): old against new")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, medians of 5 after a warm-up, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n"
    )
    words = {w for t in (*DIFFQUICKFIX_TEMPLATES, *LOCOEDIT_TEMPLATES) for w in t.format(f"{OLD} {NEW}").split()}
    tokenizer = build_clip_tokenizer(sorted(words | set(CONCEPTS)), max_length=77)
    start = time.perf_counter()
    model = vit_l14_model(tokenizer)
    model.sites()  # the one-off meta pass that orders sites, outside the timings
    print(f"built ViT-L/14 text encoder (random weights) in {time.perf_counter() - start:.1f} s")
    window, all_layers = cross_attention_stub(LOCOGEN_WINDOW), cross_attention_stub(tuple(range(16)))
    g = torch.Generator().manual_seed(0)
    if args.compare_only:
        old_against_new(model, all_layers)
        print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
        return

    # (b) key/value collection through the full-size text encoder, by the recipes' own functions.
    def dqf_collect() -> tuple[Tensor, Tensor]:
        return diffquickfix.collect_pairs(model, OLD, NEW, OUT_PROJ_LAYER, DIFFQUICKFIX_TEMPLATES)

    keys, values = dqf_collect()
    t = {
        "dqf_collect": timed(dqf_collect),
        "loco_collect": timed(
            lambda: locoedit.collect(model, OLD, NEW, LOCOEDIT_TEMPLATES, LOCOEDIT_TARGET, layers=0)
        ),
    }
    print(f"\nDiffQuickFix keys for one concept: {tuple(keys.shape)} (4 templates x positions after the subject)")

    # (a) solve + apply, 1 and 100 concepts in one edit (random keys of the real shapes).
    for concepts in (1, 100):
        n_dqf = concepts * len(keys)
        k_dqf, v_dqf = torch.randn(n_dqf, TEXT_DIM, generator=g), torch.randn(n_dqf, TEXT_DIM, generator=g)
        t[f"dqf_solve_{concepts}"] = timed(lambda: diffquickfix_solve(model, k_dqf, v_dqf))
        n_loco = concepts * len(LOCOEDIT_TEMPLATES)
        k_loco, targets = torch.randn(n_loco, TEXT_DIM, generator=g), torch.randn(n_loco, TEXT_DIM, generator=g)
        for label, stub in (("loco", window), ("loco16", all_layers)):
            t[f"{label}_solve_{concepts}"] = timed(lambda: locoedit_solve(stub, k_loco, targets))

    # (c) whole edits for one concept: collection + solve + apply.
    t["dqf_total"] = timed(lambda: diffquickfix_whole(model))
    t["loco_total"] = timed(lambda: locoedit_whole(model, window))
    report(t, len(keys))
    old_against_new(model, all_layers)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


def report(t: dict[str, Timing], keys_per_concept: int) -> None:
    """Print the times, the ratios and the targets, by wall clock and by CPU time."""
    rows = [
        ("key/value collection, DiffQuickFix, 8 prompts x 77, forward stopped at layer 0", "dqf_collect"),
        ("key/target collection, LoCoEdit, 5 prompts, 12 layers, up to the last subject token", "loco_collect"),
        (f"solve+apply+revert, DiffQuickFix 768x768, 1 concept ({keys_per_concept} keys)", "dqf_solve_1"),
        (f"solve+apply+revert, DiffQuickFix 768x768, 100 concepts ({100 * keys_per_concept} keys)", "dqf_solve_100"),
        ("solve+apply+revert, LoCoEdit layers 8-9 (4 x 1280x768), 1 concept (4 keys)", "loco_solve_1"),
        ("solve+apply+revert, LoCoEdit layers 8-9 (4 x 1280x768), 100 concepts (400 keys)", "loco_solve_100"),
        ("solve+apply+revert, all 16 cross-attn layers (32 matrices), 1 concept", "loco16_solve_1"),
        ("solve+apply+revert, all 16 cross-attn layers (32 matrices), 100 concepts", "loco16_solve_100"),
        ("whole edit, DiffQuickFix (interventions.diffquickfix.edit + apply/revert), 1 concept", "dqf_total"),
        ("whole edit, LoCoEdit layers 8-9 (collect + solve + apply/revert), 1 concept", "loco_total"),
    ]
    width = max(len(label) for label, _ in rows)
    print(f"  {'':<{width}}  {'wall ms':>9}  {'cpu ms':>9}")
    for label, key in rows:
        print(f"  {label:<{width}}  {t[key].wall * 1000:9.1f}  {t[key].cpu * 1000:9.1f}")

    def ratio(a: str, b: str) -> str:
        return f"wall {t[a].wall / t[b].wall:6.2f}x, cpu {t[a].cpu / t[b].cpu:6.2f}x"

    print("\nsolve+apply, 100 concepts in one edit / 1 concept (target < 3x):")
    for label, key in (("DiffQuickFix", "dqf"), ("LoCoEdit 8-9", "loco"), ("LoCoEdit all 16", "loco16")):
        print(f"  {label:<16} {ratio(f'{key}_solve_100', f'{key}_solve_1')}")
    print("\ntargets (one concept, whole edit):")
    for label, key, target in (("DiffQuickFix", "dqf_total", 0.5), ("LoCoEdit", "loco_total", 1.0)):
        verdict = "met" if max(t[key]) < target else "met by cpu time only" if t[key].cpu < target else "MISSED"
        print(f"  {label:<12} wall {t[key].wall:.3f} s, cpu {t[key].cpu:.3f} s (target < {target} s): {verdict}")


if __name__ == "__main__":
    main()
