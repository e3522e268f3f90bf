"""Prompt template sets that several methods share (beyond the datasets' own templates)."""

from __future__ import annotations

__all__ = ["IMAGENET_SELECT_TEMPLATES"]

IMAGENET_SELECT_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)
"""The 7 ImageNet templates selected in CLIP's prompt-engineering notebook; Tip-Adapter
(datasets/imagenet.py) and CLAP (datasets/imagenet_templates.py) classify ImageNet with them."""
