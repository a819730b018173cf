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
from interventions.edits import is_clip, pairs, template_prompts

TEMPLATES = ("{}", "a photo of {}", "an image of {}", "a picture of {}")
LAM = 0.01


def edit(
    model: Model,
    old: str | Sequence[str] = "van gogh",
    new: str | Sequence[str] = "painting",
    layer: int = 0,
    lam: float = LAM,
    templates: Sequence[str] = TEMPLATES,
    encoder: str | None = None,
) -> Edit:
    """The DiffQuickFix edit mapping each `old` concept onto its `new` one at text layer `layer` of
    the CLIP text encoder component `encoder` (the first text encoder by default).

    `old` and `new` are one concept or lists (a single `new` serves every `old`); all pairs go into
    one solve. Raises `SubjectNotFoundError` if a concept's tokens are not found in its prompt
    (e.g. cut off by the tokenizer's length), `UnknownSiteError` for a layer the encoder lacks and
    `EditInputError` for lam <= 0 and `UnsupportedModelError` for an encoder that is not CLIP;
    nothing is written in any case.
    """
    _check_positive("lam", lam)
    component, path = out_proj(model, layer, encoder)
    keys, values = collect_pairs(model, old, new, layer, templates, component)
    name = f"{path}.weight"
    weight = model.components[component].get_parameter(name)
    metadata = {
        "method": "diffquickfix", "component": component, "layer": layer, "lam": lam,
        "concepts": [list(p) for p in pairs(old, new)], "templates": list(templates),
    }
    return Edit({name: solve_closed_form(weight, keys, values, lam)}, metadata)


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
) -> tuple[Tensor, Tensor]:
    """Keys (n, in) and values (n, out) of every (old, new) pair in every template.

    Subjects are located in every prompt (by the encoder's own tokenizer) before anything runs; old
    and new prompts share one forward pass of the text encoder, stopped at the out-projection.
    """
    component, path = out_proj(model, layer, encoder)
    index = model.adapter.text_encoders.index(component)
    olds, news = [], []
    for old_concept, new_concept in pairs(old, new):
        old_prompts, new_prompts = template_prompts(templates, old_concept), template_prompts(templates, new_concept)
        for old_prompt, new_prompt in zip(old_prompts, new_prompts):
            olds.append((old_prompt, model.locate(old_prompt, old_concept, index).last))
            news.append((new_prompt, model.locate(new_prompt, new_concept, index).last))
    inputs = _inputs(model, component, path, [p for p, _ in olds + news])
    weight = model.components[component].get_submodule(path).weight
    keys, values = [], []
    for i, ((_, old_last), (_, new_last)) in enumerate(zip(olds, news)):
        k, v = inputs[i, old_last:], inputs[len(olds) + i, new_last:]
        n = min(len(k), len(v))
        keys.append(k[:n])
        values.append(v[:n] @ weight.detach().T)
    return torch.cat(keys), torch.cat(values)


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
