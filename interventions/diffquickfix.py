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

    edit = diffquickfix.edit(model, old=["van gogh", "monet"], new="painting")
    with edits.applied(model, edit):
        ...
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from interp.editing import Edit, _check_positive, solve_closed_form
from interp.errors import UnknownSiteError
from interp.model import Model
from interventions.edits import pairs, template_prompts

TEMPLATES = ("{}", "a photo of {}", "an image of {}", "a picture of {}")
LAM = 0.01


def edit(
    model: Model,
    old: str | Sequence[str] = "van gogh",
    new: str | Sequence[str] = "painting",
    layer: int = 0,
    lam: float = LAM,
    templates: Sequence[str] = TEMPLATES,
) -> Edit:
    """The DiffQuickFix edit mapping each `old` concept onto its `new` one at text layer `layer`.

    `old` and `new` are one concept or lists (a single `new` serves every `old`); all pairs go into
    one solve. Raises `SubjectNotFoundError` if a concept's tokens are not found in its prompt
    (e.g. cut off by the tokenizer's length), `UnknownSiteError` for a layer the encoder lacks and
    `EditInputError` for lam <= 0; nothing is written in any case.
    """
    _check_positive("lam", lam)
    component, path = out_proj(model, layer)
    keys, values = collect_pairs(model, old, new, layer, templates)
    name = f"{path}.weight"
    weight = model.components[component].get_parameter(name)
    metadata = {
        "method": "diffquickfix", "component": component, "layer": layer, "lam": lam,
        "concepts": [list(p) for p in pairs(old, new)], "templates": list(templates),
    }
    return Edit({name: solve_closed_form(weight, keys, values, lam)}, metadata)


def out_proj(model: Model, layer: int) -> tuple[str, str]:
    """(component, module path) of the out-projection of text self-attention layer `layer`."""
    sites = model.sites("text-self-attn", component=model.adapter.text_encoders[0])
    if not isinstance(layer, int) or not 0 <= layer < len(sites):
        raise UnknownSiteError(
            f"text-encoder layer {layer!r} does not exist: the text encoder has {len(sites)} "
            f"self-attention layers, 0 .. {len(sites) - 1} ({sites[0].name} .. {sites[-1].name})"
        )
    site = model.site(f"text-self-attn-{layer}")
    return site.component, f"{site.path}.out_proj"


def collect_pairs(
    model: Model,
    old: str | Sequence[str],
    new: str | Sequence[str],
    layer: int = 0,
    templates: Sequence[str] = TEMPLATES,
) -> tuple[Tensor, Tensor]:
    """Keys (n, in) and values (n, out) of every (old, new) pair in every template.

    Subjects are located in every prompt before anything runs; old and new prompts share one
    forward pass of the text encoder, stopped at the out-projection.
    """
    component, path = out_proj(model, layer)
    olds, news = [], []
    for old_concept, new_concept in pairs(old, new):
        old_prompts, new_prompts = template_prompts(templates, old_concept), template_prompts(templates, new_concept)
        for old_prompt, new_prompt in zip(old_prompts, new_prompts):
            olds.append((old_prompt, model.locate(old_prompt, old_concept).last))
            news.append((new_prompt, model.locate(new_prompt, new_concept).last))
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
