"""The documentation stands alone: no pointer to design files outside the repository, and
every relative Markdown link in README.md and docs/*.md reaches a file and, for an anchor
into a Markdown file, a heading that produces it (GitHub's rule)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Design notes kept outside the repository; the project's own docs replace them.
FORBIDDEN = ("METHODS.md", "ARCHITECTURE.md", "STYLE.md", "shared/")
SCANNED = ("fewshot", "docs", "examples", "benchmarks", "tests", "README.md")
SKIPPED_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache"}

MARKDOWN_FILES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^()\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HTML_ID = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)


def _scanned_files() -> list[Path]:
    files: list[Path] = []
    for name in SCANNED:
        path = ROOT / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*"))
        for file in candidates:
            if file.is_file() and not SKIPPED_DIRS & set(file.relative_to(ROOT).parts):
                files.append(file)
    return [f for f in files if f != Path(__file__).resolve()]


def _outside_fences(text: str) -> list[str]:
    """The lines of ``text`` that are not inside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower-case, punctuation dropped, spaces to ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def heading_anchors(text: str) -> set[str]:
    """Every anchor a Markdown text defines (duplicates get ``-1``, ``-2``, ... as on GitHub)."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    for line in _outside_fences(text):
        anchors.update(_HTML_ID.findall(line))
        match = _HEADING.match(line)
        if not match:
            continue
        anchor = github_anchor(match.group(2))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        anchors.add(anchor if count == 0 else f"{anchor}-{count}")
    return anchors


def link_problems(md_file: Path, root: Path = ROOT) -> list[str]:
    """Relative links of ``md_file`` whose file, or anchor into a Markdown file, is missing."""
    problems = []
    for line in _outside_fences(md_file.read_text(encoding="utf-8")):
        for target in _LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
                continue  # https:, mailto:, ...: not a file of the repository
            path_part, _, anchor = target.partition("#")
            dest = (md_file.parent / path_part).resolve() if path_part else md_file.resolve()
            if not dest.is_relative_to(root.resolve()):
                problems.append(f"{md_file.name}: {target} leaves the repository")
            elif not dest.exists():
                problems.append(f"{md_file.name}: {target} -> no such file")
            elif (
                anchor
                and dest.suffix == ".md"
                and dest.is_file()
                and anchor not in heading_anchors(dest.read_text(encoding="utf-8"))
            ):
                problems.append(f"{md_file.name}: {target} -> no heading #{anchor}")
    return problems


def test_no_reference_to_design_files_outside_the_repository() -> None:
    found = []
    for file in _scanned_files():
        data = file.read_bytes()
        for word in FORBIDDEN:
            if word.encode() in data:
                found.append(f"{file.relative_to(ROOT)}: {word}")
    assert not found, "references to files outside the repository:\n" + "\n".join(found)


@pytest.mark.parametrize("md_file", MARKDOWN_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(md_file: Path) -> None:
    problems = link_problems(md_file)
    assert not problems, "\n".join(problems)


def test_methods_doc_has_a_section_per_builtin_method() -> None:
    """Every registered built-in method has its section in docs/methods.md and its row in
    the README's method table."""
    from fewshot.methods import list_methods

    anchors = heading_anchors((ROOT / "docs" / "methods.md").read_text(encoding="utf-8"))
    titles = {"zeroshot": "Zero-shot CLIP", "lp++": "LP++"}
    expected = {github_anchor(titles.get(name, name)) for name in list_methods()}
    assert len(expected) >= 17 and expected <= anchors, f"missing sections: {sorted(expected - anchors)}"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [name for name in list_methods() if f"| `{name}` |" not in readme]
    assert not missing, f"README method table lacks {missing}"


def test_github_anchor() -> None:
    assert github_anchor("CoOp") == "coop"
    assert github_anchor("Features, views and precision") == "features-views-and-precision"
    assert github_anchor("The `fewshot` command line") == "the-fewshot-command-line"
    assert github_anchor("Zero-shot CLIP") == "zero-shot-clip"
    assert heading_anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


def test_link_checker_reports_broken_links(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n## A section\n", encoding="utf-8")
    page = tmp_path / "docs" / "page.md"
    page.write_text(
        "# Page\n\n"
        "[ok](other.md#a-section) [ok](#page) [ok](https://example.org/x.md#y)\n"
        "[missing file](nothere.md) [missing anchor](other.md#no-such-section)\n"
        "[bad self anchor](#nowhere) [outside](../../elsewhere.md)\n"
        "```\n[in a code block](ignored.md)\n```\n",
        encoding="utf-8",
    )
    problems = link_problems(page, root=tmp_path)
    assert len(problems) == 4, problems
    assert any("nothere.md" in p for p in problems)
    assert any("#no-such-section" in p for p in problems)
    assert any("#nowhere" in p for p in problems)
    assert any("leaves the repository" in p for p in problems)
