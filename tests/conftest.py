"""Shared test setup: a private feature cache for the whole session.

Tests never touch the user's cache: ``$FEWSHOT_CACHE`` points at a session temp folder, so
features encoded by one test (the toy datasets on the toy backbone) are reused by the next.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

_SESSION_CACHE = Path(tempfile.mkdtemp(prefix="fewshot-test-cache-"))
os.environ["FEWSHOT_CACHE"] = str(_SESSION_CACHE)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network
# One thread: the toy models are tiny, and extra threads only add synchronisation cost
# (several times slower when other processes compete for the two cores).
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def feature_cache() -> Iterator[object]:
    """One FeatureCache over the session folder."""
    from fewshot.features import FeatureCache

    yield FeatureCache(_SESSION_CACHE)


def write_distribution(site: Path, dist: str, entry_points: dict[str, str], module_dir: Path | None) -> None:
    """Write the metadata a real `pip install` leaves in site-packages: NAME.dist-info with
    METADATA and entry_points.txt (group fewshot.methods), next to the importable module."""
    info = site / f"{dist.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[fewshot.methods]\n{lines}\n")
    if module_dir is not None and not (site / module_dir.name).exists():
        (site / module_dir.name).symlink_to(module_dir, target_is_directory=True)


EXAMPLE_PLUGIN = Path(__file__).resolve().parents[1] / "examples" / "plugin" / "fewshot_prototype"


@pytest.fixture
def plugin_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh site-packages folder on sys.path; plugins discovered anew before and after."""
    import sys

    from fewshot.methods import METHODS

    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    METHODS._clear_plugins()
    yield site
    METHODS._clear_plugins()
    for name in [m for m in sys.modules if m.startswith("fewshot_prototype")]:
        del sys.modules[name]
