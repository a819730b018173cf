"""Closed-form edits on a `Model`: which component an edit targets, applying and reverting it.

Convention: an `Edit`'s parameter names are relative to the one pipeline component it changes
(DiffQuickFix: the text encoder, ``"encoder.layers.0.self_attn.out_proj.weight"``; LoCoEdit: the
denoiser, ``"up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k.weight"``), and
``edit.metadata["component"]`` names that component (``"text_encoder"``, ``"unet"``). So a saved
edit loads onto any copy of the same architecture, and `Edit.apply(component_module)` works too.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import nn

from interp.editing import Edit
from interp.errors import EditInputError, EditMismatchError
from interp.model import Model


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


def apply(model: Model, edit: Edit) -> Model:
    """Write `edit` into `model` in place (checked first: a mismatch leaves the model untouched)."""
    edit.apply(component(model, edit))
    return model


def revert(model: Model, edit: Edit) -> Model:
    """Undo `apply`, bit for bit."""
    edit.revert(component(model, edit))
    return model


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
    """`concept` in each template ("a photo of {}")."""
    if not templates or not all("{}" in t for t in templates):
        raise EditInputError(f"templates must be a non-empty list of strings with a '{{}}' slot, got {templates!r}")
    return [t.format(concept) for t in templates]
