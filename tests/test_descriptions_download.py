"""``fewshot data download descriptions``: the published files, fetched from a fake tree.

A server on 127.0.0.1 serves files in raw.githubusercontent.com's layout
(``/<owner>/<repo>/<commit>/<path>``) and is used as ``--mirror descriptions=URL``. The table
of published files is replaced by entries whose checksums are computed here from the bytes
served, so the real verification path (the dataset downloader's ``fetch``) runs end to end.
The pinned table itself is checked for shape: 64-hex sha256s, pinned commits, known datasets.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fewshot.cli import app
from fewshot.datasets import DATASETS, get_dataset
from fewshot.descriptions import published
from fewshot.descriptions.published import PUBLISHED, PublishedFile, to_set

from ._servers import local_server

TOY = list(get_dataset("toy-objects", "/nonexistent").spec().classnames)
REPO, COMMIT = "someone/descs", "a" * 40


@dataclasses.dataclass
class Tree:
    url: str = ""
    files: dict[str, bytes] = dataclasses.field(default_factory=dict)
    requests: list[str] = dataclasses.field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: Any

    def do_GET(self) -> None:
        tree: Tree = self.server.tree
        tree.requests.append(self.path)
        data = tree.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def tree(monkeypatch: pytest.MonkeyPatch) -> Iterator[Tree]:
    monkeypatch.delenv("FEWSHOT_MIRROR_DESCRIPTIONS", raising=False)
    with local_server(monkeypatch, _Handler) as httpd:
        httpd.tree = Tree(url=f"http://127.0.0.1:{httpd.server_address[1]}")  # type: ignore[attr-defined]
        yield httpd.tree  # type: ignore[attr-defined]


DCLIP_LIKE = {
    "Red_Circle": ["round shape ", " red colour", "  "],
    "blue square": ["four equal sides"],
    "purple hexagon": ["six sides"],
}
SYNONYMS = {"red circle": ["red circle", "crimson disc"]}


def publish(tree: Tree, monkeypatch: pytest.MonkeyPatch, corrupt: str = "") -> dict[str, PublishedFile]:
    """Serve two files and make them the whole published table; ``corrupt`` names one whose
    served bytes differ from its checksum."""
    entries = {}
    for name, content in (("dclip", DCLIP_LIKE), ("synonyms-gpt4-turbo", SYNONYMS)):
        data = json.dumps(content).encode()
        path = f"data/{name}.json"
        entries[name] = PublishedFile(
            "toy-objects", name, REPO, COMMIT, path, hashlib.sha256(data).hexdigest()
        )
        tree.files[f"/{REPO}/{COMMIT}/{path}"] = data + (b" " if name == corrupt else b"")
    monkeypatch.setattr(published, "PUBLISHED", tuple(entries.values()))
    return entries


def download(tmp_path: Path, tree: Tree, *args: str) -> tuple[int, str]:
    argv = [
        "data",
        "download",
        "descriptions",
        "--data-root",
        str(tmp_path),
        "--mirror",
        f"descriptions={tree.url}",
    ]
    result = CliRunner().invoke(app, [*argv, *args], env={"COLUMNS": "200"})
    return result.exit_code, result.output


def stored(tmp_path: Path, name: str) -> dict[str, Any]:
    return json.loads((tmp_path / "descriptions" / "toy-objects" / f"{name}.json").read_text())


def test_download_stores_native_sets_with_provenance(
    tree: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = publish(tree, monkeypatch)
    code, out = download(tmp_path, tree)
    assert code == 0, out
    doc = stored(tmp_path, "dclip")
    assert doc["fewshot_descriptions"] == 1 and doc["name"] == "dclip" and doc["kind"] == "descriptions"
    # "Red_Circle" matches the dataset's "red circle"; blank strings dropped, spaces stripped
    assert doc["classes"] == {
        "red circle": ["round shape", "red colour"],
        "blue square": ["four equal sides"],
        "purple hexagon": ["six sides"],
    }
    prov = doc["provenance"]
    raw = f"https://raw.githubusercontent.com/{REPO}/{COMMIT}/data/dclip.json"
    assert prov["source"] == raw and prov["repository"] == REPO and prov["commit"] == COMMIT
    assert prov["sha256"] == entries["dclip"].sha256 and prov["licence"] == "none stated"
    names = prov["class_names"]
    assert names["renamed"] == {"Red_Circle": "red circle"}
    assert names["unmatched_file_classes"] == ["purple hexagon"]
    assert names["missing_dataset_classes"] == [n for n in TOY if n not in ("red circle", "blue square")]
    syn = stored(tmp_path, "synonyms-gpt4-turbo")
    assert syn["kind"] == "synonyms" and syn["classes"] == {"red circle": ["red circle", "crimson disc"]}
    assert not list((tmp_path / ".downloads").glob("*.json"))  # the downloads are removed

    before = len(tree.requests)
    code, out = download(tmp_path, tree)
    assert code == 0 and len(tree.requests) == before and "present" in out


def test_corrupted_file_is_rejected(tree: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    publish(tree, monkeypatch, corrupt="dclip")
    code, out = download(tmp_path, tree)
    assert code == 1
    assert "Checksum mismatch" in " ".join(out.split())
    assert not (tmp_path / "descriptions" / "toy-objects" / "dclip.json").exists()
    assert (tmp_path / "descriptions" / "toy-objects" / "synonyms-gpt4-turbo.json").exists()
    assert not list((tmp_path / ".downloads").glob("*dclip*"))


def test_dataset_option_selects_and_unknown_is_an_error(
    tree: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(tree, monkeypatch)
    code, out = download(tmp_path, tree, "--dataset", "cub")
    assert code == 2 and "No published descriptions for 'cub'" in " ".join(out.split())
    code, out = download(tmp_path, tree, "--dataset", "toy-objects")
    assert code == 0, out
    result = CliRunner().invoke(
        app, ["data", "download", "dtd", "--dataset", "x", "--data-root", str(tmp_path)]
    )
    assert result.exit_code == 2 and "--dataset goes with" in result.output


def test_a_file_that_is_not_a_class_map_is_a_clear_error() -> None:
    file = PublishedFile("toy-objects", "dclip", REPO, COMMIT, "x.json", "0" * 64)
    with pytest.raises(Exception, match="does not map to a list of strings"):
        to_set(file, json.dumps({"red circle": "round"}).encode(), "URL", None)
    dset, report = to_set(file, json.dumps({"red_circle": ["round"]}).encode(), "URL", None)
    assert dict(dset.classes) == {"red circle": ("round",)} and report == {
        "renamed": {"red_circle": "red circle"}
    }


def test_pinned_table() -> None:
    keys = [(f.dataset, f.name) for f in PUBLISHED]
    assert len(keys) == len(set(keys)) == 92
    assert {f.dataset for f in PUBLISHED} <= set(DATASETS.names())
    pins = {
        "MorningStarOvO/ProAPO": "fefdf1850210e7ac6d0f38229eed550f1b9ab6e9",
        "sachit-menon/classify_by_description_release": "d1a3d8920af89bd0d6a692ed3afeb277df46e082",
        "sarahpratt/CuPL": "719619c829792ff8f37298266e941b7f077c7f5c",
    }
    for f in PUBLISHED:
        assert re.fullmatch("[0-9a-f]{64}", f.sha256)
        assert f.url() == f"https://raw.githubusercontent.com/{f.repository}/{pins[f.repository]}/{f.path}"
    proapo = [f for f in PUBLISHED if f.repository == "MorningStarOvO/ProAPO"]
    assert len({f.dataset for f in proapo}) == 13
    pets = {f.name: f.path for f in PUBLISHED if f.dataset == "oxford-pets"}
    assert pets["cupl-base-original"] == "all_prompts/base_prompts/pet_prompts_base.json"
    assert (
        pets["synonyms-gpt4-turbo"] == "data/dataset/oxford_pets/category_synonym/gpt-4-turbo-2024-04-09.json"
    )


def test_every_default_preset_names_a_set_that_can_be_downloaded() -> None:
    """On every real dataset (a shifted domain reads its source's sets), the description and
    synonym sets the knowledge methods read by default are in the pinned download list, so
    the "fewshot data download descriptions" fix the plan suggests does get them."""
    from fewshot.datasets import DATASETS
    from fewshot.descriptions.published import PUBLISHED
    from fewshot.methods import get_method

    pinned = {(f.dataset, f.name) for f in PUBLISHED}
    missing = []
    for name in DATASETS.names():
        if name.startswith("toy"):
            continue
        source = getattr(DATASETS.get(name), "domain_of", None) or name
        for method in ("dclip", "cupl", "proapo"):
            cls = get_method(method)
            config = cls.config_cls.build("fewshot", 1, dataset=name)
            for kind in cls.knowledge_read(config):
                set_name = getattr(config, kind)
                if set_name and (source, set_name) not in pinned:
                    missing.append(f"{method} on {name}: {kind} {set_name!r}")
    assert not missing, missing
