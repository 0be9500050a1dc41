"""Decoding benchmark: the split-KV decode engine vs torch SDPA on the same KV cache.

Target (issue "Beyond one core"): ``L=1, H=32, G=8, D=128, S=131072`` float32, decode ≥ 1.5x
faster than SDPA, and scaling with cores. All ratios come from one process, same inputs,
medians after warm-up, engines interleaved so machine noise hits them alike.

    PYTHONPATH=src python benchmarks/bench_decode.py            # the target case + variants
    PYTHONPATH=src python benchmarks/bench_decode.py --quick    # smaller S, for a smoke run

Compared:
- ``sdpa``: ``F.scaled_dot_product_attention(q, k, v, enable_gqa=True)`` (CPU flash kernel;
  one pass per query head, so each key/value head is read H/G times);
- ``decode``: ``attnkit.attention`` (dispatches to the decode engine; one key segment per thread);
- ``decode-1seg``: the same engine with one segment (intra-op threads inside each matmul only);
- ``batched``: every chunk of the cache in one batched matmul (the alternative design);
- ``naive``: materialized ``softmax(QKᵀ)V`` with the K/V heads repeated (what a user writes).

Memory: peak RSS of a fresh subprocess per engine, minus its RSS once inputs exist.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch
import torch.nn.functional as F

import attnkit
from attnkit import _machine
from attnkit.bench.timing import interleaved_medians, median_seconds
from attnkit.engines import decode

MiB = 1 << 20


def make(B, H, G, L, S, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, L, D, generator=g), torch.randn(B, G, S, D, generator=g), torch.randn(B, G, S, D, generator=g))


def batched(q, k, v, chunk=8192):
    """All chunks at once: scores (B, G, n, R·L, C) in one bmm, partials merged in one reduction."""
    B, H, L, D = q.shape
    G, S = k.shape[1], k.shape[2]
    chunk = min(chunk, S)
    n = S // chunk
    qp = (q * D**-0.5).reshape(B, G, 1, (H // G) * L, D)
    s = torch.matmul(qp, k[:, :, : n * chunk].view(B, G, n, chunk, D).transpose(-1, -2))
    m = s.amax(-1, keepdim=True)
    p = torch.exp(s - m)
    l = p.sum(-1)
    o = torch.matmul(p, v[:, :, : n * chunk].view(B, G, n, chunk, D))
    lse = m.squeeze(-1) + l.log()
    w = torch.exp(lse - torch.logsumexp(lse, 2, keepdim=True)) / l
    return (o * w.unsqueeze(-1)).sum(2).reshape(B, H, L, D)


def naive(q, k, v):
    R = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(R, 1), v.repeat_interleave(R, 1)
    return torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, -1) @ v


def engines(kv_lengths=None):
    fns = {
        "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, enable_gqa=True),
        "decode": lambda q, k, v: attnkit.attention(q, k, v, kv_lengths=kv_lengths),
        "decode-1seg": lambda q, k, v: decode.split_kv_forward(q, k, v, _spec(q, k, v, kv_lengths), workers=1)[0],
        "batched": batched,
        "naive": naive,
    }
    if kv_lengths is not None:  # SDPA and the baselines need the ragged cache as a dense mask
        S = None

        def sdpa_masked(q, k, v):
            nonlocal S
            mask = torch.arange(k.shape[2])[None, None, None, :] < kv_lengths[:, None, None, None]
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

        fns = {"sdpa": sdpa_masked, "decode": fns["decode"], "decode-1seg": fns["decode-1seg"]}
    return fns


def _spec(q, k, v, kv_lengths):
    return attnkit.AttentionSpec.build(q, k, v, kv_lengths=kv_lengths)


def timeit(fns, args, reps):
    """Median seconds of each engine on ``args``, interleaved rep by rep (attnkit.bench.timing)."""
    return interleaved_medians({n: (lambda f=f: f(*args)) for n, f in fns.items()}, reps)


def stream_bandwidth(nbytes=1 << 30):
    """GB/s of a one-pass read (sum) over a buffer bigger than the caches: the decode roofline."""
    x = torch.ones(nbytes // 4)
    return nbytes / median_seconds(x.sum, repeats=5, budget_s=float("inf")) / 1e9


def rss_child(engine: str, shape: list[int]) -> None:
    """Run one engine once in this (fresh) process; print peak RSS above the inputs' RSS."""
    q, k, v = make(*shape)
    _machine.reset_peak_rss()  # randn's own peak is not the engine's
    base = _machine.rss_mib()
    engines()[engine](q, k, v)
    print(json.dumps(dict(engine=engine, added_MiB=_machine.peak_rss_mib() - base)))


def rss(engine: str, shape) -> float:
    env = dict(os.environ)
    out = subprocess.run([sys.executable, __file__, "--rss-child", engine, "--shape", *map(str, shape)],
                         capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["added_MiB"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--rss-child", default=None)
    ap.add_argument("--shape", type=int, nargs=6, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.rss_child:
        return rss_child(args.rss_child, args.shape)

    S = 16384 if args.quick else 131072
    target = (1, 32, 8, 1, S, 128)
    results: dict = {"cores": os.cpu_count(), "stream_GBps": stream_bandwidth()}
    print(f"one-pass read bandwidth: {results['stream_GBps']:.1f} GB/s")
    cases = [("target L=1 H=32 G=8 D=128", target, None), ("L=16 (speculative decoding)", (1, 32, 8, 16, S, 128), None),
             ("MQA G=1 B=4", (4, 32, 1, 1, S // 4, 128), None),
             ("ragged B=4 G=8, lengths S/4..S", (4, 32, 8, 1, S // 2, 128), "ragged")]
    threads = torch.get_num_threads()
    for name, shape, kind in cases:
        q, k, v = make(*shape)
        kvl = torch.linspace(shape[4] // 4, shape[4], shape[0]).long() if kind == "ragged" else None
        fns = engines(kvl)
        if shape != target:
            fns.pop("naive", None)  # seconds per call; the target case shows it
        ref = fns["sdpa"](q, k, v)
        for n, f in fns.items():
            assert (f(q, k, v) - ref).abs().max() < 1e-4, n
        t = timeit(fns, (q, k, v), args.reps)
        B, H, G, L, S_, D = shape
        kv_len = kvl.float().mean().item() if kvl is not None else S_
        read = B * G * kv_len * 2 * D * 4  # the visible K and V once, float32
        row = {n: dict(ms=1e3 * s, x_vs_sdpa=t["sdpa"] / s, GBps=read / s / 1e9) for n, s in t.items()}
        results[f"{name} | threads={threads}"] = row
        print(f"\n{name}, threads={threads}, K/V read {read / MiB:.0f} MiB")
        for n, r in row.items():
            print(f"  {n:12s} {r['ms']:9.1f} ms  {r['x_vs_sdpa']:5.2f}x vs sdpa  {r['GBps']:6.1f} GB/s (K/V read once)")

    # Scaling with cores: thread counts interleaved rep by rep, so machine noise hits both alike.
    q, k, v = make(*target)
    fns = engines()
    def on(n, nt):
        def run():
            torch.set_num_threads(nt)
            fns[n](q, k, v)
        return run

    per = interleaved_medians({(n, nt): on(n, nt) for n in ("sdpa", "decode") for nt in (1, threads)}, args.reps)
    torch.set_num_threads(threads)
    results["scaling"] = {f"{n} threads={nt}": 1e3 * s for (n, nt), s in per.items()}
    print("\nscaling (target shape, interleaved): " + ", ".join(f"{key} {ms:.1f} ms" for key, ms in results["scaling"].items()))
    print("\npeak RSS above inputs (fresh subprocess, target shape):")
    results["rss_added_MiB"] = {}
    for n in ("sdpa", "decode", "batched", "naive"):
        results["rss_added_MiB"][n] = rss(n, target)
        print(f"  {n:12s} {results['rss_added_MiB'][n]:8.1f} MiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
