"""Numeric facts every layer shares, each written once: the ``-inf`` constant and the finiteness test.

This module sits at the bottom of the layer table (it imports nothing from attnkit), so the
spec, the softmax family and the engines all take these from here.

Example:
    >>> import torch
    >>> from attnkit._numerics import NEG_INF, all_finite
    >>> all_finite(torch.ones(3)), all_finite(torch.ones(2), torch.tensor([NEG_INF]))
    (True, False)
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["NEG_INF", "all_finite"]

NEG_INF = float("-inf")
"""The score of a hidden key and the ``lse`` of a row with no visible key."""


def _storage_order(t: Tensor) -> Tensor:
    """``t`` with its dims permuted into storage order when that makes it contiguous (a model's
    transposed q/k/v), so a whole-tensor reduction reads it in place: ``aminmax`` copies a
    non-contiguous input first."""
    if t.is_contiguous():
        return t
    p = t.permute(sorted(range(t.dim()), key=lambda d: -t.stride(d)))
    return p if p.is_contiguous() else t


def all_finite(*ts: Tensor) -> bool:
    """Whether every tensor holds only finite values (no NaN, no ±inf); empty tensors are finite.

    One ``aminmax`` pass per tensor (NaN propagates into the min and max), no full-size mask and
    no false alarm from an overflowing sum (a float16 sum of ordinary values can overflow).
    """
    for t in ts:
        if t.numel() == 0:
            continue
        lo, hi = torch.aminmax(_storage_order(t.detach()))
        if not bool(torch.isfinite(lo) & torch.isfinite(hi)):
            return False
    return True
