"""The CLI end to end on the toy world: the quickstart path, plugins, and bad input.

Unlike tests/test_cli.py (which patches the sweep), these run real sweeps.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fewshot.cli import app

from .conftest import EXAMPLE_PLUGIN, write_distribution

cli = CliRunner()


def _run(*args: str) -> tuple[int, str]:
    result = cli.invoke(app, list(args))
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes is not None else "")


def _records(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*.json"))}


def _summary(output: str) -> str:
    """The summary table printed at the end of a sweep."""
    start = output.index("Summary")
    return output[start : output.index("Records in", start)]


def test_default_run_uses_toy_suite_and_rerun_skips(tmp_path: Path) -> None:
    results = tmp_path / "runs"
    code, first = _run(
        "run", "--method", "zeroshot", "--shots", "2", "--seeds", "1,2", "--results", str(results)
    )
    assert code == 0, first
    assert "toy suite" in first and "--suite coop11" in first  # the one-line notice and how to switch
    records = _records(results)
    assert len(records) == 4 * 2  # 4 toy datasets x 2 seeds
    for dataset in ("toy-shapes", "toy-colors", "toy-textures", "toy-objects"):
        assert dataset in _summary(first)

    code, second = _run(
        "run", "--method", "zeroshot", "--shots", "2", "--seeds", "1,2", "--results", str(results)
    )
    assert code == 0, second
    assert second.count("skipped") == 8
    assert _records(results) == records  # nothing rewritten
    assert _summary(second) == _summary(first)


def test_method_from_a_file_runs(tmp_path: Path) -> None:
    target = f"{EXAMPLE_PLUGIN / '__init__.py'}:Prototypes"
    code, out = _run(
        "run", "-m", target, "-d", "toy-shapes", "--shots", "4", "--seeds", "1", "--results", str(tmp_path)
    )
    assert code == 0, out
    assert len(_records(tmp_path)) == 1


def test_method_from_an_installed_distribution_runs(tmp_path: Path, plugin_site: Path) -> None:
    write_distribution(
        plugin_site, "fewshot-prototype", {"prototype": "fewshot_prototype:Prototypes"}, EXAMPLE_PLUGIN
    )
    code, out = _run(
        "run",
        "-m",
        "prototype",
        "-d",
        "toy-colors",
        "--shots",
        "4",
        "--seeds",
        "1",
        "--results",
        str(tmp_path),
    )
    assert code == 0, out
    (record,) = _records(tmp_path)
    text = record.read_text()
    assert '"distribution": "fewshot-prototype"' in text and '"kind": "plugin"' in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "coop-x"], r"Unknown method 'coop-x'"),
        (["-m", "zeroshot", "--shots", "0"], r"shots"),
        (["-m", "zeroshot", "-d", "toy-nothing"], r"Unknown dataset"),
        (["-m", "zeroshot", "--backbone", "NoSuchNet:openai"], r"NoSuchNet"),
        (["-m", "zeroshot", "--backbone", "ViT-B-16"], r"backbone"),
    ],
)
def test_bad_input_fails_cleanly_and_loses_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    results = tmp_path / "runs"
    code, out = _run(
        "run", "-m", "zeroshot", "-d", "toy-shapes", "--shots", "1", "--seeds", "1", "--results", str(results)
    )
    assert code == 0, out
    before = _records(results)
    code, out = _run("run", "-d", "toy-shapes", "--seeds", "1", "--results", str(results), *args)
    assert code != 0
    assert re.search(message, out), out
    assert "Traceback" not in out
    assert _records(results) == before


def test_unreadable_checkpoint_fails_before_any_run(tmp_path: Path) -> None:
    checkpoint = tmp_path / "weights.pt"
    checkpoint.write_bytes(b"this is not a checkpoint")
    results = tmp_path / "runs"
    code, out = _run(
        "run",
        "-m",
        "zeroshot",
        "-d",
        "toy-shapes",
        "--backbone",
        f"ViT-B-16:{checkpoint}",
        "--results",
        str(results),
    )
    assert code != 0
    assert "weights.pt" in out and "Traceback" not in out
    assert not results.exists() or not _records(results)


def test_base2novel_summary_shows_not_applicable(tmp_path: Path) -> None:
    code, out = _run(
        "run", "-m", "linear-probe", "--protocol", "base2novel", "-d", "toy-shapes", "--seeds", "1",
        "--results", str(tmp_path),
    )  # fmt: skip
    assert code == 0, out
    summary = _summary(out)
    assert "novel" in summary and "n/a" in summary and "base" in summary
