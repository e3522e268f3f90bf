"""How long the command line takes to start, against importing open_clip (the heavy import it
avoids): ``fewshot --help`` and ``fewshot list methods`` import neither torch nor open_clip.

Each command runs in a fresh interpreter (a subprocess), as a user's shell starts it.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import best_of

COMMANDS = {
    "help": [sys.executable, "-c", "from fewshot.cli import main; main()", "--help"],
    "list methods": [sys.executable, "-c", "from fewshot.cli import main; main()", "list", "methods"],
}
OPEN_CLIP = [sys.executable, "-c", "import open_clip"]


def _run(command: list[str]) -> None:
    subprocess.run(command, check=True, capture_output=True)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_startup_against_importing_open_clip(benchmark, name: str) -> None:
    baseline = best_of(lambda: _run(OPEN_CLIP))
    benchmark.pedantic(_run, args=(COMMANDS[name],), rounds=3, iterations=1)
    ratio = baseline / benchmark.stats.stats.min
    benchmark.extra_info.update({"import_open_clip_s": baseline, "speedup": ratio})
    print(f"\nfewshot {name}: {benchmark.stats.stats.min:.2f}s, {ratio:.1f}x faster than importing open_clip")
