"""One precision policy per run, chosen before it starts and recorded.

``--precision auto|fp32|fp16|bf16``: ``auto`` is fp32 on a CPU (and on MPS) and fp16
autocast on CUDA, as the official prompt-learning code runs CLIP in fp16; bf16 only when
asked. The weights stay fp32 (the learned parameters are fp32 masters); fp16 and bf16 run
the forward passes under ``torch.autocast``. Every image feature of one run (support, val,
augmented views, test) is encoded at the run's precision, the precision enters the feature
cache key, the record and the leaderboard, and runs at two precisions never average
together.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fewshot.types import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["PRECISIONS", "AutocastFactory", "autocast_dtype", "autocast_for", "resolve_precision"]

PRECISIONS = ("auto", "fp32", "fp16", "bf16")
AutocastFactory = Callable[[], contextlib.AbstractContextManager[Any]]


def resolve_precision(precision: str, device: str) -> str:
    """The concrete precision (fp32, fp16 or bf16) of ``precision`` on ``device``."""
    if precision not in PRECISIONS:
        raise ConfigError(f"Unknown --precision {precision!r}: use {', '.join(PRECISIONS)}.")
    if precision == "auto":
        return "fp16" if device.startswith("cuda") else "fp32"
    if precision == "fp16" and not device.startswith(("cuda", "cpu")):
        raise ConfigError(f"--precision fp16 needs a CUDA device or the CPU, not {device}.")
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a concrete precision; None for fp32."""
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)


def autocast_for(precision: str, device: torch.device | str) -> AutocastFactory:
    """A factory of the autocast context of ``precision`` on ``device`` (no-op for fp32)."""
    import torch

    dtype = autocast_dtype(precision)
    device_type = torch.device(device).type
    if dtype is None:
        return contextlib.nullcontext
    return lambda: torch.autocast(device_type, dtype=dtype)
