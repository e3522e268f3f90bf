"""``fewshot describe DATASET``: generate a description set with an LLM.

Asks an OpenAI-compatible chat-completions endpoint (``--base-url``, ``--model``; the key from
``--api-key`` or ``$OPENAI_API_KEY``) the questions of one style (``dclip``, ``cupl`` or
``confusion-aware``) for every class of ``DATASET``, and writes the set to
``DATA_ROOT/descriptions/<dataset>/<name>.json`` (:mod:`fewshot.descriptions.generate`).
Answers are cached under ``CACHE_DIR/llm-answers``, so a repeated or interrupted run asks
only what is missing.
"""

from __future__ import annotations

import os
import re
from typing import Annotated

import typer

from fewshot.cli._common import CacheDirOpt, DataRootOpt, console, err_console, opt
from fewshot.types import ConfigError

__all__ = ["describe_command"]


def _default_name(style: str, model: str) -> str:
    model_part = re.sub(r"[^a-z0-9._-]+", "-", model.lower()).strip("-._") or "model"
    return f"{style}-{model_part}"


def describe_command(
    dataset: Annotated[
        str, typer.Argument(metavar="DATASET", help="Dataset whose classes to describe.", show_default=False)
    ],
    base_url: Annotated[
        str,
        opt("--base-url", metavar="URL", help="OpenAI-compatible API base, e.g. https://api.openai.com/v1."),
    ],
    model: Annotated[str, opt("--model", metavar="NAME", help="Model name at that endpoint.")],
    style: Annotated[
        str, opt("--style", help="dclip, cupl or confusion-aware.", show_default=True)
    ] = "dclip",
    name: Annotated[
        str | None, opt("--name", metavar="SETNAME", help="Set name \\[default: STYLE-MODEL].")
    ] = None,
    api_key: Annotated[
        str | None,
        opt("--api-key", metavar="KEY", help="API key \\[default: $OPENAI_API_KEY]; never written anywhere."),
    ] = None,
    backbone: Annotated[
        str, opt("--backbone", help="Text encoder for confusion-aware neighbours.", show_default=True)
    ] = "toy",
    neighbours: Annotated[
        int, opt("--neighbours", min=1, help="Nearest classes named per prompt (confusion-aware).")
    ] = 5,
    concurrency: Annotated[
        int, opt("--concurrency", min=1, help="Parallel requests.", show_default=True)
    ] = 4,
    attempts: Annotated[
        int, opt("--attempts", min=1, help="Tries per request on 429/5xx/timeouts.", show_default=True)
    ] = 6,
    backoff: Annotated[
        float,
        opt("--backoff", min=0.0, help="First retry wait in seconds; doubles each time.", show_default=True),
    ] = 1.0,
    force: Annotated[
        bool, opt("--force", help="Replace an existing set of that name whose sentences differ.")
    ] = False,
    data_root: DataRootOpt = None,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Generate a description set for DATASET's classes through an OpenAI-compatible endpoint."""
    import dataclasses

    from fewshot.datasets import get_dataset
    from fewshot.descriptions.files import check_name, save_description_set
    from fewshot.descriptions.generate import (
        ANSWERS_DIR,
        AnswerCache,
        Endpoint,
        RetryPolicy,
        generate_set,
        nearest_classes,
    )
    from fewshot.descriptions.prompts import get_style
    from fewshot.features import default_cache_root

    if data_root is None:
        raise ConfigError(
            "No data root: pass --data-root DIR or set $FEWSHOT_DATA (the set is written there)."
        )
    key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY", "")
    if not key:
        raise ConfigError(
            "No API key: set $OPENAI_API_KEY or pass --api-key KEY (a local server that needs none "
            "accepts any value, e.g. --api-key none)."
        )
    chosen = get_style(style)
    if chosen.neighbours:
        chosen = dataclasses.replace(chosen, neighbours=neighbours)
    set_name = check_name(name or _default_name(chosen.name, model))
    endpoint = Endpoint(base_url, model, key)
    classnames = list(get_dataset(dataset, data_root).spec().classnames)
    near = nearest_classes(classnames, backbone, chosen.neighbours) if chosen.neighbours else None
    extra = {"dataset": dataset}
    if near is not None:
        extra["neighbours"] = {"k": chosen.neighbours, "backbone": backbone}  # type: ignore[assignment]
    cache = AnswerCache((cache_dir or default_cache_root()) / ANSWERS_DIR)
    dset, sent = generate_set(
        set_name,
        classnames,
        chosen,
        endpoint,
        cache,
        neighbours=near,
        concurrency=concurrency,
        retry=RetryPolicy(attempts=attempts, backoff_s=backoff),
        console=err_console,
        extra_provenance=extra,
    )
    path = save_description_set(dset, dataset, data_root, overwrite=force)
    total = sum(len(s) for s in dset.classes.values())
    console.print(
        f"Wrote {path}: {total} sentences for {len(classnames)} classes ({sent} requests sent, "
        f"the rest from the cache)."
    )
