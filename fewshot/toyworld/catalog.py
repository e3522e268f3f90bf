"""Vocabulary of the toy world and the toy datasets built on it (pure Python, cheap to import).

The attribute values here are the words captions use; the datasets in
:data:`TOY_DATASETS` take one attribute (or a pair) as the class and let the others vary as
nuisances. Rendering lives in :mod:`fewshot.toyworld.world`.
"""

from __future__ import annotations

from dataclasses import dataclass

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "orange": (245, 135, 25),
    "yellow": (240, 215, 35),
    "green": (45, 165, 55),
    "blue": (35, 75, 215),
    "purple": (125, 45, 175),
    "pink": (245, 135, 190),
    "brown": (125, 75, 35),
    "black": (25, 25, 25),
    "white": (240, 240, 240),
    "gray": (128, 128, 128),
    "cyan": (35, 200, 215),
}

# Backgrounds reuse colour words (so "blue" can mislead a zero-shot colour prompt) but are
# muted towards gray so that objects stay visible.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    name: tuple(int(0.7 * c + 0.3 * 128) for c in COLORS[name])  # type: ignore[misc]
    for name in ("white", "black", "gray", "blue", "green", "yellow", "pink", "brown")
}

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "diamond",
    "hexagon",
    "pentagon",
    "cross",
    "ring",
    "crescent",
    "heart",
    "arrow",
)

TEXTURES: tuple[str, ...] = (
    "plain",
    "striped",
    "dotted",
    "checkered",
    "speckled",
    "hollow",
    "wavy",
    "shaded",
    "zigzag",
    "crosshatched",
)

SIZES: dict[str, tuple[float, float]] = {"small": (7.5, 9.5), "medium": (11.0, 14.0), "large": (16.0, 20.0)}
COUNTS: dict[int, str] = {1: "one", 2: "two", 3: "three"}
PLURALS: dict[str, str] = {"cross": "crosses"}

# Post-nominal phrases ("a circle <phrase>") used both as optional caption clauses and as
# per-class descriptions, so that description-based prompts use words the model has seen.
DESCRIPTORS: dict[str, tuple[str, ...]] = {
    "circle": ("that is round", "with no corners", "with a curved edge"),
    "square": ("with four equal sides", "with four right angles", "that looks like a box"),
    "triangle": ("with three corners", "with three straight sides", "that is pointed at the top"),
    "star": ("with five points", "that is spiky", "with pointed arms"),
    "diamond": ("with four slanted sides", "that is pointed at the top and bottom", "like a kite"),
    "hexagon": ("with six sides", "with six corners", "like a honeycomb cell"),
    "pentagon": ("with five sides", "with five corners", "like a house outline"),
    "cross": ("like a plus sign", "with four arms", "with two crossing bars"),
    "ring": ("with a hole in the middle", "like a donut", "that is round and empty in the centre"),
    "crescent": ("like a moon", "that is curved like a banana", "with two pointed tips"),
    "heart": ("like a valentine", "with two round bumps on top", "that is pointed at the bottom"),
    "arrow": ("pointing to one side", "with a pointed head and a shaft", "like a direction sign"),
    "red": ("coloured like a tomato", "coloured like a fire truck", "that is bright red"),
    "orange": ("coloured like a carrot", "coloured like a pumpkin", "that is reddish yellow"),
    "yellow": ("coloured like a lemon", "coloured like the sun", "that is bright like a banana"),
    "green": ("coloured like grass", "coloured like a leaf", "coloured like a frog"),
    "blue": ("coloured like the sky", "coloured like the sea", "coloured like a sapphire"),
    "purple": ("coloured like a grape", "coloured like a plum", "coloured like lavender"),
    "pink": ("coloured like a flamingo", "coloured like candy floss", "that is pale red"),
    "brown": ("coloured like chocolate", "coloured like wood", "coloured like soil"),
    "black": ("coloured like coal", "coloured like the night", "that is very dark"),
    "white": ("coloured like snow", "coloured like milk", "that is very light"),
    "gray": ("coloured like ash", "coloured like a rock", "coloured like a cloudy sky"),
    "cyan": ("coloured like a turquoise", "coloured like a swimming pool", "that is greenish blue"),
    "plain": ("in one solid colour", "without any pattern", "with a flat fill"),
    "striped": ("with parallel stripes", "with straight bands across it", "with even lines"),
    "dotted": ("covered in small dots", "with polka dots", "with a pattern of spots"),
    "checkered": ("with a checkerboard pattern", "with alternating squares", "like a chess board"),
    "speckled": ("with random specks", "that looks grainy", "sprinkled with tiny flecks"),
    "hollow": ("drawn only as an outline", "that is empty inside", "with just its border"),
    "wavy": ("with wavy lines", "with curvy bands", "with a pattern like waves"),
    "shaded": ("fading from light to dark", "with a smooth gradient", "that is darker on one side"),
    "zigzag": ("with zigzag lines", "with jagged bands", "with sharp back and forth lines"),
    "crosshatched": ("with crossing diagonal lines", "with a mesh of lines", "like a woven net"),
}


# ------------------------------------------------------------------------------------------
# Class descriptions


def class_descriptors(classname: str) -> list[str]:
    """Short post-nominal phrases describing a class ("that is round", "with no corners").

    Compound class names ("red circle") get the descriptors of each word.
    """
    words = classname.split()
    found = [d for w in words for d in DESCRIPTORS.get(w, ())]
    if not found:
        raise KeyError(f"no descriptors for toy class {classname!r}")
    return found


def class_descriptions(classname: str) -> list[str]:
    """Descriptive sentences for a class, e.g. ``"a circle with no corners."``."""
    noun = classname if classname in SHAPES or " " in classname else f"{classname} shape"
    article = "an" if noun[:1] in "aeiou" else "a"
    return [f"{article} {noun} {d}." for d in class_descriptors(classname)]


# ------------------------------------------------------------------------------------------
# Datasets

SPLIT_SIZES: dict[str, int] = {"train": 40, "val": 10, "test": 30}  # images per class

_OBJECT_COLORS = ("red", "blue", "green", "yellow")
_OBJECT_SHAPES = ("circle", "square", "triangle")


@dataclass(frozen=True)
class ToyDatasetDef:
    """One toy dataset: which attribute is the class, its classes, prompts and domain."""

    name: str
    attributes: tuple[str, ...]  # scene attributes the class fixes, e.g. ("shape",) or ("color", "shape")
    classes: tuple[tuple[str, ...], ...]  # per class, one value per attribute
    template: str
    templates: tuple[str, ...]
    domain: str = "photo"
    domain_of: str | None = None
    # Nuisance attributes fixed for every image of the dataset, e.g. (("size", "small"),).
    # This is how a dataset's difficulty is set: small outlined objects leave less colour for
    # the micro CLIP to match, and outlines pull the background's colour word into a
    # zero-shot prompt's score, while a few labelled images teach a probe to ignore it.
    viewing: tuple[tuple[str, str | int], ...] = ()
    # Photographic condition of the whole dataset: < 1 fades every image towards its mean
    # brightness (low-contrast photos), which the pretraining images never are.
    contrast: float = 1.0

    @property
    def classnames(self) -> tuple[str, ...]:
        """Class names as captions write them ("circle", "red circle")."""
        return tuple(" ".join(values) for values in self.classes)

    def class_attributes(self, label: int) -> dict[str, str]:
        """The scene attributes fixed by class ``label``."""
        return dict(zip(self.attributes, self.classes[label], strict=True))


def _single(values: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    return tuple((v,) for v in values)


_SHAPE_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "there is a {}.",
    "a {} on a background.",
)
_ADJ_TEMPLATES = (
    "a photo of a {} shape.",
    "a picture of a {} object.",
    "an image of a {} thing.",
    "a photo of a small {} shape.",
    "a photo of a large {} shape.",
    "there is a {} object.",
    "a {} shape on a background.",
)

TOY_DATASETS: dict[str, ToyDatasetDef] = {
    d.name: d
    for d in (
        ToyDatasetDef(
            "toy-shapes",
            ("shape",),
            _single(SHAPES),
            "a photo of a {}.",
            _SHAPE_TEMPLATES,
            viewing=(("texture", "hollow"), ("size", "large")),
        ),
        ToyDatasetDef(
            "toy-colors",
            ("color",),
            _single(tuple(COLORS)),
            "a photo of a {} shape.",
            _ADJ_TEMPLATES,
            viewing=(("size", "small"), ("count", 1), ("texture", "hollow")),
        ),
        ToyDatasetDef(
            "toy-textures",
            ("texture",),
            _single(TEXTURES),
            "a photo of a {} shape.",
            _ADJ_TEMPLATES,
            viewing=(("count", 1), ("size", "large")),
            contrast=0.25,
        ),
        ToyDatasetDef(
            "toy-objects",
            ("color", "shape"),
            tuple((c, s) for c in _OBJECT_COLORS for s in _OBJECT_SHAPES),
            "a photo of a {}.",
            _SHAPE_TEMPLATES,
            viewing=(("texture", "hollow"),),
        ),
        ToyDatasetDef(
            "toy-shapes-sketch",
            ("shape",),
            _single(SHAPES),
            "a photo of a {}.",
            _SHAPE_TEMPLATES,
            domain="sketch",
            domain_of="toy-shapes",
        ),
    )
}
