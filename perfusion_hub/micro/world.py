"""The micro world: seeded 64×64 scenes of primitives, their captions and masks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image

RES = 64

CATEGORIES: tuple[str, ...] = ("cat", "chair", "cup", "ball", "tree", "house")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 25),
    "yellow": (240, 220, 40),
    "green": (40, 165, 55),
    "blue": (35, 75, 215),
    "purple": (135, 50, 185),
    "pink": (250, 150, 200),
    "brown": (120, 70, 30),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
PATTERNS: tuple[str, ...] = ("striped", "spotted", "checked")
SIZES: tuple[str, ...] = ("small", "big")
POSITIONS: tuple[str, ...] = ("left", "centre", "right")
RELATIONS: tuple[str, ...] = ("on", "next to", "left of")
EYE_COLOURS: tuple[str, ...] = ("black", "green", "blue", "yellow")
LAYOUTS: tuple[str, ...] = ("single", "side", "stacked")
# Rate at which training captions drop optional words, so short prompts are in distribution.
CAPTION_DROP = 0.3
# The instance-only part each category can carry in an accent colour.
ACCENT_PARTS: dict[str, str] = {
    "cat": "collar",
    "chair": "cushion",
    "cup": "rim",
    "ball": "band",
    "tree": "fruit",
    "house": "door",
}
POSITION_PHRASES: dict[str, str] = {
    "left": "on the left",
    "centre": "in the centre",
    "right": "on the right",
}
GENERIC_WORDS: tuple[str, ...] = (
    "a",
    "an",
    "the",
    "of",
    "on",
    "in",
    "at",
    "to",
    "with",
    "and",
    "next",
    "left",
    "right",
    "centre",
    "background",
    "photo",
    "picture",
    "image",
    "rendering",
    "drawing",
    "close",
    "up",
    "-",
    ",",
    ".",
    "cropped",
    "good",
    "nice",
    "clean",
    "dark",
    "bright",
    "small",
    "big",
    "large",
    "one",
    "two",
    "my",
    "this",
    "that",
    "object",
    "thing",
    "scene",
    "plain",
    "cool",
    "weird",
)


def vocabulary() -> list[str]:
    """Every word the world's captions and the usual photo templates use."""
    words = [*GENERIC_WORDS, *CATEGORIES, *COLOUR_NAMES, *PATTERNS, *SIZES, *ACCENT_PARTS.values()]
    return list(dict.fromkeys(words))


@dataclass(frozen=True)
class ObjectSpec:
    """One object; `size`/`position` None means unspecified (in a parsed caption)."""

    category: str
    colour: str
    pattern: str | None = None
    size: str | None = None
    position: str | None = None
    accent: str | None = None
    eyes: str | None = None

    @property
    def phrase(self) -> str:
        """The noun phrase without article and size: "red striped cat"."""
        return " ".join(w for w in (self.colour, self.pattern, self.category) if w)


@dataclass(frozen=True)
class SceneSpec:
    """One or two objects; with two, `relation` says how objects[0] relates to objects[1]."""

    objects: tuple[ObjectSpec, ...]
    relation: str | None = None
    background: str | None = None

    @property
    def layout(self) -> str:
        if len(self.objects) == 1:
            return "single"
        return "stacked" if self.relation == "on" else "side"


@dataclass(frozen=True)
class Instance:
    """One specific object: fixed look, including details words cannot express."""

    name: str
    category: str
    colour: str
    pattern: str | None = None
    accent: str | None = None
    eyes: str | None = None

    @property
    def phrase(self) -> str:
        """The words that describe it in the world's grammar: "orange striped cat"."""
        return self.object().phrase

    def object(self, size: str | None = None, position: str | None = None) -> ObjectSpec:
        return ObjectSpec(
            self.category, self.colour, self.pattern, size, position, self.accent, self.eyes
        )


MY_CAT = Instance("my-cat", "cat", "orange", "striped", accent="blue", eyes="green")
MY_CHAIR = Instance("my-chair", "chair", "green", "spotted", accent="red")
MY_CUP = Instance("my-cup", "cup", "purple", "checked", accent="yellow")
INSTANCES: dict[str, Instance] = {i.name: i for i in (MY_CAT, MY_CHAIR, MY_CUP)}


# ----------------------------------------------------------------------------- sampling


def _other(rng: np.random.Generator, avoid: Iterable[str | None]) -> str:
    taken = set(avoid)
    return str(rng.choice([c for c in COLOUR_NAMES if c not in taken]))


def random_object(rng: np.random.Generator, avoid: Iterable[str | None] = ()) -> ObjectSpec:
    """A random object whose colour differs from the colours in `avoid`."""
    category = str(rng.choice(CATEGORIES))
    colour = _other(rng, avoid)
    pattern = None if rng.random() < 0.4 else str(rng.choice(PATTERNS))
    accent = _other(rng, [colour]) if rng.random() < 0.3 else None
    eyes = (
        (None if rng.random() < 0.5 else str(rng.choice(EYE_COLOURS[1:])))
        if category == "cat"
        else None
    )
    return ObjectSpec(category, colour, pattern, accent=accent, eyes=eyes)


def random_scene(rng: np.random.Generator, p_two: float = 0.4) -> SceneSpec:
    """A random scene; sizes and positions are always set."""
    background = str(rng.choice(COLOUR_NAMES))
    a = random_object(rng, [background])
    if rng.random() >= p_two:
        obj = replace(a, size=str(rng.choice(SIZES)), position=str(rng.choice(POSITIONS)))
        return SceneSpec((obj,), None, background)
    b = random_object(rng, [background, a.colour])
    relation = str(rng.choice(RELATIONS))
    return _place_pair(rng, a, b, relation, background)


def _place_pair(
    rng: np.random.Generator, a: ObjectSpec, b: ObjectSpec, relation: str, bg: str
) -> SceneSpec:
    if relation == "on":
        pos = str(rng.choice(POSITIONS))
        pa, pb = pos, pos
    elif relation == "left of" or rng.random() < 0.5:
        pa, pb = "left", "right"
    else:
        pa, pb = "right", "left"
    objs = (replace(a, size="small", position=pa), replace(b, size="small", position=pb))
    return SceneSpec(objs, relation, bg)


def instance_scene(
    instance: Instance | ObjectSpec, rng: np.random.Generator, background: str | None = None
) -> SceneSpec:
    """The instance alone, at a random size and position, on a background unlike it."""
    base = instance.object() if isinstance(instance, Instance) else instance
    bg = background or _other(rng, [base.colour])
    obj = replace(base, size=str(rng.choice(SIZES)), position=str(rng.choice(POSITIONS)))
    return SceneSpec((obj,), None, bg)


def complete(spec: SceneSpec, rng: np.random.Generator) -> SceneSpec:
    """Fill what a parsed caption left unspecified (size, position, background) at random."""
    used = [o.colour for o in spec.objects]
    bg = spec.background or _other(rng, used)
    if len(spec.objects) == 1:
        o = spec.objects[0]
        o = replace(
            o,
            size=o.size or str(rng.choice(SIZES)),
            position=o.position or str(rng.choice(POSITIONS)),
        )
        return SceneSpec((o,), None, bg)
    return _place_pair(rng, spec.objects[0], spec.objects[1], spec.relation or "next to", bg)


# ----------------------------------------------------------------------------- captions


def object_phrase(obj: ObjectSpec, with_size: bool = True) -> str:
    words = " ".join(w for w in (obj.size if with_size else None, obj.phrase) if w)
    return ("an " if words[0] in "aeiou" else "a ") + words


def caption(
    spec: SceneSpec,
    rng: np.random.Generator | None = None,
    p_drop: float = 0.0,
    subject: str | None = None,
) -> str:
    """Caption in the grammar; optional parts (size, position, background) dropped with p_drop.

    `subject` replaces the first object's "<colour> <pattern> <category>" (e.g. a concept token).
    """
    rng = rng or np.random.default_rng(0)
    keep = (lambda: rng.random() >= p_drop) if p_drop > 0 else (lambda: True)
    one = len(spec.objects) == 1
    a = spec.objects[0]
    first = object_phrase(a, with_size=one and keep())
    if subject is not None:
        first = "a " + subject
    words = [first]
    if one:
        if a.position and keep():
            words.append(POSITION_PHRASES[a.position])
    else:
        words += [spec.relation or "next to", object_phrase(spec.objects[1], with_size=False)]
    if spec.background and keep():
        words.append(f"on a {spec.background} background")
    return " ".join(words)


class CaptionError(ValueError):
    """A caption outside the world's grammar."""


def _parse_np(words: list[str], i: int) -> tuple[ObjectSpec, int]:
    if i >= len(words) or words[i] not in ("a", "an"):
        raise CaptionError(f"expected 'a' at word {i}")
    i += 1
    size = words[i] if i < len(words) and words[i] in SIZES else None
    i += size is not None
    if i >= len(words) or words[i] not in COLOURS:
        raise CaptionError(f"expected a colour at word {i}")
    colour = words[i]
    i += 1
    pattern = words[i] if i < len(words) and words[i] in PATTERNS else None
    i += pattern is not None
    if i >= len(words) or words[i] not in CATEGORIES:
        raise CaptionError(f"expected a category at word {i}")
    return ObjectSpec(words[i], colour, pattern, size), i + 1


def parse_caption(text: str) -> SceneSpec:
    """Inverse of `caption`: what a caption asks for; unspecified parts are None."""
    words = text.strip().lower().split()
    a, i = _parse_np(words, 0)
    background = None
    if words[-3:-1] and words[-1] == "background":
        if len(words) < i + 4 or words[-4:-2] != ["on", "a"] or words[-2] not in COLOURS:
            raise CaptionError("expected 'on a <colour> background'")
        background, words = words[-2], words[:-4]
    rest = words[i:]
    if not rest:
        return SceneSpec((a,), None, background)
    for pos, phrase in POSITION_PHRASES.items():
        if rest == phrase.split():
            return SceneSpec((replace(a, position=pos),), None, background)
    for rel in RELATIONS:
        n = len(rel.split())
        if rest[:n] == rel.split():
            b, j = _parse_np(rest, n)
            if j != len(rest):
                raise CaptionError(f"unexpected words: {' '.join(rest[j:])}")
            return SceneSpec((a, b), rel, background)
    raise CaptionError(f"cannot parse: {text!r}")


# ----------------------------------------------------------------------------- geometry

_CAT_INDEX = {c: i for i, c in enumerate(CATEGORIES)}
_POS_X = {"left": 18.0, "centre": 32.0, "right": 46.0}
_RGB = np.array(list(COLOURS.values()), dtype=np.float32)
_COLOUR_INDEX = {c: i for i, c in enumerate(COLOUR_NAMES)}
_ASYMMETRIC = {"cat", "cup"}


@dataclass
class _Placement:
    cx: float
    cy: float
    s: float
    flip: float


def _placements(spec: SceneSpec, rng: np.random.Generator) -> list[_Placement]:
    j = lambda a: float(rng.uniform(-a, a))  # noqa: E731
    flip = lambda o: -1.0 if o.category in _ASYMMETRIC and rng.random() < 0.5 else 1.0  # noqa: E731
    a = spec.objects[0]
    if len(spec.objects) == 1:
        s = float(rng.uniform(10.5, 12.5)) if a.size == "small" else float(rng.uniform(17.0, 19.5))
        cx = _POS_X[a.position or "centre"] + (j(2) if a.size == "small" else 0.0)
        if a.size != "small":
            cx = {"left": 22.0, "centre": 32.0, "right": 42.0}[a.position or "centre"] + j(1.5)
        cy = 32.0 + j(9 if a.size == "small" else 3)
        return [_Placement(cx, cy, s, flip(a))]
    b = spec.objects[1]
    if spec.relation == "on":
        sb, sa = float(rng.uniform(11.0, 13.0)), float(rng.uniform(8.5, 10.0))
        cx = {"left": 20.0, "centre": 32.0, "right": 44.0}[a.position or "centre"] + j(2)
        cyb = 61.0 - sb * 0.95 + j(1.0)
        cya = cyb - sb * 0.9 - sa * 0.92
        return [_Placement(cx, cya, sa, flip(a)), _Placement(cx, cyb, sb, flip(b))]
    sa, sb = float(rng.uniform(10.0, 12.0)), float(rng.uniform(10.0, 12.0))
    xa, xb = (17.0, 47.0) if a.position == "left" else (47.0, 17.0)
    return [
        _Placement(xa + j(2), 32.0 + j(8), sa, flip(a)),
        _Placement(xb + j(2), 32.0 + j(8), sb, flip(b)),
    ]


# ----------------------------------------------------------------------------- drawing

Parts = dict[str, np.ndarray]


def _ell(u: np.ndarray, v: np.ndarray, cu: float, cv: float, ru: float, rv: float) -> np.ndarray:
    return ((u - cu) / ru) ** 2 + ((v - cv) / rv) ** 2 <= 1.0


def _box(u: np.ndarray, v: np.ndarray, u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
    return (u >= u0) & (u <= u1) & (v >= v0) & (v <= v1)


def _tri(
    u: np.ndarray, v: np.ndarray, apex: tuple[float, float], v_base: float, half: float
) -> np.ndarray:
    au, av = apex
    t = (v - av) / (v_base - av)
    return (t >= 0) & (t <= 1) & (np.abs(u - au) <= half * t)


def _cat(u: np.ndarray, v: np.ndarray) -> Parts:
    body = _ell(u, v, 0.15, 0.45, 0.65, 0.38)
    head = _ell(u, v, -0.5, -0.2, 0.38, 0.34)
    ears = _tri(u, v, (-0.75, -0.8), -0.4, 0.16) | _tri(u, v, (-0.27, -0.8), -0.4, 0.16)
    tail = _box(u, v, 0.72, 0.86, -0.35, 0.45)
    legs = _box(u, v, -0.3, -0.15, 0.6, 0.95) | _box(u, v, 0.45, 0.6, 0.6, 0.95)
    collar = _box(u, v, -0.72, -0.25, 0.06, 0.2)
    eyes = _ell(u, v, -0.64, -0.25, 0.09, 0.1) | _ell(u, v, -0.36, -0.25, 0.09, 0.1)
    return {"body": body | head | ears | tail | legs, "accent": collar, "eyes": eyes}


def _chair(u: np.ndarray, v: np.ndarray) -> Parts:
    back = _box(u, v, 0.42, 0.65, -0.95, 0.15)
    seat = _box(u, v, -0.65, 0.65, 0.05, 0.28)
    legs = _box(u, v, -0.65, -0.45, 0.28, 0.95) | _box(u, v, 0.45, 0.65, 0.28, 0.95)
    cushion = _box(u, v, -0.6, 0.4, -0.08, 0.05)
    return {"body": back | seat | legs | cushion, "accent": cushion}


def _cup(u: np.ndarray, v: np.ndarray) -> Parts:
    body = _box(u, v, -0.55, 0.35, -0.55, 0.7) | _ell(u, v, -0.1, 0.7, 0.45, 0.2)
    ring = _ell(u, v, 0.45, 0.08, 0.32, 0.34) & ~_ell(u, v, 0.45, 0.08, 0.15, 0.17)
    rim = _box(u, v, -0.55, 0.35, -0.55, -0.38)
    return {"body": body | (ring & (u > 0.3)), "accent": rim}


def _ball(u: np.ndarray, v: np.ndarray) -> Parts:
    disc = _ell(u, v, 0.0, 0.1, 0.82, 0.82)
    band = disc & (np.abs(v - 0.1) <= 0.13)
    return {"body": disc, "accent": band}


def _tree(u: np.ndarray, v: np.ndarray) -> Parts:
    crown = _ell(u, v, 0.0, -0.3, 0.7, 0.62)
    trunk = _box(u, v, -0.14, 0.14, 0.25, 0.98)
    fruit = (
        _ell(u, v, -0.35, -0.4, 0.11, 0.11)
        | _ell(u, v, 0.3, -0.15, 0.11, 0.11)
        | _ell(u, v, 0.0, -0.65, 0.11, 0.11)
    )
    return {"body": crown, "dark": trunk, "accent": fruit & crown}


def _house(u: np.ndarray, v: np.ndarray) -> Parts:
    wall = _box(u, v, -0.68, 0.68, -0.15, 0.95)
    roof = _tri(u, v, (0.0, -0.95), -0.1, 0.88)
    door = _box(u, v, -0.16, 0.16, 0.4, 0.95)
    return {"body": wall, "dark": roof | door, "accent": door}


_SHAPES = {"cat": _cat, "chair": _chair, "cup": _cup, "ball": _ball, "tree": _tree, "house": _house}


def _pattern(u: np.ndarray, v: np.ndarray, kind: np.ndarray) -> np.ndarray:
    """Pattern pixels in object coordinates; kind per item: 0 none, 1 stripes, 2 spots, 3 checks."""
    out = np.zeros(u.shape, dtype=bool)
    for k in (1, 2, 3):
        sel = np.nonzero(kind == k)[0]
        if sel.size == 0:
            continue
        uu, vv = u[sel], v[sel]
        if k == 1:
            out[sel] = np.floor(uu * 2.2) % 2 == 1
        elif k == 2:
            out[sel] = (uu * 2.0 - np.round(uu * 2.0)) ** 2 + (
                vv * 2.0 - np.round(vv * 2.0)
            ) ** 2 <= 0.09
        else:
            out[sel] = (np.floor(uu * 2.2) + np.floor(vv * 2.2)) % 2 == 1
    return out


def _shade(rgb: np.ndarray) -> np.ndarray:
    """A contrasting tone of a colour: darker for light colours, lighter for dark ones."""
    lum = rgb @ np.array([0.3, 0.59, 0.11], dtype=np.float32)
    dark = rgb * 0.45
    light = rgb + (255 - rgb) * 0.55
    return np.where((lum < 90)[..., None], light, dark)


_GRID_Y, _GRID_X = np.mgrid[0:RES, 0:RES].astype(np.float32) + 0.5


def render(specs: Sequence[SceneSpec], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Draw scenes: uint8 images (B, 64, 64, 3) and visible-object masks (B, 2, 64, 64).

    Sizes and positions must be set (use `complete` for parsed captions); placement jitter
    comes from `seed`, so the same specs and seed give the same pixels.
    """
    rng = np.random.default_rng(seed)
    n = len(specs)
    img = np.empty((n, RES, RES, 3), dtype=np.float32)
    img[:] = _RGB[[_COLOUR_INDEX[s.background or "white"] for s in specs]][:, None, None, :]
    masks = np.zeros((n, 2, RES, RES), dtype=bool)
    place = [_placements(s, rng) for s in specs]
    # Slot 1 first: in "on" scenes object 0 stands on object 1 and is drawn over it.
    for slot in (1, 0):
        idx = np.array([i for i, s in enumerate(specs) if len(s.objects) > slot], dtype=np.int64)
        if idx.size == 0:
            continue
        objs = [specs[i].objects[slot] for i in idx]
        pl = [place[i][slot] for i in idx]
        cx, cy, s, fl = (
            np.array([getattr(p, f) for p in pl], np.float32)[:, None, None]
            for f in ["cx", "cy", "s", "flip"]
        )
        u = (_GRID_X[None] - cx) / s * fl
        v = (_GRID_Y[None] - cy) / s
        cats = np.array([_CAT_INDEX[o.category] for o in objs])
        base = _RGB[[_COLOUR_INDEX[o.colour] for o in objs]]
        pat = np.array([0 if o.pattern is None else PATTERNS.index(o.pattern) + 1 for o in objs])
        for ci, cname in enumerate(CATEGORIES):
            sel = np.nonzero(cats == ci)[0]
            if sel.size == 0:
                continue
            uu, vv = u[sel], v[sel]
            parts = _SHAPES[cname](uu, vv)
            rows = idx[sel]
            col = base[sel][:, None, None, :]
            shade = _shade(base[sel])[:, None, None, :]
            body = parts["body"]
            patt = _pattern(uu, vv, pat[sel]) & body
            layer = img[rows]
            np.copyto(layer, col, where=body[..., None])
            np.copyto(layer, shade, where=patt[..., None])
            if "dark" in parts:
                np.copyto(layer, shade, where=parts["dark"][..., None])
            full = body | parts.get("dark", False)
            acc = [objs[k].accent for k in sel]
            has = np.array([a is not None for a in acc])
            if has.any():
                arg = _RGB[[_COLOUR_INDEX[a or "white"] for a in acc]][:, None, None, :]
                am = parts["accent"] & has[:, None, None]
                np.copyto(layer, arg, where=am[..., None])
                full = full | am
            if "eyes" in parts:
                eye = _RGB[[_COLOUR_INDEX[objs[k].eyes or "black"] for k in sel]]
                eye = np.where((eye == base[sel]).all(-1, keepdims=True), _shade(eye), eye)
                np.copyto(layer, eye[:, None, None, :], where=parts["eyes"][..., None])
            img[rows] = layer
            masks[rows, slot] = full
            if slot == 0:
                masks[rows, 1] &= ~full
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), masks


def sample_scenes(n: int, seed: int, p_two: float = 0.4) -> list[SceneSpec]:
    """`n` random scenes, deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    return [random_scene(rng, p_two) for _ in range(n)]


def caption_corpus(count: int, seed: int = 0) -> list[str]:
    """Captions of `count` random scenes with words dropped as in training (`CAPTION_DROP`):
    the micro base's corpus for its text statistics (its tokenizer knows only these words)."""
    rng = np.random.default_rng(seed)
    return [caption(scene, rng, p_drop=CAPTION_DROP) for scene in sample_scenes(count, seed)]


def instance_images(
    instance: Instance, n: int, seed: int = 0
) -> list[tuple[Image.Image, np.ndarray]]:
    """`n` images of one instance in varied size, position and background, with its mask."""
    rng = np.random.default_rng(seed)
    specs = [instance_scene(instance, rng) for _ in range(n)]
    imgs, masks = render(specs, seed=seed + 1)
    return [(Image.fromarray(im), m[0]) for im, m in zip(imgs, masks, strict=True)]


def to_pil(images: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(im) for im in images]
