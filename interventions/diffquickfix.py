"""DiffQuickFix (Basu et al., ICLR 2024): remove a concept by one closed-form update of the
out-projection of one text-encoder self-attention layer, with no data and no fine-tuning.

Keys are the out-projection's inputs for the old concept ("van gogh", also inside a few templates)
at its last subject token and every later position (EOS and padding included); values are the
layer's original outputs for the new concept ("painting") aligned from its own last subject
token, the longer list cut. The edited weight W* = argmin sum ||W k - v||^2 + lam ||W - W'||^2
then makes the old text read like the new one from that layer on. The bias is not changed, so
values are the outputs minus the bias (W' k_new): with the bias added back, the edited layer
reproduces the new concept's full output. The edit is returned, not applied (see
`interventions.edits.apply`); its parameter names are relative to the text encoder.

Beyond the notebook: `positions="subject"` or `"subject+eos"` narrows the keys (see
`interventions.edits.aligned`), and `preserve` prompts (UCE-style) add preserve_weight *
sum ||W p - W' p||^2 over the out-projection's inputs p of each preserved prompt at every position,
so those prompts' states stay where they were. Concepts are located in each template's slot, so
"painting" in "a painting in the style of {}" is the slot's "painting", not the first one.

Which encoder: a CLIP text tower, the first by default (SD 1.x/2.x's only one; SDXL's and SD3's
CLIP-L, or `encoder="text_encoder_2"` for their OpenCLIP bigG). Those models also read the prompt
through their other encoders, so one edit per CLIP encoder removes more. T5 encoders (DeepFloyd IF,
PixArt, SD3's third) are refused: T5 is bidirectional, so the concept is not confined to the last
subject token and the positions after it, which are the method's keys; edit those models'
denoiser with `interventions.locoedit` instead.

    edit = diffquickfix.edit(model, old=["van gogh", "monet"], new="painting")
    with edits.applied(model, edit):
        ...
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from interp.editing import Edit, _check_positive, solve_closed_form
from interp.errors import UnknownSiteError, UnsupportedModelError
from interp.model import Model
from interventions.edits import aligned, check_positions, check_templates, is_clip, pairs, place, preserve_prompts

TEMPLATES = ("{}", "a photo of {}", "an image of {}", "a picture of {}")
LAM = 0.01
POSITIONS = "from-subject"  # the notebook's keys: the last subject token and every later position


def edit(
    model: Model,
    old: str | Sequence[str] = "van gogh",
    new: str | Sequence[str] = "painting",
    layer: int = 0,
    lam: float = LAM,
    templates: Sequence[str] = TEMPLATES,
    encoder: str | None = None,
    positions: str = POSITIONS,
    preserve: str | Sequence[str] = (),
    preserve_weight: float = 1.0,
) -> Edit:
    """The DiffQuickFix edit mapping each `old` concept onto its `new` one at text layer `layer` of
    the CLIP text encoder component `encoder` (the first text encoder by default).

    `old` and `new` are one concept or lists (a single `new` serves every `old`); all pairs go into
    one solve. `positions` picks the keys (`interventions.edits.aligned`): "from-subject" (the
    notebook's), "subject" or "subject+eos". `preserve` prompts keep their states: the layer's
    output for each at every position stays what it was, weighted by `preserve_weight` (UCE-style).
    Raises `SubjectNotFoundError` if a concept's tokens are not found in its template's slot
    (e.g. cut off by the tokenizer's length), `UnknownSiteError` for a layer the encoder lacks,
    `EditInputError` for lam <= 0, bad positions or bad preservation input, and
    `UnsupportedModelError` for an encoder that is not CLIP; nothing is written in any case.
    """
    _check_positive("lam", lam)
    preserved = preserve_prompts(preserve, preserve_weight)
    component, path = out_proj(model, layer, encoder)
    keys, values, value_index = collect_indexed(model, old, new, layer, templates, component, positions)
    name = f"{path}.weight"
    weight = model.components[component].get_parameter(name)
    kept = collect_preserved(model, preserved, layer, component) if preserved else None
    metadata = {
        "method": "diffquickfix", "component": component, "layer": layer, "lam": lam,
        "concepts": [list(p) for p in pairs(old, new)], "templates": list(templates), "positions": positions,
        "preserve": preserved, "preserve_weight": preserve_weight,
    }
    solved = solve_closed_form(weight, keys, values, lam, kept, preserve_weight, value_index)
    return Edit({name: solved}, metadata, base={name: weight})


def out_proj(model: Model, layer: int, encoder: str | None = None) -> tuple[str, str]:
    """(component, module path) of the out-projection of self-attention layer `layer` of CLIP text
    encoder `encoder` (the first text encoder by default)."""
    component = clip_encoder(model, encoder)
    sites = model.sites("text-self-attn", component=component)
    if not isinstance(layer, int) or not 0 <= layer < len(sites):
        raise UnknownSiteError(
            f"text-encoder layer {layer!r} does not exist: {component} has {len(sites)} "
            f"self-attention layers, 0 .. {len(sites) - 1} ({sites[0].name} .. {sites[-1].name})"
        )
    return component, f"{sites[layer].path}.out_proj"


def clip_encoder(model: Model, encoder: str | None = None) -> str:
    """`encoder` (default: the first text encoder) checked to be one of the model's CLIP text towers."""
    names = model.adapter.text_encoders
    component = names[0] if encoder is None else encoder
    clip = [n for n in names if is_clip(model.components[n])]
    if component in clip:
        return component
    if component not in names:
        raise UnknownSiteError(f"{model!r} has no text encoder {component!r}; its text encoders are {list(names)}")
    raise UnsupportedModelError(
        f"DiffQuickFix edits a causal CLIP text encoder, but {component} of this {model.adapter.family} model is "
        f"a {type(model.components[component]).__name__}: a bidirectional encoder (T5) does not confine the "
        f"concept to the last subject token and the positions after it (the method's keys). "
        + (f"Pass encoder= one of {clip}, or use" if clip else "Use")
        + " interventions.locoedit, which edits the denoiser's key/value projections."
    )


def collect_pairs(
    model: Model,
    old: str | Sequence[str],
    new: str | Sequence[str],
    layer: int = 0,
    templates: Sequence[str] = TEMPLATES,
    encoder: str | None = None,
    positions: str = POSITIONS,
) -> tuple[Tensor, Tensor]:
    """Keys (n, in) and values (n, out) of every (old, new) pair in every template, at `positions`
    (`collect_indexed` with each key's value written out)."""
    keys, values, index = collect_indexed(model, old, new, layer, templates, encoder, positions)
    return keys, values[index]


def collect_indexed(
    model: Model,
    old: str | Sequence[str],
    new: str | Sequence[str],
    layer: int = 0,
    templates: Sequence[str] = TEMPLATES,
    encoder: str | None = None,
    positions: str = POSITIONS,
) -> tuple[Tensor, Tensor, Tensor]:
    """Keys (n, in) of every (old, new) pair in every template at `positions`, the distinct values
    (v, out) and each key's row among them (n,): a new concept shared by many old ones gives its
    values once (`solve_closed_form`'s `value_index`).

    Subjects are located in every template's slot (by the encoder's own tokenizer) before anything
    runs; the distinct old and new prompts (a shared new concept's once) share one forward pass of
    the text encoder, stopped at the out-projection. Values are the out-projection's outputs without
    its bias (W' x).
    """
    check_positions(positions)
    check_templates(templates)
    component, path = out_proj(model, layer, encoder)
    index = model.adapter.text_encoders.index(component)
    placed = [(place(model, t, old_concept, index), place(model, t, new_concept, index))
              for old_concept, new_concept in pairs(old, new) for t in templates]
    prompts = list(dict.fromkeys(p.prompt for row in placed for p in row))  # each distinct prompt once
    row = {prompt: i for i, prompt in enumerate(prompts)}
    inputs = _inputs(model, component, path, prompts)
    weight = model.components[component].get_submodule(path).weight.detach()
    targets = list(dict.fromkeys(new_placed.prompt for _, new_placed in placed))
    outputs = inputs[[row[t] for t in targets]] @ weight.T  # W' x of each new prompt, once: (targets, L, out)
    first = {t: i * outputs.shape[1] for i, t in enumerate(targets)}  # its first row in outputs.flatten(0, 1)
    keys, value_rows = [], []
    for old_placed, new_placed in placed:
        key_positions, value_positions = aligned(positions, old_placed, new_placed)
        keys.append(inputs[row[old_placed.prompt], key_positions])
        value_rows.append(first[new_placed.prompt] + torch.as_tensor(value_positions, dtype=torch.long))
    return torch.cat(keys), outputs.flatten(0, 1), torch.cat(value_rows)


def collect_preserved(model: Model, prompts: Sequence[str], layer: int = 0, encoder: str | None = None) -> Tensor:
    """Preservation keys (n, in): the out-projection's input for each prompt at every position of the
    padded sequence (every state the encoder hands on), in one forward pass."""
    component, path = out_proj(model, layer, encoder)
    return _inputs(model, component, path, list(prompts)).flatten(0, 1)


class _Collected(Exception):
    """Raised by the pre-hook to end the forward pass once the input it needs is recorded."""


def _inputs(model: Model, component: str, path: str, prompts: list[str]) -> Tensor:
    """The input of module `path` of text encoder `component` for `prompts`, (len(prompts), L, d).

    Key collection, not an intervention: a forward pre-hook records the input and stops the pass;
    it is removed whatever happens.
    """
    encoder = model.components[component]
    ids = model.token_ids(prompts, model.adapter.text_encoders.index(component)).to(encoder.device)
    recorded: list[Tensor] = []

    def record(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        recorded.append(args[0].detach())
        raise _Collected

    handle = encoder.get_submodule(path).register_forward_pre_hook(record)
    try:
        with torch.no_grad():
            encoder(ids)
    except _Collected:
        pass
    finally:
        handle.remove()
    return recorded[0]
