"""The split-KV decode engine (Flash-Decoding on CPU threads): few queries, a long KV cache.

Decoding asks ``L ≤ 16`` new queries to read a cache of ``S`` keys (up to 10⁶). One pass per
query head (what SDPA does) re-reads every key/value head ``H/G`` times and leaves cores
idle when ``B·H`` is small. This engine instead

1. packs the ``R = H/G`` query heads of each group next to each other, so every key/value
   row is read once per step for all heads that share it (GQA/MQA);
2. splits the keys into one contiguous segment per intra-op thread; each thread walks its
   segment in cache-sized tiles with the online softmax and returns a partial
   ``(out, lse, m, l)``;
3. merges the partials exactly (`attnkit.engines.kernel.merge`, by row maxima and sums: like
   [`attnkit.merge_partials`][attnkit.softmax.merge_partials] by lse, DESIGN.md, but exact at any offset).

Every segment is one call of the tiled kernel (`attnkit.engines.kernel`), so masks
(bottom-right causal, windows, ragged ``kv_lengths``, dense boolean masks sliced per tile),
ALiBi, softcap, float masks/biases, ``score_mod`` and dropout (the counter hash: the same
entries as every engine) follow the spec exactly. Tiles hidden by the structured masks are
skipped; keys past the longest ``kv_lengths`` are never read. Gradients for ``q, k, v``, the
float mask / bias and ``lse`` use the kernel's FlashAttention backward, recomputing from the
saved row maxima and sums. Which tile path runs and why: `describe`.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor

from ..spec import AttentionOutput, AttentionSpec
from . import kernel

NAME = "decode"
MAX_QUERIES = 16
# Below this many keys per segment, a thread costs more than it saves (measured, RESULTS.md).
MIN_SEGMENT = 8192

_pool: ThreadPoolExecutor | None = None


def unsupported(spec: AttentionSpec) -> str | None:
    """Why this engine cannot compute ``spec`` (``None`` if it can)."""
    if spec.L > MAX_QUERIES:
        return f"not a decoding shape (L={spec.L} > {MAX_QUERIES} queries)"
    if spec.normalizer != "softmax":
        return f"normalizer {spec.normalizer!r} is not a softmax (partials merge only for softmax)"
    if spec.return_weights:
        return "return_weights asks for the (B, H, L, S) map, which the decode engine never builds"
    if spec.alibi_slopes is not None and spec.alibi_slopes.requires_grad:
        return "alibi_slopes requires grad; the decode engine differentiates q, k, v, float masks and biases"
    return None


def describe(spec: AttentionSpec) -> str:
    """Which tile path the engine runs for ``spec`` and why, e.g. ``"tile path: torch (fused: not built)"``."""
    return kernel.describe(spec)


def _segments(spec: AttentionSpec, workers: int) -> list[tuple[int, int]]:
    """Contiguous key ranges, one per worker, over the keys any row can see."""
    S = spec.kv_bounds[1] if spec.kv_lengths is not None else spec.S  # keys past every length are padding
    n = max(1, min(workers, S // MIN_SEGMENT))
    step = math.ceil(S / n) if S else 0
    return [(j, min(j + step, S)) for j in range(0, S, step)] if S else []


def _merge_all(parts: list[kernel.Partial]) -> kernel.Partial:
    """Merge partials pairwise (a balanced tree: log₂ n rounding steps)."""
    while len(parts) > 1:
        merged = [kernel.merge(parts[i], parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
        parts = merged + ([parts[-1]] if len(parts) % 2 else [])
    return parts[0]


def split_kv_forward(q: Tensor, k: Tensor, v: Tensor, spec: AttentionSpec, workers: int | None = None) -> kernel.Partial:
    """``(out, lse, m, l)`` in the compute dtype: key segments on threads, merged exactly.

    ``workers`` defaults to ``torch.get_num_threads()``; torch kernels release the GIL, so the
    segments run in parallel.
    """
    global _pool
    workers = torch.get_num_threads() if workers is None else workers
    if spec.B * spec.G >= workers and workers > 1 and k.is_contiguous() and v.is_contiguous():
        # Enough (batch, kv-head) groups to fill every thread inside one kernel call, which reads K/V
        # in place; a key segment k[:, :, j0:j1] of several groups is strided and would be copied.
        workers = 1
    segs = _segments(spec, workers)
    if not segs:
        return kernel.forward(q, k[:, :, :0], v[:, :, :0], spec)

    def part(seg: tuple[int, int]) -> kernel.Partial:
        j0, j1 = seg
        return kernel.forward(q, k[:, :, j0:j1], v[:, :, j0:j1], spec, 0, j0)

    if len(segs) == 1:
        return part(segs[0])
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="attnkit-decode")
    return _merge_all(list(_pool.map(part, segs)))


def run(q: Tensor, k: Tensor, v: Tensor, spec: AttentionSpec) -> AttentionOutput:
    """Attention for ``q (B, H, L≤16, D)``, ``k (B, G, S, D)``, ``v (B, G, S, E)``; see [`attnkit.attention`][attnkit.functional.attention]."""
    # Split-KV forward; the backward is one kernel call over all keys, as for the flash engine.
    out, lse = kernel.attend(q, k, v, spec, split_kv_forward)
    return AttentionOutput(out, lse if spec.return_lse else None, None)
