"""Result records: atomic JSON I/O, reading errors, record lookup, frames and provenance."""

from __future__ import annotations

import datetime as dt
import json
import math
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest

import fewshot
from fewshot.results import (
    RECORD_COLUMNS,
    collect_provenance,
    find_record,
    iter_records,
    load_records,
    read_record,
    write_record,
)
from fewshot.types import FewshotError, RunResult, RunSpec


def make_result(**spec_kw: object) -> RunResult:
    spec = RunSpec(**{"method": "coop", "dataset": "toy-shapes", "shots": 4, "seed": 2, **spec_kw})  # type: ignore[arg-type]
    return RunResult(
        spec,
        metrics={"base": 81.25, "novel": None},
        costs={"wall_time_s": 3.5, "fit_time_s": 2.0, "trainable_params": 2048.0},
        config={"n_ctx": 16, "lr": 0.002},
        provenance={"split_hash": "abc", "dataset_version": "2", "method_origin": {"kind": "builtin"}},
    )


def test_round_trip_and_format(tmp_path: Path) -> None:
    result = make_result(overrides=(("n_ctx", "4"),), protocol="base2novel")
    path = tmp_path / "a" / "b" / "rec.json"
    write_record(result, path)
    back = read_record(path)
    assert back.to_dict() == result.to_dict()
    assert back.spec == result.spec and back.metrics == {"base": 81.25, "novel": None}
    text = path.read_text()
    # indent 2, sorted keys: re-dumping the parsed JSON that way gives the same text.
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    assert json.loads(text)["spec_hash"] == result.spec.hash


def test_atomic_write_leaves_no_temp_file(tmp_path: Path) -> None:
    write_record(make_result(), tmp_path / "rec.json")
    write_record(make_result(seed=3), tmp_path / "rec.json")  # overwrite
    assert [p.name for p in tmp_path.iterdir()] == ["rec.json"]
    assert read_record(tmp_path / "rec.json").spec.seed == 3


def test_failed_write_keeps_previous_record(tmp_path: Path) -> None:
    path = tmp_path / "rec.json"
    write_record(make_result(), path)
    before = path.read_bytes()
    broken = make_result(seed=5)
    broken.config["optimizer"] = object()  # not JSON-serialisable: fails in the middle of the dump
    with pytest.raises(TypeError):
        write_record(broken, path)
    nan_metric = make_result(seed=6)
    nan_metric.metrics["base"] = math.nan  # NaN is not JSON either
    with pytest.raises(ValueError):
        write_record(nan_metric, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["rec.json"]


@pytest.mark.parametrize(
    ("content", "words"),
    [("{not json", "not valid JSON"), ("[1, 2]", "JSON object"), ('{"spec": {}}', "record format")],
)
def test_read_record_names_the_bad_file(tmp_path: Path, content: str, words: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(FewshotError, match=words) as info:
        read_record(path)
    assert str(path) in str(info.value)


NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e999"]  # what Python's json reads as nan / inf


def _damaged(path: Path, token: str, seed: int = 1) -> RunSpec:
    """Write a valid record with metrics {"all": 62.5} at ``path``, then put ``token`` there."""
    result = RunResult(RunSpec("coop", "toy-shapes", shots=4, seed=seed), metrics={"all": 62.5})
    write_record(result, path)
    text = path.read_text()
    assert text.count('"all": 62.5') == 1
    path.write_text(text.replace('"all": 62.5', f'"all": {token}'))
    return result.spec


@pytest.mark.parametrize("token", NON_FINITE)
def test_a_non_finite_metric_is_a_corrupt_record(tmp_path: Path, token: str) -> None:
    path = tmp_path / "rec.json"
    _damaged(path, token)
    assert not math.isfinite(json.loads(path.read_text())["metrics"]["all"])  # json itself accepts it
    with pytest.raises(FewshotError, match=r"non-finite number at metrics\.all") as info:
        read_record(path)
    message = str(info.value)
    assert str(path) in message and "Rerunning that run replaces it" in message and "\n" not in message


@pytest.mark.parametrize("token", NON_FINITE)
def test_find_record_treats_a_non_finite_record_as_absent(tmp_path: Path, token: str) -> None:
    spec = RunSpec("coop", "toy-shapes", shots=4, seed=1)
    path = spec.record_path(tmp_path)
    assert _damaged(path, token) == spec
    with pytest.warns(UserWarning, match="non-finite") as caught:
        assert find_record(spec, tmp_path) is None
    assert [str(path) in str(w.message) for w in caught] == [True]
    assert path.exists()  # reported, never deleted; the rerun replaces it atomically


def test_load_records_skips_non_finite_records_with_one_warning_each(tmp_path: Path) -> None:
    good = RunResult(RunSpec("coop", "toy-shapes", shots=4, seed=2), metrics={"all": 70.0})
    write_record(good, good.spec.record_path(tmp_path))
    nan_path = tmp_path / "toy-shapes" / "nan.json"
    inf_path = tmp_path / "toy-shapes" / "inf.json"
    _damaged(nan_path, "NaN", seed=1)
    _damaged(inf_path, "Infinity", seed=3)
    with pytest.warns(UserWarning) as caught:
        frame = load_records(tmp_path)
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2
    assert str(inf_path) in messages[0] and str(nan_path) in messages[1]
    assert all(m.startswith("Skipping unreadable record") for m in messages)
    assert list(zip(frame.seed, frame.accuracy, strict=True)) == [(2, 70.0)]


def test_read_record_refuses_newer_schema(tmp_path: Path) -> None:
    data = make_result().to_dict() | {"schema_version": 99}
    path = tmp_path / "new.json"
    path.write_text(json.dumps(data))
    with pytest.raises(FewshotError, match="schema version 99"):
        read_record(path)


def test_find_record(tmp_path: Path) -> None:
    spec = RunSpec("coop", "toy-shapes", shots=4, seed=2)
    assert find_record(spec, tmp_path) is None
    result = make_result()
    write_record(result, spec.record_path(tmp_path))
    found = find_record(spec, tmp_path)
    assert found is not None and found.spec == spec
    # A record of another spec at this spec's path (moved by hand): not this run's record.
    other = RunSpec("coop", "toy-colors", shots=4, seed=2)
    write_record(RunResult(other, metrics={"all": 1.0}), spec.record_path(tmp_path))
    assert find_record(spec, tmp_path) is None
    write_record(result, spec.record_path(tmp_path))
    # A corrupt record is reported and treated as absent, never deleted.
    spec.record_path(tmp_path).write_text("{")
    with pytest.warns(UserWarning, match="not valid JSON"):
        assert find_record(spec, tmp_path) is None
    assert spec.record_path(tmp_path).exists()


def test_iter_records_skips_unreadable_files(tmp_path: Path) -> None:
    for seed in (1, 2):
        result = make_result(seed=seed)
        write_record(result, result.spec.record_path(tmp_path))
    bad = tmp_path / "toy-shapes" / "broken.json"
    bad.write_text("garbage")
    with pytest.warns(UserWarning, match="broken.json"):
        seeds = [r.spec.seed for r in iter_records(tmp_path)]
    assert seeds == [1, 2]
    assert bad.read_text() == "garbage"
    assert list(iter_records(tmp_path / "missing")) == []


def test_load_records_one_row_per_space(tmp_path: Path) -> None:
    ok = make_result()
    failed = RunResult(RunSpec("zeroshot", "toy-colors", seed=1), status="failed", error="RuntimeError: x")
    for r in (ok, failed):
        write_record(r, r.spec.record_path(tmp_path))
    frame = load_records(tmp_path)
    assert list(frame.columns) == list(RECORD_COLUMNS)
    assert len(frame) == 3  # base + novel of the ok run, one row for the failed run
    rows = {(r.method, r.space): r for r in frame.itertuples()}
    base, novel, fail = rows[("coop", "base")], rows[("coop", "novel")], rows[("zeroshot", "")]
    assert base.accuracy == 81.25 and base.applicable
    assert math.isnan(novel.accuracy) and not novel.applicable
    assert fail.status == "failed" and fail.error == "RuntimeError: x" and math.isnan(fail.accuracy)
    assert base.split_hash == "abc" and base.dataset_version == "2" and base.wall_time_s == 3.5
    assert base.spec_hash == ok.spec.hash and base.shots == 4 and base.seed == 2
    assert math.isnan(base.peak_memory_mb)  # not recorded
    assert base.path == str(ok.spec.record_path(tmp_path))
    empty = load_records(tmp_path / "none")
    assert empty.empty and list(empty.columns) == list(RECORD_COLUMNS)


def test_collect_provenance() -> None:
    from fewshot.results import _git_state

    _git_state.cache_clear()  # the git state is read once per process; HEAD may have moved
    prov = collect_provenance(device="cpu", split_hash="s")
    assert prov["fewshot_version"] == fewshot.__version__
    assert prov["torch"] == version("torch")
    assert prov["open_clip"] == version("open_clip_torch")
    assert prov["device"] == "cpu" and prov["split_hash"] == "s"
    date = dt.datetime.fromisoformat(prov["date"])
    assert date.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.UTC) - date).total_seconds()) < 60
    assert collect_provenance(date="fixed")["date"] == "fixed"  # extra keys win
    checkout = Path(fewshot.__file__).resolve().parent.parent
    if (checkout / ".git").exists():
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True)
        assert prov["git_hash"] == head.stdout.strip() and len(prov["git_hash"]) == 40
        assert isinstance(prov["git_dirty"], bool)
    else:
        assert prov["git_hash"] is None
