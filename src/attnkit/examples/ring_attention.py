"""Ring attention across processes: check it, then run a long sequence and report per-rank memory.

Launch with torchrun (one process per rank; gloo on CPU, NCCL when CUDA is available)::

    torchrun --nproc-per-node 4 -m attnkit.examples.ring_attention --seq-len 65536

or without torchrun for a one-rank run (``python -m attnkit.examples.ring_attention``).

1. Self-check: every rank builds the same small random sequence, runs
   [`attnkit.distributed.ring_attention`][attnkit.engines.ring.ring_attention] forward and backward on its zig-zag shard, and
   rank 0 compares the gathered output and gradients with ``attnkit.attention`` on the whole
   sequence (fails with exit code 1 beyond ``--tol``).
2. Long run: each rank creates only its own ``seq_len / P`` shard (nothing of size
   ``seq_len`` is ever allocated), runs forward and backward, and reports time, bytes sent and
   peak RSS. At a fixed total length the per-rank peak falls about as ``1/P``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as dist

import attnkit
from attnkit import _machine
from attnkit.distributed import gather_sequence, ring_attention, shard_sequence

MiB = 1 << 20


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m attnkit.examples.ring_attention", description=__doc__.split("\n")[0])
    p.add_argument("--seq-len", type=int, default=65536, help="total sequence length of the long run (default 65536)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=2, help="query heads H")
    p.add_argument("--kv-heads", type=int, default=None, help="key/value heads G (default H)")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--no-causal", action="store_true", help="full (bidirectional) attention instead of causal")
    p.add_argument("--layout", choices=("zigzag", "contiguous"), default="zigzag")
    p.add_argument("--no-backward", action="store_true", help="forward only")
    p.add_argument("--check-len", type=int, default=512, help="sequence length of the self-check (0 skips it)")
    p.add_argument("--tol", type=float, default=1e-5, help="max |ring - attnkit.attention| allowed in the self-check")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds any rank may wait for another")
    p.add_argument("--threads", type=int, default=None, help="torch threads per rank (default: cores / local ranks)")
    p.add_argument("--json", default=None, help="rank 0 writes the per-rank figures here")
    return p


def _init(timeout: float) -> torch.device:
    """Join the process group set up by torchrun, or make a one-rank group."""
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if "RANK" in os.environ:  # torchrun (or any env:// launcher)
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                                timeout=timedelta(seconds=timeout))
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def self_check(args: argparse.Namespace, device: torch.device) -> float:
    """Ring vs ``attnkit.attention`` on a small sequence; returns the max error (on every rank)."""
    rank, P = dist.get_rank(), dist.get_world_size()
    n = max(2 * P, args.check_len - args.check_len % (2 * P))
    G = args.kv_heads or args.heads
    g = torch.Generator().manual_seed(0)  # the same full tensors on every rank
    full = [torch.randn(args.batch, h, n, args.head_dim, generator=g) for h in (args.heads, G, G)]
    dout = torch.randn(args.batch, args.heads, n, args.head_dim, generator=g)
    q, k, v = (shard_sequence(t, rank, P, layout=args.layout).to(device).requires_grad_() for t in full)
    out = ring_attention(q, k, v, causal=not args.no_causal, layout=args.layout)
    out.backward(shard_sequence(dout, rank, P, layout=args.layout).to(device))
    ring = [gather_sequence(t.detach(), layout=args.layout).cpu() for t in (out, q.grad, k.grad, v.grad)]
    worst = torch.zeros(1)
    if rank == 0:
        qf, kf, vf = (t.clone().requires_grad_() for t in full)
        ref = attnkit.attention(qf, kf, vf, causal=not args.no_causal)  # the fastest exact engine (flash once it lands)
        ref.backward(dout)
        errs = [float((a - b.detach()).abs().max()) for a, b in zip(ring, (ref, qf.grad, kf.grad, vf.grad))]
        worst[0] = max(errs)
        print(f"self-check (seq {n}, {P} ranks, {args.layout}, causal={not args.no_causal}): max |ring - attnkit.attention| "
              f"out {errs[0]:.2e}, dq {errs[1]:.2e}, dk {errs[2]:.2e}, dv {errs[3]:.2e} (tol {args.tol:g})", flush=True)
    dist.broadcast(worst, 0)  # every rank learns the verdict, so none waits for a rank that quit
    return float(worst[0])


def long_run(args: argparse.Namespace, device: torch.device) -> dict:
    """One forward (+ backward) over ``seq_len`` tokens; this rank's figures."""
    rank, P = dist.get_rank(), dist.get_world_size()
    if args.seq_len % (2 * P):
        raise SystemExit(f"--seq-len must be divisible by {2 * P} (2 zig-zag chunks per rank), got {args.seq_len}")
    c, G = args.seq_len // P, args.kv_heads or args.heads
    _machine.reset_peak_rss()  # the self-check's peak is not part of the long run's
    base = _machine.rss_mib()
    g = torch.Generator().manual_seed(1000 + rank)  # only this rank's shard ever exists
    q = torch.randn(args.batch, args.heads, c, args.head_dim, generator=g).to(device)
    k = torch.randn(args.batch, G, c, args.head_dim, generator=g).to(device)
    v = torch.randn(args.batch, G, c, args.head_dim, generator=g).to(device)
    backward = not args.no_backward
    for t in (q, k, v):
        t.requires_grad_(backward)
    dist.barrier()
    t0 = time.perf_counter()
    out = ring_attention(q, k, v, causal=not args.no_causal, layout=args.layout)
    t1 = time.perf_counter()
    if backward:
        out.backward(torch.ones_like(out))
    t2 = time.perf_counter()
    kv_bytes = (k.numel() + v.numel()) * k.element_size()
    sent = (P - 1) * kv_bytes + (((P - 1) * kv_bytes + P * kv_bytes * 4 // k.element_size()) if backward and P > 1 else 0)
    return dict(rank=rank, world=P, shard=c, forward_s=t1 - t0, backward_s=t2 - t1 if backward else None,
                sent_MiB=sent / MiB, rss_base_MiB=base, rss_peak_MiB=_machine.peak_rss_mib(),
                rss_added_MiB=_machine.peak_rss_mib() - base)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    device = _init(args.timeout)
    local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // local))
    rank, P = dist.get_rank(), dist.get_world_size()
    try:
        if args.check_len:
            err = self_check(args, device)
            if err > args.tol:
                if rank == 0:
                    print(f"self-check FAILED: {err:.2e} > {args.tol:g}", file=sys.stderr)
                return 1
        stats = long_run(args, device)
        rows: list = [None] * P
        dist.all_gather_object(rows, stats)
        if rank == 0:
            print(f"\nseq {args.seq_len}, {P} ranks, B={args.batch} H={args.heads} G={args.kv_heads or args.heads} "
                  f"D={args.head_dim}, causal={not args.no_causal}, {args.layout}, threads/rank {torch.get_num_threads()}")
            print("rank  shard   fwd s   bwd s   sent MiB   peak RSS MiB   peak - start MiB")
            for r in rows:
                bwd = f"{r['backward_s']:7.2f}" if r["backward_s"] is not None else "      -"
                print(f"{r['rank']:4d} {r['shard']:6d} {r['forward_s']:7.2f} {bwd} {r['sent_MiB']:10.1f} "
                      f"{r['rss_peak_MiB']:14.1f} {r['rss_added_MiB']:18.1f}")
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(dict(args=vars(args), ranks=rows), f, indent=1)
        return 0
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
