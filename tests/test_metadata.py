"""Project metadata: CITATION.cff (Citation File Format 1.2.0) and LICENSE agree with the package."""

from __future__ import annotations

import datetime as dt
import tomllib
from pathlib import Path

import pytest

import fewshot

ROOT = Path(__file__).resolve().parents[1]
REQUIRED = ("cff-version", "message", "title", "authors")  # required by the CFF 1.2.0 schema


@pytest.fixture(scope="module")
def citation() -> dict:
    yaml = pytest.importorskip("yaml")
    data = yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_citation_has_the_required_keys(citation: dict) -> None:
    assert [key for key in REQUIRED if not citation.get(key)] == []
    assert citation["cff-version"] == "1.2.0"
    assert citation["type"] == "software"
    assert citation["authors"] == [{"name": "The fewshot authors"}]  # an entity, not a person
    assert citation["license"] == "MIT"
    assert str(citation["date-released"]) == "2026-12-01"
    dt.date.fromisoformat(str(citation["date-released"]))
    assert isinstance(citation["keywords"], list) and all(isinstance(k, str) for k in citation["keywords"])


def test_citation_version_is_the_package_version(citation: dict) -> None:
    assert citation["version"] == fewshot.__version__


def test_license_is_the_mit_text_that_pyproject_declares() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == {"text": "MIT"}
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n\nCopyright (c) 2026 the fewshot authors\n")
    assert "Permission is hereby granted, free of charge" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in text


def test_torch_floor_loads_weights_only_by_default() -> None:
    """torch >= 2.6: `torch.load` defaults to weights_only=True, so no dependency path can
    fall back to unpickling arbitrary objects."""
    import re
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
    (torch,) = [d for d in project["dependencies"] if re.match(r"torch\b", d)]
    floor = re.search(r">=\s*(\d+)\.(\d+)", torch)
    assert floor is not None and (int(floor.group(1)), int(floor.group(2))) >= (2, 6)
