"""Counter-based attention dropout: a pure function of ``(seed, b, h, i, j)``.

Every engine drops the same entries for the same seed whatever its tiling, so engines can
be compared exactly, and backward regenerates the mask instead of storing it.

The hash is a 32-bit integer mixer (the "lowbias32" constants of Wellons' hash-prospector)
applied to a per-row key combined with a per-column key, computed in int64 with 32-bit
masking so no multiplication overflows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .spec import draw_seed  # owned by the spec builder (it draws the seed); re-exported here

if TYPE_CHECKING:
    from .spec import BlockIndex

__all__ = ["keep_mask", "draw_seed"]

_M32 = 0xFFFFFFFF


def _mix32(x: Tensor) -> Tensor:
    # Constants < 2**31 keep every product below 2**63 (no int64 overflow).
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & _M32
    return x ^ (x >> 15)


def _row_keys(seed: int, idx: BlockIndex, num_heads: int) -> Tensor:
    """One 32-bit key per (b, h, i): ``(Bb, Hh, Li, 1)``."""
    base = _mix32(torch.tensor(seed & _M32, dtype=torch.int64, device=idx.i.device) ^ ((seed >> 32) & _M32))
    bh = _mix32(base ^ ((idx.b * num_heads + idx.h) & _M32))
    return _mix32(bh ^ (idx.i & _M32))


def keep_mask(seed: int, p: float, idx: BlockIndex, num_heads: int) -> Tensor:
    """Boolean keep-mask ``(Bb, Hh, Li, Sj)`` for dropout probability ``p`` on the block ``idx``.

    ``num_heads`` is the total query head count ``H`` (so ``(b, h)`` pairs never collide).
    Each entry is kept with probability ``1 - p``, independently of how the scores are tiled.
    """
    threshold = int(round(p * 2**32))
    col = _mix32((idx.j * 0x2545F491) & _M32)  # distinct, well-spread key per key position
    return _mix32(_row_keys(seed, idx, num_heads) ^ col) >= threshold
