"""Ring attention benchmark: per-rank peak memory vs P at fixed length, and compute vs communication per step.

    PYTHONPATH=src python benchmarks/bench_ring.py                 # S = 65536, P = 1, 2, 4
    PYTHONPATH=src python benchmarks/bench_ring.py --seq-len 8192  # quick

1. For each ``P``: ``torchrun --nproc-per-node P -m attnkit.examples.ring_attention`` (gloo on
   localhost). Each rank is its own process, so its peak RSS is the per-rank memory; the
   example also self-checks against ``attnkit.attention`` before the long run.
2. One ring step, measured on this machine in the same shapes: the local block compute
   (``kernel.forward`` on one shard × one shard, full) and the K/V exchange (``batch_isend_irecv``
   between 2 gloo processes, the ring's own code path). These feed the paper estimate in
   RESULTS.md (where the ring stops paying off on a real cluster).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from attnkit.bench.timing import median_seconds
from attnkit.engines.kernel import forward as kernel_forward
from attnkit.spec import AttentionSpec

MiB = 1 << 20


def run_example(P: int, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "ring.json")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(P),
               "-m", "attnkit.examples.ring_attention", "--seq-len", str(args.seq_len), "--heads", str(args.heads), "--kv-heads", str(args.kv_heads or args.heads),
               "--head-dim", str(args.head_dim), "--json", out, "--check-len", "512", "--threads", str(args.threads)]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        wall = time.perf_counter() - t
        print(proc.stdout, end="")
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"P={P} failed")
        with open(out) as f:
            res = json.load(f)
    res["wall_s"] = wall
    return res


def block_step_seconds(c: int, H: int, D: int, reps: int = 3) -> float:
    """Median time of one full c × c block (one ring step of full attention) on one thread."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, H, c, D, generator=g) for _ in range(3))
    spec = AttentionSpec.build(q, k, v)
    return median_seconds(lambda: kernel_forward(q, k, v, spec), repeats=reps, budget_s=float("inf"))


def _exchange(rank: int, store: str, nbytes: int, reps: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2, timeout=timedelta(seconds=120))
    send = torch.ones(nbytes // 4)
    recv = torch.empty_like(send)
    ts = []
    for i in range(reps + 1):
        dist.barrier()
        t = time.perf_counter()
        ops = [dist.P2POp(dist.isend, send, group_peer=1 - rank, tag=17), dist.P2POp(dist.irecv, recv, group_peer=1 - rank, tag=17)]
        for w in dist.batch_isend_irecv(ops):
            w.wait()
        if i:
            ts.append(time.perf_counter() - t)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(statistics.median(ts), f)
    dist.destroy_process_group()


def exchange_seconds(nbytes: int, reps: int = 5) -> float:
    """Median time for two gloo ranks on localhost to swap ``nbytes`` each (one ring step's K/V)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "t.json")
        mp.spawn(_exchange, args=(os.path.join(tmp, "store"), nbytes, reps, out), nprocs=2)
        with open(out) as f:
            return json.load(f)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq-len", type=int, default=65536)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--kv-heads", type=int, default=None, help="G (default H)")
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--no-step", action="store_true", help="skip the one-step compute/comm measurement")
    ap.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    # One thread per rank: on a shared 2-core machine OpenMP teams of 2 stall on a busy core
    # (measured 10-30x slowdowns), and it keeps P=1 and P=4 comparable per core.
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    N, H, D = args.seq_len, args.heads, args.head_dim
    G = args.kv_heads or H
    results: dict = {"seq_len": N, "H": H, "G": G, "D": D, "runs": {}}
    for P in args.worlds:
        results["runs"][P] = run_example(P, args)

    print(f"\nper-rank peak memory, S={N}, H={H}, G={G}, D={D}, causal, zig-zag, forward + backward")
    print("P   shard   peak RSS MiB (max over ranks)   above start MiB   x of P=1   ideal 1/P   fwd s   bwd s")
    first = None
    for P, res in results["runs"].items():
        ranks = res["ranks"]
        peak = max(r["rss_peak_MiB"] for r in ranks)
        added = max(r["rss_added_MiB"] for r in ranks)
        first = first or added
        fwd = max(r["forward_s"] for r in ranks)
        bwd = max(r["backward_s"] or 0 for r in ranks)
        print(f"{P:<3} {ranks[0]['shard']:6d} {peak:30.1f} {added:17.1f} {added / first:10.2f} {1 / P:11.2f} {fwd:7.1f} {bwd:7.1f}")

    if args.no_step:
        return _dump(results, args.json)
    # One ring step at P = 4 (shard c = N/4): compute of a full c × c block vs exchanging the K/V shard.
    c = N // 4
    t_comp = block_step_seconds(c, H, D)  # MHA block; the K/V message below is for these H heads too
    kv_bytes = 2 * H * c * D * 4
    t_comm = exchange_seconds(kv_bytes)
    flops = 4 * H * c * c * D
    results["step"] = dict(shard=c, compute_s=t_comp, GFLOPs=flops / t_comp / 1e9, kv_MiB=kv_bytes / MiB,
                           exchange_s=t_comm, GBps=kv_bytes / t_comm / 1e9)
    s = results["step"]
    print(f"\none ring step at shard {c}: compute {t_comp:.3f} s ({s['GFLOPs']:.1f} GFLOP/s, 1 thread, full block), "
          f"K/V exchange {kv_bytes / MiB:.1f} MiB in {t_comm:.4f} s ({s['GBps']:.2f} GB/s gloo localhost); "
          f"compute / comm = {t_comp / t_comm:.0f}")
    _dump(results, args.json)


def _dump(results: dict, path: str | None) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
