"""Inference calls of short ranges (the shapes of an encoder's layers): attnkit's hot path vs SDPA.

The fused forward takes a range of 32-191 queries as one block per head (`blocks.QUERY_TILE_SHORT`,
since 2026-12-07) instead of SDPA's 32-row blocks. This script is the A/B behind that rule: run it
on two trees in turn (the tree is whatever ``attnkit`` imports, e.g. ``PYTHONPATH=/tmp/old/src``
with ``ATTNKIT_CACHE=/tmp/old_cache`` for the code before) and compare the ratios.

    PYTHONPATH=src python benchmarks/bench_short_ranges.py [--rounds 41] [--dtype bfloat16]

Each row: loops of calls (about 2·10⁷ multiply-adds per loop), attnkit and SDPA alternating which
goes first, medians of ``--rounds`` loops; ratio = SDPA time / attnkit time. The loop is written here,
not taken from ``attnkit.bench.timing``: the script must run against older trees too (the A/B).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn.functional as F

import attnkit
from attnkit.bench.machine import header

SHAPES = [  # (B, H, L, S, D)
    (8, 12, 128, 128, 64), (32, 12, 64, 64, 32), (16, 12, 128, 128, 32), (1, 12, 16, 16, 32), (1, 8, 1, 512, 64),
    (4, 12, 512, 512, 64), (1, 8, 2048, 2048, 64),
]


def loop_medians(fns: dict[str, Callable[[int], object]], calls: int, rounds: int) -> dict[str, float]:
    """Seconds per call of each ``fns[name](i)`` (i = 0, 1, ... within a loop): medians of ``rounds``
    loops of ``calls`` calls, the implementations alternating which goes first; two warm-up calls."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for fn in fns.values():
        fn(0), fn(1)
    for r in range(rounds):
        for name in (names if r % 2 else names[::-1]):
            t0 = time.perf_counter()
            for i in range(calls):
                fns[name](i)
            samples[name].append((time.perf_counter() - t0) / calls)
    return {name: statistics.median(s) for name, s in samples.items()}


def row(B: int, H: int, L: int, S: int, D: int, rounds: int, dtype: torch.dtype = torch.float32) -> str:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, n, D, generator=g).to(dtype) for n in (L, S, S))
    fns = {"attnkit": lambda i: attnkit.attention(q, k, v), "sdpa": lambda i: F.scaled_dot_product_attention(q, k, v)}
    with torch.inference_mode():
        t = loop_medians(fns, max(1, int(2e7 / (B * H * L * S * D))), rounds)
    a, s = t["attnkit"], t["sdpa"]
    return f"| B={B} H={H} L={L} S={S} D={D} | {a * 1e6:.0f} | {s * 1e6:.0f} | {s / a:.2f}× |"


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=41, help="timed loops per implementation (default 41)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="input dtype")
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    print(header(torch.get_num_threads()))
    print(f"- attnkit from {attnkit.__file__}\n")
    print(f"| {args.dtype} inference call | attnkit µs | SDPA µs | attnkit vs SDPA |\n|---|---:|---:|---:|")
    for shape in SHAPES:
        print(row(*shape, rounds=args.rounds, dtype=dtype), flush=True)
