"""Peak memory of the additive (Bahdanau) score: naive broadcast vs tiles, forward and backward.

``vᵀ tanh(W_q s_i + W_k h_j)`` written naively broadcasts to a ``(B, L, S, A)`` tensor, and
autograd keeps it for backward. :func:`attnkit.nn.score_attention.additive_scores` walks
``(Lb, Sb)`` tiles forward and recomputes them backward. Each case runs in a fresh subprocess;
the figure is its peak RSS minus its RSS just before the call (VmHWM, read by ``attnkit._machine``).

    PYTHONPATH=src python benchmarks/bench_additive_memory.py [--B 2 --L 512 --S 512 --A 128]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def child(mode: str, B: int, L: int, S: int, A: int, backward: bool) -> dict:
    import torch

    from attnkit import _machine
    from attnkit.nn.score_attention import additive_scores

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    qp = torch.randn(B, L, A, generator=g, requires_grad=backward)
    kp = torch.randn(B, S, A, generator=g, requires_grad=backward)
    v = torch.randn(A, generator=g, requires_grad=backward)
    before = _machine.rss_mib()
    t0 = time.perf_counter()
    with torch.set_grad_enabled(backward):
        if mode == "naive":
            scores = (torch.tanh(qp[:, :, None, :] + kp[:, None, :, :]) * v).sum(-1)  # (B, L, S, A) materialized
        else:
            scores = additive_scores(qp, kp, v, tile=(L, S) if mode == "one tile" else None)
        loss = torch.softmax(scores, -1).square().sum()
        if backward:
            loss.backward()
    seconds = time.perf_counter() - t0
    peak = _machine.peak_rss_mib()
    return {"mode": mode, "backward": backward, "peak_mb": peak - before, "seconds": seconds,
            "loss": float(loss)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("B", 2), ("L", 512), ("S", 512), ("A", 128)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        mode, backward = json.loads(args.child)
        print(json.dumps(child(mode, args.B, args.L, args.S, args.A, backward)))
        return
    B, L, S, A = args.B, args.L, args.S, args.A
    print(f"B={B} L={L} S={S} A={A}: one (B, L, S, A) float32 tensor = {B * L * S * A * 4 / 2**20:.0f} MB; "
          f"scores (B, L, S) = {B * L * S * 4 / 2**20:.1f} MB\n")
    print("| pass | implementation | peak RSS over baseline | time |")
    print("|---|---|---:|---:|")
    losses = {}
    for backward in (False, True):
        for mode in ("naive", "one tile", "tiled"):
            cmd = [sys.executable, __file__, "--child", json.dumps([mode, backward]),
                   "--B", str(B), "--L", str(L), "--S", str(S), "--A", str(A)]
            r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
            losses[(mode, backward)] = r["loss"]
            label = "forward + backward" if backward else "forward (no grad)"
            print(f"| {label} | {mode} | {r['peak_mb']:.0f} MB | {r['seconds']:.2f} s |")
    same = len({round(x, 4) for x in losses.values()}) == 1
    print(f"\nsame loss in every case: {same}")


if __name__ == "__main__":
    main()
