"""The dataset downloader, for real over HTTP against a server started on 127.0.0.1.

The server serves archives built here in the layout of the real upstream files (Oxford-IIIT
Pets' images.tar.gz + annotations.tar.gz, EuroSAT.zip, ...), honours Range requests, and can
cut a transfer off after N bytes or ignore Range. Test recipes are the real RECIPES entries
with their URLs pointed at this server and the checksums of the archives built here, so the
real strip / nested / dest / creates values of every recipe used are exercised.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import re
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from random import Random

import pytest
from rich.console import Console
from typer.testing import CliRunner

from fewshot.cli.data import data_app
from fewshot.datasets import extract
from fewshot.datasets.base import DatasetError
from fewshot.datasets.download import (
    RECIPES,
    DownloadError,
    ExtractLimitError,
    ExtractLimits,
    Outcome,
    Source,
    download_dataset,
    extract_archive,
    fetch,
    mirror_env_var,
)

# ------------------------------------------------------------------------------------------
# A small HTTP server with Range support and switches for interruption and ignored Range


@dataclasses.dataclass
class ServerState:
    url: str = ""
    files: dict[str, bytes] = dataclasses.field(default_factory=dict)
    cut_after: int | None = None  # the next response stops after this many body bytes
    ignore_range: bool = False
    requests: list[tuple[str, str | None]] = dataclasses.field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer

    def do_GET(self) -> None:
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        rng = self.headers.get("Range")
        state.requests.append((self.path, rng))
        data = state.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", rng or "")
        if match and not state.ignore_range:
            start = int(match[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut, state.cut_after = state.cut_after, None
        self.wfile.write(body if cut is None else body[:cut])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerState]:
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    for key in RECIPES:
        monkeypatch.delenv(mirror_env_var(key), raising=False)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    state = ServerState(url=f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


QUIET = Console(file=io.StringIO())


# ------------------------------------------------------------------------------------------
# Archives in the real upstream layouts


def blob(seed: int, size: int = 40_000) -> bytes:
    """Incompressible bytes, so archives stay larger than the interruption points."""
    return Random(seed).randbytes(size)


def tar_bytes(members: dict[str, bytes], mode: str = "w:gz") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tar:  # type: ignore[call-overload]
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


PET_IMAGES = {"images/Abyssinian_1.jpg": blob(1), "images/Bengal_12.jpg": blob(2)}
PET_ANNOTATIONS = {
    "annotations/list.txt": b"#Image CLASS-ID SPECIES BREED ID\nAbyssinian_1 1 1 1\nBengal_12 6 1 6\n",
    "annotations/trainval.txt": b"Abyssinian_1 1 1 1\n",
    "annotations/test.txt": b"Bengal_12 6 1 6\n",
}
EUROSAT = {"2750/AnnualCrop/AnnualCrop_1.jpg": blob(3), "2750/Forest/Forest_7.jpg": blob(4)}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def serve(
    monkeypatch: pytest.MonkeyPatch, server: ServerState, key: str, files: dict[str, bytes], **digests: str
) -> None:
    """Serve ``files`` (by source file name) under /<key>/ and register RECIPES[key] pointing there.

    Each source keeps the real recipe's layout fields; its checksum becomes the sha256 of the
    bytes served (or ``digests[name]`` when given), unless the real source has none.
    """
    recipe = RECIPES[key]
    sources = []
    for source in recipe.sources:
        data = files[source.name]
        server.files[f"/{key}/{source.name}"] = data
        digest = digests.get(source.name, sha256(data)) if source.digest else None
        sources.append(
            dataclasses.replace(source, url=f"{server.url}/{key}/{source.name}", sha256=digest, md5=None)
        )
    monkeypatch.setitem(RECIPES, key, dataclasses.replace(recipe, sources=tuple(sources)))


def serve_pets(monkeypatch: pytest.MonkeyPatch, server: ServerState, **digests: str) -> None:
    files = {"images.tar.gz": tar_bytes(PET_IMAGES), "annotations.tar.gz": tar_bytes(PET_ANNOTATIONS)}
    serve(monkeypatch, server, "oxford-pets", files, **digests)


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative POSIX path -> bytes)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def leftovers(root: Path) -> list[str]:
    """What is left in <root>/.downloads (partial files, archives, staging folders)."""
    downloads = root / ".downloads"
    return sorted(p.name for p in downloads.iterdir()) if downloads.exists() else []


def get(key: str, root: Path, **kwargs: object) -> Outcome:
    return download_dataset(key, root, console=QUIET, **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# Download, verify, extract


def test_download_yields_the_coop_layout_and_is_not_repeated(
    server: ServerState, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    serve_pets(monkeypatch, server)
    outcome = get("oxford-pets", tmp_path)
    assert outcome.status == "installed", outcome.message
    assert tree(tmp_path / "oxford_pets") == {**PET_IMAGES, **PET_ANNOTATIONS}
    assert leftovers(tmp_path) == []  # no .part, no archive, no staging folder
    assert any("split_zhou_OxfordPets.json" in note for note in outcome.notes)

    served = len(server.requests)
    again = get("oxford-pets", tmp_path)
    assert again.status == "present"
    assert len(server.requests) == served  # nothing fetched the second time


@pytest.mark.parametrize(
    ("key", "files", "expected"),
    [
        pytest.param(
            "eurosat",
            {"EuroSAT.zip": zip_bytes(EUROSAT)},
            EUROSAT,
            id="eurosat-zip",
        ),
        pytest.param(
            "caltech101",
            {
                "caltech-101.zip": zip_bytes(
                    {
                        "caltech-101/101_ObjectCategories.tar.gz": tar_bytes(
                            {"101_ObjectCategories/accordion/image_0001.jpg": blob(5)}
                        ),
                        "caltech-101/Annotations.tar": tar_bytes({"Annotations/x.mat": b"m"}, "w"),
                        "caltech-101/show_annotation.m": b"%",
                    }
                )
            },
            {"101_ObjectCategories/accordion/image_0001.jpg": blob(5)},
            id="caltech-nested-archive",
        ),
        pytest.param(
            "fgvc-aircraft",
            {
                "fgvc-aircraft-2013b.tar.gz": tar_bytes(
                    {
                        "fgvc-aircraft-2013b/data/images/0034309.jpg": blob(6),
                        "fgvc-aircraft-2013b/data/variants.txt": b"707-320\n",
                        "fgvc-aircraft-2013b/README.html": b"<html/>",
                    }
                )
            },
            {"images/0034309.jpg": blob(6), "variants.txt": b"707-320\n"},
            id="fgvc-keeps-only-data",
        ),
        pytest.param(
            "flowers102",
            {
                "102flowers.tgz": tar_bytes({"jpg/image_00001.jpg": blob(7)}),
                "imagelabels.mat": b"MATLAB 5.0 MAT-file",
            },
            {"jpg/image_00001.jpg": blob(7), "imagelabels.mat": b"MATLAB 5.0 MAT-file"},
            id="flowers-archive-and-plain-file",
        ),
        pytest.param(
            "sun397",
            {
                "SUN397.tar.gz": tar_bytes({"SUN397/a/abbey/sun_aaa.jpg": blob(8)}),
                "Partitions.zip": zip_bytes({"ClassName.txt": b"/a/abbey\n", "Training_01.txt": b"x\n"}),
            },
            {
                "SUN397/a/abbey/sun_aaa.jpg": blob(8),
                "ClassName.txt": b"/a/abbey\n",
                "Training_01.txt": b"x\n",
            },
            id="sun397-two-sources",
        ),
    ],
)
def test_each_layout_ends_where_coop_reads_it(
    server: ServerState,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    key: str,
    files: dict[str, bytes],
    expected: dict[str, bytes],
) -> None:
    serve(monkeypatch, server, key, files)
    outcome = get(key, tmp_path)
    assert outcome.status == "installed", outcome.message
    assert tree(tmp_path / RECIPES[key].folder) == expected
    assert leftovers(tmp_path) == []


def test_unverified_source_renamed_folder_and_shared_classnames(
    server: ServerState, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """ImageNet-Sketch: no published checksum, sketch/ becomes images/, classnames.txt copied."""
    members = {"sketch/n01440764/sketch_0.JPEG": blob(9)}
    serve(monkeypatch, server, "imagenet-sketch", {"ImageNet-Sketch.zip": zip_bytes(members)})
    (tmp_path / "imagenet").mkdir()
    (tmp_path / "imagenet" / "classnames.txt").write_text("n01440764 tench\n")
    log = io.StringIO()
    outcome = download_dataset("imagenet-sketch", tmp_path, console=Console(file=log, width=300))
    assert outcome.status == "installed", outcome.message
    assert tree(tmp_path / "imagenet-sketch") == {
        "images/n01440764/sketch_0.JPEG": blob(9),
        "classnames.txt": b"n01440764 tench\n",
    }
    assert sha256(zip_bytes(members)) in log.getvalue()  # the digest received is shown


# ------------------------------------------------------------------------------------------
# Interrupted transfers and Range


def test_interrupted_transfer_leaves_a_part_and_the_next_call_resumes(
    server: ServerState, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    serve(monkeypatch, server, "eurosat", {"EuroSAT.zip": zip_bytes(EUROSAT)})
    server.cut_after = 5000
    first = get("eurosat", tmp_path, attempts=1)
    assert first.status == "failed"
    assert "stopped after 5,000" in first.message and "resume" in first.message
    part = tmp_path / ".downloads" / "EuroSAT.zip.part"
    assert part.stat().st_size == 5000
    assert not (tmp_path / "eurosat").exists()

    second = get("eurosat", tmp_path, attempts=1)
    assert second.status == "installed", second.message
    assert server.requests[-1] == ("/eurosat/EuroSAT.zip", "bytes=5000-")
    assert tree(tmp_path / "eurosat") == EUROSAT
    assert leftovers(tmp_path) == []


def test_a_retry_within_one_call_resumes(
    server: ServerState, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    serve(monkeypatch, server, "eurosat", {"EuroSAT.zip": zip_bytes(EUROSAT)})
    server.cut_after = 7000
    outcome = get("eurosat", tmp_path, attempts=2)
    assert outcome.status == "installed", outcome.message
    assert [r for _, r in server.requests] == [None, "bytes=7000-"]
    assert tree(tmp_path / "eurosat") == EUROSAT


@pytest.mark.parametrize("stale", [b"x" * 3000, b"y" * 200_000], ids=["range-ignored", "range-416"])
def test_a_stale_part_is_restarted_from_zero(
    server: ServerState, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, stale: bytes
) -> None:
    """A server that ignores Range (200), or a .part longer than the file (416): restart at zero.

    The .part holds garbage, so appending to it would fail the checksum.
    """
    serve(monkeypatch, server, "eurosat", {"EuroSAT.zip": zip_bytes(EUROSAT)})
    server.ignore_range = len(stale) < 100_000
    (tmp_path / ".downloads").mkdir()
    (tmp_path / ".downloads" / "EuroSAT.zip.part").write_bytes(stale)
    outcome = get("eurosat", tmp_path)
    assert outcome.status == "installed", outcome.message
    assert server.requests[0] == ("/eurosat/EuroSAT.zip", f"bytes={len(stale)}-")
    assert tree(tmp_path / "eurosat") == EUROSAT


# ------------------------------------------------------------------------------------------
# Corrupt downloads and archives leave nothing half-done


def test_checksum_mismatch_is_a_clear_error_and_leaves_nothing(
    server: ServerState, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    good = tar_bytes(PET_IMAGES)
    corrupt = bytearray(good)
    corrupt[len(corrupt) // 2] ^= 0xFF
    serve(
        monkeypatch,
        server,
        "oxford-pets",
        {"images.tar.gz": bytes(corrupt), "annotations.tar.gz": tar_bytes(PET_ANNOTATIONS)},
        **{"images.tar.gz": sha256(good)},
    )
    folder = tmp_path / "oxford_pets"
    folder.mkdir()
    (folder / "split_zhou_OxfordPets.json").write_text('{"train": []}')

    outcome = get("oxford-pets", tmp_path)
    assert outcome.status == "failed"
    url = f"{server.url}/oxford-pets/images.tar.gz"
    assert url in outcome.message
    assert f"expected sha256 {sha256(good)}, got {sha256(bytes(corrupt))}" in outcome.message
    assert "--mirror oxford-pets=URL" in outcome.message
    assert tree(folder) == {"split_zhou_OxfordPets.json": b'{"train": []}'}  # unchanged
    assert not any(name.endswith(".part") or "staging" in name for name in leftovers(tmp_path))
    assert "images.tar.gz" not in leftovers(tmp_path)

    source = RECIPES["oxford-pets"].sources[0]
    with pytest.raises(DownloadError, match="Checksum mismatch") as info:
        fetch(source, tmp_path / ".downloads", console=QUIET)
    assert isinstance(info.value, DatasetError)


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_truncated_archive_with_a_matching_checksum_fails_cleanly(
    server: ServerState, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, kind: str
) -> None:
    if kind == "tar.gz":
        images = tar_bytes(PET_IMAGES)
        truncated = images[: len(images) * 2 // 3]  # a valid start: some members extract first
        serve(
            monkeypatch,
            server,
            "oxford-pets",
            {"images.tar.gz": truncated, "annotations.tar.gz": tar_bytes(PET_ANNOTATIONS)},
        )
        key, archive = "oxford-pets", "images.tar.gz"
    else:
        data = zip_bytes(EUROSAT)
        serve(monkeypatch, server, "eurosat", {"EuroSAT.zip": data[: len(data) // 2]})
        key, archive = "eurosat", "EuroSAT.zip"

    outcome = get(key, tmp_path)
    assert outcome.status == "failed"
    assert f"{archive} cannot be extracted" in outcome.message and "truncated or corrupt" in outcome.message
    assert not (tmp_path / RECIPES[key].folder).exists()  # not even the good annotations
    assert not any("staging" in name or name == archive for name in leftovers(tmp_path))


def _symlink_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        link = tarfile.TarInfo("images/link")
        link.type = tarfile.SYMTYPE
        link.linkname = "../../../../outside.txt"
        tar.addfile(link)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("member", "archive"),
    [
        ("../evil.txt", tar_bytes({"images/ok.jpg": b"1", "../evil.txt": b"pwned"})),
        ("/tmp/evil-abs.txt", tar_bytes({"/tmp/evil-abs.txt": b"pwned"})),
        ("images/link", _symlink_tar()),
    ],
    ids=["dotdot", "absolute", "symlink-outside"],
)
def test_tar_members_escaping_the_destination_are_refused(
    server: ServerState, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, member: str, archive: bytes
) -> None:
    root = tmp_path / "data"
    files = {"images.tar.gz": archive, "annotations.tar.gz": tar_bytes(PET_ANNOTATIONS)}
    serve(monkeypatch, server, "oxford-pets", files)
    outcome = get("oxford-pets", root)
    assert outcome.status == "failed"
    assert f"Refusing images.tar.gz: member {member!r}" in outcome.message
    assert not (root / "oxford_pets").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing written beside the root
    assert not list(root.glob("**/evil*"))


def test_zip_members_escaping_the_destination_are_refused(
    server: ServerState, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root = tmp_path / "data"
    serve(monkeypatch, server, "eurosat", {"EuroSAT.zip": zip_bytes({**EUROSAT, "../../evil.txt": b"x"})})
    outcome = get("eurosat", root)
    assert outcome.status == "failed"
    assert "Refusing EuroSAT.zip: member '../../evil.txt'" in outcome.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert not (root / "eurosat").exists()


# ------------------------------------------------------------------------------------------
# Extraction limits: decompression bombs are refused before anything is written

ZEROS = {"bomb/zeros.bin": bytes(4_000_000)}  # compresses over 1000:1 in every format


def write_archive(folder: Path, kind: str, members: dict[str, bytes]) -> Path:
    path = folder / f"archive.{kind}"
    if kind == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, data in members.items():
                zf.writestr(name, data)
        path.write_bytes(buf.getvalue())
    else:
        mode = {"tar": "w", "tar.gz": "w:gz", "tar.bz2": "w:bz2", "tar.xz": "w:xz"}[kind]
        path.write_bytes(tar_bytes(members, mode=mode))
    return path


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "tar.bz2", "tar.xz"])
def test_a_highly_compressible_archive_is_refused_by_the_ratio_limit(tmp_path: Path, kind: str) -> None:
    archive = write_archive(tmp_path, kind, ZEROS)
    assert archive.stat().st_size * 200 < 4_000_000  # the archive really is a bomb at 200:1
    dest = tmp_path / "out"
    with pytest.raises(ExtractLimitError, match=r"past the limit max_ratio = 200:1") as info:
        extract_archive(archive, dest)
    message = str(info.value)
    assert f"Refusing archive.{kind}: its members declare over" in message and "\n" not in message
    assert isinstance(info.value, DatasetError)
    assert list(dest.iterdir()) == []  # refused from the headers, before writing anything


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_limits_hold_while_extracting_even_if_the_headers_understate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    class LyingHeaders(extract._Budget):  # the header pass sees nothing to refuse
        def charge(self, nbytes: int) -> None:
            if self.verb != "declare":
                super().charge(nbytes)

    monkeypatch.setattr(extract, "_Budget", LyingHeaders)
    with pytest.raises(ExtractLimitError, match=r"its members wrote over .* max_ratio = 200:1"):
        extract_archive(write_archive(tmp_path, kind, ZEROS), tmp_path / "out")


def test_a_bomb_download_leaves_the_dataset_folder_as_it_was(
    server: ServerState, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bomb = write_archive(tmp_path, "zip", {"2750/Forest/zeros.jpg": bytes(4_000_000)}).read_bytes()
    serve(monkeypatch, server, "eurosat", {"EuroSAT.zip": bomb})
    root = tmp_path / "data"
    outcome = get("eurosat", root)
    assert outcome.status == "failed"
    assert "Refusing EuroSAT.zip" in outcome.message and "max_ratio = 200:1" in outcome.message
    assert not (root / "eurosat").exists()
    assert leftovers(root) == ["EuroSAT.zip"]  # kept (it verified), no staging folder


def test_a_lowered_total_limit_refuses_a_normal_archive(
    server: ServerState, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    serve_pets(monkeypatch, server)  # images.tar.gz: 80,000 bytes of images
    small = ExtractLimits(max_total_bytes=50_000, max_ratio=200)
    outcome = get("oxford-pets", tmp_path, limits=small)
    assert outcome.status == "failed"
    assert "Refusing images.tar.gz: its members declare over 80,000 bytes" in outcome.message
    assert "past the limit max_total_bytes = 50,000" in outcome.message
    assert not (tmp_path / "oxford_pets").exists()
    assert "images.tar.gz" in leftovers(tmp_path)
    assert not any("staging" in name for name in leftovers(tmp_path))

    fetched = len(server.requests)
    assert get("oxford-pets", tmp_path).status == "installed"  # default limits: the kept file is used
    assert tree(tmp_path / "oxford_pets") == {**PET_IMAGES, **PET_ANNOTATIONS}
    assert server.requests[fetched:] == []  # both verified downloads were kept and reused


def test_the_module_constants_are_the_default_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = write_archive(tmp_path, "tar.gz", PET_IMAGES)
    monkeypatch.setattr(extract, "MAX_EXTRACT_BYTES", 40_000)
    with pytest.raises(ExtractLimitError, match="max_total_bytes = 40,000"):
        extract_archive(archive, tmp_path / "a")
    extract_archive(archive, tmp_path / "b", limits=ExtractLimits(max_total_bytes=80_000, max_ratio=2))
    assert tree(tmp_path / "b") == PET_IMAGES  # exactly at the limits is allowed


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "tar"])
def test_a_normal_archive_extracts_within_the_default_limits(tmp_path: Path, kind: str) -> None:
    members = {**EUROSAT, **PET_ANNOTATIONS}
    extract_archive(write_archive(tmp_path, kind, members), tmp_path / "out")
    assert tree(tmp_path / "out") == members


# ------------------------------------------------------------------------------------------
# User data is never deleted


def test_present_entries_are_kept_and_force_moves_them_aside(
    server: ServerState, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    serve_pets(monkeypatch, server)
    folder = tmp_path / "oxford_pets"
    (folder / "annotations").mkdir(parents=True)
    (folder / "annotations" / "mine.txt").write_text("my annotations")

    outcome = get("oxford-pets", tmp_path)  # only images are missing
    assert outcome.status == "installed", outcome.message
    assert [path for path, _ in server.requests] == ["/oxford-pets/images.tar.gz"]
    assert tree(folder) == {**PET_IMAGES, "annotations/mine.txt": b"my annotations"}

    forced = get("oxford-pets", tmp_path, force=True)
    assert forced.status == "installed", forced.message
    assert tree(folder) == {**PET_IMAGES, **PET_ANNOTATIONS}
    backups = list((tmp_path / ".downloads" / "replaced").iterdir())
    assert len(backups) == 1 and str(backups[0]) in forced.notes[0]
    assert tree(backups[0]) == {**PET_IMAGES, "annotations/mine.txt": b"my annotations"}


def test_an_existing_file_is_not_overwritten_by_the_archive(
    server: ServerState, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    archive = {
        "fgvc-aircraft-2013b/data/images/0034309.jpg": blob(6),
        "fgvc-aircraft-2013b/data/variants.txt": b"707-320\n",
    }
    serve(monkeypatch, server, "fgvc-aircraft", {"fgvc-aircraft-2013b.tar.gz": tar_bytes(archive)})
    folder = tmp_path / "fgvc_aircraft"
    folder.mkdir()
    (folder / "variants.txt").write_text("my edited list\n")
    outcome = get("fgvc-aircraft", tmp_path)
    assert outcome.status == "installed", outcome.message
    assert tree(folder) == {"images/0034309.jpg": blob(6), "variants.txt": b"my edited list\n"}
    assert "replaced" not in leftovers(tmp_path)


# ------------------------------------------------------------------------------------------
# Mirrors


def test_mirror_from_the_environment_and_checksums_still_verified(
    server: ServerState, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = zip_bytes(EUROSAT)
    serve(monkeypatch, server, "eurosat", {"EuroSAT.zip": data})
    del server.files["/eurosat/EuroSAT.zip"]  # the original URL is dead (404)
    dead = get("eurosat", tmp_path / "a")
    assert dead.status == "failed"
    assert f"{server.url}/eurosat/EuroSAT.zip answered HTTP 404" in dead.message
    assert "--mirror eurosat=URL (or $FEWSHOT_MIRROR_EUROSAT=URL" in dead.message
    server.requests.clear()
    server.files["/mirror/EuroSAT.zip"] = data
    monkeypatch.setenv("FEWSHOT_MIRROR_EUROSAT", f"{server.url}/mirror/")
    outcome = get("eurosat", tmp_path / "a")
    assert outcome.status == "installed", outcome.message
    assert [path for path, _ in server.requests] == ["/mirror/EuroSAT.zip"]

    server.files["/mirror/EuroSAT.zip"] = data[:-1] + b"!"
    bad = get("eurosat", tmp_path / "b")
    assert bad.status == "failed"
    assert f"Checksum mismatch for {server.url}/mirror/EuroSAT.zip" in bad.message


def test_a_local_folder_works_as_a_mirror(
    server: ServerState, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """How files obtained by hand are installed (e.g. Stanford Cars, whose links are dead)."""
    files = {
        "cars_train.tgz": tar_bytes({"cars_train/00001.jpg": blob(10)}),
        "cars_test.tgz": tar_bytes({"cars_test/00001.jpg": blob(11)}),
        "car_devkit.tgz": tar_bytes({"devkit/cars_meta.mat": b"meta", "devkit/README.txt": b"r"}),
        "cars_test_annos_withlabels.mat": b"labels",
    }
    serve(monkeypatch, server, "stanford-cars", files)
    manual = get("stanford-cars", tmp_path / "data")
    assert manual.status == "manual" and "pytorch/vision#7545" in manual.message
    assert server.requests == []

    folder = tmp_path / "by-hand"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    outcome = get("stanford-cars", tmp_path / "data", mirrors={"stanford-cars": str(folder)})
    assert outcome.status == "installed", outcome.message
    assert tree(tmp_path / "data" / "stanford_cars") == {
        "cars_train/00001.jpg": blob(10),
        "cars_test/00001.jpg": blob(11),
        "devkit/cars_meta.mat": b"meta",
        "devkit/README.txt": b"r",
        "cars_test_annos_withlabels.mat": b"labels",
    }
    assert server.requests == []  # everything came from the folder


runner = CliRunner()


def test_mirror_option_on_the_command_line_beats_the_environment(
    server: ServerState, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    data = zip_bytes(EUROSAT)
    serve(monkeypatch, server, "eurosat", {"EuroSAT.zip": data})
    server.files["/cli/EuroSAT.zip"] = data
    monkeypatch.setenv("FEWSHOT_MIRROR_EUROSAT", f"{server.url}/env")
    args = ["download", "eurosat", "--data-root", str(tmp_path), "--mirror", f"eurosat={server.url}/cli"]
    result = runner.invoke(data_app, args)
    assert result.exit_code == 0, result.output
    assert [path for path, _ in server.requests] == ["/cli/EuroSAT.zip"]
    assert tree(tmp_path / "eurosat") == EUROSAT
    assert "installed" in result.output

    bad = runner.invoke(
        data_app, ["download", "eurosat", "--data-root", str(tmp_path), "--mirror", "eurosat"]
    )
    assert bad.exit_code == 2
    assert "Bad --mirror 'eurosat': write NAME=URL" in bad.output


# ------------------------------------------------------------------------------------------
# The command: manual datasets, unknown names, the data root


def test_manual_datasets_print_steps_and_the_command_exits_nonzero_after_the_others(
    server: ServerState, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    serve(monkeypatch, server, "eurosat", {"EuroSAT.zip": zip_bytes(EUROSAT)})
    result = runner.invoke(data_app, ["download", "imagenet,ucf101", "eurosat", "--data-root", str(tmp_path)])
    assert result.exit_code == 1, result.output
    out = result.output
    assert "https://image-net.org" in out and "ILSVRC2012_img_val.tar" in out
    assert f"ImageNet('{tmp_path / 'imagenet' / 'images'}', split='val')" in out  # the sorting step
    assert "UCF-101-midframes.zip" in out and "--mirror ucf101=" in out
    assert tree(tmp_path / "eurosat") == EUROSAT  # handled although listed after the manual ones
    assert "2 of 3 datasets are not in place: imagenet (manual), ucf101 (manual)" in out


def test_manual_recipe_reports_present_once_in_place(tmp_path: Path) -> None:
    images = tmp_path / "imagenet" / "images"
    for split in ("train", "val"):
        (images / split / "n01440764").mkdir(parents=True)
    assert get("imagenet", tmp_path).status == "manual"
    (tmp_path / "imagenet" / "classnames.txt").write_text("n01440764 tench\n")
    assert get("imagenet", tmp_path).status == "present"


def test_unknown_names_are_one_error_listing_the_valid_ones(tmp_path: Path) -> None:
    result = runner.invoke(data_app, ["download", "imagenett", "pets", "--data-root", str(tmp_path)])
    assert result.exit_code == 2
    out = " ".join(result.output.split())
    assert "Unknown dataset 'imagenett', 'pets'. Did you mean imagenet" in out
    assert "Datasets: " + ", ".join(RECIPES) in out
    assert not (tmp_path / ".downloads").exists()


def test_the_command_needs_a_data_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FEWSHOT_DATA", raising=False)
    result = runner.invoke(data_app, ["download", "dtd"])
    assert result.exit_code == 2
    assert "No data root: pass --data-root DIR or set $FEWSHOT_DATA." in result.output


# ------------------------------------------------------------------------------------------
# The recipes table


FOLDERS = {  # from the issue / CoOp's DATASETS.md / ProAPO
    "imagenet": "imagenet",
    "caltech101": "caltech-101",
    "oxford-pets": "oxford_pets",
    "stanford-cars": "stanford_cars",
    "flowers102": "oxford_flowers",
    "food101": "food-101",
    "fgvc-aircraft": "fgvc_aircraft",
    "sun397": "sun397",
    "dtd": "dtd",
    "eurosat": "eurosat",
    "ucf101": "ucf101",
    "cub": "cub",
    "places365": "places365",
    "imagenet-v2": "imagenetv2",
    "imagenet-sketch": "imagenet-sketch",
    "imagenet-a": "imagenet-adversarial",
    "imagenet-r": "imagenet-rendition",
}


def test_recipes_cover_every_dataset_with_checksums_or_reasons() -> None:
    assert {key: r.folder for key, r in RECIPES.items()} == FOLDERS
    assert {k for k, r in RECIPES.items() if r.manual} == {"imagenet", "stanford-cars", "ucf101"}
    for key, recipe in RECIPES.items():
        assert recipe.key == key
        assert recipe.sources or recipe.manual, key
        for source in recipe.sources:
            assert source.url.startswith(("https://", "http://")), source.url
            assert source.creates, source.url
            assert source.digest or len(source.unverified) > 20, source.url
    with pytest.raises(ValueError, match="give a checksum, or the reason"):
        Source("https://example.org/x.zip", "x")
    with pytest.raises(ValueError, match="sha256 must be 64"):
        Source("https://example.org/x.zip", "x", sha256="abc")


def test_suites_expand_to_their_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    from fewshot.cli.data import resolve_download_names
    from fewshot.datasets import SUITES
    from fewshot.types import ConfigError

    monkeypatch.setitem(SUITES, "pair", ("dtd", "eurosat"))
    assert resolve_download_names(["dtd", "pair,cub"]) == ["dtd", "eurosat", "cub"]
    with pytest.raises(ConfigError, match="Unknown dataset 'toy'"):  # toy datasets are not downloaded
        resolve_download_names(["toy"])
