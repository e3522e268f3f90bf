"""Where each dataset comes from: ``RECIPES``, one :class:`Recipe` per dataset key.

A recipe gives the dataset's folder under the data root (the CoOp layout of KaiyangZhou/CoOp
``DATASETS.md``; ProAPO's for CUB and Places365), its public sources with the checksums their
publishers (or torchvision / TFDS, which pin them) give, and step-by-step instructions where
no public direct source exists. :mod:`fewshot.datasets.download` installs them.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from fewshot.types import ConfigError

__all__ = ["RECIPES", "Recipe", "Source", "get_recipe"]

_HEX = {"sha256": 64, "md5": 32}


@dataclass(frozen=True)
class Source:
    """One file to fetch, and where its content goes inside the dataset folder."""

    url: str
    creates: str  # path (relative to the dataset folder) that exists once this source is in place
    sha256: str | None = None
    md5: str | None = None
    size: int | None = None  # bytes, as published; shown while downloading
    filename: str = ""  # name in .downloads and under a mirror; default: the URL's last part
    dest: str = "."  # where the content goes, relative to the dataset folder
    strip: str = ""  # archive folder whose content is used (when the archive has it)
    nested: str = ""  # an archive inside the archive, extracted instead of the outer one
    extract: bool = True  # False: a plain file, copied to dest/filename
    unverified: str = ""  # why there is no checksum (required when there is none)

    def __post_init__(self) -> None:
        for algo in _HEX:
            value = getattr(self, algo)
            if value is not None and not re.fullmatch(f"[0-9a-f]{{{_HEX[algo]}}}", value):
                raise ValueError(f"{self.url}: {algo} must be {_HEX[algo]} lower-case hex digits.")
        if self.digest is None and not self.unverified:
            raise ValueError(f"{self.url}: give a checksum, or the reason there is none (unverified=...).")

    @property
    def name(self) -> str:
        """The file name, in ``.downloads`` and under a mirror."""
        return self.filename or Path(urllib.parse.urlsplit(self.url).path).name

    @property
    def digest(self) -> tuple[str, str] | None:
        """(algorithm, hex digest) as published, sha256 preferred; None if unpublished."""
        if self.sha256:
            return "sha256", self.sha256
        return ("md5", self.md5) if self.md5 else None


@dataclass(frozen=True)
class Recipe:
    """How to get one dataset into ``<data root>/<folder>``."""

    key: str
    folder: str
    sources: tuple[Source, ...] = ()
    # Steps to follow where there is no public direct source ({path}: the dataset folder,
    # {root}: the data root). With a mirror, a manual recipe's sources are installed from it.
    manual: str | None = None
    notes: tuple[str, ...] = ()
    expect: tuple[str, ...] = ()  # paths that show it is in place, when there are no sources
    split_file: str = ""  # CoOp's split file, expected in the folder
    split_url: str = ""  # where CoOp publishes it
    shared: tuple[tuple[str, str], ...] = ()  # (file under the root, name in the folder), copied
    size: str = ""  # total download size, for people

    @property
    def markers(self) -> tuple[str, ...]:
        """Paths under the folder whose presence means the dataset is in place."""
        return self.expect or tuple(s.creates for s in self.sources)

    def missing(self, root: Path) -> list[str]:
        """The markers not yet present under ``root``."""
        return [m for m in self.markers if not (root / self.folder / m).exists()]

    def manual_text(self, root: Path) -> str:
        """The manual steps with the real paths, and the files they must yield."""
        assert self.manual is not None
        text = self.manual.format(path=root / self.folder, root=root)
        if self.sources:
            lines = [f"  {s.name}: {_describe(s)}" for s in self.sources]
            text += "\nExpected files:\n" + "\n".join(lines)
        return text

    def split_note(self, root: Path) -> str | None:
        """Where to get CoOp's split file, if it is not in the folder yet."""
        if not self.split_file or (root / self.folder / self.split_file).exists():
            return None
        return (
            f"CoOp split file: for numbers comparable with published tables, download "
            f"{self.split_file} from {self.split_url} (CoOp's DATASETS.md) into {root / self.folder}. "
            "Without it fewshot generates a split, and labels every record that uses it as generated."
        )


def _describe(source: Source) -> str:
    size = f"{source.size:,} bytes, " if source.size else ""
    algo_hex = source.digest
    return size + (f"{algo_hex[0]} {algo_hex[1]}" if algo_hex else "no published checksum")


def _drive(file_id: str) -> str:
    return f"https://drive.google.com/file/d/{file_id}/view"


_IMAGENET_CLASSNAMES = (("imagenet/classnames.txt", "classnames.txt"),)
_COPY_CLASSNAMES = (
    "classnames.txt (CLIP's ImageNet class names) is copied from {root}/imagenet/classnames.txt "
    "when it is there; see the imagenet recipe for where to get it."
)
_ROBOTS = "https://www.robots.ox.ac.uk/~vgg/data"
_PLACES = "http://data.csail.mit.edu/places/places365"

_IMAGENET_MANUAL = """\
ImageNet (ILSVRC-2012) has no public direct download: it needs a free account at
https://image-net.org (non-commercial research licence).
1. Log in and download, from https://image-net.org/challenges/LSVRC/2012/2012-downloads.php,
   ILSVRC2012_img_train.tar (138 GB, md5 1d675b47d978889d74fa0da5fadfb00e),
   ILSVRC2012_img_val.tar (6.3 GB, md5 29b22e2961454d5413ddabcf34fc5622) and
   ILSVRC2012_devkit_t12.tar.gz (2.5 MB, md5 fa75699e90414af021442c21a62c3abf).
2. Put the three files in {path}/images/
3. Extract them AND sort the validation images into one folder per class (the val archive is
   flat; unsorted, the test set would be unusable). torchvision, installed with fewshot, does
   both, using the devkit's ground truth:
   python - <<'EOF'
   from torchvision.datasets import ImageNet
   ImageNet('{path}/images', split='train')
   ImageNet('{path}/images', split='val')
   EOF
   This writes {path}/images/train/n*/ and {path}/images/val/n*/ (1,000 folders each); then
   delete the .tar files. (Val already extracted flat? Keep the devkit in {path}/images/ and
   run `fewshot data sort-imagenet-val`.)
4. Download classnames.txt (CLIP's class names, from CoOp's DATASETS.md) from
   https://drive.google.com/file/d/1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF/view into {path}/
Already have ImageNet extracted and sorted elsewhere? Link it instead of steps 1-3:
   ln -s /your/imagenet {path}/images   (it must hold train/n*/ and val/n*/)"""

_CARS_MANUAL = """\
The original Stanford links (ai.stanford.edu/~jkrause/...) are dead and there is no official
mirror; torchvision no longer downloads this dataset (pytorch/vision#7545).
1. Get the four original files below from a copy you trust (a colleague, your institution, or
   the copies discussed in pytorch/vision#7545; check the terms of any copy you use).
2. Put them in one folder and install them with their checksums verified:
   fewshot data download stanford-cars --mirror stanford-cars=/path/to/that/folder
   (An unpacked copy, e.g. Kaggle's jessicali9530/stanford-cars-dataset, can be arranged by hand:
   {path}/cars_train/*.jpg, {path}/cars_test/*.jpg, {path}/devkit/ and
   {path}/cars_test_annos_withlabels.mat; Kaggle's folders are nested twice, flatten them.)"""

_UCF_MANUAL = """\
UCF-101-midframes.zip (the middle frame of every UCF101 video, made by CoOp's authors) is
published only on Google Drive, which does not serve large files to scripts:
1. Download it from https://drive.google.com/file/d/10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O/view
   (in a browser, or: pip install gdown; gdown 10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O).
2. Install it from the folder you saved it in:
   fewshot data download ucf101 --mirror ucf101=/path/to/that/folder
   (or unzip it into {path} so that {path}/UCF-101-midframes/ holds one folder per class)."""


# sha256 of the original Stanford Cars files (as pinned by TFDS's cars196 checksums).
_CARS_TRAIN = "512b227b30e2f0a8aab9e09485786ab4479582073a144998da74d64b801fd288"
_CARS_TEST = "bffea656d6f425cba3c91c6d83336e4c5f86c6cffd8975b0f375d3a10da8e243"
_CARS_DEVKIT = "b97deb463af7d58b6bfaa18b2a4de9829f0f79e8ce663dfa9261bf7810e9accd"
_CARS_TEST_LABELS = "790f75be8ea34eeded134cc559332baf23e30e91367e9ddca97d26ed9b895f05"

_CARS = "http://ai.stanford.edu/~jkrause/car196"
_SUN = "http://vision.princeton.edu/projects/2010/SUN"

_TABLE = (
    Recipe(
        "imagenet",
        "imagenet",
        manual=_IMAGENET_MANUAL,
        expect=("images/train", "images/val", "classnames.txt"),
        size="147 GB",
    ),
    Recipe(
        "caltech101",
        "caltech-101",
        (
            Source(
                "https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip",
                "101_ObjectCategories",
                md5="3138e1922a9193bfa496528edbbc45d0",
                nested="caltech-101/101_ObjectCategories.tar.gz",
            ),
        ),
        notes=(
            "CoOp's link (www.vision.caltech.edu) is dead; the archive now comes from CaltechDATA "
            "(caltech-101.zip holds 101_ObjectCategories.tar.gz, which is what is extracted).",
        ),
        split_file="split_zhou_Caltech101.json",
        split_url=_drive("1hyarUivQE36mY6jSomru6Fjd-JzwcCzN"),
        size="about 140 MB",
    ),
    Recipe(
        "oxford-pets",
        "oxford_pets",
        (
            Source(
                f"{_ROBOTS}/pets/data/images.tar.gz",
                "images",
                md5="5c4f3ee8e5d25df40f4fd59a7f44e54c",
                size=791_918_971,
            ),
            Source(
                f"{_ROBOTS}/pets/data/annotations.tar.gz",
                "annotations",
                md5="95a8c909bbe2e81eed6a22bccdf3f68f",
                size=19_173_078,
            ),
        ),
        split_file="split_zhou_OxfordPets.json",
        split_url=_drive("1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs"),
        size="811 MB",
    ),
    Recipe(
        "stanford-cars",
        "stanford_cars",
        (
            Source(f"{_CARS}/cars_train.tgz", "cars_train", sha256=_CARS_TRAIN, size=979_269_282),
            Source(f"{_CARS}/cars_test.tgz", "cars_test", sha256=_CARS_TEST, size=977_350_468),
            Source(
                "https://ai.stanford.edu/~jkrause/cars/car_devkit.tgz",
                "devkit",
                sha256=_CARS_DEVKIT,
                size=330_960,
            ),
            Source(
                f"{_CARS}/cars_test_annos_withlabels.mat",
                "cars_test_annos_withlabels.mat",
                sha256=_CARS_TEST_LABELS,
                size=185_758,
                extract=False,
            ),
        ),
        manual=_CARS_MANUAL,
        split_file="split_zhou_StanfordCars.json",
        split_url=_drive("1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT"),
        size="1.9 GB",
    ),
    Recipe(
        "flowers102",
        "oxford_flowers",
        (
            Source(
                f"{_ROBOTS}/flowers/102/102flowers.tgz",
                "jpg",
                md5="52808999861908f626f3c1f4e79d11fa",
                size=344_862_509,
            ),
            Source(
                f"{_ROBOTS}/flowers/102/imagelabels.mat",
                "imagelabels.mat",
                md5="e0620be6f572b9609742df49c70aed4d",
                size=502,
                extract=False,
            ),
        ),
        notes=(
            "CoOp also keeps cat_to_name.json (class names by label) in this folder; it is on Google "
            f"Drive only: {_drive('1AkcxCXeK_RCGCEC_GvmWxjcjaNhu-at0')}",
        ),
        split_file="split_zhou_OxfordFlowers.json",
        split_url=_drive("1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT"),
        size="345 MB",
    ),
    Recipe(
        "food101",
        "food-101",
        (
            Source(
                "http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz",
                "images",
                md5="85eeb15f3717b99a5da872d97d918f87",
                size=4_996_278_331,
                strip="food-101",
            ),
        ),
        split_file="split_zhou_Food101.json",
        split_url=_drive("1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl"),
        size="5.0 GB",
    ),
    Recipe(
        "fgvc-aircraft",
        "fgvc_aircraft",
        (
            Source(
                f"{_ROBOTS}/fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
                "images",
                sha256="d5f68b1b81d6d7831eb9d5c5517074176b5dfbce6bcb43dc14ed1c66a87b8d75",
                size=2_770_575_360,
                strip="fgvc-aircraft-2013b/data",
            ),
        ),
        notes=(
            "Only the archive's data/ folder is kept, as CoOp does. CoOp reads this dataset's own "
            "split files (images_variant_*.txt); there is no split_zhou file.",
        ),
        size="2.8 GB",
    ),
    Recipe(
        "sun397",
        "sun397",
        (
            Source(
                f"{_SUN}/SUN397.tar.gz", "SUN397", md5="8ca2778205c41d23104230ba66911c7a", size=39_077_296_924
            ),
            Source(
                f"{_SUN}/download/Partitions.zip",
                "ClassName.txt",
                sha256="e3311ea5f812d4cc6faef194688343d1111f6cd6f70f2c62f393c2b8d6ba1ec9",
                size=18_293_705,
                strip="Partitions",
            ),
        ),
        notes=("If vision.princeton.edu is unreachable, install the same two files from a mirror.",),
        split_file="split_zhou_SUN397.json",
        split_url=_drive("1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq"),
        size="39 GB",
    ),
    Recipe(
        "dtd",
        "dtd",
        (
            Source(
                f"{_ROBOTS}/dtd/download/dtd-r1.0.1.tar.gz",
                "images",
                md5="fff73e5086ae6bdbea199a49dfb8a4c1",
                size=625_239_812,
                strip="dtd",
            ),
        ),
        split_file="split_zhou_DescribableTextures.json",
        split_url=_drive("1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x"),
        size="625 MB",
    ),
    Recipe(
        "eurosat",
        "eurosat",
        (
            Source(
                "https://huggingface.co/datasets/torchgeo/eurosat/resolve/"
                "c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip",
                "2750",
                md5="c8fa014336c82ac7804f0398fcb19387",
            ),
        ),
        notes=(
            "CoOp's link (madm.dfki.de) is dead; this is the copy torchvision and TorchGeo use "
            "(Hugging Face torchgeo/eurosat, pinned revision).",
        ),
        split_file="split_zhou_EuroSAT.json",
        split_url=_drive("1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o"),
        size="94 MB",
    ),
    Recipe(
        "ucf101",
        "ucf101",
        (
            Source(
                "https://drive.google.com/uc?id=10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O",
                "UCF-101-midframes",
                filename="UCF-101-midframes.zip",
                unverified="published only on Google Drive, with no checksum",
            ),
        ),
        manual=_UCF_MANUAL,
        split_file="split_zhou_UCF101.json",
        split_url=_drive("1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y"),
    ),
    Recipe(
        "cub",
        "cub",
        (
            Source(
                "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz",
                "CUB_200_2011",
                md5="97eceeb196236b17998738112f37df78",
            ),
        ),
        notes=(
            "Layout as ProAPO reads it: cub/CUB_200_2011/images/<class>/*.jpg, with the dataset's "
            "own train_test_split.txt beside images/.",
        ),
        size="1.15 GB",
    ),
    Recipe(
        "places365",
        "places365",
        (
            Source(
                f"{_PLACES}/filelist_places365-standard.tar",
                "categories_places365.txt",
                md5="35a0585fee1fa656440f3ab298f8479c",
            ),
            Source(f"{_PLACES}/val_large.tar", "val_large", md5="9b71c4993ad89d2d8bcbdc4aef38042f"),
            Source(
                f"{_PLACES}/train_large_places365standard.tar",
                "data_large",
                md5="67e186b496a84c929568076ed01a8aa1",
            ),
        ),
        notes=(
            "Places365-Standard, high resolution: val_large/ (36,500 images) is the test set ProAPO "
            "uses; data_large/ holds the train images (105 GB); the file lists and "
            "categories_places365.txt come from the devkit.",
        ),
        size="108 GB",
    ),
    Recipe(
        "imagenet-v2",
        "imagenetv2",
        (
            Source(
                "https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main/"
                "imagenetv2-matched-frequency.tar.gz",
                "imagenetv2-matched-frequency-format-val",
                sha256="f0c37fdf925916b19ea1323cd9a2208cdb6959ba2c32eef2a7fc393835c9ca7c",
                size=1_264_079_360,
            ),
        ),
        notes=(
            "From the authors' Hugging Face copy (vaishaal/ImageNetV2); the S3 link in CoOp's "
            "DATASETS.md serves a differently packed tarball of the same images.",
            _COPY_CLASSNAMES,
        ),
        shared=_IMAGENET_CLASSNAMES,
        size="1.3 GB",
    ),
    Recipe(
        "imagenet-sketch",
        "imagenet-sketch",
        (
            Source(
                "https://huggingface.co/datasets/songweig/imagenet_sketch/resolve/main/data/ImageNet-Sketch.zip",
                "images",
                dest="images",
                strip="sketch",
                unverified="the authors publish no checksum (official copy: Google Drive, linked "
                "from HaohanWang/ImageNet-Sketch); the sha256 received is printed",
            ),
        ),
        notes=(
            "From the Hugging Face copy (songweig/imagenet_sketch); the archive's sketch/ folder "
            "becomes images/.",
            _COPY_CLASSNAMES,
        ),
        shared=_IMAGENET_CLASSNAMES,
        size="7.8 GB",
    ),
    Recipe(
        "imagenet-a",
        "imagenet-adversarial",
        (
            Source(
                "https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar",
                "imagenet-a",
                sha256="3bb3632277e6ba6392ea64c02ddbf4dd2266c9caffd6bc09c9656d28f012589e",
                size=687_552_512,
            ),
        ),
        notes=(_COPY_CLASSNAMES,),
        shared=_IMAGENET_CLASSNAMES,
        size="688 MB",
    ),
    Recipe(
        "imagenet-r",
        "imagenet-rendition",
        (
            Source(
                "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar",
                "imagenet-r",
                sha256="18c6bf493b39a0d975d48e587437f562caab9c52ae6327dcfa9dd8eb54aa1b52",
                size=2_191_079_936,
            ),
        ),
        notes=(_COPY_CLASSNAMES,),
        shared=_IMAGENET_CLASSNAMES,
        size="2.2 GB",
    ),
)

RECIPES: dict[str, Recipe] = {r.key: r for r in _TABLE}


def get_recipe(key: str) -> Recipe:
    """The recipe of a dataset key; an unknown key is a ConfigError listing the valid ones."""
    try:
        return RECIPES[key]
    except KeyError:
        raise ConfigError(
            f"No download recipe for {key!r}. Datasets that can be downloaded: {', '.join(RECIPES)}."
        ) from None
