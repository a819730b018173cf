"""Deterministic synthetic scenes of the tiny world: attributes, captions and renders.

Every image is drawn from a `Scene` (object, color, style, count, mark and a layout seed), so each
pixel's ground truth is known. Styles are whole-image textures named after painters; they only
shade lightness, so an object's hue (its color attribute) survives every style.

Besides generic subjects ("a red circle", "two squares") the world holds the papers' other kinds
of knowledge, as names that stand for fixed attributes:
- characters: invented names ("wumbo"), each always one object, color and mark (an eye, a band,
  a cross drawn on the object): the papers' trademarked characters ('Snoopy' -> 'a dog');
- facts: "the king of zembla" (or "the ruler of zembla") is one object and color, "the flag of
  zembla" one color on a square: the papers' facts ('the British monarch');
- a neutral style word: "a painting of X", "a picture of X" and "X in the style of painting" draw
  X with no style, so 'painting' is a neutral edit target, as it is for Stable Diffusion.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = 32  # rendered image side in pixels
_SS = 4  # supersampling factor for anti-aliased shapes

OBJECTS: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "house")
PLURALS: dict[str, str] = {o: o + "s" for o in OBJECTS}
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "orange": (250, 140, 0),
    "yellow": (240, 220, 20),
    "green": (30, 170, 50),
    "blue": (30, 70, 230),
    "purple": (140, 40, 200),
}
STYLES: tuple[str, ...] = ("plain", "van gogh", "monet", "mondrian", "pollock")
COUNTS: tuple[int, ...] = (1, 2)
MARKS: tuple[str, ...] = ("none", "eye", "band", "cross")
ATTRIBUTES: tuple[str, ...] = ("object", "color", "style", "count", "mark")
CAPTIONED: tuple[str, ...] = ("object", "color", "style", "count")  # what a generic caption names
VALUES: dict[str, tuple] = {
    "object": OBJECTS, "color": tuple(COLORS), "style": STYLES, "count": COUNTS, "mark": MARKS,
}

CHARACTERS: dict[str, tuple[str, str, str]] = {  # name -> (object, color, mark)
    "wumbo": ("circle", "green", "eye"),
    "zibble": ("square", "orange", "band"),
    "quax": ("heart", "purple", "cross"),
}
LANDS: tuple[str, ...] = ("zembla", "vardo")
KINGS: dict[str, tuple[str, str]] = {"zembla": ("star", "yellow"), "vardo": ("house", "blue")}
FLAGS: dict[str, str] = {"zembla": "red", "vardo": "purple"}  # drawn as a square of that color
FACTS: dict[str, tuple[str, str, str]] = {
    **{f"the {title} of {land}": (*KINGS[land], "none") for land in LANDS for title in ("king", "ruler")},
    **{f"the flag of {land}": ("square", FLAGS[land], "none") for land in LANDS},
}
NAMED: dict[str, tuple[str, str, str]] = {**CHARACTERS, **FACTS}  # phrase -> (object, color, mark)
NAMED_SHARE = 0.2  # share of training scenes named by a character (half) or a fact (half)
COLORLESS_SHARE = 0.15  # share of generic training captions that leave the color out ("a circle")

PLAIN_TEMPLATES: tuple[str, ...] = (
    "{subject}", "a photograph of {subject}", "a picture of {subject}", "a painting of {subject}",
    "{subject} in the style of painting",
)
STYLE_TEMPLATES: tuple[str, ...] = (
    "{subject} in the style of {style}",
    "a painting of {subject} by {style}",
    "a {style} painting of {subject}",
)


@dataclass(frozen=True)
class Scene:
    """The ground-truth attributes of one image plus the seed of its layout and texture."""

    object: str
    color: str
    style: str
    count: int
    seed: int = 0
    mark: str = "none"
    name: str | None = None  # the character or fact phrase that names the scene, if any

    def attributes(self) -> dict[str, str | int]:
        """The judged attributes, keyed as in `ATTRIBUTES`."""
        return {"object": self.object, "color": self.color, "style": self.style, "count": self.count,
                "mark": self.mark}


def named_scene(name: str, style: str = "plain", seed: int = 0) -> Scene:
    """The scene a character or fact phrase stands for (one object), in `style`."""
    if name not in NAMED:
        raise ValueError(f"unknown name {name!r}; the tiny world knows {sorted(NAMED)}")
    obj, color, mark = NAMED[name]
    return Scene(obj, color, style, 1, seed, mark, name)


def vocabulary() -> list[str]:
    """Every word any caption can use; each becomes one token of the tiny tokenizer."""
    words = {w for t in PLAIN_TEMPLATES + STYLE_TEMPLATES for w in t.split() if "{" not in w}
    words |= {"a", "an", "one", "two", *OBJECTS, *PLURALS.values(), *COLORS}
    words |= {w for s in STYLES if s != "plain" for w in s.split()}
    words |= {w for phrase in NAMED for w in phrase.split()}
    return sorted(words)


def subject(color: str, obj: str, count: int, numeral: str = "a") -> str:
    """The noun phrase of a scene, e.g. 'a red circle', 'two blue squares', or with `color` ""
    'a circle'."""
    words = f"{color} {obj}".strip() if count == 1 else f"{color} {PLURALS[obj]}".strip()
    if count == 1:
        article = "an" if numeral == "a" and words[0] in "aeiou" else numeral
        return f"{article} {words}"
    return f"two {words}"


def templates_of(scene: Scene) -> tuple[str, ...]:
    """The caption templates of the scene's style."""
    return PLAIN_TEMPLATES if scene.style == "plain" else STYLE_TEMPLATES


def caption(scene: Scene, template: int = 0, numeral: str = "a", colored: bool = True) -> str:
    """Caption `scene` with template number `template` (modulo the templates of its style); a
    named scene is called by its name, a generic one by its subject (without color if not
    `colored`)."""
    text = scene.name or subject(scene.color if colored else "", scene.object, scene.count, numeral)
    templates = templates_of(scene)
    return templates[template % len(templates)].format(subject=text, style=scene.style)


def random_caption(scene: Scene, rng: random.Random) -> str:
    """A caption of `scene` with a random template, numeral and color mention, for training."""
    template, numeral = rng.randrange(len(templates_of(scene))), rng.choice(("a", "a", "one"))
    return caption(scene, template, numeral, colored=rng.random() >= COLORLESS_SHARE)


@lru_cache(maxsize=1)
def held_out_combos() -> frozenset[tuple[str, str, str]]:
    """A fixed 15% of (color, object, style) combinations never shown to the model in training.

    Chosen as a Latin-style pattern so every color, object and style keeps most of its combos.
    """
    combos = [(c, o, s) for c in COLORS for o in OBJECTS for s in STYLES]
    rng = random.Random(1234)
    rng.shuffle(combos)
    return frozenset(combos[: round(0.15 * len(combos))])


def held_out_named() -> frozenset[tuple[str, str]]:
    """One (name, style) combination per character or fact phrase, never shown in training: the
    i-th name in sorted order without the (i mod 4)-th painter's style."""
    return frozenset((name, STYLES[1 + i % 4]) for i, name in enumerate(sorted(NAMED)))


def is_held_out(scene: Scene) -> bool:
    """Whether the scene's (color, object, style), or for a named scene its (name, style),
    combination is held out of training."""
    if scene.name:
        return (scene.name, scene.style) in held_out_named()
    return (scene.color, scene.object, scene.style) in held_out_combos()


def _random_scene(rng: random.Random) -> Scene:
    """A random scene: named (a character or a fact, as often) with `NAMED_SHARE`, else generic."""
    if rng.random() < NAMED_SHARE:
        names = CHARACTERS if rng.random() < 0.5 else FACTS
        return named_scene(rng.choice(sorted(names)), rng.choice(STYLES), rng.randrange(2**31))
    return Scene(
        rng.choice(OBJECTS), rng.choice(list(COLORS)), rng.choice(STYLES), rng.choice(COUNTS),
        rng.randrange(2**31),
    )


def sample_scene(rng: random.Random, held_out: bool | None = False) -> Scene:
    """A random scene; `held_out` False excludes held-out combos, True keeps only them, None
    allows both."""
    while True:
        scene = _random_scene(rng)
        if held_out is None or is_held_out(scene) == held_out:
            return scene


def _outline(obj: str) -> list[tuple[float, float]] | None:
    """The polygon of `obj` in unit coordinates (radius 1, y down); None for the circle."""
    if obj == "circle":
        return None
    if obj == "square":
        return [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]
    if obj == "triangle":
        return [(0.0, -1.0), (1.0, 0.8), (-1.0, 0.8)]
    if obj == "star":
        angles = np.pi * (np.arange(10) / 5 - 0.5)
        radii = np.where(np.arange(10) % 2 == 0, 1.05, 0.42)
        return list(zip(radii * np.cos(angles), radii * np.sin(angles)))
    if obj == "heart":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return list(zip(x / 16.5, (y + 2.5) / 15.5))
    if obj == "house":
        return [(-0.8, 0.9), (0.8, 0.9), (0.8, -0.1), (0.0, -1.0), (-0.8, -0.1)]
    raise ValueError(f"unknown object {obj!r}")


def shape_mask(obj: str, centers: list[tuple[float, float]], radius: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of the objects, shape (SIZE, SIZE)."""
    canvas = Image.new("L", (SIZE * _SS, SIZE * _SS), 0)
    draw = ImageDraw.Draw(canvas)
    outline = _outline(obj)
    r = radius * _SS
    for cx, cy in centers:
        x, y = cx * _SS, cy * _SS
        if outline is None:
            draw.ellipse([x - r * 0.95, y - r * 0.95, x + r * 0.95, y + r * 0.95], fill=255)
        else:
            draw.polygon([(x + px * r, y + py * r) for px, py in outline], fill=255)
    small = canvas.resize((SIZE, SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def layout(count: int, rng: np.random.Generator) -> tuple[list[tuple[float, float]], float]:
    """Object centers and radius: one big object, or two smaller ones side by side or stacked."""
    if count == 1:
        radius = rng.uniform(8.0, 11.0)
        lo, hi = radius + 1, SIZE - radius - 1
        return [(rng.uniform(lo, hi), rng.uniform(lo, hi))], radius
    radius = rng.uniform(5.5, 6.8)
    along = [rng.uniform(radius + 1, SIZE / 2 - 0.5), rng.uniform(SIZE / 2 + 0.5, SIZE - radius - 1)]
    if along[1] - along[0] < 2 * radius + 1:
        along = [SIZE / 2 - radius - 0.75, SIZE / 2 + radius + 0.75]
    across = rng.uniform(radius + 1, SIZE - radius - 1, size=2)
    if rng.random() < 0.5:
        return [(along[0], across[0]), (along[1], across[1])], radius
    return [(across[0], along[0]), (across[1], along[1])], radius


def _mark_mask(mark: str, center: tuple[float, float], radius: float) -> np.ndarray:
    """Coverage in [0, 1] of a character's mark on its object at `center`: an eye (a disk), a
    band (a horizontal stripe) or a cross (two diagonal strokes), shape (SIZE, SIZE)."""
    canvas = Image.new("L", (SIZE * _SS, SIZE * _SS), 0)
    draw = ImageDraw.Draw(canvas)
    x, y, r = center[0] * _SS, center[1] * _SS, radius * _SS
    if mark == "eye":
        draw.ellipse([x - 0.35 * r, y - 0.35 * r, x + 0.35 * r, y + 0.35 * r], fill=255)
    elif mark == "band":
        draw.rectangle([x - r, y - 0.2 * r, x + r, y + 0.2 * r], fill=255)
    elif mark == "cross":
        for sign in (-1, 1):
            draw.line([(x - 0.5 * r, y - sign * 0.5 * r), (x + 0.5 * r, y + sign * 0.5 * r)], fill=255,
                      width=round(0.22 * r))
    else:
        raise ValueError(f"unknown mark {mark!r}; expected one of {MARKS[1:]}")
    small = canvas.resize((SIZE, SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


_MARK_INK = {"eye": 20.0, "band": 250.0, "cross": 20.0}  # gray level of each mark


def _grid() -> tuple[np.ndarray, np.ndarray]:
    """Pixel-center coordinates (y, x), each of shape (SIZE, SIZE)."""
    return np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) + 0.5


def _swirl(rng: np.random.Generator) -> np.ndarray:
    """Van Gogh: two-armed spiral strokes around a random center."""
    y, x = _grid()
    cy, cx = rng.uniform(6, SIZE - 6, size=2)
    r, theta = np.hypot(x - cx, y - cy), np.arctan2(y - cy, x - cx)
    period, arms = rng.uniform(4.5, 5.5), rng.choice([-2, 2])
    return 0.45 * np.sin(2 * np.pi * r / period + arms * theta + rng.uniform(0, 2 * np.pi))


def _dots(rng: np.random.Generator) -> np.ndarray:
    """Monet: soft light dots on a jittered lattice."""
    y, x = _grid()
    shade = np.zeros((SIZE, SIZE), np.float32)
    step = 5.0
    offset = rng.uniform(0, step, size=2)
    for gy in np.arange(offset[0], SIZE, step):
        for gx in np.arange(offset[1], SIZE, step):
            dy, dx = rng.normal(0, 0.6, size=2)
            shade += np.exp(-((y - gy - dy) ** 2 + (x - gx - dx) ** 2) / (2 * 1.1**2))
    return 0.65 * np.clip(shade, 0, 1)


def _lines(rng: np.random.Generator) -> np.ndarray:
    """Mondrian: a grid of thick black lines."""
    y, x = _grid()
    shade = np.zeros((SIZE, SIZE), np.float32)
    for coord in (x, y):
        spacing = rng.uniform(9.0, 11.0)
        phase = rng.uniform(0, spacing)
        dist = np.abs((coord - phase + spacing / 2) % spacing - spacing / 2)
        shade = np.minimum(shade, -0.9 * np.clip(1.5 - dist, 0, 1))
    return shade


def _splatter(rng: np.random.Generator) -> np.ndarray:
    """Pollock: black and white drops and drips."""
    layers = []
    for _ in range(2):
        canvas = Image.new("L", (SIZE * _SS, SIZE * _SS), 0)
        draw = ImageDraw.Draw(canvas)
        for _ in range(28):
            cx, cy = rng.uniform(0, SIZE * _SS, size=2)
            r = rng.uniform(0.5, 1.3) * _SS
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        for _ in range(2):
            points = np.cumsum(rng.normal(0, 4 * _SS, size=(5, 2)), axis=0)
            points += rng.uniform(0, SIZE * _SS, size=2)
            draw.line([tuple(p) for p in points], fill=255, width=_SS)
        small = canvas.resize((SIZE, SIZE), Image.Resampling.BOX)
        layers.append(np.asarray(small, dtype=np.float32) / 255.0)
    return 0.9 * (layers[1] - layers[0])


_TEXTURES = {"van gogh": _swirl, "monet": _dots, "mondrian": _lines, "pollock": _splatter}


def _shade(image: np.ndarray, shade: np.ndarray) -> np.ndarray:
    """Lighten toward white where `shade` > 0 and darken toward black where < 0, keeping hue."""
    s = shade[..., None]
    return np.where(s > 0, image + s * (255.0 - image), image * (1.0 + s))


def render(scene: Scene) -> np.ndarray:
    """The scene as an RGB uint8 array of shape (SIZE, SIZE, 3); same scene, same pixels."""
    rng = np.random.default_rng(scene.seed)
    background = rng.uniform(175, 225) + rng.uniform(-8, 8, size=3)
    color = np.array(COLORS[scene.color], np.float32) + rng.uniform(-12, 12, size=3)
    centers, radius = layout(scene.count, rng)
    alpha = shape_mask(scene.object, centers, radius)[..., None]
    image = background * (1 - alpha) + np.clip(color, 0, 255) * alpha
    if scene.mark != "none":
        ink = _mark_mask(scene.mark, centers[0], radius)[..., None] * alpha
        image = image * (1 - ink) + _MARK_INK[scene.mark] * ink
    if scene.style == "monet":
        blurred = Image.fromarray(image.astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.6))
        image = np.asarray(blurred, np.float32)
    if scene.style in _TEXTURES:
        image = _shade(image, _TEXTURES[scene.style](rng))
    image += rng.normal(0, 3, size=image.shape)
    return np.clip(image, 0, 255).round().astype(np.uint8)


def render_batch(scenes: list[Scene]) -> np.ndarray:
    """Renders of `scenes` stacked as uint8 (N, SIZE, SIZE, 3)."""
    return np.stack([render(s) for s in scenes])


def change_one(scene: Scene, rng: random.Random, attribute: str | None = None) -> Scene:
    """`scene` with one captioned attribute (`attribute`, or a random one) set to a different
    value. A named scene keeps its name when only its style changes; otherwise it becomes the
    generic scene (no mark) it no longer matches."""
    attribute = attribute or rng.choice(CAPTIONED)
    new = rng.choice([v for v in VALUES[attribute] if v != scene.attributes()[attribute]])
    fields = {**scene.attributes(), attribute: new, "seed": scene.seed}
    if scene.name and attribute == "style":
        return Scene(**fields, name=scene.name)
    return Scene(**{**fields, "mark": "none"})


def _template_regex(template: str) -> re.Pattern:
    """A regex matching captions of `template`, capturing its subject and style."""
    styles = "|".join(re.escape(s) for s in STYLES if s != "plain")
    pattern = re.escape(template).replace(r"\{subject\}", "(?P<subject>.+)").replace(r"\{style\}", f"(?P<style>{styles})")
    return re.compile(pattern)


_PARSERS = sorted(((t, _template_regex(t)) for t in STYLE_TEMPLATES + PLAIN_TEMPLATES), key=lambda p: -len(p[0]))
_SUBJECT = re.compile(
    rf"(?P<numeral>a|an|one|two) (?:(?P<color>{'|'.join(COLORS)}) )?(?P<object>{'|'.join(OBJECTS + tuple(PLURALS.values()))})"
)


def parse_caption(text: str) -> dict[str, str | int]:
    """The attributes a caption of the tiny world names, e.g. 'wumbo in the style of monet' ->
    object circle, color green, mark eye, count 1, style monet; 'two squares' -> object square,
    count 2, mark none, style plain (no color: the caption leaves it open). The inverse of
    `caption`; raises `ValueError` for text the world's captions cannot say."""
    for _, regex in _PARSERS:
        found = regex.fullmatch(text.strip())
        if found is None:
            continue
        style = found.groupdict().get("style") or "plain"
        phrase = found.group("subject")
        if phrase in NAMED:
            obj, color, mark = NAMED[phrase]
            return {"object": obj, "color": color, "style": style, "count": 1, "mark": mark}
        words = _SUBJECT.fullmatch(phrase)
        if words is None:
            continue
        noun = words.group("object")
        two = words.group("numeral") == "two"
        if two != (noun in PLURALS.values()):
            continue
        attributes: dict[str, str | int] = {"object": noun[:-1] if two else noun, "style": style,
                                            "count": 2 if two else 1, "mark": "none"}
        if words.group("color"):
            attributes["color"] = words.group("color")
        return attributes
    if re.search(r"\b(?:a|an) \w+ \w+ by (?:a|an) ", text):
        raise ValueError(f"{text!r} names two objects (models.tiny.pairs); the judge reads one-object scenes: "
                         "find a pair's objects by color with models.tiny.pairs.color_masks")
    raise ValueError(
        f"{text!r} is not a caption of the tiny world; e.g. {caption(Scene('circle', 'red', 'monet', 1))!r}, "
        f"{caption(named_scene('wumbo'), 3)!r}"
    )


def attributes_named_by(words: str) -> tuple[str, ...] | None:
    """The attributes a subject phrase of the world decides: 'monet' -> style, 'star'/'stars' ->
    object, 'green' -> color, a character -> object, color and mark, a fact -> object and color;
    None for anything else."""
    if words in STYLES or words == "painting":
        return ("style",)
    if words in COLORS:
        return ("color",)
    if words in OBJECTS or words in PLURALS.values():
        return ("object",)
    if words in NAMED:
        return ("object", "color", "mark") if NAMED[words][2] != "none" else ("object", "color")
    return None


def object_mask(scene: Scene) -> np.ndarray:
    """Coverage in [0, 1] of the scene's object(s) in `render(scene)`, shape (SIZE, SIZE): the
    ground truth a segmentation of the rendered image is checked against. Replays `render`'s
    random draws up to the layout (background level and tint, color jitter)."""
    rng = np.random.default_rng(scene.seed)
    rng.uniform(175, 225), rng.uniform(-8, 8, size=3), rng.uniform(-12, 12, size=3)
    centers, radius = layout(scene.count, rng)
    return shape_mask(scene.object, centers, radius)


MIN_CHROMA = 48.0  # max - min channel: the world's gray backgrounds stay below ~30, its colors above ~140


def colored_mask(image: np.ndarray, min_chroma: float = MIN_CHROMA) -> np.ndarray:
    """Where an image of the world (uint8 (H, W, 3), rendered or generated) shows an object: the
    pixels whose chroma exceeds `min_chroma`, closed over 3x3 (so a mondrian line or a pollock drop
    across the object does not cut it). The world draws flat, saturated objects on a gray
    background and its styles only shade lightness, so chroma separates them; this is how a
    generated image's object is found, since captions do not say where it is."""
    pixels = np.asarray(image, dtype=np.float32)
    found = Image.fromarray(((pixels.max(-1) - pixels.min(-1)) > min_chroma).astype(np.uint8) * 255)
    closed = found.filter(ImageFilter.MaxFilter(3)).filter(ImageFilter.MinFilter(3))
    return np.asarray(closed) > 127
