"""Description sets: formats as published, class-name matching, hashes, saving, the toy sets,
and their way through plan, runner, records and leaderboard (a knowledge method defined here)."""

from __future__ import annotations

import hashlib
import json
import os
import textwrap
from pathlib import Path

import pytest

from fewshot.datasets import get_dataset
from fewshot.descriptions import (
    DescriptionsError,
    DescriptionSet,
    MissingDescriptionsError,
    list_description_sets,
    load_description_set,
    save_description_set,
)
from fewshot.descriptions.toy import toy_set
from fewshot.planning import PlanError, SweepPlan
from fewshot.toyworld.catalog import TOY_DATASETS, class_descriptions
from fewshot.types import RunSpec

SHAPES = list(TOY_DATASETS["toy-shapes"].classnames)
COLORS = list(TOY_DATASETS["toy-colors"].classnames)


def write(root: Path, dataset: str, name: str, data: object) -> Path:
    path = root / "descriptions" / dataset / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4))
    return path


def expected_hash(kind: str, classes: dict[str, list[str]]) -> str:
    """The content hash from its definition: sha256 of the kind and the sorted classes."""
    canonical = json.dumps(dict(sorted(classes.items())), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(f"{kind}\n{canonical}".encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------
# Formats


def test_published_shapes_are_read_as_they_are(tmp_path: Path) -> None:
    # DCLIP descriptors_*.json: phrases; CuPL *_prompts_full.json: sentences; ProAPO
    # category_description: phrases with trailing spaces; ProAPO category_synonym: names, the
    # class's own first (MorningStarOvO/ProAPO data/dataset/caltech101/category_synonym).
    shapes = {
        "descriptors_toy": {c: [f"has {c} edges", "a flat figure"] for c in SHAPES},
        "toy_prompts_full": {c: [f"A {c} is a shape.", f"A photo of a {c}."] for c in SHAPES},
        "DCLIP": {c: [f"{c} outline ", "flat "] for c in SHAPES},
    }
    for name, data in shapes.items():
        write(tmp_path, "toy-shapes", name, data)
        got = load_description_set("toy-shapes", name, "descriptions", tmp_path)
        assert dict(got.classes) == {c: tuple(s) for c, s in data.items()}  # unchanged, spaces kept
        assert got.kind == "descriptions" and got.name == name
        path = tmp_path / "descriptions" / "toy-shapes" / f"{name}.json"
        assert got.provenance["source"] == "file" and got.provenance["path"] == str(path)
        assert got.provenance["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert got.content_hash == expected_hash("descriptions", data)
    bom = tmp_path / "descriptions" / "toy-shapes" / "bom.json"  # a byte-order mark, as some editors write
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps({c: [c] for c in SHAPES}).encode())
    assert load_description_set("toy-shapes", "bom", "descriptions", tmp_path).classes["ring"] == ("ring",)
    synonyms = {c: [c, f"{c} figure"] for c in SHAPES}
    write(tmp_path, "toy-shapes", "gpt-4-turbo-2024-04-09", synonyms)
    got = load_description_set("toy-shapes", "gpt-4-turbo-2024-04-09", "synonyms", tmp_path)
    assert got.kind == "synonyms" and got.classes["star"] == ("star", "star figure")


def test_native_format_and_sidecar(tmp_path: Path) -> None:
    classes = {c: [f"a {c}."] for c in COLORS}
    doc = {
        "fewshot_descriptions": 1,
        "name": "mine",
        "kind": "synonyms",
        "provenance": {"source": "llm", "model": "m"},
        "classes": classes,
    }
    write(tmp_path, "toy-colors", "mine", doc)
    got = load_description_set("toy-colors", "mine", "synonyms", tmp_path)
    assert got.provenance["model"] == "m" and got.content_hash == expected_hash("synonyms", classes)
    with pytest.raises(DescriptionsError, match="holds synonyms, but descriptions were asked"):
        load_description_set("toy-colors", "mine", "descriptions", tmp_path)
    write(tmp_path, "toy-colors", "plain", classes)
    side = tmp_path / "descriptions" / "toy-colors" / "plain.provenance.json"
    side.write_text(json.dumps({"url": "https://example.org/x.json", "kind": "descriptions"}))
    got = load_description_set("toy-colors", "plain", "descriptions", tmp_path)
    assert got.provenance["url"] == "https://example.org/x.json" and got.provenance["source"] == "file"
    with pytest.raises(DescriptionsError, match="holds descriptions"):
        load_description_set("toy-colors", "plain", "synonyms", tmp_path)
    doc["fewshot_descriptions"] = 2
    write(tmp_path, "toy-colors", "newer", doc)
    with pytest.raises(DescriptionsError, match="format 2"):
        load_description_set("toy-colors", "newer", "synonyms", tmp_path)


@pytest.mark.parametrize(
    "data, message",
    [
        ([["circle", "round"]], "JSON object"),
        ({**{c: ["x"] for c in SHAPES}, "circle": "round"}, "list of strings"),
        ({**{c: ["x"] for c in SHAPES}, "circle": []}, "no sentences"),
    ],
)
def test_bad_files_are_errors(tmp_path: Path, data: object, message: str) -> None:
    write(tmp_path, "toy-shapes", "bad", data)
    with pytest.raises(DescriptionsError, match=message):
        load_description_set("toy-shapes", "bad", "descriptions", tmp_path)


def test_hash_ignores_key_order_and_provenance_not_content() -> None:
    a = {"b": ("x", "y"), "a": ("z",)}
    one = DescriptionSet("s", a, provenance={"date": "1"})
    two = DescriptionSet("t", dict(reversed(list(a.items()))), provenance={"date": "2"})
    assert (
        one.content_hash == two.content_hash == expected_hash("descriptions", {"a": ["z"], "b": ["x", "y"]})
    )
    assert DescriptionSet("s", {"a": ("z",), "b": ("y", "x")}).content_hash != one.content_hash
    assert DescriptionSet("s", a, kind="synonyms").content_hash != one.content_hash


# ------------------------------------------------------------------------------------------
# Matching


def test_names_match_the_datasets_cleaning(tmp_path: Path) -> None:
    # Published files spell names by hand: case, "_" or "-" for spaces (CUB's "Black-footed
    # Albatross" for the reader's "Black footed Albatross").
    spelled = {"Red_Circle": "red circle", "BLUE-square": "blue square", "green  triangle": "green triangle"}
    objects = list(TOY_DATASETS["toy-objects"].classnames)
    data = {next((k for k, v in spelled.items() if v == c), c): [f"about {c}"] for c in objects}
    write(tmp_path, "toy-objects", "hand", data)
    got = load_description_set("toy-objects", "hand", "descriptions", tmp_path)
    assert list(got.classes) == objects  # the dataset's names, in label order
    assert got.classes["red circle"] == ("about red circle",)


def test_a_misspelled_class_is_rejected_with_the_nearest_name(tmp_path: Path) -> None:
    data = {("hexagn" if c == "hexagon" else c): ["x"] for c in SHAPES}
    write(tmp_path, "toy-shapes", "typo", data)
    with pytest.raises(DescriptionsError) as info:
        load_description_set("toy-shapes", "typo", "descriptions", tmp_path)
    text = str(info.value)
    assert "missing: 'hexagon' (nearest in the file: 'hexagn')" in text
    assert "extra: 'hexagn' (nearest dataset class: 'hexagon')" in text
    assert "1 missing, 1 extra" in text


def test_partial_and_ambiguous_files_are_rejected(tmp_path: Path) -> None:
    write(tmp_path, "toy-shapes", "part", {c: ["x"] for c in SHAPES[:-1]})
    with pytest.raises(DescriptionsError, match="missing: 'arrow'"):
        load_description_set("toy-shapes", "part", "descriptions", tmp_path)
    write(tmp_path, "toy-shapes", "more", {**{c: ["x"] for c in SHAPES}, "oval": ["y"]})
    with pytest.raises(DescriptionsError, match="extra: 'oval'"):
        load_description_set("toy-shapes", "more", "descriptions", tmp_path)
    write(tmp_path, "toy-shapes", "twice", {**{c: ["x"] for c in SHAPES}, "Circle": ["y"]})
    with pytest.raises(DescriptionsError, match="name the same class"):
        load_description_set("toy-shapes", "twice", "descriptions", tmp_path)
    with pytest.raises(MissingDescriptionsError):
        load_description_set("toy-shapes", "absent", "descriptions", tmp_path)


def test_a_shifted_domain_uses_its_sources_set(tmp_path: Path) -> None:
    data = {c: [f"a {c}"] for c in SHAPES}
    write(tmp_path, "toy-shapes", "src", data)
    got = load_description_set("toy-shapes-sketch", "src", "descriptions", tmp_path)
    assert got.classes == load_description_set("toy-shapes", "src", "descriptions", tmp_path).classes


# ------------------------------------------------------------------------------------------
# Saving and listing


def test_save_is_atomic_and_keeps_other_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = DescriptionSet("gen", {c: (f"a {c}.",) for c in SHAPES}, provenance={"source": "llm"})
    path = save_description_set(first, "toy-shapes", tmp_path)
    assert json.loads(path.read_text())["fewshot_descriptions"] == 1
    again = load_description_set("toy-shapes", "gen", "descriptions", tmp_path)
    assert again.content_hash == first.content_hash and again.provenance["source"] == "llm"
    assert save_description_set(first, "toy-shapes", tmp_path) == path  # same content: no-op
    other = DescriptionSet("gen", {c: (f"the {c}.",) for c in SHAPES})
    before = path.read_bytes()
    with pytest.raises(DescriptionsError, match="exists with other content"):
        save_description_set(other, "toy-shapes", tmp_path)

    def crash(src: str, dst: str) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr("fewshot._io.os.replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        save_description_set(other, "toy-shapes", tmp_path, overwrite=True)
    assert path.read_bytes() == before  # the old set intact
    assert sorted(os.listdir(path.parent)) == ["gen.json"]  # no temp file left
    monkeypatch.undo()
    save_description_set(other, "toy-shapes", tmp_path, overwrite=True)
    assert load_description_set("toy-shapes", "gen", "descriptions", tmp_path).content_hash == (
        other.content_hash
    )


def test_listing_shows_built_in_and_files(tmp_path: Path) -> None:
    write(tmp_path, "toy-shapes", "plain", {c: ["x", "y"] for c in SHAPES})
    (tmp_path / "descriptions" / "toy-shapes" / "broken.json").write_text("{")
    listed = {(s.name, s.kind): s for s in list_description_sets("toy-shapes", tmp_path)}
    assert listed["toy", "descriptions"].hash == toy_set("toy-shapes", "descriptions").content_hash
    assert listed["plain", "any"].sentences == 2 * len(SHAPES) and listed["plain", "any"].classes == 12
    assert "not a JSON file" in listed["broken", "?"].error


# ------------------------------------------------------------------------------------------
# The toy sets


def test_toy_sets_hold_informative_uninformative_and_misleading_sentences() -> None:
    names = list(TOY_DATASETS["toy-objects"].classnames)
    got = toy_set("toy-objects", "descriptions")
    assert list(got.classes) == names
    for i, name in enumerate(names):
        own = class_descriptions(name)
        sentences = got.classes[name]
        assert list(sentences[: len(own)]) == own
        extra = sentences[len(own) :]
        assert extra[0] in ("a shape in a picture.", "an object on a background.", "a thing in a photo.")
        neighbour = class_descriptions(names[(i + 1) % len(names)])[0]
        assert (neighbour in extra) == (i % 3 == 1)
    synonyms = toy_set("toy-objects", "synonyms").classes
    assert synonyms["red circle"] == ("red shape that is round", "circle coloured like a tomato")
    assert toy_set("toy-shapes", "synonyms").classes["circle"] == (
        "shape that is round",
        "object with no corners",
    )
    assert load_description_set("toy-colors", "toy", "synonyms", None).kind == "synonyms"
    with pytest.raises(DescriptionsError, match="not a toy dataset"):
        toy_set("dtd", "descriptions")


def test_toy_synonyms_use_only_words_the_micro_clip_read() -> None:
    from fewshot.toyworld.world import caption_vocabulary

    words = {
        w for phrase in caption_vocabulary() for w in phrase.replace(".", " ").replace("{}", " ").split()
    }
    for dataset in TOY_DATASETS:
        for kind in ("descriptions", "synonyms"):
            for sentences in toy_set(dataset, kind).classes.values():
                for sentence in sentences:
                    assert set(sentence.replace(".", " ").split()) <= words, sentence


# ------------------------------------------------------------------------------------------
# Plan, runner, records, leaderboard

KNOW = textwrap.dedent(
    '''
    """A tiny method that reads descriptions: mean text feature of each class's sentences."""
    import json
    from dataclasses import dataclass
    from pathlib import Path
    from typing import ClassVar

    import torch
    import torch.nn.functional as F

    from fewshot.methods.base import Adapter, FitContext, QueryBatch
    from fewshot.types import AdapterConfig

    LOG = Path(__file__).with_suffix(".log")  # one line per call: where, dataset or classes, set


    def seen(*entry):
        with LOG.open("a") as fh:
            fh.write(json.dumps(entry) + "\\n")


    @dataclass(frozen=True)
    class KnowConfig(AdapterConfig):
        descriptions: str = "toy"


    class Know(Adapter):
        config_cls = KnowConfig
        uses_support = False
        knowledge: ClassVar[tuple[str, ...]] = ("descriptions",)

        def fit(self, ctx: FitContext) -> None:
            self.backbone = ctx.backbone
            sets = ctx.descriptions
            seen("fit", ctx.dataset, sets.name, sets.content_hash, ctx.synonyms is None)

        def predict(self, batch: QueryBatch) -> torch.Tensor:
            seen("predict", batch.classnames, batch.descriptions.name, batch.descriptions.content_hash)
            rows = [
                F.normalize(self.backbone.encode_texts(list(s)).mean(0), dim=-1)
                for s in batch.descriptions.sentences(batch.classnames)
            ]
            return F.normalize(batch.features.float(), dim=-1) @ torch.stack(rows).T
    '''
)


@pytest.fixture
def know(tmp_path: Path) -> str:
    path = tmp_path / "know.py"
    path.write_text(KNOW)
    return f"{path}:Know"


def test_plan_refuses_a_missing_set_in_one_line(tmp_path: Path, know: str) -> None:
    spec = RunSpec(know, "toy-colors", shots=0, overrides=(("descriptions", "gpt"),))
    with pytest.raises(PlanError) as info:
        SweepPlan.from_specs([spec], data_root=tmp_path).check_ready()
    assert len(info.value.problems) == 1
    line = info.value.problems[0]
    assert "\n" not in line and line.startswith("toy-colors: no descriptions set 'gpt'")
    assert "`fewshot data download descriptions`" in line and "`fewshot describe toy-colors`" in line
    SweepPlan.from_specs([RunSpec(know, "toy-colors", shots=0)], data_root=tmp_path).check_ready()


def test_runner_hands_sets_to_the_method_and_records_them(
    tmp_path: Path, know: str, feature_cache: object
) -> None:
    from fewshot.leaderboard.cells import build_cells
    from fewshot.results import load_records
    from fewshot.sweeps import sweep

    alt = {c: [class_descriptions(c)[0]] for c in COLORS}
    write(tmp_path / "data", "toy-colors", "alt", alt)
    runs = tmp_path / "runs"
    specs = [
        RunSpec(know, "toy-colors", shots=0, seed=seed, overrides=overrides)
        for overrides in ((), (("descriptions", "alt"),))
        for seed in (1, 2)
    ]
    results = sweep(specs, results_dir=runs, data_root=tmp_path / "data", cache=feature_cache)
    assert all(r.ok for r in results), [r.error for r in results]
    toy_hash = toy_set("toy-colors", "descriptions").content_hash
    alt_hash = expected_hash("descriptions", alt)
    assert [r.provenance["knowledge"]["descriptions"] for r in results] == [
        {"name": "toy", "kind": "descriptions", "hash": toy_hash}
    ] * 2 + [{"name": "alt", "kind": "descriptions", "hash": alt_hash}] * 2
    seen = [json.loads(line) for line in (tmp_path / "know.log").read_text().splitlines()]
    assert ["fit", "toy-colors", "alt", alt_hash, True] in seen  # no synonyms: not declared
    assert ["predict", COLORS, "alt", alt_hash] in seen

    cells = build_cells(load_records(runs))
    rows = cells[(cells["space"] == "all") & (cells["kind"] == "seeds")]
    assert sorted(rows["variant"].str.rsplit(":", n=1).str[-1]) == ["Know", "Know[descriptions=alt]"]
    assert list(rows["n"]) == [2, 2] and not rows["conflict"].any()

    # The same name with other content: stale, rerun, and never averaged with the old seeds.
    write(tmp_path / "data", "toy-colors", "alt", {c: [f"a {c} shape."] for c in COLORS})
    third = RunSpec(know, "toy-colors", shots=0, seed=3, overrides=(("descriptions", "alt"),))
    rerun = sweep([specs[2], third], results_dir=runs, data_root=tmp_path / "data", cache=feature_cache)
    new_hash = rerun[0].provenance["knowledge"]["descriptions"]["hash"]
    assert new_hash != alt_hash and rerun[1].provenance["knowledge"]["descriptions"]["hash"] == new_hash
    with pytest.warns(UserWarning, match="2 different description sets"):
        cells = build_cells(load_records(runs))
    alt_rows = cells[
        (cells["space"] == "all") & cells["variant"].str.endswith("alt]") & (cells["kind"] == "seeds")
    ]
    assert sorted(alt_rows["n"]) == [1, 2] and alt_rows["conflict"].all()


def test_a_target_brings_its_own_set(tmp_path: Path, know: str, feature_cache: object) -> None:
    from fewshot.runner import run_fit

    specs = [
        RunSpec(know, "toy-shapes", shots=0, protocol="domain-generalization", target=target)
        for target in ("", "toy-shapes-sketch")
    ]
    source, target = run_fit(specs, cache=feature_cache)  # type: ignore[arg-type]
    sketch = toy_set("toy-shapes-sketch", "descriptions")
    assert "target_knowledge" not in source.provenance
    assert target.provenance["target_knowledge"] == {"descriptions": sketch.record()}
    assert target.provenance["knowledge"] == {"descriptions": toy_set("toy-shapes", "descriptions").record()}


def test_code_digest_covers_the_descriptions_package(know: str) -> None:
    from fewshot.codeid import _source_files
    from fewshot.methods import METHODS

    files = {Path(f).name for f in _source_files(METHODS.get(know))}
    assert {"files.py", "toy.py", "wiring.py", "sets.py"} <= files
    assert "toy.py" not in {Path(f).name for f in _source_files(METHODS.get("zeroshot"))}


def test_dataset_classnames_are_what_the_loader_keys_by() -> None:
    assert list(load_description_set("toy-textures", "toy", "descriptions", None).classes) == list(
        get_dataset("toy-textures").spec().classnames
    )


# ------------------------------------------------------------------------------------------
# Command line


def test_cli_lists_sets_and_dry_run_marks_a_missing_one(tmp_path: Path, know: str) -> None:
    from typer.testing import CliRunner

    from fewshot.cli import app

    runner = CliRunner()
    write(tmp_path, "toy-colors", "alt", {c: ["x"] for c in COLORS})
    args = ["list", "descriptions", "toy-colors", "--data-root", str(tmp_path)]
    listed = runner.invoke(app, args, terminal_width=200)
    assert listed.exit_code == 0, listed.output
    lines = [line for line in listed.output.splitlines() if "toy-colors" in line]
    assert len(lines) == 3 and any("alt" in line and "any" in line for line in lines)
    assert any(toy_set("toy-colors", "synonyms").content_hash in line for line in lines)
    args = ["run", "-m", know, "-d", "toy-colors", "--set", "descriptions=gpt", "--dry-run"]
    planned = runner.invoke(
        app, [*args, "--data-root", str(tmp_path), "--results", str(tmp_path / "r")], terminal_width=200
    )
    assert planned.exit_code == 0, planned.output
    assert "toy-colors: no descriptions set 'gpt'" in planned.output


def test_contract_checks_knowledge_declarations(know: str) -> None:
    from dataclasses import dataclass

    from fewshot.methods import METHODS
    from fewshot.testing import check_adapter
    from fewshot.types import AdapterConfig

    cls = METHODS.get(know)
    check_adapter(cls)  # fewshot.testing's contexts carry the toy sets

    @dataclass(frozen=True)
    class NoField(AdapterConfig):
        pass

    broken = type("Broken", (cls,), {"config_cls": NoField})
    with pytest.raises(AssertionError, match="config field of the same name"):
        check_adapter(broken)


def test_an_empty_set_name_reads_none_and_dclips_baseline_reads_no_set() -> None:
    """ "" means none of that kind for every kind, and DCLIP's class-name baseline loads,
    records and checks no set (a set it never reads cannot make its records stale)."""
    from fewshot.descriptions.wiring import knowledge_names
    from fewshot.methods.cupl import CuPL, CuPLConfig
    from fewshot.methods.dclip import DCLIP, DCLIPConfig
    from fewshot.methods.proapo import ProAPO, ProAPOConfig

    assert knowledge_names(CuPL, CuPLConfig(descriptions="")) == {}
    assert knowledge_names(ProAPO, ProAPOConfig(descriptions="", synonyms="toy")) == {"synonyms": "toy"}
    assert knowledge_names(DCLIP, DCLIPConfig(descriptions="dclip")) == {"descriptions": "dclip"}
    assert knowledge_names(DCLIP, DCLIPConfig(descriptions="dclip", baseline=True)) == {}
