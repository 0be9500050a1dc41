"""What the exact backward's row statistics cost (issue 21): flash forward+backward with and without them.

The backward recomputes P' = exp(s - lse); since issue 21 it first takes each row's n = Σ P' and
c = Σ P'·dP (one more pass with two tile GEMMs, engines/kernel row_stats) so that P = P'/n sums
to 1 and Δ matches it. This script times a training step's attention (forward + backward) with the
statistics and with the old Δ = rowsum(dO ∘ O), P = P', as a ratio measured in one process after
warm-up (medians). Run it on a quiet machine:

    .venv/bin/python benchmarks/bench_backward_row_stats.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import attnkit
from attnkit.engines import kernel


def _step(q, k, v, dout, **kw):
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    out = attnkit.attention(*leaves, engine="flash", **kw)
    torch.autograd.grad(out, leaves, dout)


def time_step(shape, kw, repeats, exact):
    B, H, L, S, D = shape
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(B, H, L, D, generator=g), torch.randn(B, H, S, D, generator=g), torch.randn(B, H, S, D, generator=g)
    dout = torch.randn(B, H, L, D, generator=g)
    real_stats, real_rows = kernel.row_stats, kernel.exact_rows
    if not exact:
        saved = {}

        def stats(q_, k_, v_, dout_, lse, spec, i0=0, j0=0):
            saved["lse"] = lse
            return None, None

        def rows(dout_, lse, dlse, n, c, ct):  # Δ = rowsum(dO ∘ O) - dlse, as before
            return dout_, saved["delta"]

        kernel.row_stats, kernel.exact_rows = stats, rows
        real_delta = kernel.delta
        # _Attend.backward computes delta only through exact_rows now; recompute it from out here.
        orig_backward = kernel._Attend.backward

        def backward(ctx, dout_, dlse):
            q_, k_, v_, out, lse, *_ = ctx.saved_tensors
            saved["delta"] = real_delta(dout_ if dout_ is not None else torch.zeros_like(out), out, lse, dlse)
            return orig_backward(ctx, dout_, dlse)

        kernel._Attend.backward = staticmethod(backward)
    try:
        for _ in range(2):
            _step(q, k, v, dout, **kw)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            _step(q, k, v, dout, **kw)
            times.append(time.perf_counter() - t0)
    finally:
        kernel.row_stats, kernel.exact_rows = real_stats, real_rows
        if not exact:
            kernel._Attend.backward = staticmethod(orig_backward)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small shape, 3 repeats (a smoke run)")
    args = parser.parse_args()
    shapes = [((2, 8, 512, 512, 64), dict(causal=True))] if args.quick else [
        ((4, 16, 1024, 1024, 64), dict(causal=True)),
        ((4, 16, 2048, 2048, 128), dict(causal=True, window=(256, 0))),
        ((1, 32, 4096, 4096, 128), dict()),
    ]
    repeats = 3 if args.quick else 7
    print(f"{'shape (B, H, L, S, D)':<28}{'options':<32}{'exact s':>9}{'old s':>9}{'ratio':>7}")
    for shape, kw in shapes:
        exact, old = time_step(shape, kw, repeats, True), time_step(shape, kw, repeats, False)
        print(f"{str(shape):<28}{str(kw):<32}{exact:>9.3f}{old:>9.3f}{exact / old:>7.2f}")


if __name__ == "__main__":
    main()
