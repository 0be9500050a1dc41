"""Mask specifications: structured masks as arguments, dense masks as tensors, and adapters.

Conventions (the same everywhere in attnkit): boolean masks mean True = may attend; float masks are added to the
scores. Structured masks (``causal``, ``window``, ``kv_lengths``, ``q_lengths``) stay
arguments so an engine can classify whole blocks as hidden / fully visible / partial.

Alignment. Query ``i`` sits at key position ``p = i + offset``: ``offset = S - L``
("bottom_right", the default, as in FlashAttention >= 2.1 and KV-cache decoding; per batch
``kv_lengths[b] - q_lengths[b]`` when lengths are given) or ``0`` ("top_left", torch SDPA's
``is_causal``). For L=3, S=5 (``x`` = visible)::

    causal="bottom_right"      causal="top_left"
        j: 0 1 2 3 4               j: 0 1 2 3 4
    i=0    x x x . .           i=0    x . . . .
    i=1    x x x x .           i=1    x x . . .
    i=2    x x x x x           i=2    x x x . .

``window=(left, right)``: key ``j`` is visible iff ``p - left <= j <= p + right`` (``None`` =
unbounded side); it uses the same alignment as ``causal`` (bottom-right when not causal).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from .errors import AttnkitError

from .spec import normalize_causal, normalize_window  # owned by the spec builder; re-exported here

if TYPE_CHECKING:
    from .spec import AttentionSpec, BlockIndex

__all__ = [
    "normalize_causal",
    "normalize_window",
    "visible",
    "block_class",
    "from_key_padding_mask",
    "from_additive_mask",
    "lengths_from_padding_mask",
]

BlockClass = Literal["empty", "full", "partial"]


def visible(spec: AttentionSpec, idx: BlockIndex) -> Tensor | None:
    """Boolean visibility of a block from the structured masks and the dense boolean mask.

    Returns a tensor broadcastable to ``(Bb, Hh, Li, Sj)`` (True = may attend), or ``None``
    when nothing hides anything. Float masks and score mods are not applied here.
    """
    vis: Tensor | None = None

    def both(a: Tensor | None, b: Tensor) -> Tensor:
        return b if a is None else a & b

    i, j = idx.i, idx.j
    if spec.causal is not None or spec.window is not None:
        off = spec.align_offset()
        p = i + (off[idx.b.view(-1)] if isinstance(off, Tensor) else off)
        if spec.causal is not None:
            vis = both(vis, j <= p)
        if spec.window is not None:
            left, right = spec.window
            if left is not None:
                vis = both(vis, j >= p - left)
            if right is not None and spec.causal is None:
                vis = both(vis, j <= p + right)
    if spec.kv_lengths is not None:
        vis = both(vis, j < spec.kv_lengths[idx.b.view(-1)].view(-1, 1, 1, 1))
    if spec.q_lengths is not None:
        vis = both(vis, i < spec.q_lengths[idx.b.view(-1)].view(-1, 1, 1, 1))
    if spec.mask is not None:
        vis = both(vis, idx.gather(spec.mask))
    return vis



def block_class(spec: AttentionSpec, i0: int, i1: int, j0: int, j1: int) -> BlockClass:
    """Classify queries ``[i0, i1)`` × keys ``[j0, j1)`` by the structured masks alone.

    ``"empty"``: hidden for every batch and head — skip it. ``"full"``: visible everywhere
    and no dense boolean mask — skip the mask work. ``"partial"``: apply [`visible`][attnkit.masks.visible].
    Uses only Python ints from the spec (no device sync).
    """
    if i1 <= i0 or j1 <= j0:
        return "empty"
    full = spec.mask is None
    omin, omax = spec.offset_bounds if spec.causal != "top_left" else (0, 0)
    if spec.causal is not None or spec.window is not None:
        lo_p, hi_p = i0 + omin, i1 - 1 + omax  # range of aligned positions in the block
        if spec.causal is not None:
            if j0 > hi_p:
                return "empty"
            full &= j1 - 1 <= lo_p
        if spec.window is not None:
            left, right = spec.window
            if left is not None:
                if j1 - 1 < lo_p - left:
                    return "empty"
                full &= j0 >= hi_p - left
            if right is not None and spec.causal is None:
                if j0 > hi_p + right:
                    return "empty"
                full &= j1 - 1 <= lo_p + right
    if spec.kv_lengths is not None:
        if j0 >= spec.kv_bounds[1]:
            return "empty"
        full &= j1 <= spec.kv_bounds[0]
    if spec.q_lengths is not None:
        if i0 >= spec.q_bounds[1]:
            return "empty"
        full &= i1 <= spec.q_bounds[0]
    return "full" if full else "partial"


# --------------------------------------------------------------------------- adapters


def from_key_padding_mask(key_padding_mask: Tensor) -> Tensor:
    """torch's ``key_padding_mask`` ``(B, S)`` (True = ignore) → attnkit mask ``(B, 1, 1, S)`` (True = attend).

    Example:
        >>> import torch, attnkit
        >>> attnkit.masks.from_key_padding_mask(torch.tensor([[False, True]])).shape
        torch.Size([1, 1, 1, 2])
    """
    if key_padding_mask.dim() != 2:
        raise AttnkitError.build("key_padding_mask of shape (B, S)", f"{tuple(key_padding_mask.shape)}", "squeeze it")
    if key_padding_mask.dtype == torch.bool:
        return (~key_padding_mask)[:, None, None, :]
    # torch also accepts a float padding mask that is added to the scores.
    return key_padding_mask[:, None, None, :]


def from_additive_mask(mask: Tensor) -> Tensor:
    """A Hugging Face style additive mask (0 = attend, large negative = masked) → boolean, True = attend.

    Any value below half the dtype's minimum counts as masked (HF uses ``finfo.min``).
    """
    if mask.dtype == torch.bool:
        return mask
    return mask > torch.finfo(mask.dtype).min / 2


def lengths_from_padding_mask(attend: Tensor) -> Tensor | None:
    """``(B, S)`` boolean (True = real token) → ``(B,)`` lengths if it is right-padding, else ``None``."""
    lengths = attend.sum(-1)
    expected = torch.arange(attend.shape[-1], device=attend.device) < lengths[:, None]
    return lengths if bool((expected == attend).all()) else None
