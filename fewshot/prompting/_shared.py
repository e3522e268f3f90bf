"""Shared-prefix text encoding: class prompts that begin alike are encoded from one prefix.

With the class tokens at the ``end``, every class prompt of one context begins with the same
P positions: SOS, the M context vectors and the fixed words of the prompt prefix that follow
them (MaPLe's "of a"). The text tower is causal (position t attends to positions <= t), so
these positions have the same hidden states in every block of every class prompt. They are
computed once per distinct prefix (once for a shared context, once per image for CoCoOp's
per-image contexts); the class-specific positions P..EOT of every class (the *suffix*) run
against the prefix's keys and values at every block, causally among themselves. The
end-of-text token always lies in the suffix, so pooling is unchanged. Deep text prompts
replace positions 1..n before blocks 1..J-1; those lie in the prefix, so they replace
prefix states only.

Suffixes run in a few groups of similar length (:func:`length_groups`): a group runs up to
its own longest EOT, so a batch of class names of 3 to 13 tokens does not pay 13 positions
for every class.

Every pass through the blocks (the prefix, each suffix group) costs a fixed number of
operations besides its arithmetic: about 620 dispatched operations per suffix group for a
12-block tower, forward and backward (counted with a ``TorchDispatchMode``), against about
410 for the whole full path. :func:`pass_cost` states that overhead in positions of
compute, per device; it decides how many groups pay, and whether sharing pays at all
(:meth:`SharedPrefixPlan.pays`). On a CPU it is small (measured: sharing wins from C = 10
on ViT-B-16). On an accelerator it is an estimate, not a measurement: ~4 ms of kernel
launches per pass, the compute of ~4,000 positions of ViT-B-16's text tower at 250 TFLOP/s;
``benchmarks/gpu_check.py`` measures both paths to calibrate it.

A block is recomputed from its own modules (``ln_1``, the attention's ``in_proj`` and
``out_proj``, ``ls_1``, ``ln_2``, ``mlp``, ``ls_2``), exactly as open_clip's
``ResidualAttentionBlock.forward`` combines them. Only that class is recognised (not its
subclasses, which may override ``forward``, nor cross-attention blocks or attention with
extra key/value biases): :func:`blocks_supported` is False for anything else, and callers
then take the full path.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.prompting._blocks import replace_after_sos

if TYPE_CHECKING:  # open_clip is imported when a block is first checked (startup stays fast)
    from open_clip.transformer import ResidualAttentionBlock

__all__ = ["SharedPrefixPlan", "blocks_supported", "encode_shared_prefix", "length_groups", "pass_cost"]

MAX_GROUPS = 4  # suffix length groups at most
PASS_COST = {"cpu": 16}  # the fixed cost of one pass through the blocks, in positions
ACCELERATOR_PASS_COST = 4096  # CUDA, MPS, ...: an estimate (see the module docstring)

KeyValue = tuple[torch.Tensor, torch.Tensor]  # a block's prefix keys and values (G, H, P, d)


@dataclass(frozen=True)
class SharedPrefixPlan:
    """How the C class prompts of one :class:`~fewshot.prompting.ClassPrompts` split.

    ``length`` = P shared positions; ``groups``: (class indices, suffix length) per group;
    ``pooled`` (C,): each class's EOT position minus P; ``order`` (C,): where each class's
    row sits in the groups' concatenation; ``full``: the positions the full path runs per
    context (C x the longest EOT + 1); ``overhead``: :func:`pass_cost` on the prompts' device.
    """

    length: int
    groups: tuple[tuple[torch.Tensor, int], ...]
    pooled: torch.Tensor
    order: torch.Tensor
    full: int = 0
    overhead: int = 0

    @classmethod
    def build(cls, length: int, eot: Sequence[int], device: torch.device) -> SharedPrefixPlan:
        """The plan for EOT positions ``eot`` (all >= ``length``), grouped by suffix length."""
        lengths = [e + 1 - length for e in eot]
        overhead = pass_cost(device)
        groups = length_groups(lengths, group_cost=overhead)
        rows = [row for group in groups for row in group]
        order = torch.empty(len(rows), dtype=torch.long)
        order[torch.tensor(rows)] = torch.arange(len(rows))
        return cls(
            length,
            tuple((torch.tensor(g, device=device), max(lengths[r] for r in g)) for g in groups),
            torch.tensor(lengths, device=device) - 1,
            order.to(device),
            len(eot) * (max(eot) + 1),
            overhead,
        )

    def pays(self, contexts: int) -> bool:
        """Whether sharing runs fewer positions than the full path for ``contexts`` distinct
        contexts (G), counting each pass beyond the one both make at ``overhead``."""
        suffixes = sum(len(rows) * size for rows, size in self.groups)
        return contexts * (self.length + suffixes) + self.overhead * len(self.groups) < contexts * self.full


def pass_cost(device: torch.device) -> int:
    """The fixed cost of one pass through the blocks on ``device``, in positions of compute."""
    return PASS_COST.get(device.type, ACCELERATOR_PASS_COST)


def length_groups(
    lengths: Sequence[int], max_groups: int = MAX_GROUPS, group_cost: int = PASS_COST["cpu"]
) -> list[list[int]]:
    """Row indices split into at most ``max_groups`` groups of consecutive lengths, chosen to
    minimise the positions run (rows x the group's longest length) + ``group_cost`` per group."""
    counts = Counter(lengths)
    distinct = sorted(counts)
    best = _best_bounds(distinct, [counts[u] for u in distinct], max_groups, group_cost)
    groups: list[list[int]] = [[] for _ in best]
    for row, length in enumerate(lengths):
        groups[next(i for i, top in enumerate(best) if length <= top)].append(row)
    return [g for g in groups if g]


def _best_bounds(distinct: list[int], counts: list[int], max_groups: int, group_cost: int) -> list[int]:
    """The longest length of each group (ascending), by dynamic programming over ``distinct``."""
    n = len(distinct)
    total = [0]
    for c in counts:
        total.append(total[-1] + c)
    inf = float("inf")
    # cost[k][i]: covering distinct[:i] with k groups; cut[k][i]: where the last group starts
    cost = [[inf] * (n + 1) for _ in range(max_groups + 1)]
    cut = [[0] * (n + 1) for _ in range(max_groups + 1)]
    cost[0][0] = 0.0
    for k in range(1, max_groups + 1):
        for i in range(1, n + 1):
            for j in range(i):
                value = cost[k - 1][j] + (total[i] - total[j]) * distinct[i - 1]
                if value < cost[k][i]:
                    cost[k][i], cut[k][i] = value, j
    groups = min(range(1, max_groups + 1), key=lambda k: cost[k][n] + group_cost * k)
    tops, i = [], n
    for k in range(groups, 0, -1):
        tops.append(distinct[i - 1])
        i = cut[k][i]
    return tops[::-1]


def blocks_supported(transformer: nn.Module) -> bool:
    """True when every block is open_clip's plain ``ResidualAttentionBlock`` (self-attention
    through ``nn.MultiheadAttention`` with packed q/k/v weights, no extra biases, no
    dropout in training), which :func:`encode_shared_prefix` recomputes exactly."""
    blocks = getattr(transformer, "resblocks", None)
    return isinstance(blocks, nn.ModuleList) and len(blocks) > 0 and all(_plain(b) for b in blocks)


def _plain(block: nn.Module) -> bool:
    from open_clip.transformer import ResidualAttentionBlock

    if type(block) is not ResidualAttentionBlock or hasattr(block, "ln_1_kv"):
        return False
    attn = getattr(block, "attn", None)
    return (
        type(attn) is nn.MultiheadAttention
        and attn._qkv_same_embed_dim
        and attn.in_proj_weight is not None
        and attn.bias_k is None
        and attn.bias_v is None
        and not attn.add_zero_attn
        and (attn.dropout == 0.0 or not attn.training)
    )


def encode_shared_prefix(
    transformer: nn.Module,
    positional: torch.Tensor,
    prefix: torch.Tensor,
    suffix: torch.Tensor,
    plan: SharedPrefixPlan,
    deep_prompts: Sequence[torch.Tensor] = (),
) -> torch.Tensor:
    """Hidden states (G, C, W) after the last block at every class prompt's EOT.

    ``prefix`` (G, P, W): the G distinct prefixes' embeddings; ``suffix`` (C, >= S, W): the
    class-specific embeddings from position P on; ``positional`` (L, W): the positional
    embedding, in the dtype to compute in. ``deep_prompts[j - 1]`` (n, W), 1 + n <= P,
    replaces positions 1..n before block j.
    """
    blocks = list(transformer.resblocks)  # type: ignore[arg-type]
    dtype, length = positional.dtype, plan.length
    states = _prefix_pass(blocks, prefix.to(dtype) + positional[:length], deep_prompts)
    pooled = []
    for rows, size in plan.groups:
        x = suffix[rows, :size].to(dtype) + positional[length : length + size]
        x = x.unsqueeze(0).expand(prefix.shape[0], -1, -1, -1)  # (G, R, S, W)
        hidden = _above_diagonal(size, x.device)
        for block, kv in zip(blocks, states, strict=True):
            x = _suffix_block(block, x, kv, hidden)
        pooled.append(x[:, torch.arange(len(rows), device=x.device), plan.pooled[rows]])
    return torch.cat(pooled, dim=1)[:, plan.order]


def _prefix_pass(
    blocks: list[ResidualAttentionBlock], x: torch.Tensor, deep: Sequence[torch.Tensor]
) -> list[KeyValue]:
    """Run the prefixes (G, P, W) through the blocks; every block's keys and values."""
    states = []
    for j, block in enumerate(blocks):
        if 1 <= j <= len(deep):
            x = replace_after_sos(x, deep[j - 1])
        q, k, v = _qkv(block, x)
        states.append((k, v))
        if j < len(blocks) - 1:  # the last block's prefix output is never read
            x = _finish(block, x, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    return states


def _suffix_block(
    block: ResidualAttentionBlock, x: torch.Tensor, kv: KeyValue, hidden: torch.Tensor
) -> torch.Tensor:
    """One block on suffixes (G, R, S, W) that attend to their group's prefix keys/values
    (G, H, P, d), all of them, and to their own positions but those ``hidden`` (S, S)."""
    q, k, v = _qkv(block, x)  # (G, R, H, S, d)
    g, r, h, s, d = q.shape
    key, value = kv
    p = key.shape[-2]
    q = q * d**-0.5
    # Against the prefix: the rows of all R suffixes against the group's P keys, one matmul.
    rows = q.transpose(1, 2).reshape(g, h, r * s, d)
    to_prefix = (rows @ key.transpose(-1, -2)).view(g, h, r, s, p).transpose(1, 2)
    own = (q @ k.transpose(-1, -2)).masked_fill(hidden, float("-inf"))
    weights = torch.cat([to_prefix, own], dim=-1).softmax(dim=-1, dtype=torch.float32).to(v.dtype)
    on_prefix, on_own = weights[..., :p], weights[..., p:]
    from_prefix = on_prefix.transpose(1, 2).reshape(g, h, r * s, p) @ value
    out = from_prefix.view(g, h, r, s, d).transpose(1, 2) + on_own @ v
    return _finish(block, x, out)


def _qkv(block: ResidualAttentionBlock, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries, keys and values (..., H, L, d) of ``x`` (..., L, W) through ``ln_1``."""
    attn: nn.MultiheadAttention = block.attn
    packed = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)  # (..., L, 3W)
    q, k, v = packed.view(*packed.shape[:-1], 3, attn.num_heads, -1).movedim(-3, 0).unbind(0)
    return q.transpose(-3, -2), k.transpose(-3, -2), v.transpose(-3, -2)


def _finish(block: ResidualAttentionBlock, x: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
    """The rest of the block: the attention's output projection (of heads (..., H, L, d)),
    both residual branches and the MLP, as open_clip's ``ResidualAttentionBlock.forward``."""
    attn: nn.MultiheadAttention = block.attn
    out = F.linear(heads.transpose(-3, -2).flatten(-2), attn.out_proj.weight, attn.out_proj.bias)
    x = x + block.ls_1(out)
    result: torch.Tensor = x + block.ls_2(block.mlp(block.ln_2(x)))
    return result


def _above_diagonal(size: int, device: torch.device) -> torch.Tensor:
    return torch.ones(size, size, dtype=torch.bool, device=device).triu(1)
