"""Shared machinery for prompt learners: one text path, one prompted image path, class prompts.

- :mod:`fewshot.prompting.text`: the open_clip text tower run on token embeddings, cut after
  the longest end-of-text token (exact: the tower is causal), with optional deep prompts.
  Every text path in fewshot goes through it: zero-shot classifiers, learned contexts, and
  the prompt learners that build on them.
- :mod:`fewshot.prompting.vision`: the open_clip ViT with prompt tokens before ``ln_pre`` and
  deep prompts replacing the last n tokens before later blocks.
- :mod:`fewshot.prompting.prompts`: class-prompt assembly (``end``/``middle``/``front``),
  context initialisation, :func:`encode_class_prompts`, and per-class-list caches, used by
  CoOp, CoCoOp, KgCoOp, IVLP, MaPLe and PromptSRC. Class prompts that begin alike (class
  tokens at the end, one context for all classes) are encoded from one shared prefix
  (:mod:`fewshot.prompting._shared`); the methods need not know.

Deep prompts (MaPLe, IVLP, PromptSRC): a deep prompt of block j *replaces* the hidden
states of the prompt positions before transformer block j (1 <= j < J); block 0 sees the
layer-0 prompts, which are part of the input. A method module keeps only its own math;
new prompt machinery goes here.
"""

from fewshot.prompting.prompts import (
    POSITIONS,
    ClassPrompts,
    PerClassList,
    PromptBuilder,
    assemble_prompts,
    build_class_prompts,
    encode_class_prompts,
    initial_context,
    normal_prompts,
    prompt_depth,
    shared_prefix_plan,
)
from fewshot.prompting.text import (
    TextTower,
    UnsupportedTextTowerError,
    content_token_lengths,
    cut_length,
    embed_tokens,
    encode_text_embeddings,
    encode_tokens,
    eot_index,
    text_tower,
)
from fewshot.prompting.vision import (
    UnsupportedVisionTowerError,
    VisionTower,
    encode_images_prompted,
    vision_tower,
)

__all__ = [
    "POSITIONS",
    "ClassPrompts",
    "PerClassList",
    "PromptBuilder",
    "TextTower",
    "UnsupportedTextTowerError",
    "UnsupportedVisionTowerError",
    "VisionTower",
    "assemble_prompts",
    "build_class_prompts",
    "content_token_lengths",
    "cut_length",
    "embed_tokens",
    "encode_class_prompts",
    "encode_images_prompted",
    "encode_text_embeddings",
    "encode_tokens",
    "eot_index",
    "initial_context",
    "normal_prompts",
    "prompt_depth",
    "shared_prefix_plan",
    "text_tower",
    "vision_tower",
]
