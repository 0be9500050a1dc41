"""The tile rule of both kernel backends, written once.

Every tile size in attnkit is a number in this file. The PyTorch tile path (`tiles.tile_sizes`)
reads it at run time; the fused C++ kernel gets it at build time as ``-D`` defines (`defines`,
which `build` passes to the compiler and hashes into the cache key), so ``csrc/`` holds no tile
size of its own and a changed rule rebuilds the kernel.

The rule: a query tile holds at most `QUERY_TILE` rows and a key tile `KEY_TILE` keys; a narrow
causal/window band of ``span`` keys per row shrinks the query tile to about ``span / BAND_RATIO``
rows (a tile of ``t`` rows computes ``span + t`` keys per row, so the waste stays ≤ 1.25×). Each
backend applies it at its own grain:

- **fused** (per head, one tile per thread, sized for the cache): forward query tiles of
  `QUERY_TILE` / `QUERY_TILE_MID` rows for ``Lb ≥ 768 / ≥ 192`` (SDPA's rule), `QUERY_TILE_SHORT`
  for shorter ranges of at least `QUERY_TILE_SMALL` rows (a whole head of L = 128 is one tile, not
  SDPA's four: one pass over its keys; halved while a thread would get no tile), and
  `QUERY_TILE_SMALL` rows for the shortest (decode), which pack the heads of a GQA group into one
  tile; keys `KEY_TILE`; backward
  `BWD_QUERY_TILE` × `BWD_KEY_TILE` (parallel over key tiles, so a single head feeds every core).
  No score product is narrower than `MIN_PRODUCT_COLS` keys or `MIN_PRODUCT_ROWS` rows unless the
  whole range is: MKL computes narrower products with other kernels that sum in another order,
  and the backward must rebuild the forward's exact weights (``csrc/params.h``).
- **torch** (batched over all ``B·H`` heads, each tile a handful of PyTorch ops): about
  `TORCH_TILE_ELEMS` scores per tile over all heads, so the Python cost per tile is amortized —
  the key tile grows past `KEY_TILE` when ``B·H`` is small, the query tile shrinks (never below
  `TORCH_MIN_QUERY_TILE`) when it is large. A band caps the key tile at the band width rounded up
  to a power of two (at least `TORCH_MIN_BAND_KEY_TILE`) and the query tile at the key tile: the
  torch path walks a fixed grid and skips tiles outside the band, where the fused kernel trims
  each query tile's key range to the band exactly.

Tiling never changes which keys a row sees, only the order of rounding.
"""

from __future__ import annotations

__all__ = ["QUERY_TILE", "QUERY_TILE_MID", "QUERY_TILE_SHORT", "QUERY_TILE_SMALL", "QUERY_TILE_LONG_RANGE", "QUERY_TILE_MID_RANGE",
           "KEY_TILE", "BAND_RATIO", "BWD_QUERY_TILE", "BWD_KEY_TILE", "MIN_PRODUCT_COLS", "MIN_PRODUCT_ROWS",
           "WIDEN_TILE_FLOATS", "FEW_ROWS", "FEW_ROWS_HALF", "TORCH_TILE_ELEMS", "TORCH_MIN_QUERY_TILE", "TORCH_MIN_BAND_KEY_TILE", "band_span", "defines"]

QUERY_TILE = 256  # most query rows in a tile (both backends)
QUERY_TILE_MID, QUERY_TILE_SMALL = 64, 32  # fused forward, ranges shorter than:
QUERY_TILE_LONG_RANGE, QUERY_TILE_MID_RANGE = 768, 192  # ... these many rows
# Fused forward, ranges of QUERY_TILE_SMALL to QUERY_TILE_MID_RANGE rows: one block per head up to
# 128 rows. Measured (RESULTS.md, "One block per short head"): calls at L = 64 / 128 12-15% faster
# than with SDPA's 32-row blocks (1.07-1.14x SDPA, was 0.95-1.02x).
QUERY_TILE_SHORT = 128
KEY_TILE = 512  # keys per tile (fused forward; the torch path's least)
BAND_RATIO = 4  # a query tile of a band of `span` keys per row: at most span / BAND_RATIO rows
BWD_QUERY_TILE, BWD_KEY_TILE = 64, 128  # fused backward
MIN_PRODUCT_COLS, MIN_PRODUCT_ROWS = 16, 4  # narrowest score product (fused; see the docstring)
# Fused forward, half inputs multiplied in float32 (decode steps): K and V widened this many float32
# at a time (32 KiB: the chunk is in L1 when its product reads it).
WIDEN_TILE_FLOATS = 8192
# Fused forward of the hot path: a query block of at most this many rows (a decode step: one row per
# query head of a GQA group) multiplies K and V as stored, in registers (csrc/few_rows.h), not
# through a BLAS call per tile and head. Measured on an Intel Xeon (RESULTS.md, "Decode rows in
# registers"): float32 blocks of 5-8 rows lose to MKL's register-blocked GEMM (R=8 decode 2.1x vs
# 2.25x SDPA), half inputs win up to 8 (no widened chunk in scratch).
FEW_ROWS, FEW_ROWS_HALF = 4, 8
# 2²⁰ scores (4 MiB of float32): the measured block of the flash engine (a quiet-window sweep of
# 512K…8M elements was flat, RESULTS.md); B·H = 8 keeps QUERY_TILE × KEY_TILE tiles. 4× smaller
# tiles cost Python time when B·H is large (B·H = 256, L = 512 forward: 3.1 s vs 1.2 s).
TORCH_TILE_ELEMS = 1 << 20
TORCH_MIN_QUERY_TILE = 16
TORCH_MIN_BAND_KEY_TILE = 64


def band_span(window: tuple[int | None, int | None] | None, causal: str | bool | None) -> int | None:
    """Keys per row of a causal/window band (``None``: not a band), as the C++ kernel computes it."""
    if window is None or window[0] is None or not (causal or window[1] is not None):
        return None
    return window[0] + (0 if causal else window[1]) + 1


def defines() -> list[str]:
    """The rule as compiler flags for ``csrc/params.h`` (``-DATTNKIT_<NAME>=<value>``)."""
    names = ("QUERY_TILE", "QUERY_TILE_MID", "QUERY_TILE_SHORT", "QUERY_TILE_SMALL", "QUERY_TILE_LONG_RANGE", "QUERY_TILE_MID_RANGE",
             "KEY_TILE", "BAND_RATIO", "BWD_QUERY_TILE", "BWD_KEY_TILE", "MIN_PRODUCT_COLS", "MIN_PRODUCT_ROWS",
             "WIDEN_TILE_FLOATS", "FEW_ROWS", "FEW_ROWS_HALF")
    return [f"-DATTNKIT_{name}={globals()[name]}" for name in names]
