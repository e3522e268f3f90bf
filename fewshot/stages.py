"""Stage cache: on-disk results of a method's expensive stages (e.g. GIST's fine-tuning).

A method whose fit runs a long stage (fine-tuning a backbone) stores the stage's result,
and its partial state while it runs, here, so that a rerun of the same fit, or one that
was interrupted, starts where the last one stopped instead of from scratch.

- An entry is keyed by a JSON-ready dict of everything the stage's result depends on (the
  backbone id and weights digest, the support items, the seed, the method's code digest,
  the stage's settings...), hashed into the file name; the full key is kept in a sidecar
  JSON beside it, with the method, dataset and backbone for ``fewshot cache ls|clear``.
- Layout: ``ROOT/stages/METHOD/DATASET/DIGEST.pt`` (+ ``.json``), under the feature cache's
  root (``$FEWSHOT_CACHE``). Entries are read with ``torch.load(weights_only=True)``:
  tensors, dicts, lists, strings and numbers only.
- Writes are atomic; an unreadable or mismatched entry is ignored (and recomputed), never
  trusted. A fine-tuned model lives here, never in the feature cache of the frozen backbone.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from fewshot._io import atomic_write_bytes, atomic_write_text
from fewshot.types import safe_name, stable_hash

__all__ = ["STAGE_FORMAT", "StageCache"]

STAGE_FORMAT = 1  # bump when the entry layout changes: old entries are then not found


class StageCache:
    """Stage results on disk, one ``.pt`` file and a ``.json`` sidecar per key."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser() / "stages"
        self.hits = 0
        self.saved = 0

    def __repr__(self) -> str:
        return f"StageCache({str(self.root)!r})"

    def path(self, key: Mapping[str, Any]) -> Path:
        """The tensor file of ``key`` (which must hold ``method`` and ``dataset``)."""
        digest = stable_hash({"format": STAGE_FORMAT, **key}, 32)
        folder = self.root / safe_name(str(key["method"])) / safe_name(str(key.get("dataset") or "_"))
        return folder / f"{digest}.pt"

    def load(self, key: Mapping[str, Any]) -> dict[str, Any] | None:
        """The stored entry of ``key``, or None (missing, unreadable, or another key's)."""
        path = self.path(key)
        try:
            meta = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
            if meta.get("key") != json.loads(json.dumps(dict(key), default=str)):
                return None
            entry = torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a damaged file fails in many ways inside torch's unpickler
            return None
        if not isinstance(entry, dict):
            return None
        self.hits += 1
        return entry

    def save(self, key: Mapping[str, Any], entry: Mapping[str, Any]) -> None:
        """Store ``entry`` (tensors, dicts, lists, strings, numbers) under ``key``, atomically:
        the tensor file first, then the sidecar that makes it findable."""
        path = self.path(key)
        buffer = io.BytesIO()
        torch.save(dict(entry), buffer)
        atomic_write_bytes(path, buffer.getvalue())
        meta = {
            "format": STAGE_FORMAT,
            "key": dict(key),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        atomic_write_text(path.with_suffix(".json"), json.dumps(meta, default=str, indent=1) + "\n")
        self.saved += 1

    def drop(self, key: Mapping[str, Any]) -> None:
        """Remove ``key``'s entry (sidecar first, so a half-removed entry is never found)."""
        path = self.path(key)
        path.with_suffix(".json").unlink(missing_ok=True)
        path.unlink(missing_ok=True)

    def ls(self) -> list[dict[str, Any]]:
        """One dict per entry: method, stage, dataset, backbone, size, created, path."""
        entries = []
        for meta_path in sorted(self.root.glob("*/*/*.json")):
            try:
                meta = json.loads(meta_path.read_text(encoding="utf-8"))
                key = meta["key"]
            except (OSError, ValueError, KeyError, TypeError):
                continue
            tensor = meta_path.with_suffix(".pt")
            size = meta_path.stat().st_size + (tensor.stat().st_size if tensor.exists() else 0)
            entries.append(
                {
                    "method": key.get("method"),
                    "stage": key.get("stage"),
                    "dataset": key.get("dataset"),
                    "backbone": key.get("backbone"),
                    "size": size,
                    "created": meta.get("created", ""),
                    "path": str(tensor),
                }
            )
        return entries

    def clear(self, backbone: str | None = None, dataset: str | None = None) -> int:
        """Delete entries (all, or those of one backbone and/or dataset); return how many."""
        removed = 0
        for entry in self.ls():
            if dataset is not None and entry["dataset"] != dataset:
                continue
            if backbone is not None and entry["backbone"] != backbone:
                continue
            tensor = Path(entry["path"])
            tensor.with_suffix(".json").unlink(missing_ok=True)
            tensor.unlink(missing_ok=True)
            removed += 1
        return removed
