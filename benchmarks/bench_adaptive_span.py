"""Adaptive attention span: speed as the learned spans shrink (forward + backward, gradients to z).

For each span ``z`` (every head the same, ramp ``R``), one causal self-attention of ``B×H×L×D`` with the
soft span mask, three ways, same inputs, same process, after warm-up, median of ``--repeats``:

- ``attnkit span``: :func:`attnkit.nn.adaptive_span.adaptive_span_attention` — the mask as a float
  bias with ``window=(ceil(z + R) - 1, 0)``, queries in chunks that each see only their keys: the
  work and the bias are ``O(L·(z + R))``;
- ``dense bias``: the same mask as one ``(1, H, L, L)`` bias to :func:`attnkit.attention` with
  ``causal=True`` and no window: exact, but every key block is computed whatever ``z`` is;
- ``naive``: the paper's definition in plain torch (softmax, × m(x), renormalize), materialized.

and, as the 1.0 line, attnkit's plain causal attention without any span (``full causal``).

    PYTHONPATH=src python benchmarks/bench_adaptive_span.py --md benchmarks/runs/<date>-adaptive-span.md   # L=4096, H=8, D=64
    PYTHONPATH=src python benchmarks/bench_adaptive_span.py --quick                           # seconds: a smoke run

Run it on a quiet machine (timings under load are noise); ``--threads`` sets torch's threads.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import attnkit
from attnkit.nn.adaptive_span import _log_mask, adaptive_span_attention, span_mask


def dense_bias(q, k, v, z, ramp):
    L, S = q.shape[2], k.shape[2]
    x = (torch.arange(L)[:, None] + S - L - torch.arange(S)[None, :]).float()
    return attnkit.attention(q, k, v, causal=True, bias=_log_mask(x, z, ramp).unsqueeze(0))


def naive(q, k, v, z, ramp):
    L, S, D = q.shape[2], k.shape[2], q.shape[3]
    x = (torch.arange(L)[:, None] + S - L - torch.arange(S)[None, :]).float()
    a = torch.softmax((q @ k.transpose(-1, -2) / D**0.5).masked_fill(x < 0, float("-inf")), -1) * span_mask(x, z, ramp)
    return (a / a.sum(-1, keepdim=True)) @ v


def full_causal(q, k, v, z, ramp):
    return attnkit.attention(q, k, v, causal=True)


def span(q, k, v, z, ramp):
    return adaptive_span_attention(q, k, v, z, ramp)


def timed(fn, q, k, v, z, ramp, repeats: int) -> float:
    """Median seconds of forward + backward (gradients to q, k, v and z)."""
    times = []
    for i in range(repeats + 1):  # the first run warms up (allocations, the kernel's first call)
        for t in (q, k, v, z):
            t.grad = None
        t0 = time.perf_counter()
        fn(q, k, v, z, ramp).sum().backward()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--L", type=int, default=4096)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--ramp", type=float, default=32.0)
    p.add_argument("--spans", default="4064,2016,992,480,224,96,32", help="z values, comma-separated")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--naive-max-L", type=int, default=4096, help="skip the materialized naive version above this L")
    p.add_argument("--quick", action="store_true", help="L=512, spans 480,96,32, 2 repeats (a smoke run)")
    p.add_argument("--md", default=None, help="also write the markdown table here")
    args = p.parse_args()
    if args.quick:
        args.L, args.spans, args.repeats = 512, "480,96,32", 2
    if args.threads:
        torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    B, H, L, D = 1, args.heads, args.L, args.dim
    q, k, v = (torch.randn(B, H, L, D, generator=g).requires_grad_(True) for _ in range(3))
    spans = [float(s) for s in args.spans.split(",")]
    z0 = torch.zeros(H)
    base = timed(full_causal, q, k, v, z0.clone().requires_grad_(True), args.ramp, args.repeats)
    c = min(L, 256)  # what one chunk's call runs on (explain computes nothing)
    how = attnkit.explain(q[:, :, :c], k[:, :, :c], v[:, :, :c], causal=True, window=(64, 0),
                          bias=torch.zeros(1, H, c, c, requires_grad=True))
    print(f"B={B} H={H} L={L} D={D} ramp={args.ramp:g}, threads={torch.get_num_threads()}, span chunks: {how.engine}, {how.detail}")
    lines = [f"full causal attention (no span), fwd+bwd: {base * 1e3:.1f} ms", "",
             "| span z | window z+R | attnkit span ms | × full causal | dense bias ms | naive ms | span vs dense | span vs naive |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in spans:
        z = torch.full((H,), s, requires_grad=True)
        t_span = timed(span, q, k, v, z, args.ramp, args.repeats)
        t_dense = timed(dense_bias, q, k, v, z, args.ramp, args.repeats)
        t_naive = timed(naive, q, k, v, z, args.ramp, args.repeats) if L <= args.naive_max_L else float("nan")
        lines.append(f"| {s:g} | {s + args.ramp:g} | {t_span * 1e3:.1f} | {base / t_span:.2f}× | {t_dense * 1e3:.1f} | "
                     f"{t_naive * 1e3:.1f} | {t_dense / t_span:.2f}× | {t_naive / t_span:.2f}× |")
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if args.md:
        with open(args.md, "w") as fh:
            fh.write(table + "\n")


if __name__ == "__main__":
    main()
