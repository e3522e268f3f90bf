"""Published numbers (results/reported): the shipped files, their coverage, and the checks of
fewshot.reported.read_reported on broken files.

The harmonic-mean check recomputes 2·B·N/(B+N) here, independently of the code under test.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from fewshot.reported import REPORTED_COLUMNS, default_reported_dir, read_reported
from fewshot.types import ConfigError

REPORTED = Path(__file__).resolve().parent.parent / "results" / "reported"
HEADER = ",".join(REPORTED_COLUMNS)
GOOD = (
    "coop,ViT-B-16:openai,base2novel,Average,16,base,82.69,repository,"
    "muzairkhattak/multimodal-prompt-learning:README.md@69bce21ae8eda80ad6187534b2dce09cf6c59e17,"
    "arXiv:2210.03117,copied,yes"
)


@pytest.fixture(scope="module")
def shipped() -> pd.DataFrame:
    return read_reported(REPORTED)


def test_default_dir_is_the_checkout_folder() -> None:
    assert default_reported_dir() == REPORTED


def test_shipped_files_follow_the_schema(shipped: pd.DataFrame) -> None:
    assert len(shipped) >= 27
    assert list(shipped.columns) == [*REPORTED_COLUMNS, "accuracy", "citation"]
    for path in sorted(REPORTED.glob("*.csv")):
        assert path.read_text().splitlines()[0] == HEADER, path
    assert (shipped["accuracy"] == shipped["value"]).all()
    assert shipped["accuracy"].between(0, 100).all()
    assert set(shipped["source"]) <= {"paper", "repository"}
    assert set(shipped["how"]) <= {"copied", "computed"}


def test_every_row_cites_where_it_was_read(shipped: pd.DataFrame) -> None:
    for column in ("source", "location", "reference", "citation"):
        assert (shipped[column].str.strip() != "").all(), column
    repo = shipped[shipped["source"] == "repository"]
    pattern = re.compile(r"^[\w.-]+/[\w.-]+:[^@]+@[0-9a-f]{40}$")
    assert all(pattern.match(loc) for loc in repo["location"]), list(repo["location"])
    assert all(re.fullmatch(r"arXiv:\d{4}\.\d{4,5}", ref) for ref in shipped["reference"])


def test_base_to_novel_average_coverage(shipped: pd.DataFrame) -> None:
    b2n = shipped[shipped["protocol"] == "base2novel"]
    methods = ["zeroshot", "coop", "cocoop", "kgcoop", "maple", "ivlp", "promptsrc"]
    expected = {(m, "Average", s) for m in methods for s in ("base", "novel", "hm")}
    assert set(zip(b2n["method"], b2n["dataset"], b2n["space"], strict=True)) == expected
    assert set(b2n["backbone"]) == {"ViT-B-16:openai"}
    assert set(b2n["shots"]) == {16}


def test_known_numbers_are_where_expected(shipped: pd.DataFrame) -> None:
    """Spot checks against the READMEs as read (see results/reported/README.md)."""
    rows = shipped.set_index(["method", "space", "citation"])["accuracy"]
    assert rows[("maple", "hm", "README (muzairkhattak/multimodal-prompt-learning@69bce21)")] == 78.55
    assert rows[("promptsrc", "novel", "README (muzairkhattak/PromptSRC@bb95c77)")] == 76.10
    assert rows[("kgcoop", "base", "README (htyao89/KgCoOp@c43ccc3)")] == 80.73


def hm_mismatches(frame: pd.DataFrame) -> list[str]:
    """Groups whose published HM differs from 2·B·N/(B+N) by more than 0.01."""
    bad = []
    b2n = frame[frame["protocol"] == "base2novel"]
    for key, group in b2n.groupby(["method", "backbone", "dataset", "location"]):
        spaces = dict(zip(group["space"], group["value"], strict=True))
        if {"base", "novel", "hm"} <= set(spaces):
            base, novel = spaces["base"], spaces["novel"]
            if abs(2 * base * novel / (base + novel) - spaces["hm"]) > 0.01:
                bad.append(f"{key}: {spaces}")
    return bad


def test_published_hm_matches_base_and_novel(shipped: pd.DataFrame) -> None:
    assert hm_mismatches(shipped) == []


def test_hm_check_catches_a_wrong_number(shipped: pd.DataFrame) -> None:
    broken = shipped.copy()
    row = broken.index[(broken["method"] == "maple") & (broken["space"] == "hm")][0]
    broken.loc[row, "value"] = 78.65
    assert len(hm_mismatches(broken)) == 1


def write(folder: Path, *lines: str, header: str = HEADER) -> Path:
    folder.mkdir(exist_ok=True)
    (folder / "bad.csv").write_text("\n".join([header, *lines]) + "\n")
    return folder


def swap(line: str, column: str, value: str) -> str:
    cells = line.split(",")
    cells[REPORTED_COLUMNS.index(column)] = value
    return ",".join(cells)


@pytest.mark.parametrize(
    ("lines", "header", "problem"),
    [
        ((GOOD,), HEADER.replace(",how", ""), r"row 1: missing column\(s\) how"),
        ((swap(GOOD, "shots", "0"),), HEADER, r"row 2: bad shots '0'"),
        ((swap(GOOD, "shots", "sixteen"),), HEADER, r"row 2: bad shots 'sixteen'"),
        ((GOOD, swap(GOOD, "value", "101")), HEADER, r"row 3: value 101 out of range"),
        ((swap(GOOD, "value", "nan"),), HEADER, r"row 2: value nan out of range"),
        ((swap(GOOD, "how", "guessed"),), HEADER, r"row 2: unknown how 'guessed'"),
        ((swap(GOOD, "primary", "maybe"),), HEADER, r"row 2: unknown primary 'maybe'"),
        ((swap(GOOD, "source", "blog"),), HEADER, r"row 2: unknown source 'blog'"),
        ((swap(GOOD, "protocol", "b2n"),), HEADER, r"row 2: unknown protocol 'b2n'"),
        ((swap(GOOD, "location", ""),), HEADER, r"row 2: empty location"),
        ((swap(GOOD, "location", "a/b:README.md@69bce21"),), HEADER, r"row 2: bad repository location"),
        ((swap(GOOD, "dataset", "oxford_pets"),), HEADER, r"row 2: unknown dataset or space 'oxford_pets'"),
        ((swap(GOOD, "method", "coop2"),), HEADER, r"row 2: unknown method 'coop2'"),
        ((GOOD, GOOD), HEADER, r"row 3: duplicate of bad.csv row 2"),
    ],
)
def test_bad_files_are_rejected(tmp_path: Path, lines: tuple[str, ...], header: str, problem: str) -> None:
    folder = write(tmp_path / "reported", *lines, header=header)
    with pytest.raises(ConfigError, match=r"^bad\.csv " + problem) as info:
        read_reported(folder)
    assert "\n" not in str(info.value)


def test_same_number_from_two_locations_is_allowed_with_one_primary(tmp_path: Path) -> None:
    other = swap(swap(GOOD, "location", "muzairkhattak/PromptSRC:README.md@" + "b" * 40), "primary", "no")
    frame = read_reported(write(tmp_path / "reported", GOOD, other))
    assert len(frame) == 2 and frame["primary"].tolist() == [True, False]
    assert frame["citation"].tolist()[1] == "README (muzairkhattak/PromptSRC@bbbbbbb)"
    both = swap(other, "primary", "yes")
    with pytest.raises(ConfigError, match="exactly one row with primary=yes"):
        read_reported(write(tmp_path / "two", GOOD, both))
    with pytest.raises(ConfigError, match="exactly one row with primary=yes"):
        read_reported(write(tmp_path / "none", swap(GOOD, "primary", "no")))


def test_disagreeing_shipped_sources_have_one_primary_each(shipped: pd.DataFrame) -> None:
    """CoOp and IVLP base-to-novel averages are printed differently by two READMEs; the
    leaderboard compares against MaPLe's CoOp row and PromptSRC's IVLP row (IVLP 4+4 tokens,
    depth 9, as the harness's defaults)."""
    primary = shipped[shipped["primary"] & (shipped["dataset"] == "Average")]
    coop = primary[(primary["method"] == "coop") & (primary["space"] == "base")]
    ivlp = primary[(primary["method"] == "ivlp") & (primary["space"] == "base")]
    assert coop["value"].tolist() == [82.69] and ivlp["value"].tolist() == [84.21]


def test_backbone_is_canonical_and_paper_citation(tmp_path: Path) -> None:
    paper = swap(swap(GOOD, "source", "paper"), "location", '"Table 1, arXiv:2203.05557"')
    frame = read_reported(write(tmp_path / "reported", swap(paper, "backbone", " ViT-B-16:openai ")))
    assert frame.loc[0, "backbone"] == "ViT-B-16:openai"
    assert frame.loc[0, "citation"] == "paper: Table 1, arXiv:2203.05557"


def test_empty_folder_gives_an_empty_frame(tmp_path: Path) -> None:
    frame = read_reported(tmp_path)
    assert frame.empty
    assert list(frame.columns) == [*REPORTED_COLUMNS, "accuracy", "citation"]
