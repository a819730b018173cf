"""The tiny world's defaults for its edits: key templates in its own phrasings and the prompts an
edit must keep (UCE-style preservation), chosen from each old concept's kind.

The editors' own defaults are the papers' ("a photo of {}"), words the tiny model never saw, and
without preservation a text-encoder edit bleeds onto neighbours (a monet prompt loses its style).
`interp edit --model tiny` uses these when no templates or preservation prompts are given.
"""

from __future__ import annotations

from collections.abc import Sequence

from models.tiny.scenes import NAMED, STYLE_TEMPLATES, STYLES

STYLE_KEYS = ("in the style of {}", "a painting by {}", "a {} painting of a circle")
NAME_KEYS = ("{}", "a picture of {}", "{} in the style of pollock")
PRESERVE_WEIGHT = 1.0  # the docs/edits were made with it; 10 stops the fact update from taking
POSITIONS = {"diffquickfix": "from-subject", "locoedit": "subject+eos"}
_SUBJECTS = ("a red circle", "two blue houses")
_PLAIN = ("a red circle", "two blue squares", "a picture of a green star", "a yellow triangle in the style of painting",
          "a painting of an orange heart")


def key_templates(olds: Sequence[str]) -> tuple[str, ...]:
    """Templates for the keys: a style's phrasings, or a name's (character or fact)."""
    return STYLE_KEYS if all(o in STYLES for o in olds) else NAME_KEYS


def preserved(olds: Sequence[str], news: Sequence[str] = ()) -> list[str]:
    """Prompts whose states the edit keeps: the other styles in every style phrasing, plain
    subjects, and every character and fact phrase that is neither an old concept nor a synonym of
    one (new concepts that are names are kept too: an update must not move the value it copies)."""
    values = {NAMED[o] for o in olds if o in NAMED}
    styles = [s for s in STYLES if s != "plain" and s not in olds]
    kept = [t.format(subject=x, style=s) for s in styles for x in _SUBJECTS for t in STYLE_TEMPLATES]
    kept += _PLAIN
    names = [n for n in NAMED if n not in olds and NAMED[n] not in values] + [n for n in news if n in NAMED]
    kept += [p for n in dict.fromkeys(names) for p in (n, f"a picture of {n}")]
    return list(dict.fromkeys(kept))


def options(method: str, olds: Sequence[str], new: str) -> dict:
    """Keyword arguments of `diffquickfix.edit` / `locoedit.edit` (`method`) for this edit: key
    templates, preserved neighbours, their weight and key positions."""
    return dict(templates=key_templates(olds), preserve=preserved(olds, [new]), preserve_weight=PRESERVE_WEIGHT,
                positions=POSITIONS[method])
