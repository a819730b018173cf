"""Edit evaluation as a recipe: does a saved edit change its concept, does the change carry to
other phrasings, and what does it leave alone? Measured by the tiny world's judge on held-out
prompts, against the unedited model and two controls, every rate with a 95% Wilson interval.

Per concept of the edit (its metadata's "concepts": [[old, new], ...]), three groups of
`images_per_group` (prompt, seed) images each, prompts drawn from the world's captions (seen
combinations only, `is_held_out`) and spread evenly over their sources:
- efficacy: the concept in its canonical phrasing: a style as "{subject} in the style of {style}"
  over every generic subject; a character or a fact by itself in the plain phrasings ("wumbo",
  "a picture of wumbo", ...);
- generalization: other phrasings of it: a style in its other templates ("a van gogh painting of
  two red stars") and on named subjects; a character in every style; a fact's synonym ("the ruler
  of zembla") in every phrasing, and the fact itself in every style;
- specificity: neighbours that do not name it: generic subjects in the other styles, plain
  generic subjects, the other characters, the other facts.
Efficacy and generalization measure the concept (style: judged in that style, and in the new one
if `new` is a style; character: its mark, and its object kept; fact: its old value, object and
color, and the new value `new` stands for, a world phrase or caption); specificity measures every
judged attribute against what each prompt names (`parse_caption`).

Held out: every prompt the edit was built from (its templates filled with each concept, its target
and preservation prompts: every string its metadata records) is left out of every group; the
result lists those it left out.

Conditions: the unedited model, the edit, and two controls, the same recipe rebuilt from the edit's
metadata (same editor, concepts, templates, lambdas, ...) at other layers:
- "all layers": LoCoEdit at every cross-attention layer; DiffQuickFix at every self-attention layer
  of the same text encoder (each layer's update solved on the unedited encoder, as the method
  does for one layer, and all applied together);
- "random layer": LoCoEdit at a random window of as many consecutive cross-attention layers as the
  edit has (not the edit's own); DiffQuickFix at a random other layer (`control_seed`).
A control that cannot be built (an unknown method, an edit that already covers every layer) is
skipped and the result says why. Each condition's images come from one batched graph; every edit
is applied only inside `edits.applied`, so the weights are restored even when a step fails.

    evaluation = evaluate_edit(model, Edit.load("van_gogh.safetensors"))
    print(evaluation.table())
    evaluation.save("eval/")
"""

from __future__ import annotations

import inspect
import json
import math
import random
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from interp.editing import Edit
from interp.errors import EditInputError, InterpError, ResultFormatError
from interp.model import Model
from interp.stats import Interval, wilson
from interventions import diffquickfix, edits, locoedit
from interventions.evaluate import GUIDANCE, STEPS, Judge, Unit, judge_units, tiny_judge
from models.tiny import (
    ATTRIBUTES, CHARACTERS, COLORS, COUNTS, FACTS, NAMED, OBJECTS, STYLES, Scene, caption, is_held_out, named_scene,
    templates_of,
)
from models.tiny.scenes import parse_caption

FORMAT = "interp.edit-evaluation/1"
IMAGES_PER_GROUP = 128
GROUPS = ("efficacy", "generalization", "specificity")
UNEDITED, EDITED, ALL_LAYERS, RANDOM_LAYER = "unedited", "edited", "all layers", "random layer"
EDITORS: dict[str, Callable[..., Edit]] = {"diffquickfix": diffquickfix.edit, "locoedit": locoedit.edit}
LAYER_ARGUMENT = {"diffquickfix": "layer", "locoedit": "layers"}  # where each editor puts its edit
REPRODUCE_TOLERANCE = 1e-3  # rebuilt vs saved edit, relative to the edit's largest weight change


@dataclass(frozen=True)
class Concept:
    """One (old, new) pair of an edit and the kind of knowledge `old` is: style, character or fact."""

    old: str
    new: str
    kind: str

    @classmethod
    def of(cls, old: str, new: str) -> Concept:
        """The pair with its kind found in the tiny world, or `ValueError` naming what the judge reads."""
        if old in STYLES and old != "plain":
            return cls(old, new, "style")
        if old in CHARACTERS:
            return cls(old, new, "character")
        if old in FACTS:
            return cls(old, new, "fact")
        raise ValueError(
            f"{old!r} is not a concept the tiny world's judge can read; evaluate a style "
            f"{[s for s in STYLES if s != 'plain']}, a character {sorted(CHARACTERS)} or a fact {sorted(FACTS)}"
        )


@dataclass(frozen=True)
class Measure:
    """A rate over a group's images: the share judged to have `values` for `attributes` (fixed
    values), or with `values` None, as each image's own prompt names them (rows whose prompt does
    not name them all, e.g. a colorless caption for color, are not counted)."""

    label: str
    attributes: tuple[str, ...]
    values: Mapping[str, object] | None = None

    def count(self, predictions: Sequence[Mapping], expected: Sequence[Mapping]) -> tuple[int, int]:
        """(hits, n) over the rows of one group."""
        hits = n = 0
        for predicted, named in zip(predictions, expected):
            wanted = self.values if self.values is not None else named
            if all(a in wanted for a in self.attributes):
                n += 1
                hits += all(predicted[a] == wanted[a] for a in self.attributes)
        return hits, n


def fixed(attributes: Mapping[str, object], label: str) -> Measure:
    """A measure of the share judged to have these attribute values."""
    return Measure(label, tuple(attributes), dict(attributes))


@dataclass(frozen=True)
class Group:
    """One group of one concept: its (prompt, seed) units and what is measured on them."""

    concept: str
    name: str
    units: tuple[Unit, ...]
    measures: tuple[Measure, ...]


@dataclass(frozen=True)
class Row:
    """One measure of one group: (hits, n) per condition; None where the condition was not run."""

    concept: str
    group: str
    measure: str
    counts: dict[str, tuple[int, int] | None]

    def interval(self, condition: str) -> Interval | None:
        """The rate under `condition` with its 95% Wilson interval (None if not run or n = 0)."""
        counted = self.counts.get(condition)
        return None if counted is None or counted[1] == 0 else wilson(*counted)


@dataclass
class EditEvaluation:
    """Rates of every (concept, group, measure) row under each condition, with what made them."""

    edit: dict[str, Any]  # the edit's metadata
    concepts: list[Concept]
    conditions: list[str]
    rows: list[Row]
    controls: dict[str, dict[str, Any]]  # condition -> {"layers": ...} or {"skipped": why}
    excluded: list[str]  # world prompts left out because the edit was built from them
    notes: list[str]
    settings: dict[str, Any]
    units: dict[str, list[Unit]]  # "concept / group" -> its (prompt, seed) units

    def row(self, concept: str, group: str, measure: str) -> Row:
        """The row of `measure` in `group` of `concept`, or `KeyError` listing the rows."""
        for row in self.rows:
            if (row.concept, row.group, row.measure) == (concept, group, measure):
                return row
        raise KeyError(f"no row ({concept!r}, {group!r}, {measure!r}); rows: "
                       f"{[(r.concept, r.group, r.measure) for r in self.rows]}")

    def table(self) -> str:
        """The rows as text: group x condition, each a rate [low, high] (n), then the notes."""
        head = ["concept", "group", "measure", *self.conditions]
        body = [[r.concept, r.group, r.measure, *(_cell(r.interval(c)) for c in self.conditions)] for r in self.rows]
        widths = [max(len(line[i]) for line in [head, *body]) for i in range(len(head))]
        lines = ["  ".join(text.ljust(w) for text, w in zip(line, widths)).rstrip() for line in [head, *body]]
        return "\n".join([_title(self.edit), *lines, *(f"- {note}" for note in self.notes)])

    def save(self, folder: str | Path) -> Path:
        """Write `result.json` under `folder` (created if missing); returns its path."""
        path = Path(folder) / "result.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        document = {"format": FORMAT, **asdict(self),
                    "intervals": [{c: asdict(i) if (i := r.interval(c)) else None for c in self.conditions}
                                  for r in self.rows]}
        path.write_text(json.dumps(document, indent=1))
        return path

    @classmethod
    def load(cls, folder: str | Path) -> EditEvaluation:
        """Read an evaluation written by `save` (intervals are recomputed from the counts)."""
        path = Path(folder) / "result.json"
        document = json.loads(path.read_text())
        if document.pop("format", None) != FORMAT:
            raise ResultFormatError(f"{path} is not an edit evaluation ({FORMAT}); write one with EditEvaluation.save")
        document.pop("intervals")
        return cls(
            **{**document, "concepts": [Concept(**c) for c in document["concepts"]],
               "rows": [Row(r["concept"], r["group"], r["measure"],
                            {k: tuple(v) if v else None for k, v in r["counts"].items()}) for r in document["rows"]],
               "units": {k: [tuple(u) for u in v] for k, v in document["units"].items()}},
        )


def evaluate_edit(
    model: Model,
    edit: Edit,
    concepts: str | Sequence[str] | None = None,
    images_per_group: int = IMAGES_PER_GROUP,
    seed: int = 0,
    controls: bool = True,
    control_seed: int = 0,
    judge: Judge = tiny_judge,
    steps: int = STEPS,
    guidance_scale: float = GUIDANCE,
) -> EditEvaluation:
    """Evaluate `edit` on `model` (the unedited model it was made for): efficacy, generalization and
    specificity of each of its concepts (`concepts`: old concepts to keep, default all), each group
    `images_per_group` images at seeds from `seed` on, under the unedited model, the edit and, with
    `controls`, the same recipe at every layer and at a random one (see the module docstring).

    Raises `ValueError` for a concept the judge cannot read or that the edit does not hold, or an
    edit already applied to `model`, and `EditInputError` for an edit with no concepts; the model's
    weights are restored in any case.
    """
    plan = plan_evaluation(model, edit, concepts, images_per_group, seed, controls, control_seed)
    counts = {c: _measure(model, e, plan.groups, judge, steps, guidance_scale) for c, e in plan.runs.items()}
    rows = [Row(g.concept, g.name, m.label, {c: counts[c][i][j] if c in counts else None for c in plan.conditions})
            for i, g in enumerate(plan.groups) for j, m in enumerate(g.measures)]
    return EditEvaluation(
        dict(edit.metadata), plan.concepts, plan.conditions, rows, plan.control_records(), plan.excluded, plan.notes,
        {"images_per_group": images_per_group, "seed": seed, "control_seed": control_seed, "steps": steps,
         "guidance_scale": guidance_scale},
        {f"{g.concept} / {g.name}": list(g.units) for g in plan.groups},
    )


@dataclass
class Plan:
    """What an evaluation generates, decided before any image is: the concepts, their groups, the
    world prompts held out, the controls built, each condition's edit (None: unedited) and the notes."""

    concepts: list[Concept]
    groups: list[Group]
    excluded: list[str]
    controls: dict[str, dict[str, Any]]  # condition -> {"edit": ..., "layers": ...} or {"skipped": why}
    runs: dict[str, Edit | None]
    notes: list[str]

    @property
    def conditions(self) -> list[str]:
        return [UNEDITED, EDITED, *self.controls]

    def control_records(self) -> dict[str, dict[str, Any]]:
        """The controls as results keep them: without their edits."""
        return {c: {k: v for k, v in b.items() if k != "edit"} for c, b in self.controls.items()}


def plan_evaluation(
    model: Model, edit: Edit, concepts: str | Sequence[str] | None = None, images_per_group: int = IMAGES_PER_GROUP,
    seed: int = 0, controls: bool = True, control_seed: int = 0,
) -> Plan:
    """The `Plan` of `evaluate_edit` (and of its sweep), checked: raises as `evaluate_edit` does."""
    if images_per_group < 1:
        raise ValueError(f"images_per_group must be >= 1, got {images_per_group}")
    if edit.is_applied(edits.component(model, edit)):
        raise ValueError("the edit is applied to this model; evaluate it on the unedited model (edits.revert first): "
                         "the unedited condition and the controls are built from the model as it is")
    pairs = chosen_concepts(edit.metadata, concepts)
    used = edit_prompts(edit.metadata)
    planned = [plan_groups(c, used, images_per_group, seed, edited_concepts(edit.metadata)) for c in pairs]
    groups = [g for gs, _ in planned for g in gs]
    excluded = sorted({p for _, left_out in planned for p in left_out})
    check_held_out([p for g in groups for p, _ in g.units], edit)
    built = build_controls(model, edit, control_seed) if controls else {}
    runs = {UNEDITED: None, EDITED: edit, **{c: b["edit"] for c, b in built.items() if "edit" in b}}
    notes = _control_notes(built) + (recipe_notes(model, edit) if len(runs) > len((UNEDITED, EDITED)) else [])
    if excluded:
        notes.append(f"held out: {len(excluded)} world prompt(s) the edit was built from were left out: "
                     f"{', '.join(repr(p) for p in excluded)}")
    return Plan(pairs, groups, excluded, built, runs, notes)


def chosen_concepts(metadata: Mapping[str, Any], concepts: str | Sequence[str] | None = None) -> list[Concept]:
    """The edit's (old, new) pairs as `Concept`s, only those whose old concept is in `concepts` if given."""
    recorded = metadata.get("concepts")
    if not recorded:
        raise EditInputError("this edit records no concepts (metadata 'concepts': [[old, new], ...]); "
                             "make it with interventions.diffquickfix or interventions.locoedit")
    pairs = [Concept.of(old, new) for old, new in recorded]
    if concepts is None:
        return pairs
    wanted = [concepts] if isinstance(concepts, str) else list(concepts)
    missing = [c for c in wanted if c not in {p.old for p in pairs}]
    if missing or not wanted:
        raise ValueError(f"the edit does not change {missing or wanted}; its concepts are {[p.old for p in pairs]}")
    return [p for p in pairs if p.old in wanted]


def edited_concepts(metadata: Mapping[str, Any]) -> list[str]:
    """Every old concept the edit changes (whichever of them are evaluated)."""
    return [old for old, _ in metadata.get("concepts") or ()]


def edit_prompts(metadata: Mapping[str, Any]) -> frozenset[str]:
    """Every prompt the edit was built from, normalised (`_normal`): each string its metadata holds
    (templates, a target prompt, preservation prompts, at any depth), a template ("a photo of {}")
    filled with each old and new concept. Strings that are no prompts (method and layer names) never
    coincide with a world caption, so they can stay in."""
    concepts = [c for pair in metadata.get("concepts", ()) for c in pair]
    prompts = set(concepts)
    for text in _strings({k: v for k, v in metadata.items() if k != "concepts"}):
        if "{}" in text:
            prompts.update(text.replace("{}", c) for c in concepts)
        else:
            prompts.add(text)
    return frozenset(map(_normal, prompts))


def check_held_out(prompts: Iterable[str], edit: Edit) -> None:
    """Raise `ValueError` if any of `prompts` is one the edit was built from (a key, target or
    preservation prompt): such a prompt measures what the edit was fit to, not what it learned."""
    used = edit_prompts(edit.metadata)
    clashes = sorted({p for p in prompts if _normal(p) in used})
    if clashes:
        raise ValueError(f"evaluation prompts must be held out, but the edit was built from {clashes}; "
                         f"leave them out (evaluate_edit does) or edit with other templates")


def plan_groups(concept: Concept, used: frozenset[str], images: int, seed: int, edited: Collection[str] = ()
                ) -> tuple[list[Group], list[str]]:
    """The concept's groups (those with any prompt left) and the world prompts left out of them
    because they are in `used`. `edited`: every old concept of the edit, none of which a neighbour
    names (in an edit of van gogh and monet, a monet prompt is not van gogh's neighbour)."""
    groups, excluded = [], []
    for name, (strata, measures) in _sources(concept, edited).items():
        pool = _interleave([[p for p in s if _normal(p) not in used] for s in strata], random.Random(seed))
        excluded += [p for s in strata for p in s if _normal(p) in used]
        if pool:
            groups.append(Group(concept.old, name, _units(pool, images, seed), measures))
    return groups, excluded


def build_controls(model: Model, edit: Edit, seed: int = 0) -> dict[str, dict[str, Any]]:
    """The two controls, rebuilt on the (unedited) `model` from the edit's metadata: per condition,
    {"edit": Edit, "layers": where} or {"skipped": why}."""
    try:
        every, own = layer_choices(model, edit.metadata)
    except (InterpError, KeyError, ValueError) as error:
        return dict.fromkeys((ALL_LAYERS, RANDOM_LAYER), {"skipped": f"the edit's layers cannot be read ({error})"})
    others = [list(w) for w in _windows(every, len(own)) if set(w) != set(own)]
    return {
        ALL_LAYERS: _control(model, edit.metadata, every) if set(every) != set(own)
        else {"skipped": "the edit already covers every layer it can edit"},
        RANDOM_LAYER: _control(model, edit.metadata, random.Random(seed).choice(others)) if others
        else {"skipped": f"no other window of {len(own)} layer(s) exists"},
    }


def _control(model: Model, metadata: Mapping[str, Any], layers: list) -> dict[str, Any]:
    """{"edit", "layers"} of the edit's recipe at `layers`, or {"skipped": why} if the editor refuses."""
    try:
        return {"edit": edit_at(model, metadata, layers), "layers": layers}
    except (InterpError, KeyError, ValueError, TypeError) as error:
        return {"skipped": f"rebuilding it failed: {error}"}


def recipe_notes(model: Model, edit: Edit) -> list[str]:
    """Whether the controls' recipe is the edit's: metadata no editor argument takes, and how far
    the recipe rebuilt at the edit's own layers is from the edit (relative to its largest change)."""
    metadata = edit.metadata
    parameters = inspect.signature(EDITORS[_method(metadata)]).parameters
    unused = sorted(set(metadata) - set(parameters) - {"method", "component", "concepts"})
    notes = [f"the controls were rebuilt without metadata {unused}, which names no argument of "
             f"{metadata['method']}.edit"] if unused else []
    module = edits.component(model, edit)
    rebuilt = rebuild(model, metadata).weights  # at its own layers, as recorded
    weights = edit.weights_on(module)
    if rebuilt.keys() != weights.keys():
        return [*notes, f"the recipe rebuilt at the edit's own layers changes {sorted(rebuilt)}, not the edit's "
                        f"{sorted(weights)}: the controls may differ from it in more than their layers"]
    change = max(float((w - module.get_parameter(n).detach()).abs().max()) for n, w in weights.items())
    gap = max(float((rebuilt[n] - w).abs().max()) for n, w in weights.items()) / max(change, 1e-30)
    verdict = "reproduces it" if gap <= REPRODUCE_TOLERANCE else "does not reproduce it: the controls may differ " \
                                                                 "from it in more than their layers"
    return [*notes, f"the recipe rebuilt at the edit's own layers {verdict} (difference {gap:.1e} of the edit's "
                    f"largest weight change)"]


def layer_choices(model: Model, metadata: Mapping[str, Any]) -> tuple[list, list]:
    """(every layer the edit's method can edit, the edit's own), as its editor names them:
    cross-attention site names for LoCoEdit, text self-attention layer numbers for DiffQuickFix."""
    method = _method(metadata)
    if method == "locoedit":  # layers: one window, or one per concept (their union is the edit's)
        layers = metadata["layers"]
        own = {n for w in layers.values() for n in w} if isinstance(layers, Mapping) else set(layers)
        every = [s.name for s in model.sites("cross-attn")]
        return every, [n for n in every if n in own]
    n = len(model.sites("text-self-attn", component=metadata["component"]))
    return list(range(n)), [metadata["layer"]]


def edit_at(model: Model, metadata: Mapping[str, Any], layers: list) -> Edit:
    """The edit's recipe (editor and arguments from `metadata`) at `layers` instead of its own.
    DiffQuickFix edits one layer per call: its layers are solved one by one and joined."""
    method = _method(metadata)
    argument = LAYER_ARGUMENT[method]
    if argument == "layers":
        return rebuild(model, metadata, layers=layers)
    parts = [rebuild(model, metadata, **{argument: layer}) for layer in layers]
    return Edit({n: w for part in parts for n, w in part.weights.items()},
                {**parts[0].metadata, argument: layers[0] if len(layers) == 1 else layers})


def rebuild(model: Model, metadata: Mapping[str, Any], **override: Any) -> Edit:
    """The edit `metadata` describes, recomputed by the editor that made it (`override` replaces
    arguments, e.g. layers)."""
    return EDITORS[_method(metadata)](model, **{**editor_arguments(metadata), **override})


def editor_arguments(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The editor's keyword arguments that `metadata` records: old and new from "concepts", the
    encoder from "component" (DiffQuickFix), every other key that names a parameter of the editor."""
    parameters = inspect.signature(EDITORS[_method(metadata)]).parameters
    arguments = {k: v for k, v in metadata.items() if k in parameters and k not in ("model", "old", "new")}
    olds, news = zip(*metadata["concepts"])
    arguments.update(old=list(olds), new=list(news))
    if "encoder" in parameters and "component" in metadata:
        arguments["encoder"] = metadata["component"]
    return arguments


def _method(metadata: Mapping[str, Any]) -> str:
    """The edit's method, or `EditInputError` if no known editor made it."""
    method = metadata.get("method")
    if method not in EDITORS:
        raise EditInputError(f"edit method {method!r} has no editor to rebuild it with; known: {sorted(EDITORS)}")
    return method


def _windows(layers: list, size: int) -> list[tuple]:
    """Every run of `size` consecutive `layers`."""
    return [tuple(layers[i : i + size]) for i in range(len(layers) - size + 1)]


def _measure(
    model: Model, edit: Edit | None, groups: Sequence[Group], judge: Judge, steps: int, guidance_scale: float
) -> list[list[tuple[int, int]]]:
    """Per group, per measure: (hits, n) with `edit` applied (None: the model as it is), all
    groups' units generated in one batched graph."""
    units = [u for g in groups for u in g.units]
    expected = [parse_caption(p) for p, _ in units]
    if edit is None:
        judged = judge_units(model, units, expected, judge, steps=steps, guidance_scale=guidance_scale)
    else:
        with edits.applied(model, edit):
            judged = judge_units(model, units, expected, judge, steps=steps, guidance_scale=guidance_scale)
    out, start = [], 0
    for g in groups:
        rows = slice(start, start + len(g.units))
        out.append([m.count(judged.predictions[rows], judged.expected[rows]) for m in g.measures])
        start = rows.stop
    return out


def _sources(concept: Concept, edited: Collection[str] = ()) -> dict[str, tuple[list[list[str]], tuple[Measure, ...]]]:
    """Per group: its prompt sources (each a list of world captions, drawn from evenly) and measures;
    neighbours name none of `edited` (the edit's old concepts) nor the concept itself."""
    c = concept.old
    styled = [s for s in STYLES if s != "plain"]
    others = [s for s in STYLES if s != c and s not in edited]  # every style the edit does not change
    named_out = {n for e in {c, *edited} for n in (e, *_synonyms(e))}
    specificity = (
        [[p for s in others if s != "plain" for p in _generic(s)], _generic("plain"),
         _named([n for n in CHARACTERS if n not in named_out], others),
         _named([n for n in FACTS if n not in named_out], others)],
        tuple(Measure(a, (a,)) for a in ATTRIBUTES),
    )
    if concept.kind == "style":
        measures = tuple(fixed({"style": s}, f"style = {s}") for s in dict.fromkeys([c, concept.new]) if s in styled)
        return {"efficacy": ([_generic(c, [0])], measures),
                "generalization": ([_generic(c, [1]), _generic(c, [2]), _named(NAMED, [c])], measures),
                "specificity": specificity}
    if concept.kind == "character":
        obj, _, mark = CHARACTERS[c]
        measures = (fixed({"mark": mark}, f"mark = {mark}"), fixed({"object": obj}, f"object = {obj}"))
        generalization = [_named([c], [s]) for s in styled]
    else:
        measures = tuple(fixed(v, f"{which} value: {v['color']} {v['object']}")
                         for which, v in (("old", _value(c)), ("new", _value(concept.new))) if v)
        generalization = [_named(_synonyms(c), STYLES), _named([c], styled)]
    return {"efficacy": ([_named([c], ["plain"])], measures), "generalization": (generalization, measures),
            "specificity": specificity}


def _generic(style: str, templates: Sequence[int] | None = None) -> list[str]:
    """Captions of every seen generic scene (object x color x count) in `style`, in `templates`
    (indices into the style's templates; default all)."""
    scenes = [s for o in OBJECTS for c in COLORS for k in COUNTS if not is_held_out(s := Scene(o, c, style, k))]
    indices = range(len(templates_of(scenes[0]))) if templates is None else templates
    return [caption(s, t) for t in indices for s in scenes]


def _named(names: Iterable[str], styles: Iterable[str]) -> list[str]:
    """Captions of each character or fact phrase in each of `styles` (seen combinations), every template."""
    scenes = [s for n in sorted(names) for st in styles if not is_held_out(s := named_scene(n, st))]
    return [caption(s, t) for s in scenes for t in range(len(templates_of(s)))]


def _synonyms(phrase: str) -> list[str]:
    """The other fact phrases that stand for the same thing ("the ruler of zembla" for "the king of
    zembla"); none for a non-fact."""
    return [p for p in FACTS if p != phrase and phrase in FACTS and FACTS[p] == FACTS[phrase]]


def _value(phrase: str) -> dict[str, str] | None:
    """The object and color a phrase stands for: a named phrase's, or those a world caption names
    ("a blue house"); None if it names no color or is no caption of the world."""
    if phrase in NAMED:
        obj, color, _ = NAMED[phrase]
        return {"object": obj, "color": color}
    try:
        named = parse_caption(phrase)
    except ValueError:
        return None
    return {"object": named["object"], "color": named["color"]} if "color" in named else None


def _interleave(strata: Sequence[Sequence[str]], rng: random.Random) -> list[str]:
    """Each stratum shuffled by `rng`, then drawn from in turn, without repeats: any prefix is
    balanced across strata."""
    shuffled = [rng.sample(list(s), len(s)) for s in strata]
    drawn = (s[i] for i in range(max(map(len, shuffled), default=0)) for s in shuffled if i < len(s))
    return list(dict.fromkeys(drawn))


def _units(pool: Sequence[str], n: int, seed: int) -> tuple[Unit, ...]:
    """`n` (prompt, seed) units: every prompt of `pool` at seed `seed`, then at `seed` + 1, ...,
    until there are `n` (so prompts appear equally often, give or take one)."""
    rounds = math.ceil(n / len(pool))
    return tuple((p, seed + r) for r in range(rounds) for p in pool)[:n]


def _strings(value: Any) -> Iterable[str]:
    """Every string inside a JSON-like value."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _strings(v)


def _normal(prompt: str) -> str:
    """A prompt compared case- and spacing-blind."""
    return " ".join(prompt.lower().split())


def _control_notes(built: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per control: where it edits, or why it was skipped."""
    return [f"control {c}: " + (f"skipped, {b['skipped']}" if "skipped" in b else f"at {b['layers']}")
            for c, b in built.items()]


def _cell(interval: Interval | None) -> str:
    return "-" if interval is None else interval.percent()


def _title(metadata: Mapping[str, Any]) -> str:
    concepts = ", ".join(f"{old} -> {new}" for old, new in metadata.get("concepts", ()))
    where = ", ".join(f"{k} {metadata[k]}" for k in ("component", "layer", "layers") if k in metadata)
    return f"{metadata.get('method', 'edit')} edit ({concepts}) of {where}"
