"""The toy world: procedural images, captions, toy datasets and a bundled micro CLIP.

This package must stay cheap to import: it exposes only paths here. The renderer lives in
:mod:`fewshot.toyworld.world`, dataset definitions in :mod:`fewshot.toyworld.catalog`, and
the pretraining script in :mod:`fewshot.toyworld.train`.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["TOY_MODEL_DIR", "TOY_MODEL_ID"]

TOY_MODEL_DIR: Path = Path(__file__).resolve().parent / "toy_clip"
"""The open_clip ``local-dir:`` folder of the micro CLIP (config + fp16 safetensors)."""

TOY_MODEL_ID: str = f"local-dir:{TOY_MODEL_DIR}"
"""The open_clip model name that loads the micro CLIP."""
