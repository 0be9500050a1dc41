"""Block geometry of the flash tiling, shared by the flash engine and by dispatch.

The flash engine cuts an ``(L, S)`` problem into query blocks × key blocks of these sizes;
dispatch asks :func:`single_block` whether the whole problem is one such block (then tiling
or splitting the keys gains nothing and the reference engine computes it in one step). Both
read the rule here, so dispatch never reaches into an engine's internals.
"""

from __future__ import annotations

from ..spec import AttentionSpec

__all__ = ["TARGET_ROWS", "BLOCK_K", "block_sizes", "single_block"]

# Rows of scores per block across all heads (B·H·Lb) and keys per block: sized so a block of
# fp32 scores (~4 MB) stays near the cache while Python overhead per block stays small.
TARGET_ROWS = 2048
BLOCK_K = 512


def block_sizes(spec: AttentionSpec) -> tuple[int, int]:
    """``(query rows, keys)`` of one flash block for ``spec``."""
    bq = max(16, min(1024, TARGET_ROWS // max(1, spec.B * spec.H)))
    bk = BLOCK_K
    if spec.window is not None and None not in (spec.window[0], 0 if spec.causal else spec.window[1]):
        # A narrow band: blocks about as wide as the band keep the computed area near O(L·w).
        span = spec.window[0] + (0 if spec.causal else spec.window[1]) + 1
        bk = max(64, min(bk, 1 << (span - 1).bit_length()))
        bq = min(bq, bk)
    return bq, bk


def single_block(spec: AttentionSpec) -> bool:
    """True when the whole ``(L, S)`` problem fits in one query block × one key block."""
    bq, bk = block_sizes(spec)
    return spec.L <= bq and spec.S <= bk
