"""The dataset side of the CLI: list datasets, data check, and runs on a root without data."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fewshot.cli import app
from fewshot.datasets import DATASETS, SUITES

from . import _fake_trees as trees

cli = CliRunner()
STANDARD = [n for n in DATASETS.names() if not n.startswith("toy")]


def _invoke(*args: str) -> tuple[int, str]:
    result = cli.invoke(app, list(args))
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


def test_list_datasets_shows_all_17_and_the_suites_with_presence(tmp_path: Path) -> None:
    trees.dtd(tmp_path)
    code, out = _invoke("list", "datasets", "--data-root", str(tmp_path))
    assert code == 0, out
    assert len(STANDARD) == 17
    rows = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") >= 4}
    for name in STANDARD:
        assert name in rows, name
        assert ("present" if name == "dtd" else "missing") in rows[name], rows[name]
    for suite in ("coop11", "proapo13", "imagenet-shift", "toy"):
        assert suite in SUITES and any(
            line.split("│")[1].strip() == suite for line in out.splitlines() if "│" in line
        )
    assert "1/11" in out  # coop11: dtd present


def test_run_coop11_without_data_prints_one_fix_per_dataset_and_writes_nothing(tmp_path: Path) -> None:
    results = tmp_path / "runs"
    code, out = _invoke(
        "run",
        "-m",
        "zeroshot",
        "--suite",
        "coop11",
        "--data-root",
        str(tmp_path / "data"),
        "--results",
        str(results),
    )
    assert code != 0
    lines = [line.strip() for line in out.splitlines()]
    for name in SUITES["coop11"]:
        line = next((ln for ln in lines if ln.startswith(f"{name}: missing")), None)
        assert line is not None, (name, out)
        assert "fewshot data download" in line or "manual" in line, line
    assert not results.exists() or not list(results.rglob("*.json"))


def test_data_check_reports_present_missing_and_broken(tmp_path: Path) -> None:
    trees.eurosat(tmp_path)
    code, out = _invoke("data", "check", "eurosat", "dtd", "--data-root", str(tmp_path))
    assert code == 1  # dtd was named and is missing
    assert "eurosat" in out and "ok" in out and "missing" in out

    victim = next((tmp_path / "eurosat").rglob("*.jpg"))
    victim.unlink()
    code, out = _invoke("data", "check", "eurosat", "--data-root", str(tmp_path))
    assert code == 1
    assert victim.name in out.replace("\n", "") and "problem" in out


def test_data_check_deep_finds_a_corrupt_image(tmp_path: Path) -> None:
    trees.eurosat(tmp_path)
    victim = next((tmp_path / "eurosat").rglob("*.jpg"))
    victim.write_bytes(victim.read_bytes()[:20])
    code, out = _invoke("data", "check", "eurosat", "--data-root", str(tmp_path))
    assert code == 0, out  # a shallow check only looks at the files being there
    code, out = _invoke("data", "check", "eurosat", "--deep", "--data-root", str(tmp_path))
    assert code == 1 and victim.name in out.replace("\n", "")


def test_run_without_a_data_root_says_to_set_one(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("FEWSHOT_DATA", raising=False)
    code, out = _invoke("run", "-m", "zeroshot", "-d", "dtd", "--results", str(tmp_path / "runs"))
    assert code == 2 and "No data root is set" in out and "dtd: missing" in out
    assert not (tmp_path / "runs").exists()


def test_sort_imagenet_val_fixes_a_flat_val_folder(tmp_path: Path) -> None:
    """The official val tar extracts flat: the reader refuses it, the command sorts it with the
    devkit's labels (torchvision's meta.bin, here written by the test), and the labels hold."""
    import torch
    from torchvision.datasets.imagenet import META_FILE

    from fewshot.datasets import get_dataset
    from fewshot.datasets.base import DatasetError

    trees.imagenet(tmp_path)
    images = tmp_path / "imagenet" / "images"
    val = images / "val"
    truth = {}  # official name -> wnid, as the devkit would list it
    for i, path in enumerate(sorted(val.rglob("*.JPEG")), start=1):
        name = f"ILSVRC2012_val_{i:08d}.JPEG"
        truth[name] = path.parent.name
        path.rename(val / name)
    for folder in [p for p in val.iterdir() if p.is_dir()]:
        folder.rmdir()
    with pytest.raises(DatasetError, match="not sorted into class folders"):
        get_dataset("imagenet", tmp_path).splits()

    code, out = _invoke("data", "sort-imagenet-val", "--data-root", str(tmp_path))
    assert code == 2 and "ILSVRC2012_devkit_t12.tar.gz" in out  # no devkit, no meta.bin yet

    wnids = sorted(set(truth.values()))
    torch.save(({w: (w,) for w in wnids}, [truth[n] for n in sorted(truth)]), images / META_FILE)
    first = "ILSVRC2012_val_00000001.JPEG"  # sorted by an interrupted earlier run
    (val / truth[first]).mkdir()
    (val / first).rename(val / truth[first] / first)
    code, out = _invoke("data", "sort-imagenet-val", "--data-root", str(tmp_path))
    assert code == 0, out
    assert f"Moved {len(truth) - 1} " in out
    test = get_dataset("imagenet", tmp_path).splits().test
    assert len(test) == len(truth)
    wnid_of_label = dict(zip(range(len(wnids)), wnids, strict=True))
    for item in test.items:
        assert truth[Path(item.path).name] == wnid_of_label[item.label]
    code, out = _invoke("data", "sort-imagenet-val", "--data-root", str(tmp_path))
    assert code == 0 and "Moved 0" in out  # a rerun changes nothing
