"""A procedural image world: shapes with colour, texture, size and count on a background.

Every image is a :class:`Scene` (all random choices made up front from one seed) rendered by
:func:`render`, a pure function of the scene. Captions (:func:`caption`) name the scene's
attributes in varied phrasings, with deliberate noise: attributes are sometimes left out,
sometimes named wrongly, and some words are rare. That noise is what keeps the micro CLIP
trained on these captions imperfect, so few-shot methods have room to improve on it.

Two rendering domains exist: ``"photo"`` (filled, textured shapes on a tinted background;
the pretraining domain) and ``"sketch"`` (thin wobbly pencil outlines on paper with stray
strokes and heavier noise; a shifted domain for robustness tests).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from fewshot.toyworld.catalog import (
    BACKGROUNDS,
    COLORS,
    COUNTS,
    DESCRIPTORS,
    PLURALS,
    SHAPES,
    SIZES,
    TEXTURES,
    TOY_DATASETS,
)

__all__ = [
    "RES",
    "CaptionNoise",
    "Scene",
    "caption",
    "caption_facts",
    "fade",
    "fit_matrix",
    "fits",
    "item_scene",
    "render",
    "render_item",
    "sample_scene",
    "seed_rng",
]

RES = 64  # rendered side in pixels; the micro CLIP resizes to its own input size


def seed_rng(*parts: int | str) -> np.random.Generator:
    """A generator seeded from strings and ints, stable across processes and platforms."""
    ints = [zlib.crc32(p.encode()) if isinstance(p, str) else int(p) for p in parts]
    return np.random.default_rng(np.random.SeedSequence(ints))


# ------------------------------------------------------------------------------------------
# Scenes


@dataclass(frozen=True)
class Scene:
    """Everything needed to render one image; rendering is a pure function of this."""

    shape: str
    color: str
    texture: str
    size: str
    count: int
    background: str
    domain: str = "photo"  # "photo" | "sketch"
    # (cx, cy, radius, angle) per object, in pixels / radians
    objects: tuple[tuple[float, float, float, float], ...] = ()
    color_rgb: tuple[int, int, int] = (0, 0, 0)
    noise: float = 0.0  # std of pixel noise, in 0..255 units
    seed: int = 0  # for pixel-level randomness (noise, specks, wobble)
    extras: Mapping[str, float] = field(default_factory=dict)


def sample_scene(rng: np.random.Generator, domain: str = "photo", **fixed: object) -> Scene:
    """A random scene; keyword arguments fix attributes (e.g. ``shape="circle"``)."""
    shape = str(fixed.get("shape") or rng.choice(SHAPES))
    color = str(fixed.get("color") or rng.choice(list(COLORS)))
    texture = str(fixed.get("texture") or rng.choice(TEXTURES))
    size = str(fixed.get("size") or rng.choice(list(SIZES)))
    count = int(str(fixed.get("count") or rng.choice([1, 2, 3], p=[0.6, 0.25, 0.15])))
    backgrounds = [b for b in BACKGROUNDS if b != color]
    background = str(fixed.get("background") or rng.choice(backgrounds))
    objects = _place_objects(rng, size, count)
    jitter = rng.integers(-18, 19, size=3)
    r, g, b = (int(np.clip(c + j, 0, 255)) for c, j in zip(COLORS[color], jitter, strict=True))
    rgb = (r, g, b)
    noise = float(rng.uniform(10.0, 24.0) if domain == "sketch" else rng.uniform(0.0, 10.0))
    extras = {
        "period": float(rng.uniform(5.5, 8.5)),
        "phase": float(rng.uniform(0.0, 8.0)),
        "bg_slope": float(rng.uniform(-0.4, 0.4)),
        "bg_dir": float(rng.uniform(0.0, 2 * math.pi)),
        "ink": float(rng.uniform(0.0, 1.0)),
    }
    return Scene(
        shape=shape,
        color=color,
        texture=texture,
        size=size,
        count=count,
        background=background,
        domain=domain,
        objects=objects,
        color_rgb=rgb,
        noise=noise,
        seed=int(rng.integers(0, 2**31)),
        extras=extras,
    )


# Object layouts (centres as fractions of the image) per count. Objects sit near these
# anchors with a little jitter: fully random placement makes shape so slow to learn for a
# small ViT that it would never get past colour in a CPU-sized pretraining run.
_LAYOUTS: dict[int, tuple[tuple[tuple[float, float], ...], ...]] = {
    1: (((0.5, 0.5),),),
    2: (((0.28, 0.5), (0.72, 0.5)), ((0.5, 0.28), (0.5, 0.72)), ((0.3, 0.3), (0.7, 0.7))),
    3: (((0.25, 0.3), (0.75, 0.3), (0.5, 0.74)), ((0.2, 0.5), (0.5, 0.5), (0.8, 0.5))),
}
_MAX_RADIUS = {1: 22.0, 2: 13.0, 3: 10.5}  # keeps neighbours from overlapping


def _place_objects(
    rng: np.random.Generator, size: str, count: int
) -> tuple[tuple[float, float, float, float], ...]:
    """Centres, radii and angles of ``count`` objects: a layout with jitter."""
    lo, hi = SIZES[size]
    layouts = _LAYOUTS[count]
    layout = layouts[int(rng.integers(len(layouts)))]
    placed = []
    for fx, fy in layout:
        r = min(float(rng.uniform(lo, hi)), _MAX_RADIUS[count])
        jx, jy = rng.uniform(-JITTER, JITTER, size=2)
        cx = float(np.clip(fx * RES + jx, r + 1, RES - r - 1))
        cy = float(np.clip(fy * RES + jy, r + 1, RES - r - 1))
        placed.append((cx, cy, r, float(rng.uniform(-0.25, 0.25))))
    return tuple(placed)


SKETCH_LINE = 2  # pencil line width of the sketch domain, in pixels
JITTER = 5.0  # pixels of random offset of each object from its layout anchor
TEXTURE_CONTRAST = 0.6  # how far the second tone of a texture moves towards white or black


# ------------------------------------------------------------------------------------------
# Shapes


def _regular(n: int, r: float = 1.0, start: float = -math.pi / 2) -> np.ndarray:
    t = start + np.arange(n) * 2 * math.pi / n
    return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)


def _heart() -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, 48, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return np.stack([x, y + 2.5], axis=1) / 16.5


def _star() -> np.ndarray:
    outer, inner = _regular(5, 1.0), _regular(5, 0.42, -math.pi / 2 + math.pi / 5)
    return np.stack([outer, inner], axis=1).reshape(10, 2)


_CROSS = np.array(
    [
        (-0.3, -1),
        (0.3, -1),
        (0.3, -0.3),
        (1, -0.3),
        (1, 0.3),
        (0.3, 0.3),
        (0.3, 1),
        (-0.3, 1),
        (-0.3, 0.3),
        (-1, 0.3),
        (-1, -0.3),
        (-0.3, -0.3),
    ],
    dtype=float,
)
_ARROW = np.array(
    [(-1, -0.25), (0.15, -0.25), (0.15, -0.7), (1, 0), (0.15, 0.7), (0.15, 0.25), (-1, 0.25)], dtype=float
)

# shape -> layers of (polygon in unit coordinates, filled?) drawn in order
_SHAPE_LAYERS: dict[str, list[tuple[np.ndarray, bool]]] = {
    "circle": [(_regular(40), True)],
    "square": [(_regular(4, 1.15, -math.pi / 4), True)],
    "triangle": [(_regular(3, 1.1) + np.array([0, 0.15]), True)],
    "star": [(_star() * 1.1, True)],
    "diamond": [(np.array([(0, -1.1), (0.6, 0), (0, 1.1), (-0.6, 0)], dtype=float), True)],
    "hexagon": [(_regular(6, 1.0, 0.0), True)],
    "pentagon": [(_regular(5, 1.05) + np.array([0, 0.08]), True)],
    "cross": [(_CROSS, True)],
    "ring": [(_regular(40), True), (_regular(40, 0.55), False)],
    "crescent": [(_regular(40), True), (_regular(40, 0.85) + np.array([0.45, -0.2]), False)],
    "heart": [(_heart() * 1.1, True)],
    "arrow": [(_ARROW, True)],
}


def _object_mask(
    shape: str, obj: tuple[float, float, float, float], wobble: np.random.Generator | None
) -> Image.Image:
    """Binary ("L") mask of one object; ``wobble`` jitters vertices like a hand drawing."""
    cx, cy, r, angle = obj
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    mask = Image.new("L", (RES, RES), 0)
    draw = ImageDraw.Draw(mask)
    for poly, filled in _SHAPE_LAYERS[shape]:
        pts = poly @ rot.T * r + (cx, cy)
        if wobble is not None:
            pts = pts + wobble.normal(0.0, 0.05 * r, size=pts.shape)
        draw.polygon([(float(x), float(y)) for x, y in pts], fill=255 if filled else 0)
    return mask


def _edge(mask: Image.Image, width: int) -> np.ndarray:
    """The border of a mask, ``width`` pixels thick."""
    inner = mask.filter(ImageFilter.MinFilter(2 * width + 1))
    return (np.asarray(mask) > 127) & ~(np.asarray(inner) > 127)


# ------------------------------------------------------------------------------------------
# Textures and rendering

_GRID = np.mgrid[0:RES, 0:RES].astype(np.float32) + 0.5  # (y, x)


def _pattern(scene: Scene, obj: tuple[float, float, float, float], rng: np.random.Generator) -> np.ndarray:
    """Weight in [0, 1] of the texture's second tone at each pixel, in object coordinates."""
    cx, cy, r, angle = obj
    dy, dx = _GRID[0] - cy, _GRID[1] - cx
    c, s = math.cos(angle), math.sin(angle)
    x, y = c * dx + s * dy, -s * dx + c * dy
    period, phase = scene.extras["period"], scene.extras["phase"]
    t = scene.texture
    if t in ("plain", "hollow"):
        return np.zeros_like(x)
    if t == "striped":
        return ((y + phase) % period < period / 2).astype(np.float32)
    if t == "wavy":
        return ((y + 2.2 * np.sin(x * 2 * math.pi / 9.0) + phase) % period < period / 2).astype(np.float32)
    if t == "zigzag":
        tri = np.abs((x / 4.0) % 2.0 - 1.0) * 3.0
        return ((y + tri + phase) % period < period / 2).astype(np.float32)
    if t == "dotted":
        u, v = (x + phase) % period - period / 2, (y + phase) % period - period / 2
        return (u * u + v * v < (0.3 * period) ** 2).astype(np.float32)
    if t == "checkered":
        cell = period * 0.6
        return ((np.floor((x + phase) / cell) + np.floor((y + phase) / cell)) % 2).astype(np.float32)
    if t == "crosshatched":
        a, b = (x + y + phase) % period, (x - y + phase) % period
        return ((a < 1.6) | (b < 1.6)).astype(np.float32)
    if t == "speckled":
        return (rng.random(x.shape) < 0.4).astype(np.float32)
    if t == "shaded":
        return np.clip((x + y) / (2.4 * r) + 0.5, 0.0, 1.0).astype(np.float32)
    raise ValueError(f"unknown texture {t!r}")


def _second_tone(rgb: np.ndarray) -> np.ndarray:
    """A contrasting tone of the same hue: lighter for dark colours, darker for light ones."""
    luminance = float(rgb @ np.array([0.299, 0.587, 0.114])) / 255.0
    target = 255.0 if luminance < 0.45 else 0.0
    return rgb + TEXTURE_CONTRAST * (target - rgb)


_PAPERS = np.array([(238, 236, 228), (245, 245, 245), (232, 226, 210)], dtype=np.float32)


def _background(scene: Scene) -> np.ndarray:
    if scene.domain == "sketch":
        base = _PAPERS[int(scene.extras["ink"] * 3) % 3]
    else:
        base = np.array(BACKGROUNDS[scene.background], dtype=np.float32)
    d = scene.extras["bg_dir"]
    ramp = (math.cos(d) * (_GRID[1] - RES / 2) + math.sin(d) * (_GRID[0] - RES / 2)) / RES
    return base[None, None, :] * (1.0 + scene.extras["bg_slope"] * ramp[..., None])


def render(scene: Scene) -> Image.Image:
    """The RGB image (``RES`` x ``RES``) of a scene; deterministic."""
    rng = np.random.default_rng(scene.seed)
    img = _background(scene)
    if scene.domain == "sketch":
        _draw_sketch(img, scene, rng)
    else:
        rgb = np.array(scene.color_rgb, dtype=np.float32)
        second = _second_tone(rgb)
        for obj in scene.objects:
            mask_img = _object_mask(scene.shape, obj, None)
            mask = _edge(mask_img, 2) if scene.texture == "hollow" else np.asarray(mask_img) > 127
            w = _pattern(scene, obj, rng)[..., None]
            fill = rgb * (1.0 - w) + second * w
            img[mask] = fill[mask]
    img += rng.normal(0.0, scene.noise, size=img.shape).astype(np.float32)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def _draw_sketch(img: np.ndarray, scene: Scene, rng: np.random.Generator) -> None:
    """Pencil outlines with wobble, plus a few stray strokes as clutter (in place)."""
    inks = np.array([(40, 40, 40), (70, 70, 80), (30, 45, 110)], dtype=np.float32)
    ink = inks[int(scene.extras["ink"] * 7) % 3]
    for obj in scene.objects:
        edge = _edge(_object_mask(scene.shape, obj, rng), SKETCH_LINE)
        img[edge] = ink
    strokes = Image.new("L", (RES, RES), 0)
    draw = ImageDraw.Draw(strokes)
    for _ in range(int(rng.integers(1, 4))):
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, RES, size=4))
        draw.line([(x0, y0), (x1, y1)], fill=255, width=1)
    img[np.asarray(strokes) > 127] = ink * 0.5 + 120.0


# ------------------------------------------------------------------------------------------
# Captions


@dataclass(frozen=True)
class CaptionNoise:
    """How captions deviate from the truth.

    ``mention``: probability that an attribute is named at all. ``rare``: values named with
    this much lower probability (rare words: their text embedding gets little training).
    ``flip``: probability that a named value is replaced by another value of the same
    attribute (label noise). ``clause``: probability of a descriptive clause.
    """

    mention: Mapping[str, float] = field(
        default_factory=lambda: {
            "shape": 0.8,
            "color": 0.75,
            "texture": 0.55,
            "size": 0.4,
            "count": 0.6,
            "background": 0.5,
        }
    )
    rare: Mapping[str, float] = field(default_factory=dict)
    flip: float = 0.08
    clause: float = 0.3


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _plural(noun: str) -> str:
    return PLURALS.get(noun, noun + "s")


def _named(
    attr: str, value: str, pool: tuple[str, ...], noise: CaptionNoise, rng: np.random.Generator
) -> str:
    """The word a caption uses for an attribute value, or "" when it is left out."""
    p = noise.mention.get(attr, 1.0) * noise.rare.get(value, 1.0)
    if rng.random() >= p:
        return ""
    if rng.random() < noise.flip:
        return str(rng.choice([v for v in pool if v != value]))
    return value


_NOUNS = ("shape", "object", "thing")  # stand-ins when the shape is not named
_BG_PHRASES = ("on a {} background", "against a {} background", "in front of a {} backdrop")
_FRAMES = ("a photo of {}.", "a picture of {}.", "an image of {}.", "{}.")


def caption(scene: Scene, rng: np.random.Generator, noise: CaptionNoise | None = None) -> str:
    """A natural-language caption of a scene, e.g. "a photo of two small red striped circles
    on a blue background."; phrasing and omissions vary with ``rng``."""
    return caption_facts(scene, rng, noise)[0]


def caption_facts(
    scene: Scene, rng: np.random.Generator, noise: CaptionNoise | None = None
) -> tuple[str, dict[str, str | int]]:
    """A caption and what it claims: attribute -> value as written (noise included).

    ``count`` is 1 for a singular noun, 2 or 3 when the number is written, and ``"plural"``
    for "some ...". Pretraining uses the claims to find captions that fit an image equally.
    """
    noise = noise or CaptionNoise()
    facts: dict[str, str | int] = {}
    for attr, pool in (
        ("shape", SHAPES),
        ("color", tuple(COLORS)),
        ("texture", TEXTURES),
        ("size", tuple(SIZES)),
        ("background", tuple(BACKGROUNDS)),
    ):
        word = _named(attr, getattr(scene, attr), pool, noise, rng)
        if word:
            facts[attr] = word
    noun = str(facts.get("shape") or rng.choice(_NOUNS))
    adjectives = [str(facts[a]) for a in ("size", "color", "texture") if a in facts]
    if scene.count > 1:
        named = rng.random() < noise.mention["count"]
        facts["count"] = scene.count if named else "plural"
        phrase = " ".join([COUNTS[scene.count] if named else "some", *adjectives, _plural(noun)])
    else:
        facts["count"] = 1
        phrase = " ".join([*adjectives, noun])
        phrase = f"{_article(phrase)} {phrase}"
    if rng.random() < noise.clause:
        phrase += " " + _clause(scene, rng)
    if "background" in facts:
        phrase += " " + str(rng.choice(_BG_PHRASES)).format(facts["background"])
    there = "there are {}." if scene.count > 1 else "there is {}."
    return str(rng.choice([*_FRAMES, there])).format(phrase), facts


_CLAIM_POOLS: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "color": tuple(COLORS),
    "texture": TEXTURES,
    "size": tuple(SIZES),
    "background": tuple(BACKGROUNDS),
}


def fit_matrix(scenes: list[Scene], claims: list[dict[str, str | int]]) -> np.ndarray:
    """``out[i, j]``: whether scene i agrees with every claim of caption j (vectorised :func:`fits`)."""
    out = np.ones((len(scenes), len(claims)), dtype=bool)
    for attr, pool in _CLAIM_POOLS.items():
        index = {v: k for k, v in enumerate(pool)}
        have = np.array([index[getattr(s, attr)] for s in scenes])
        said = np.array([index[str(c[attr])] if attr in c else -1 for c in claims])
        out &= (said[None, :] == -1) | (have[:, None] == said[None, :])
    count = np.array([s.count for s in scenes])
    said = np.array([-2 if c.get("count") == "plural" else int(c.get("count", -1)) for c in claims])
    plural = (said[None, :] == -2) & (count[:, None] > 1)
    out &= (said[None, :] == -1) | (count[:, None] == said[None, :]) | plural
    return out


def fits(scene: Scene, facts: dict[str, str | int]) -> bool:
    """Whether a scene agrees with every claim of a caption (see :func:`caption_facts`)."""
    for attr, value in facts.items():
        actual = getattr(scene, attr)
        if attr == "count" and value == "plural":
            if actual < 2:
                return False
        elif actual != value:
            return False
    return True


def caption_vocabulary() -> list[str]:
    """Every word and phrase a caption can contain (to find the tokens pretraining uses)."""
    nouns = [*SHAPES, *_NOUNS]
    words = [*nouns, *(_plural(n) for n in nouns), *COLORS, *TEXTURES, *SIZES, *BACKGROUNDS]
    words += [*COUNTS.values(), "some", "a", "an", "there is", "there are", "."]
    return words + list(_BG_PHRASES) + list(_FRAMES) + [d for ds in DESCRIPTORS.values() for d in ds]


def _clause(scene: Scene, rng: np.random.Generator) -> str:
    """A descriptive clause about the true shape, colour or texture (never noised)."""
    value = str(rng.choice([scene.shape, scene.shape, scene.color, scene.texture]))
    return str(rng.choice(DESCRIPTORS[value]))


# ------------------------------------------------------------------------------------------
# Dataset items

WORLD_SEED = 20240601  # namespace of every toy seed; changing it changes every toy image


def item_scene(dataset: str, split: str, index: int, per_class: int) -> tuple[Scene, int]:
    """The scene and label of item ``index`` of a toy dataset split (label = index // per_class).

    Seeds are derived from (dataset, split, index), so splits are disjoint by construction
    and disjoint from pretraining, which uses its own namespace.
    """
    d = TOY_DATASETS[dataset]
    label = index // per_class
    rng = seed_rng(WORLD_SEED, dataset, split, index)
    return sample_scene(rng, d.domain, **dict(d.viewing), **d.class_attributes(label)), label


def render_item(dataset: str, split: str, index: int, per_class: int) -> Image.Image:
    """The image of item ``index`` of a toy dataset split; deterministic."""
    image = render(item_scene(dataset, split, index, per_class)[0])
    return fade(image, TOY_DATASETS[dataset].contrast)


def fade(image: Image.Image, contrast: float) -> Image.Image:
    """Pixel values pulled towards the image's mean by ``contrast`` (1: unchanged)."""
    if contrast == 1.0:
        return image
    a = np.asarray(image, dtype=np.float32)
    out = a.mean() + contrast * (a - a.mean())
    return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8), "RGB")
