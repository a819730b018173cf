"""Closed-form edits on a `Model`: which component an edit targets, applying and reverting it.

Convention: an `Edit`'s parameter names are relative to the one pipeline component it changes
(DiffQuickFix: the text encoder, ``"encoder.layers.0.self_attn.out_proj.weight"``; LoCoEdit: the
denoiser, ``"up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k.weight"``), and
``edit.metadata["component"]`` names that component (``"text_encoder"``, ``"unet"``). So a saved
edit loads onto any copy of the same architecture, and `Edit.apply(component_module)` works too.
An edit also travels as a diffusers LoRA adapter (`export_lora`, `import_lora`), keyed
``"<component>.<module path>.lora_A/B.weight"`` as `pipe.load_lora_weights` reads it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from interp.editing import PRESERVE_ROLE, Delta, Edit, _check_positive
from interp.errors import EditInputError, EditMismatchError, EditStateError
from interp.model import Model, template_prefix


def component(model: Model, edit: Edit) -> nn.Module:
    """The module of `model` that `edit` changes, or `EditMismatchError` if the model has none."""
    name = edit.metadata.get("component")
    components = model.components
    if name not in components:
        raise EditMismatchError(
            f"this edit changes component {name!r}, which {model!r} does not have; its components "
            f"are {list(components)}"
        )
    return components[name]


def apply(model: Model, edit: Edit, force: bool = False) -> Model:
    """Write `edit` into `model` in place (checked first: a mismatch leaves the model untouched);
    `force` adds its change to weights other than the ones it was computed from."""
    edit.apply(component(model, edit), force=force)
    return model


def revert(model: Model, edit: Edit) -> Model:
    """Undo `apply`, bit for bit."""
    edit.revert(component(model, edit))
    return model


LORA_FILE = "pytorch_lora_weights.safetensors"  # the name `load_lora_weights(folder)` looks for


def export_lora(edit: Edit, folder: str | Path) -> dict[str, int]:
    """Write `edit` as a diffusers LoRA adapter (alpha = rank, so scale 1) into `folder`, for
    `pipe.load_lora_weights(folder)`; it reproduces the edited weights to float32 precision.
    Returns each changed matrix's rank."""
    if not edit.deltas:
        raise EditStateError("this edit does not know the weights it was computed from; apply it once or build "
                             "it with Edit(weights, base=...) before exporting")
    prefix, state = edit.metadata.get("component"), {}
    for name, delta in edit.deltas.items():
        if not name.endswith(".weight"):
            raise EditInputError(f"{name!r} is not a module's weight; a LoRA adapter changes `<module>.weight` only")
        up, down = delta.factors()
        module = f"{prefix}.{name.removesuffix('.weight')}"
        state[f"{module}.lora_A.weight"] = down.float().contiguous()
        state[f"{module}.lora_B.weight"] = up.float().contiguous()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / LORA_FILE))
    return {name: delta.rank for name, delta in edit.deltas.items()}


def import_lora(folder: str | Path, component_name: str) -> Edit:
    """The change a LoRA adapter written by `export_lora` (or any scale-1 diffusers/peft LoRA) makes to
    `component_name`, as an edit that applies to any base (an adapter records none)."""
    path = Path(folder) / LORA_FILE if Path(folder).is_dir() else Path(folder)
    state = load_file(str(path))
    prefix, deltas = f"{component_name}.", {}
    for key in state:
        if key.startswith(prefix) and key.endswith(".lora_A.weight"):
            module = key[len(prefix):-len(".lora_A.weight")]
            deltas[f"{module}.weight"] = Delta(state[f"{prefix}{module}.lora_B.weight"].double(), state[key].double())
    if not deltas:
        raise EditInputError(f"{path} changes nothing in {component_name!r}; its keys start with "
                             f"{sorted({k.split('.')[0] for k in state})}")
    return Edit.of_deltas(deltas, {}, {"method": "lora", "component": component_name})


@contextmanager
def applied(model: Model, edit: Edit) -> Iterator[Model]:
    """`edit` applied to `model` inside the block, reverted on exit (also after an error)."""
    apply(model, edit)
    try:
        yield model
    finally:
        revert(model, edit)


def is_clip(encoder: nn.Module) -> bool:
    """Whether a text encoder is a CLIP text tower, whose causal mask makes a token's state independent
    of the tokens after it (T5, in DeepFloyd IF, PixArt and SD3, is bidirectional)."""
    return getattr(encoder.config, "model_type", None) == "clip_text_model"


def as_list(concepts: str | Sequence[str], what: str) -> list[str]:
    """One concept or several, as a non-empty list of non-empty strings."""
    listed = [concepts] if isinstance(concepts, str) else list(concepts)
    if not listed or not all(isinstance(c, str) and c.strip() for c in listed):
        raise EditInputError(f"{what} must be a non-empty string or list of them, got {concepts!r}")
    return listed


def pairs(old: str | Sequence[str], new: str | Sequence[str]) -> list[tuple[str, str]]:
    """(old, new) concept pairs: equal-length lists pair up; a single `new` serves every `old`."""
    olds, news = as_list(old, "old"), as_list(new, "new")
    if len(news) == 1:
        news = news * len(olds)
    if len(olds) != len(news):
        raise EditInputError(
            f"old and new must pair up: got {len(olds)} old and {len(news)} new concepts; pass one new "
            f"concept for all, or one per old concept"
        )
    return list(zip(olds, news))


def template_prompts(templates: Sequence[str], concept: str) -> list[str]:
    """`concept` in each template ("a photo of {}"); each template needs exactly one '{}' slot."""
    check_templates(templates)
    return [t.format(concept) for t in templates]


def check_templates(templates: Sequence[str]) -> None:
    """Raise `EditInputError` unless `templates` is a non-empty list of templates (`check_template`)."""
    if isinstance(templates, str) or not templates:
        raise EditInputError(f"templates must be a non-empty list of strings with a '{{}}' slot, got {templates!r}")
    for template in templates:
        check_template(template)


def check_template(template: str, what: str = "template") -> None:
    """Raise `EditInputError` unless `template` is a string with exactly one '{}' slot."""
    if not isinstance(template, str) or template_prefix(template) is None:
        raise EditInputError(
            f"{what} {template!r} needs exactly one '{{}}' slot for the concept, e.g. 'a photo of {{}}' (write a "
            f"literal brace as '{{{{' or '}}}}')"
        )


def preserve_prompts(preserve: str | Sequence[str], weight: float) -> list[str]:
    """The preservation prompts as a list (one prompt or several; none for an empty sequence), with
    their `weight` checked to be a finite number > 0."""
    prompts = [preserve] if isinstance(preserve, str) else list(preserve)
    if not all(isinstance(p, str) and p.strip() for p in prompts):
        raise EditInputError(f"preserve must be a prompt or a list of non-empty prompts, got {preserve!r}")
    _check_positive("preserve_weight", weight, PRESERVE_ROLE)
    return prompts


# --- key positions ---------------------------------------------------------------------------------

POSITIONS = ("subject", "subject+eos", "from-subject")


@dataclass(frozen=True)
class Placed:
    """A concept placed in a template, in one tokenizer's padded sequence: its last token and the
    first EOS after it (every position from there on is EOS or padding; None if truncation cut it)."""

    prompt: str
    last: int
    eos: int | None
    length: int


def place(model: Model, template: str, concept: str, tokenizer_index: int = 0) -> Placed:
    """`concept` in `template`'s slot ('painting' in 'a painting in the style of {}' is the second
    'painting'), located by tokenizer `tokenizer_index`."""
    prompt = template_prompts([template], concept)[0]
    last = model.locate(prompt, concept, tokenizer_index, template=template).last
    ids = model.token_ids([prompt], tokenizer_index)[0].tolist()
    eos = model.tokenizers[tokenizer_index].eos_token_id
    return Placed(prompt, last, ids.index(eos, last + 1) if eos in ids[last + 1 :] else None, len(ids))


def aligned(positions: str, old: Placed, new: Placed) -> tuple[list[int], list[int]]:
    """Key positions in the old prompt and, pairwise, the positions in the new prompt whose states
    are their values.

    - "subject": the last subject token of each.
    - "from-subject": the last subject token and every later position (EOS and padding included),
      aligned from the last subject tokens; the longer run is cut.
    - "subject+eos": the last subject token, then the EOS and padding positions aligned from each
      prompt's first EOS (the longer run cut); the tokens between them are left out.
    """
    check_positions(positions)
    if positions == "subject":
        return [old.last], [new.last]
    if positions == "from-subject":
        start_old, start_new = old.last, new.last
    else:
        cut = [p.prompt for p in (old, new) if p.eos is None]
        if cut:
            raise EditInputError(
                f"positions='subject+eos' needs an EOS token after the subject, but the tokenizer cut it from "
                f"{cut}; shorten the template or use positions='subject'"
            )
        start_old, start_new = old.eos, new.eos
    n = min(old.length - start_old, new.length - start_new)
    keys, values = list(range(start_old, start_old + n)), list(range(start_new, start_new + n))
    if positions == "subject+eos":
        keys, values = [old.last, *keys], [new.last, *values]
    return keys, values


def check_positions(positions: str) -> None:
    """Raise `EditInputError` unless `positions` is one of `POSITIONS`."""
    if positions not in POSITIONS:
        raise EditInputError(f"positions must be one of {', '.join(POSITIONS)}; got {positions!r}")
