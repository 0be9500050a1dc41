"""Decode steps of bf16/fp16 caches: attnkit's hot path vs SDPA in the same dtype.

A decode step's products are float32 (a growing cache is a new brgemm shape every step, so it stays
off the half-precision tile products). Until 2026-12-07 the op widened q, K and V whole with
``Tensor.to`` on every call; now the kernel widens each key tile as its pass reads it. Run this on
two trees in turn for the A/B (``PYTHONPATH=/tmp/old/src`` with ``ATTNKIT_CACHE=/tmp/old_cache``).

    PYTHONPATH=src python benchmarks/bench_half_decode.py [--rounds 31]

Each row: loops of steps, attnkit and SDPA alternating which goes first, medians of ``--rounds``
loops; ratio = SDPA time / attnkit time. "growing" steps over ``K[:, :, :S]`` of a preallocated
cache with S = 500, 501, ... (a model's cache); the others repeat one cache length.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import attnkit
from attnkit.bench.machine import header
from bench_short_ranges import loop_medians  # the same alternating loops (this directory is on sys.path)

SHAPES = [  # (B, H, G, S, D)
    (1, 8, 8, 512, 64), (1, 32, 8, 4096, 128), (4, 32, 8, 2048, 128),
]


def row(dtype: torch.dtype, B: int, H: int, G: int, S: int, D: int, rounds: int, growing: bool) -> str:
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, 1, D, generator=g).to(dtype)
    s_max = S + 256
    k, v = (torch.randn(B, G, s_max, D, generator=g).to(dtype) for _ in range(2))
    length = (lambda i: S + i % 256) if growing else (lambda i: S)  # noqa: E731
    fns = {
        "attnkit": lambda i: attnkit.attention(q, k[:, :, :length(i)], v[:, :, :length(i)]),
        "sdpa": lambda i: F.scaled_dot_product_attention(q, k[:, :, :length(i)], v[:, :, :length(i)],
                                                         enable_gqa=G != H),
    }
    with torch.inference_mode():
        t = loop_medians(fns, max(4, int(4e6 / (B * H * S * D))), rounds)
    name = f"{str(dtype).removeprefix('torch.')} B={B} H={H} G={G} S={S}{'+' if growing else ''} D={D}"
    return f"| {name} | {t['attnkit'] * 1e6:.0f} | {t['sdpa'] * 1e6:.0f} | {t['sdpa'] / t['attnkit']:.2f}× |"


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=31, help="timed loops per implementation (default 31)")
    args = p.parse_args()
    print(header(torch.get_num_threads()))
    print(f"- attnkit from {attnkit.__file__}\n")
    print("| decode step (S+: growing cache) | attnkit µs | SDPA µs | attnkit vs SDPA |\n|---|---:|---:|---:|")
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for shape in SHAPES:
            print(row(dtype, *shape, rounds=args.rounds, growing=False), flush=True)
        print(row(dtype, *SHAPES[0], rounds=args.rounds, growing=True), flush=True)
