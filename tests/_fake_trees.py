"""Tiny fake copies of the standard datasets, in their real on-disk layouts.

Each builder writes a few 8x8 JPEGs per class under ``root`` exactly where the real dataset
keeps them, the dataset's real metadata files (text lists, ``classnames.txt``, ``.mat`` files
where a reader needs them to generate a split), and, with ``split=True``, a split file in
CoOp's format (``split_zhou_*.json``) whose rows are in a shuffled, unsorted order. It returns
a :class:`Tree`: what a correct reader must produce, stated from what was written.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

Row = tuple[str, int, str]  # (impath relative to the image folder, label, class name as stored)

SPLITS = ("train", "val", "test")

IMAGENET = {  # six real ImageNet classes, wnid -> name, in sorted wnid order (CoOp's file order)
    "n01440764": "tench",
    "n01443537": "goldfish",
    "n01484850": "great white shark",
    "n01491361": "tiger shark",
    "n01494475": "hammerhead shark",
    "n01496331": "electric ray",
}


@dataclass
class Tree:
    """What the reader of a fake tree must produce."""

    name: str
    root: Path
    classnames: tuple[str, ...]  # cleaned, label order
    counts: tuple[int, int, int]  # train, val, test sizes
    prompt: str  # spec.prompt(classnames[0])
    base_novel: tuple[int, int]  # sizes of the base and novel label spaces
    split_source: str
    # Per split, the expected (Item.path, label, cleaned class name) sequence, when it is fixed
    # by what was written (not for generated splits, whose order comes from a seeded shuffle).
    rows: dict[str, list[tuple[str, int, str]]] | None = None
    split_rows: dict[str, list[Row]] = field(default_factory=dict)  # the split file's rows, as written


@cache
def jpeg_bytes(shade: int) -> bytes:
    """An 8x8 JPEG of one colour."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (shade * 37 % 256, shade * 91 % 256, 120)).save(buf, format="JPEG")
    return buf.getvalue()


def write_image(path: Path, shade: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg_bytes(shade % 7))


def write_text(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))


def write_split(path: Path, rows: dict[str, list[Row]]) -> None:
    """A split file as CoOp's write_json writes it (indent 4)."""
    data = {name: [list(row) for row in rows[name]] for name in SPLITS}
    path.write_text(json.dumps(data, indent=4, separators=(",", ": ")))


def assign(per_class: list[list[Row]], seed: int = 0) -> dict[str, list[Row]]:
    """Per class: 3 rows to train, 2 to val, the rest to test; each split then shuffled."""
    rows: dict[str, list[Row]] = {name: [] for name in SPLITS}
    for group in per_class:
        rows["train"] += group[:3]
        rows["val"] += group[3:5]
        rows["test"] += group[5:]
    rng = random.Random(seed)
    for name in SPLITS:
        rng.shuffle(rows[name])
    return rows


def expected(rows: dict[str, list[Row]], image_dir: str) -> dict[str, list[tuple[str, int, str]]]:
    prefix = f"{image_dir}/" if image_dir else ""
    return {n: [(prefix + p, label, c.replace("_", " ")) for p, label, c in rows[n]] for n in SPLITS}


def _split_tree(
    name: str,
    root: Path,
    folder: Path,
    image_dir: str,
    split_file: str | None,
    per_class: list[list[Row]],
    classnames: tuple[str, ...],
    prompt: str,
) -> Tree:
    """Write every image of ``per_class`` and, with ``split_file``, CoOp's split file."""
    for label, group in enumerate(per_class):
        for i, (impath, _, _) in enumerate(group):
            write_image(folder / image_dir / impath, label + i)
    n = len(classnames)
    base = (n + 1) // 2
    if split_file is None:
        return Tree(name, root, classnames, (0, 0, 0), prompt, (base, n - base), "generated")
    rows = assign(per_class)
    write_split(folder / split_file, rows)
    counts = (len(rows["train"]), len(rows["val"]), len(rows["test"]))
    return Tree(
        name, root, classnames, counts, prompt, (base, n - base), split_file, expected(rows, image_dir), rows
    )


# ------------------------------------------------------------------------------------------
# Datasets read through CoOp's split files (and generated from the official files otherwise)


def caltech101(root: Path, split: bool = True) -> Tree:
    # Label order of CoOp's file: the category folders sorted (capitals first), renamed.
    folders = {"Faces": "face", "Leopards": "leopard", "accordion": "accordion", "airplanes": "airplane"}
    per_class = [
        [(f"{f}/image_{i + 1:04d}.jpg", label, c) for i in range(10)]
        for label, (f, c) in enumerate(folders.items())
    ]
    folder = root / "caltech-101"
    for ignored in ("BACKGROUND_Google", "Faces_easy"):  # CoOp's split leaves these out
        for i in range(3):
            write_image(folder / "101_ObjectCategories" / ignored / f"image_{i + 1:04d}.jpg")
    return _split_tree(
        "caltech101",
        root,
        folder,
        "101_ObjectCategories",
        "split_zhou_Caltech101.json" if split else None,
        per_class,
        tuple(folders.values()),
        "a photo of a face.",
    )


def dtd(root: Path, split: bool = True) -> Tree:
    classes = ["banded", "blotchy", "zigzagged"]
    per_class = [
        [(f"{c}/{c}_{i + 1:04d}.jpg", label, c) for i in range(10)] for label, c in enumerate(classes)
    ]
    folder = root / "dtd"
    (folder / "imdb").mkdir(parents=True)
    (folder / "labels").mkdir(parents=True)
    return _split_tree(
        "dtd",
        root,
        folder,
        "images",
        "split_zhou_DescribableTextures.json" if split else None,
        per_class,
        tuple(classes),
        "banded texture.",
    )


def food101(root: Path, split: bool = True) -> Tree:
    classes = ["apple_pie", "baby_back_ribs", "waffles"]
    per_class = [
        [(f"{c}/{100 * label + i}.jpg", label, c) for i in range(10)] for label, c in enumerate(classes)
    ]
    folder = root / "food-101"
    write_text(folder / "meta" / "classes.txt", classes)
    return _split_tree(
        "food101",
        root,
        folder,
        "images",
        "split_zhou_Food101.json" if split else None,
        per_class,
        ("apple pie", "baby back ribs", "waffles"),
        "a photo of apple pie, a type of food.",
    )


def eurosat(root: Path, split: bool = True) -> Tree:
    folders = {"AnnualCrop": "Annual Crop Land", "Highway": "Highway or Road", "SeaLake": "Sea or Lake"}
    per_class = [
        [(f"{f}/{f}_{i + 1}.jpg", label, c) for i in range(10)]
        for label, (f, c) in enumerate(folders.items())
    ]
    return _split_tree(
        "eurosat",
        root,
        root / "eurosat",
        "2750",
        "split_zhou_EuroSAT.json" if split else None,
        per_class,
        tuple(folders.values()),
        "a centered satellite photo of Annual Crop Land.",
    )


def flowers102(root: Path, split: bool = True) -> Tree:
    import scipy.io

    names = ["pink primrose", "hard-leaved pocket orchid", "canterbury bells"]
    folder = root / "oxford_flowers"
    labels = [label for i in range(10) for label in (2, 1, 3)]  # interleaved, first appearance 2, 1, 3
    per_class: list[list[Row]] = [[] for _ in names]
    for i, label in enumerate(labels):
        per_class[label - 1].append((f"image_{i + 1:05d}.jpg", label - 1, names[label - 1]))
    folder.mkdir(parents=True)
    scipy.io.savemat(folder / "imagelabels.mat", {"labels": np.array([labels])})
    (folder / "cat_to_name.json").write_text(json.dumps({str(i + 1): n for i, n in enumerate(names)}))
    return _split_tree(
        "flowers102",
        root,
        folder,
        "jpg",
        "split_zhou_OxfordFlowers.json" if split else None,
        per_class,
        tuple(names),
        "a photo of a pink primrose, a type of flower.",
    )


def oxford_pets(root: Path, split: bool = True) -> Tree:
    breeds = ["Abyssinian", "american_bulldog", "Sphynx"]
    folder = root / "oxford_pets"
    per_class = [[(f"{b}_{i + 1}.jpg", label, b.lower()) for i in range(7)] for label, b in enumerate(breeds)]
    species = {"Abyssinian": 1, "american_bulldog": 2, "Sphynx": 1}
    trainval = [f"{b}_{i + 1} {label + 1} {species[b]} 1" for label, b in enumerate(breeds) for i in range(5)]
    test = [f"{b}_{i + 1} {label + 1} {species[b]} 1" for label, b in enumerate(breeds) for i in range(5, 7)]
    write_text(folder / "annotations" / "trainval.txt", trainval)
    write_text(folder / "annotations" / "test.txt", test)
    return _split_tree(
        "oxford-pets",
        root,
        folder,
        "images",
        "split_zhou_OxfordPets.json" if split else None,
        per_class,
        ("abyssinian", "american bulldog", "sphynx"),
        "a photo of a abyssinian, a type of pet.",
    )


def stanford_cars(root: Path, split: bool = True) -> Tree:
    import scipy.io

    official = ["AM General Hummer SUV 2000", "Tesla Model S Sedan 2012", "Hyundai Elantra Sedan 2007"]
    names = ["2000 AM General Hummer SUV", "2012 Tesla Model S Sedan", "2007 Hyundai Elantra Sedan"]
    folder = root / "stanford_cars"
    per_class: list[list[Row]] = [[] for _ in names]
    annos: dict[str, list[tuple[str, int]]] = {"cars_train": [], "cars_test": []}
    for i in range(7):
        for label in range(3):
            part = "cars_train" if i < 5 else "cars_test"
            fname = f"{len(annos[part]) + 1:05d}.jpg"
            annos[part].append((fname, label + 1))
            per_class[label].append((f"{part}/{fname}", label, names[label]))
    for part, mat in (
        ("cars_train", "devkit/cars_train_annos.mat"),
        ("cars_test", "cars_test_annos_withlabels.mat"),
    ):
        table = np.zeros((1, len(annos[part])), dtype=[("fname", "O"), ("class", "O")])
        for i, (fname, label) in enumerate(annos[part]):
            table[0, i] = (fname, np.array([[label]], dtype=np.uint8))
        (folder / mat).parent.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(folder / mat, {"annotations": table})
    scipy.io.savemat(
        folder / "devkit/cars_meta.mat", {"class_names": np.array(official, dtype=object).reshape(1, -1)}
    )
    return _split_tree(
        "stanford-cars",
        root,
        folder,
        "",
        "split_zhou_StanfordCars.json" if split else None,
        per_class,
        tuple(names),
        "a photo of a 2000 AM General Hummer SUV.",
    )


def sun397(root: Path, split: bool = True) -> Tree:
    folders = {
        "a/abbey": "abbey",
        "a/apartment_building/outdoor": "outdoor apartment_building",
        "b/bakery/shop": "shop bakery",
    }
    folder = root / "sun397"
    per_class = [
        [(f"{f}/sun_{label}{i:03d}.jpg", label, c) for i in range(7)]
        for label, (f, c) in enumerate(folders.items())
    ]
    write_text(folder / "ClassName.txt", [f"/{f}" for f in folders])
    write_text(folder / "Training_01.txt", [f"/{row[0]}" for group in per_class for row in group[:5]])
    write_text(folder / "Testing_01.txt", [f"/{row[0]}" for group in per_class for row in group[5:]])
    return _split_tree(
        "sun397",
        root,
        folder,
        "SUN397",
        "split_zhou_SUN397.json" if split else None,
        per_class,
        ("abbey", "outdoor apartment building", "shop bakery"),
        "a photo of a abbey.",
    )


def ucf101(root: Path, split: bool = True) -> Tree:
    actions = {"ApplyEyeMakeup": "Apply_Eye_Makeup", "Basketball": "Basketball", "YoYo": "Yo_Yo"}
    folder = root / "ucf101"
    per_class = [
        [(f"{renamed}/v_{action}_g{i + 1:02d}_c01.jpg", label, renamed) for i in range(7)]
        for label, (action, renamed) in enumerate(actions.items())
    ]
    lists = folder / "ucfTrainTestlist"
    write_text(lists / "classInd.txt", [f"{i + 1} {a}" for i, a in enumerate(actions)])
    write_text(
        lists / "trainlist01.txt",
        [f"{a}/v_{a}_g{i + 1:02d}_c01.avi {label + 1}" for label, a in enumerate(actions) for i in range(5)],
    )
    write_text(
        lists / "testlist01.txt", [f"{a}/v_{a}_g{i + 1:02d}_c01.avi" for a in actions for i in range(5, 7)]
    )
    return _split_tree(
        "ucf101",
        root,
        folder,
        "UCF-101-midframes",
        "split_zhou_UCF101.json" if split else None,
        per_class,
        ("Apply Eye Makeup", "Basketball", "Yo Yo"),
        "a photo of a person doing Apply Eye Makeup.",
    )


# ------------------------------------------------------------------------------------------
# Datasets read from their own files


def fgvc_aircraft(root: Path) -> Tree:
    variants = ["707-320", "A300B4", "F/A-18"]
    folder = root / "fgvc_aircraft"
    write_text(folder / "variants.txt", variants)
    rows: dict[str, list[tuple[str, int, str]]] = {}
    for s, name in enumerate(SPLITS):
        lines, rows[name] = [], []
        for i in range(2):
            for label in (2, 0, 1):  # not sorted by label: the file's order is kept
                image_id = f"{1000000 + 100 * s + 10 * i + label}"
                write_image(folder / "images" / f"{image_id}.jpg", label)
                lines.append(f"{image_id} {variants[label]}")
                rows[name].append((f"images/{image_id}.jpg", label, variants[label]))
        write_text(folder / f"images_variant_{name}.txt", lines)
    write_text(folder / "manufacturers.txt", ["Boeing", "Airbus", "McDonnell Douglas"])
    return Tree(
        "fgvc-aircraft",
        root,
        tuple(variants),
        (6, 6, 6),
        "a photo of a 707-320, a type of aircraft.",
        (2, 1),
        "images_variant_{train,val,test}.txt",
        rows,
    )


def cub(root: Path) -> Tree:
    classes = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    base = root / "cub" / "CUB_200_2011"
    images, labels, flags = [], [], []
    for i in range(8):
        for label, c in enumerate(classes):
            image_id = len(images) + 1
            species = c.partition(".")[2]
            impath = f"{c}/{species}_{i + 1:04d}_{image_id}.jpg"
            write_image(base / "images" / impath, label)
            images.append(f"{image_id} {impath}")
            labels.append(f"{image_id} {label + 1}")
            flags.append(f"{image_id} {1 if i < 5 else 0}")
    write_text(base / "classes.txt", [f"{i + 1} {c}" for i, c in enumerate(classes)])
    write_text(base / "images.txt", images)
    write_text(base / "image_class_labels.txt", labels)
    write_text(base / "train_test_split.txt", flags)
    names = ("Black footed Albatross", "Laysan Albatross", "Sooty Albatross")
    return Tree("cub", root, names, (12, 3, 9), "a photo of a Black footed Albatross.", (2, 1), "generated")


def places365(root: Path) -> Tree:
    categories = ["/a/airfield", "/a/apartment_building/outdoor", "/b/bakery/shop"]
    folder = root / "places365"
    write_text(folder / "categories_places365.txt", [f"{c} {i}" for i, c in enumerate(categories)])
    train, val = [], []
    for i in range(5):
        for label, c in enumerate(categories):
            write_image(folder / "data_large" / c.lstrip("/") / f"{i + 1:08d}.jpg", label)
            train.append(f"{c}/{i + 1:08d}.jpg {label}")
    for i in range(6):
        name = f"Places365_val_{i + 1:08d}.jpg"
        write_image(folder / "val_large" / name, i)
        val.append(f"{name} {i % 3}")
    write_text(folder / "places365_train_standard.txt", train)
    write_text(folder / "places365_val.txt", val)
    names = ("airfield", "apartment building-outdoor", "bakery-shop")
    return Tree("places365", root, names, (12, 3, 6), "a photo of a airfield.", (2, 1), "generated")


def _classnames_file(folder: Path) -> None:
    write_text(folder / "classnames.txt", [f"{w} {n}" for w, n in IMAGENET.items()])


def _wnid_images(
    folder: Path, relative: str, wnids: list[str], per_class: int, name: str
) -> list[tuple[str, int, str]]:
    """Images ``relative/<wnid>/<name>_<i>.JPEG``; rows with ImageNet names, label = position."""
    rows = []
    for label, wnid in enumerate(wnids):
        for i in range(per_class):
            path = f"{relative}/{wnid}/{name}_{i}.JPEG"
            write_image(folder / path, label)
            rows.append((path, label, IMAGENET[wnid]))
    return rows


def imagenet(root: Path) -> Tree:
    folder = root / "imagenet"
    _classnames_file(folder)
    wnids = list(IMAGENET)
    train = _wnid_images(folder, "images/train", wnids, 3, "train")
    test = _wnid_images(folder, "images/val", wnids, 2, "ILSVRC2012_val")
    # No val split of its own: val is the train split (few-shot val is drawn outside the support).
    rows = {"train": train, "val": train, "test": test}
    return Tree(
        "imagenet",
        root,
        tuple(IMAGENET.values()),
        (18, 18, 12),
        "a photo of a tench.",
        (3, 3),
        "images/{train,val} folders",
        rows,
    )


_TEST_ONLY = "test-only (train = val = test, as in CoOp)"


def imagenet_v2(root: Path) -> Tree:
    folder = root / "imagenetv2"
    _classnames_file(folder)
    rows = []
    for label, wnid in enumerate(IMAGENET):
        for i in range(2):
            path = f"imagenetv2-matched-frequency-format-val/{label}/{i:040x}.jpeg"
            write_image(folder / path, label)
            rows.append((path, label, IMAGENET[wnid]))
    return Tree(
        "imagenet-v2",
        root,
        tuple(IMAGENET.values()),
        (12, 12, 12),
        "a photo of a tench.",
        (3, 3),
        _TEST_ONLY,
        {n: rows for n in SPLITS},
    )


def imagenet_sketch(root: Path) -> Tree:
    folder = root / "imagenet-sketch"
    _classnames_file(folder)
    rows = _wnid_images(folder, "images", list(IMAGENET), 2, "sketch")
    return Tree(
        "imagenet-sketch",
        root,
        tuple(IMAGENET.values()),
        (12, 12, 12),
        "a photo of a tench.",
        (3, 3),
        _TEST_ONLY,
        {n: rows for n in SPLITS},
    )


IMAGENET_A_WNIDS = ["n01443537", "n01491361", "n01494475"]  # ImageNet labels 1, 3, 4
IMAGENET_R_WNIDS = ["n01440764", "n01496331"]  # ImageNet labels 0, 5


def imagenet_a(root: Path) -> Tree:
    folder = root / "imagenet-adversarial"
    _classnames_file(folder)
    rows = _wnid_images(
        folder, "imagenet-a", IMAGENET_A_WNIDS, 2, "0.000116_digital clock _ digital clock_0.865"
    )
    write_text(folder / "imagenet-a" / "README.txt", ["ImageNet-A"])
    names = tuple(IMAGENET[w] for w in IMAGENET_A_WNIDS)
    return Tree(
        "imagenet-a",
        root,
        names,
        (6, 6, 6),
        "a photo of a goldfish.",
        (2, 1),
        _TEST_ONLY,
        {n: rows for n in SPLITS},
    )


def imagenet_r(root: Path) -> Tree:
    """ImageNet-R without its own classnames.txt: the reader falls back to ImageNet's file."""
    folder = root / "imagenet-rendition"
    _classnames_file(root / "imagenet")
    rows = _wnid_images(folder, "imagenet-r", IMAGENET_R_WNIDS, 3, "art")
    write_text(folder / "imagenet-r" / "README.txt", ["ImageNet-R"])
    names = tuple(IMAGENET[w] for w in IMAGENET_R_WNIDS)
    return Tree(
        "imagenet-r",
        root,
        names,
        (6, 6, 6),
        "a photo of a tench.",
        (1, 1),
        _TEST_ONLY,
        {n: rows for n in SPLITS},
    )


BUILDERS = {
    "imagenet": imagenet,
    "caltech101": caltech101,
    "oxford-pets": oxford_pets,
    "stanford-cars": stanford_cars,
    "flowers102": flowers102,
    "food101": food101,
    "fgvc-aircraft": fgvc_aircraft,
    "sun397": sun397,
    "dtd": dtd,
    "eurosat": eurosat,
    "ucf101": ucf101,
    "cub": cub,
    "places365": places365,
    "imagenet-v2": imagenet_v2,
    "imagenet-sketch": imagenet_sketch,
    "imagenet-a": imagenet_a,
    "imagenet-r": imagenet_r,
}

SPLIT_FILE_BUILDERS = {
    "caltech101": caltech101,
    "oxford-pets": oxford_pets,
    "stanford-cars": stanford_cars,
    "flowers102": flowers102,
    "food101": food101,
    "sun397": sun397,
    "dtd": dtd,
    "eurosat": eurosat,
    "ucf101": ucf101,
}
