"""The published description and synonym files: where they are, their checksums, and how they
become description sets.

``fewshot data download descriptions`` fetches, at pinned commits over
raw.githubusercontent.com, through the verified downloader (:func:`fewshot.datasets.download.fetch`):

- MorningStarOvO/ProAPO (ProAPO, CVPR 2025), commit ``PROAPO_COMMIT``: per dataset folder
  ``data/dataset/<folder>/category_description/{DCLIP,CuPL_base,CuPL_full}.json`` (sets
  ``dclip``, ``cupl-base``, ``cupl-full``) and ``category_synonym/gpt-4-turbo-2024-04-09.json``
  / ``gpt-4-0613.json`` (sets ``synonyms-gpt4-turbo``, ``synonyms-gpt4-0613``), for 13 datasets;
- sachit-menon/classify_by_description_release (DCLIP), commit ``DCLIP_COMMIT``:
  ``descriptors/descriptors_<name>.json`` (set ``dclip-original``), 7 datasets;
- sarahpratt/CuPL, commit ``CUPL_COMMIT``: ``all_prompts/{base,full}_prompts/<name>_prompts_*.json``
  (sets ``cupl-base-original``, ``cupl-full-original``), 11 datasets.

Each file maps a class name to a list of strings. It is stored as a native set
(:func:`fewshot.descriptions.save_description_set`) with provenance ``{source, repository,
commit, repository_path, sha256, licence: "none stated"}``. Class names are matched to the
dataset's when the dataset is installed (as the loader compares them); otherwise
(and for names that match none) the file's name is kept with ``_`` read as a space, CoOp's
cleaning rule. Provenance records the renames and what did not match. Sentences are stripped of
surrounding spaces (ProAPO's DCLIP files end many with one).

Not listed: ImageNet's ``CuPL_full.json`` (ProAPO) and ``imagenet_prompts_full.json`` (CuPL),
whose contents the snapshot used to pin the checksums did not hold; and the CIFAR, Kinetics
and RESISC45 files of CuPL (no such fewshot dataset). None of these texts states a licence: they
are downloaded by the user from the authors' repositories and never shipped with fewshot.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fewshot.descriptions import DescriptionSet
from fewshot.types import FewshotError

__all__ = ["CUPL_COMMIT", "DCLIP_COMMIT", "PROAPO_COMMIT", "PUBLISHED", "PublishedFile", "to_set"]

RAW_BASE = "https://raw.githubusercontent.com"
LICENCE = "none stated"

PROAPO = "MorningStarOvO/ProAPO"
PROAPO_COMMIT = "fefdf1850210e7ac6d0f38229eed550f1b9ab6e9"
DCLIP = "sachit-menon/classify_by_description_release"
DCLIP_COMMIT = "d1a3d8920af89bd0d6a692ed3afeb277df46e082"
CUPL = "sarahpratt/CuPL"
CUPL_COMMIT = "719619c829792ff8f37298266e941b7f077c7f5c"

# fewshot dataset -> ProAPO's folder under data/dataset/
PROAPO_FOLDERS = {
    "caltech101": "caltech101",
    "cub": "cub",
    "dtd": "dtd",
    "eurosat": "euro_sat",
    "fgvc-aircraft": "fgvc_aircraft",
    "flowers102": "flo",
    "food101": "food101",
    "imagenet": "imagenet",
    "oxford-pets": "oxford_pets",
    "places365": "places365",
    "stanford-cars": "stanford_cars",
    "sun397": "sun397",
    "ucf101": "ucf101",
}
PROAPO_FILES = {  # set name -> path under the dataset folder
    "dclip": "category_description/DCLIP.json",
    "cupl-base": "category_description/CuPL_base.json",
    "cupl-full": "category_description/CuPL_full.json",
    "synonyms-gpt4-turbo": "category_synonym/gpt-4-turbo-2024-04-09.json",
    "synonyms-gpt4-0613": "category_synonym/gpt-4-0613.json",
}

# sha256 of `git show COMMIT:path`, computed from the repositories at the commits above.
# ProAPO rows: sha256 dataset set-name
_PROAPO_ROWS = """
9437c75272cb972c7ec41603d1bc500e1938f4d2237394bfb4e00727fba49d2c caltech101 dclip
a2ff15ca51ebf98676db10bf3829b110722064c7eb59711643e91fc710255b13 caltech101 cupl-base
a5789bf9f05a472cb81adedd61bd66cf2ec580bad3a94f0e0a4f3cfdac5ecdf2 caltech101 cupl-full
59c78816a77b6155f883a278c5a70b6c126e5ca7fb205dd7cbc4bb7f83bc59a4 caltech101 synonyms-gpt4-turbo
91f090ed954da0cb06baa09fc2440f728f2a129e89484476ec5086590e3acd19 caltech101 synonyms-gpt4-0613
983966040fd8747d89ee9b0f311eeab3b5f4b318e062dd0529c9bb57e2282597 cub dclip
12bda9205acc09a3c09ec406829401421dbff9c23134d57036458ab00ac3ffb9 cub cupl-base
9a5d109542d45ed5b3f2589603c320b1bad7ee074f9008c8d0f1b2cf03a8aa6f cub cupl-full
cfa480ae839a2bfd37b08afb88e8bd4164ab15e11baa551b8ec6da0de972fdc3 cub synonyms-gpt4-turbo
73c6f9952e4d9a709250afe7f1f5e3f37f0588d26921fc4df8ce992e5ffd3faa cub synonyms-gpt4-0613
3bb97a62ef38ab3daaee15afdd1cacf1ad8706d7c8a92e35c127a9fca9aa1ce4 dtd dclip
7d55451f1c038a9b4b80a5d339e3c5f7dcd7194a8a51b5608f343b5079b76ea8 dtd cupl-base
dabdcafded7babd67046d0f90abeb510b648bdaaf397b884f265f3460a7942a9 dtd cupl-full
72863c10d93262a48b0c31ac43b8dcfea92420d0c653fbfcb651d9813de854d0 dtd synonyms-gpt4-turbo
c3c27dc32cbd4e11fc6b20967a0e62a70345f390027c17d62686072a50c9cad0 dtd synonyms-gpt4-0613
1298f7a9f47e634120d67fbc4eb3c1fbc7c61a4103ad2861d72ed707ef46a867 eurosat dclip
03b4cabfe4a70d83cf14edfd0d95fd341a817c6be6d9eaea485d91f341165dda eurosat cupl-base
3a417bc640af2a633408cbe3a546b11069f8c58dda187003a4d9b837ce90b6cc eurosat cupl-full
06123ad8abd12ce5a03a64932282f127a50168ccbe9580e3a4a2ef072c1f7781 eurosat synonyms-gpt4-turbo
9c250b3926cc059ba23069a279b4693439842ca9048ac0a0ac40d57b21238b91 eurosat synonyms-gpt4-0613
1f5ca08e31e9699be464a32715f11ff5adfc4cc65ac4b9693672f8bbd51dff1f fgvc-aircraft dclip
1b7e08f68b57627a0e0658c0af9856bef531fe8134248f57c5f16aabccbeb523 fgvc-aircraft cupl-base
d86833c2483c1d12907abeb6198412f1d0a020bd12999a3f170967a7f549e3b8 fgvc-aircraft cupl-full
ac910c88265462b18133b552e63d62beff8e7ed962b2525ca3bd4c93eca64bf9 fgvc-aircraft synonyms-gpt4-turbo
2569a4d40e6d6d2e587d01a12ffefafeff8a7984210827cfe5e343648a6dfd74 fgvc-aircraft synonyms-gpt4-0613
d76fe587918cbded4a0d0dc002ad36b06ee6d761ed9042ba0449d844cae270ff flowers102 dclip
16cfaa3d99852e59eacafc9bf6e7197db2eaffe3e16e065d71c3ae449f487d7b flowers102 cupl-base
0a0141ff81635b2be102526e760b08f79e4a5a90b932ed63af6484ef3ea42960 flowers102 cupl-full
291bf606a248cacab8e8a6f78010dc285e286c18e0091360622247559f20f131 flowers102 synonyms-gpt4-turbo
0e16b78cc0af6ac32011175bd289072af8077eff1af2dd22c353c76f37a6bd18 flowers102 synonyms-gpt4-0613
9ba193726d3a18362445797495c9e067f9c70aeda2f9aed7987d1d1056be25de food101 dclip
b75a42ae975592bfd5e5a35af8c4f0dfa0f0f2f7d3cf31b474b95f67260fca1e food101 cupl-base
67cb17f323b7f0726e4b152224365fda289658ff92b0d14ee264910a16af96dc food101 cupl-full
de60ebd4dee0e5ec7f4900c9d9174c3841983c7f0a21ff0e28dde6b2bf95f82c food101 synonyms-gpt4-turbo
03818cd02a02f75f3dc41057d5f30b5434dca8aa92476a51a87a18ac81a2f2b7 food101 synonyms-gpt4-0613
2e3ac5449444a799f6d37a7e561d6603ad735b97a80eb64f693fb8aab7f0b5b2 imagenet dclip
290cd42cadb26064c7b31b6dd73c108da2e125cf2d521faf4dc51a84fe6eb794 imagenet cupl-base
b680143b33193e98eb3072353050908fd5ef872eb2969e8fbd1a3d247ac4021f imagenet synonyms-gpt4-turbo
807f6ed8739086915f14dbbf55ed74fe6432a4a2198886d9f283a618845f8df7 imagenet synonyms-gpt4-0613
81ad8581d5683543095fe12e34aef1addfc17f881413ab3ce815b64753b250f2 oxford-pets dclip
fadb7197f3ce72b6f069851ef287c48dc61b6b03b99973d90c303e163cd57d8d oxford-pets cupl-base
6948e8ebaf0883e31747a084b8844c6e635e15bf629b53450fa3c7507fe5fc64 oxford-pets cupl-full
6d7bc1c091974ec4abbcdb6903aa4e2c2782a70e702732edf64185f1750c1ac8 oxford-pets synonyms-gpt4-turbo
1086088cf4fb86d969d5788c59f15d729e8a921082aa1cd466d295d6f600999f oxford-pets synonyms-gpt4-0613
d7d95b93684aa44b505c215e23d589fb28907cefd3509e7db6d449d274b95590 places365 dclip
7a1cc0ea438cac79b8ac1e2311f51633bed594065bf1e4d44931550b9bd9adb8 places365 cupl-base
9deb928f058f94c7db5fec0607515453b7095e0d5795d6b94a5032b65012c019 places365 cupl-full
e2c03d6a85a3936c609a79a2699585b75e17194cac9d2f1269d2ccba17dfa7b6 places365 synonyms-gpt4-turbo
8d52a5c99527469de373f54ea9e5fff57bc0ca8bd5cac3ce33aed52054640403 places365 synonyms-gpt4-0613
c754928730fef83c7470148e8a6b5579f881befd84b394e446b9c6a5d6a0b15d stanford-cars dclip
71ed920604217854157307a34c536d5a921be9e37e225f41b58cedb9c9f938e3 stanford-cars cupl-base
99860f813319d3d4ef7bd8a47222c71238eef19075c01524a6a0ac12d36b5d60 stanford-cars cupl-full
3847584e26cc67a2a32c754003db87f82144812a0991f0aae4d9edbcf5b16c38 stanford-cars synonyms-gpt4-turbo
15a46ea59b869e10fd25e176b98aaa8d508440d089b4162db3612ee136783bf2 stanford-cars synonyms-gpt4-0613
6478885e73b69d47de0e1045ae22f5bb633155390951d70356347fe733cd7d1e sun397 dclip
873afe3b1e338b97e2124ba212b23cd5a167d9278912464189db1a05ac9b30e3 sun397 cupl-base
696bcb0ac686cf55cbb8e34158af710a1b8c0511841166b6f2b0afd470e2ce8a sun397 cupl-full
e4b7aa84d889bff53075ce069f94e4a84962c7c9eca79699c998ea31f54bf4d4 sun397 synonyms-gpt4-turbo
8eaa3168b31184614982009e6e8dcdc33c5f5fd00e08146ecc35a7d1a08e3e4f sun397 synonyms-gpt4-0613
85ffe9f618313058238f10dd96cd86a29bfe24328a74627e99fecccd9605bd4c ucf101 dclip
5e12b51ea506482281f520154b90fce7ff66c51cf72db8e282fc82a4cf986513 ucf101 cupl-base
69d8c8d4dc919a9ea3f2401bfff8e637c9abc030cad296969fbc83b711082bbd ucf101 cupl-full
1de0cd444ef3d60cc159536b5905d12f9ded0db81de8f753cc0af9af36abe5a1 ucf101 synonyms-gpt4-turbo
ea17881b7f5ab9b61bfbcc75c27fa593e302d7408b210f78fbefbc5f31532c5d ucf101 synonyms-gpt4-0613
"""
# DCLIP rows: sha256 dataset set-name stem (descriptors/descriptors_<stem>.json)
_DCLIP_ROWS = """
983966040fd8747d89ee9b0f311eeab3b5f4b318e062dd0529c9bb57e2282597 cub dclip-original cub
3bb97a62ef38ab3daaee15afdd1cacf1ad8706d7c8a92e35c127a9fca9aa1ce4 dtd dclip-original dtd
1298f7a9f47e634120d67fbc4eb3c1fbc7c61a4103ad2861d72ed707ef46a867 eurosat dclip-original eurosat
b7393ceb850bd4f0d4a06ef3a30bb81cb41fd3a43e2a0adccf9e95a903a65d91 food101 dclip-original food101
0c478db8b74046ca185488f252c908420bcea585198c7bceb4e42386cc1f7d3a imagenet dclip-original imagenet
3e9b003047b66210920c699678a84f481e4f2a196e40020b0cd0dd595bc441c4 oxford-pets dclip-original pets
967bcd3166018f6b6b94f99e7dd9889bfa38386035010f10abe2936fd44aff9f places365 dclip-original places365
"""
# CuPL rows: sha256 dataset set-name stem (all_prompts/<kind>_prompts/<stem>_prompts_<kind>.json)
_CUPL_ROWS = """
1b7e08f68b57627a0e0658c0af9856bef531fe8134248f57c5f16aabccbeb523 fgvc-aircraft cupl-base-original airplane
d86833c2483c1d12907abeb6198412f1d0a020bd12999a3f170967a7f549e3b8 fgvc-aircraft cupl-full-original airplane
830d654a8ad729b7aa211dcf7d6a4dc33b6e0ff68bcb848115faf7c3d12d93b5 cub cupl-base-original bird
830d654a8ad729b7aa211dcf7d6a4dc33b6e0ff68bcb848115faf7c3d12d93b5 cub cupl-full-original bird
99aeac054495d5564340b6f8ac922b4dc64156e6aa0429a29c9acca30ba38208 caltech101 cupl-base-original cal
f0995df6482ae36ec969d7bbdc01fd37ec8724430d6d2369e0043eee1f542834 caltech101 cupl-full-original cal
cd0854d7e784a48c93e5e2f3ea910e43f105d2b1270db7394cd86858a3f5ac86 stanford-cars cupl-base-original cars
10c77fcbd845283b59148e9bf714ec521971a34f0c9e691d46f65c8371d9e52d stanford-cars cupl-full-original cars
4d98c313eae511a74a0973a7350062970291c69a709fe21bdb9df3f45757ec7d flowers102 cupl-base-original flower
439e88a1ac5f7058da59d0bcdc4fa848283e4e8f29fc8711ebac4274137a2bbf flowers102 cupl-full-original flower
b75a42ae975592bfd5e5a35af8c4f0dfa0f0f2f7d3cf31b474b95f67260fca1e food101 cupl-base-original food
67cb17f323b7f0726e4b152224365fda289658ff92b0d14ee264910a16af96dc food101 cupl-full-original food
f8962ec2a4c4355406eb1b2cf695179f7269c512e130b623444b1a3eb4e3fe2c imagenet cupl-base-original imagenet
a4c136a8adaf85646d6fc0a1cb7cfd75c12b6da33ef235ad55dd1247138a7e08 oxford-pets cupl-base-original pet
b53cbe7f37e807c13a3f02e511c6058e6a50bafea3f8c4363cb85bf32920c6c6 oxford-pets cupl-full-original pets
9700c0ebfe122bf0972d1707a22307aa6153df50c414e3b675633d465aefca59 sun397 cupl-base-original sun
e6b1a95febe8e9420799fcf3be6647a73dc1aa9a6a9ac100d264c3ff78faf011 sun397 cupl-full-original sun
7d55451f1c038a9b4b80a5d339e3c5f7dcd7194a8a51b5608f343b5079b76ea8 dtd cupl-base-original texture
dabdcafded7babd67046d0f90abeb510b648bdaaf397b884f265f3460a7942a9 dtd cupl-full-original texture
5cf5ff16e0ff37305c9fbf078170ab7e165437936ed54297fad5a309cef72f12 ucf101 cupl-base-original ucf
8f2b130ee0c7573c3f0d4a6353c9bdda64ea63b771155207befa579f2a35c985 ucf101 cupl-full-original ucf
"""


@dataclass(frozen=True)
class PublishedFile:
    """One published file: which set of which dataset it becomes, and where it lies."""

    dataset: str
    name: str
    repository: str
    commit: str
    path: str
    sha256: str

    @property
    def kind(self) -> str:
        return "synonyms" if self.name.startswith("synonyms") else "descriptions"

    def url(self, base: str = RAW_BASE) -> str:
        """The file at the pinned commit, under ``base`` (raw.githubusercontent.com's layout)."""
        return f"{base.rstrip('/')}/{self.repository}/{self.commit}/{urllib.parse.quote(self.path)}"

    @property
    def download_name(self) -> str:
        """The file's name in the downloads folder."""
        return f"descriptions.{self.dataset}.{self.name}.json"


def _rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines()]


def _published() -> tuple[PublishedFile, ...]:
    files = [
        PublishedFile(
            ds, name, PROAPO, PROAPO_COMMIT, f"data/dataset/{PROAPO_FOLDERS[ds]}/{PROAPO_FILES[name]}", sha
        )
        for sha, ds, name in _rows(_PROAPO_ROWS)
    ]
    files += [
        PublishedFile(ds, name, DCLIP, DCLIP_COMMIT, f"descriptors/descriptors_{stem}.json", sha)
        for sha, ds, name, stem in _rows(_DCLIP_ROWS)
    ]
    for sha, ds, name, stem in _rows(_CUPL_ROWS):
        part = name.split("-")[1]  # base | full
        path = f"all_prompts/{part}_prompts/{stem}_prompts_{part}.json"
        files.append(PublishedFile(ds, name, CUPL, CUPL_COMMIT, path, sha))
    return tuple(files)


PUBLISHED: tuple[PublishedFile, ...] = _published()


def published_datasets() -> list[str]:
    """The datasets that have published files, sorted."""
    return sorted({f.dataset for f in PUBLISHED})


# ------------------------------------------------------------------------------------------
# Converting a file to a set


def read_published(data: bytes, where: str) -> dict[str, list[str]]:
    """The file's {class name: [strings]}; anything else is a FewshotError naming ``where``."""
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise FewshotError(f"{where} is not JSON ({exc}).") from None
    if not isinstance(document, dict) or not document:
        raise FewshotError(f"{where}: expected an object of class name -> list of strings.")
    for key, value in document.items():
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise FewshotError(f"{where}: class {key!r} does not map to a list of strings.")
    return document


def rename_classes(
    file_names: Sequence[str], dataset_names: Sequence[str] | None
) -> tuple[dict[str, str], dict[str, Any]]:
    """{file name: stored name} and a report of the matching (for provenance).

    With the dataset's names, a file name that matches one as the loader compares them
    (:func:`~fewshot.descriptions.files.normalized_name`) takes it; others (and all, without
    the dataset) become the file name with ``_`` read as a space. The loader checks the
    stored names strictly when a method reads the set.
    """
    from fewshot.descriptions.files import normalized_name as _norm

    by_norm = {_norm(n): n for n in dataset_names or ()}
    mapping = {n: by_norm.get(_norm(n), n.replace("_", " ")) for n in file_names}
    report: dict[str, Any] = {"renamed": {n: s for n, s in mapping.items() if n != s}}
    if dataset_names is not None:
        stored = set(mapping.values())
        report["unmatched_file_classes"] = sorted(n for n in file_names if _norm(n) not in by_norm)
        report["missing_dataset_classes"] = [n for n in dataset_names if n not in stored]
    return mapping, report


def to_set(
    file: PublishedFile, data: bytes, url: str, dataset_names: Sequence[str] | None
) -> tuple[DescriptionSet, dict[str, Any]]:
    """The native set for a downloaded (and verified) file, and the class-matching report."""
    content = read_published(data, url)
    mapping, report = rename_classes(list(content), dataset_names)
    classes: dict[str, tuple[str, ...]] = {}
    for original, sentences in content.items():
        stored = mapping[original]
        cleaned = tuple(s.strip() for s in sentences if s.strip())
        classes[stored] = classes.get(stored, ()) + cleaned  # two file names for one class: pooled
    provenance: Mapping[str, Any] = {
        "source": url,
        "repository": file.repository,
        "commit": file.commit,
        "repository_path": file.path,
        "sha256": file.sha256,
        "licence": LICENCE,
        "class_names": report,
    }
    return DescriptionSet(file.name, classes, file.kind, provenance), report


# ------------------------------------------------------------------------------------------
# Downloading


MIRROR_KEY = "descriptions"  # --mirror descriptions=URL, $FEWSHOT_MIRROR_DESCRIPTIONS


@dataclass
class FileOutcome:
    """What happened to one published file: installed, present or failed."""

    file: PublishedFile
    status: str
    message: str

    @property
    def ok(self) -> bool:
        return self.status in ("installed", "present")


def select_files(datasets: Sequence[str] = ()) -> list[PublishedFile]:
    """The published files of ``datasets`` (all when empty); an unknown dataset is an error."""
    from fewshot.types import ConfigError

    known = published_datasets()
    unknown = [d for d in datasets if d not in known]
    if unknown:
        raise ConfigError(
            f"No published descriptions for {', '.join(map(repr, unknown))}; datasets with files: "
            f"{', '.join(known)}."
        )
    return [f for f in PUBLISHED if not datasets or f.dataset in datasets]


def _base_url(mirror: str | None) -> str:
    if not mirror:
        return RAW_BASE
    if "://" not in mirror:
        return Path(mirror).expanduser().resolve().as_uri()
    return mirror


def _dataset_names(dataset: str, root: Path) -> list[str] | None:
    """The installed dataset's class names, or None when it is not installed."""
    from fewshot.datasets import get_dataset

    try:
        return list(get_dataset(dataset, root).spec().classnames)
    except FewshotError:
        return None


def download_descriptions(
    root: Path,
    files: Sequence[PublishedFile],
    *,
    mirror: str | None = None,
    force: bool = False,
    console: Any = None,
    attempts: int = 3,
) -> list[FileOutcome]:
    """Fetch, verify and store each file as ``root/descriptions/<dataset>/<name>.json``.

    A set already there is kept (``present``) unless ``force``. The download goes through
    ``root/.downloads`` and is removed once the set is written.
    """
    from fewshot.datasets.download import DOWNLOADS_DIR, Source, fetch, resolve_mirror
    from fewshot.descriptions.files import save_description_set, set_path

    base = _base_url(resolve_mirror(MIRROR_KEY, {MIRROR_KEY: mirror} if mirror else None))
    outcomes = []
    for file in files:
        target = set_path(root, file.dataset, file.name)
        if target.exists() and not force:
            outcomes.append(FileOutcome(file, "present", f"already in {target}"))
            continue
        url = file.url(base)
        source = Source(
            url, creates=str(target), sha256=file.sha256, filename=file.download_name, extract=False
        )
        try:
            path = fetch(
                source, root / DOWNLOADS_DIR, url=url, console=console, attempts=attempts, key=MIRROR_KEY
            )
            dset, report = to_set(file, path.read_bytes(), file.url(), _dataset_names(file.dataset, root))
            save_description_set(dset, file.dataset, root, overwrite=True)
            path.unlink(missing_ok=True)
        except FewshotError as exc:
            outcomes.append(FileOutcome(file, "failed", str(exc)))
            continue
        outcomes.append(FileOutcome(file, "installed", _installed_message(target, dset, report)))
    return outcomes


def _installed_message(target: Path, dset: DescriptionSet, report: Mapping[str, Any]) -> str:
    message = f"{len(dset.classes)} classes -> {target}"
    missing = report.get("missing_dataset_classes")
    if missing:
        shown = ", ".join(map(repr, missing[:3])) + (", ..." if len(missing) > 3 else "")
        message += f"; no entry for {len(missing)} of the dataset's classes ({shown})"
    elif missing is None:
        message += " (dataset not installed: class names not checked)"
    return message
