"""Decode steps of bf16/fp16 caches: attnkit's hot path vs SDPA in the same dtype.

A decode step's products are float32 (a growing cache is a new brgemm shape every step, so it stays
off the half-precision tile products). Until 2026-12-07 the op widened q, K and V whole with
``Tensor.to`` on every call; then each key tile as the pass read it; now a block of a few rows
converts K and V in registers (``csrc/few_rows.h``; bf16 scores with AVX512-BF16 dot products). Run this on
two trees in turn for the A/B (``PYTHONPATH=/tmp/old/src`` with ``ATTNKIT_CACHE=/tmp/old_cache``).

    PYTHONPATH=src python benchmarks/bench_half_decode.py [--rounds 31]
    PYTHONPATH=src python benchmarks/bench_half_decode.py --products   # bf16: MKL's bf16 GEMM vs float32 products

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


# (B, H, G, L, S, D): decode steps of MHA and GQA groups of 4 and 8, a step of 8 queries, an L=16 call
PRODUCT_SHAPES = [(1, 8, 8, 1, 512, 64), (1, 8, 8, 1, 2048, 64), (1, 32, 8, 1, 512, 128), (1, 32, 8, 1, 4096, 128),
                  (1, 64, 8, 1, 1024, 128), (1, 8, 8, 8, 512, 64), (1, 12, 12, 16, 16, 32), (8, 12, 12, 16, 16, 64)]


def products_row(B: int, H: int, G: int, L: int, S: int, D: int, rounds: int) -> str:
    """One bf16 call through the hot path's op with both product modes (its last argument: 1 = MKL's
    bf16 GEMM, 0 = float32 products, widened in the pass or in registers), and SDPA bf16."""
    from attnkit.engines import hot

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, n, rows, D, generator=g).to(torch.bfloat16) for n, rows in ((H, L), (G, S), (G, S)))
    with torch.inference_mode():
        args = hot.plan(q, k, v)
        assert type(args) is tuple, args
        fns = {"half": lambda i: hot.run(args[:-1] + (1,)), "widened": lambda i: hot.run(args[:-1] + (0,)),
               "sdpa": lambda i: F.scaled_dot_product_attention(q, k, v, enable_gqa=G != H)}
        t = loop_medians(fns, max(4, int(4e6 / (B * H * L * S * D))), rounds)
    us = {name: t[name] * 1e6 for name in t}
    return (f"| B={B} H={H} G={G} L={L} S={S} D={D} | {us['half']:.1f} | {us['widened']:.1f} | {us['sdpa']:.1f} | "
            f"{t['half'] / t['widened']:.2f}× |")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=31, help="timed loops per implementation (default 31)")
    p.add_argument("--products", action="store_true",
                   help="instead: bf16 calls with MKL's bf16 GEMM vs float32 products, in one process")
    args = p.parse_args()
    print(header(torch.get_num_threads()))
    print(f"- attnkit from {attnkit.__file__}\n")
    if args.products:
        print("| bf16 call | MKL bf16 GEMM µs | float32 products µs | SDPA bf16 µs | float32 products faster by |\n"
              "|---|---:|---:|---:|---:|")
        for shape in PRODUCT_SHAPES:
            print(products_row(*shape, rounds=args.rounds), flush=True)
        raise SystemExit(0)
    print("| decode step (S+: growing cache) | attnkit µs | SDPA µs | attnkit vs SDPA |\n|---|---:|---:|---:|")
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for shape in SHAPES:
            print(row(dtype, *shape, rounds=args.rounds, growing=False), flush=True)
        print(row(dtype, *SHAPES[0], rounds=args.rounds, growing=True), flush=True)
