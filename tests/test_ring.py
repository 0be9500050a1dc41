"""Ring attention over 2 and 4 gloo processes on localhost equals the reference; failures raise, never hang.

Ranks are forked from a forkserver that imported torch once (a fresh interpreter per rank
costs seconds on 2 cores); each rank runs one thread (4 ranks oversubscribe 2 cores). Every
process group has a timeout of a few seconds and the parent kills stragglers at a deadline.
"""

from __future__ import annotations

import os
import pickle
import signal
import tempfile
import time
import traceback
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import attnkit
from attnkit.engines import kernel
from attnkit.engines.kernel import tiles as torch_tiles
from attnkit.engines.ring import chunk_ids, ring_attention, shard_sequence, unshard_sequence

from conftest import err, qkv

EPS64 = torch.finfo(torch.float64).eps
DEADLINE = 90.0  # seconds the parent waits for one group of ranks before killing it

_ctx = None


def _context():
    global _ctx
    if _ctx is None:
        _ctx = mp.get_context("forkserver")
        _ctx.set_forkserver_preload(["torch", "torch.distributed", "attnkit", "attnkit.engines.ring"])
    return _ctx


def _entry(fn, rank: int, world: int, tmp: str, timeout_s: float, args: tuple) -> None:
    torch.set_num_threads(1)
    res: dict = {"rank": rank}
    try:
        dist.init_process_group(
            "gloo", init_method=f"file://{tmp}/store", rank=rank, world_size=world, timeout=timedelta(seconds=timeout_s)
        )
        res.update(ok=True, value=fn(rank, world, *args))
    except BaseException as e:  # reported to the parent, which asserts
        res.update(ok=False, type=type(e).__name__, msg=str(e), tb=traceback.format_exc())
    with open(f"{tmp}/part_{rank}", "wb") as f:
        pickle.dump(res, f)
    os.replace(f"{tmp}/part_{rank}", f"{tmp}/result_{rank}")
    os._exit(0)  # no destroy_process_group: a dead peer could make it block


def run_ranks(fn, world: int, *args, timeout_s: float = 30.0, wait_for: list[int] | None = None) -> list[dict | None]:
    """Run ``fn(rank, world, *args)`` on ``world`` gloo ranks; results per rank (None if it reported nothing).

    Waits for the ranks in ``wait_for`` (default all), then kills the others.
    """
    ctx = _context()
    with tempfile.TemporaryDirectory() as tmp:
        procs = [ctx.Process(target=_entry, args=(fn, r, world, tmp, timeout_s, args)) for r in range(world)]
        for p in procs:
            p.start()
        end = time.monotonic() + DEADLINE
        waited = range(world) if wait_for is None else wait_for
        for r in waited:
            procs[r].join(max(0.0, end - time.monotonic()))
        hung = [r for r in waited if procs[r].is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        assert not hung, f"ranks {hung} still running after {DEADLINE} s"
        results = []
        for r in range(world):
            path = f"{tmp}/result_{r}"
            results.append(pickle.load(open(path, "rb")) if os.path.exists(path) else None)
    return results


def values(results: list[dict | None]) -> list:
    for r in results:
        assert r is not None and r["ok"], r and r.get("tb")
    return [r["value"] for r in results]  # type: ignore[index]


# --------------------------------------------------------------------------- correctness


CONFIGS = [  # (dtype, layout, causal, small tiles)
    (dtype, layout, causal, dtype == torch.float64)
    for dtype in (torch.float64, torch.float32)
    for layout in ("zigzag", "contiguous")
    for causal in (False, True)
] + [(torch.bfloat16, "zigzag", True, False)]  # half-precision messages, float32 accumulators


def _against_reference(rank: int, world: int) -> list[dict]:
    """Every config: this rank's output and gradients minus the same rows of the reference."""
    B, H, G, D, E, c = 2, 4, 2, 11, 7, 5
    N = 2 * world * c  # divisible by 2P (zigzag) and P (contiguous)
    report = []
    default_tiles = torch_tiles._TILE_ELEMS, torch_tiles._MAX_TILE_Q, torch_tiles._MIN_TILE_Q, torch_tiles._MIN_TILE_K
    for n, (dtype, layout, causal, small) in enumerate(CONFIGS):
        torch_tiles._TILE_ELEMS, torch_tiles._MAX_TILE_Q, torch_tiles._MIN_TILE_Q, torch_tiles._MIN_TILE_K = (
            (64, 4, 1, 1) if small else default_tiles
        )
        q, k, v = qkv(B, H, G, N, N, D, E, dtype=torch.float64, seed=n)
        dout = torch.randn(B, H, N, E, dtype=torch.float64, generator=torch.Generator().manual_seed(100 + n))
        refs = {}
        for rdt in {torch.float64, dtype}:
            qf, kf, vf = (t.to(rdt).clone().requires_grad_() for t in (q, k, v))
            res = attnkit.attention(qf, kf, vf, causal=causal, engine="reference", return_lse=True)
            res.out.backward(dout.to(rdt))
            refs[rdt] = [t.detach() for t in (res.out, res.lse, qf.grad, kf.grad, vf.grad)]
        ql, kl, vl = (shard_sequence(t.to(dtype), rank, world, layout=layout).requires_grad_() for t in (q, k, v))
        out, lse = ring_attention(ql, kl, vl, causal=causal, layout=layout, return_lse=True)
        out.backward(shard_sequence(dout.to(dtype), rank, world, layout=layout))
        ours = [t.detach() for t in (out, lse, ql.grad, kl.grad, vl.grad)]

        def mine(t, layout=layout):
            return shard_sequence(t, rank, world, layout=layout)  # this rank's rows of a full tensor

        report.append(dict(
            config=(str(dtype), layout, causal, small),
            vs64=[err(a, mine(b)) for a, b in zip(ours, refs[torch.float64])],
            base=[err(mine(a), mine(b)) for a, b in zip(refs[dtype], refs[torch.float64])],
            vs_same=[err(a, mine(b)) for a, b in zip(ours, refs[dtype])],
        ))
    # Cross attention (non-causal, contiguous): query and key shards of different lengths.
    q, k, v = qkv(1, 2, 1, 3 * world, 5 * world, 6, dtype=torch.float64, seed=77)
    ref = attnkit.attention(q, k, v, engine="reference")
    out = ring_attention(*(shard_sequence(t, rank, world, layout="contiguous") for t in (q, k, v)), layout="contiguous")
    ref_rows = shard_sequence(ref, rank, world, layout="contiguous")
    report.append(dict(config="cross", vs64=[err(out, ref_rows)], base=[0.0], vs_same=[0.0]))
    return report


@pytest.mark.parametrize("world", [2, 4])
def test_ring_equals_reference(world):
    reports = values(run_ranks(_against_reference, world))
    for rank, report in enumerate(reports):
        for row in report:
            name = f"rank {rank} {row['config']} [out, lse, dq, dk, dv]"
            if row["config"] == "cross" or "float64" in row["config"][0]:
                # Same float64 arithmetic in another order: rounding ~ N·eps on O(1) values.
                assert max(row["vs64"]) <= 64 * 2 * world * 5 * EPS64, (name, row["vs64"])
            else:
                # FlashAttention's rule vs the same-dtype reference; for float32 also the 1e-5 target.
                for ours, base in zip(row["vs64"], row["base"]):
                    assert ours <= 2 * base + 1e-6, (name, row)
                if "float32" in row["config"][0]:
                    assert max(row["vs_same"]) <= 1e-5, (name, row["vs_same"])


def _gradcheck_single_rank_groups(rank: int, world: int) -> bool:
    """gradcheck the ring's autograd.Function on a one-rank group (every rank its own group)."""
    groups = [dist.new_group([r]) for r in range(world)]
    torch_tiles._TILE_ELEMS, torch_tiles._MAX_TILE_Q, torch_tiles._MIN_TILE_Q, torch_tiles._MIN_TILE_K = 8, 2, 1, 1
    q, k, v = qkv(1, 2, 1, 4, 4, 3, dtype=torch.float64, seed=rank, requires_grad=True)

    def f(q, k, v):
        out, lse = ring_attention(q, k, v, causal=True, group=groups[rank], return_lse=True)
        return out, lse

    return torch.autograd.gradcheck(f, (q, k, v))


def test_ring_function_gradcheck():
    assert all(values(run_ranks(_gradcheck_single_rank_groups, 2)))


def _dropout_and_bias(rank: int, world: int) -> list[float]:
    """Dropout (the counter hash) and a bias that requires grad: output and every gradient vs the reference."""
    torch_tiles._TILE_ELEMS, torch_tiles._MAX_TILE_Q, torch_tiles._MIN_TILE_Q, torch_tiles._MIN_TILE_K = 64, 4, 1, 1
    B, H, G, D, N = 2, 4, 2, 5, 4 * world
    q, k, v = qkv(B, H, G, N, N, D, dtype=torch.float64, seed=3)
    bias = torch.randn(1, H, N, N, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    dout = torch.randn(B, H, N, D, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    kw = dict(dropout_p=0.3, seed=21)
    leaves = [t.clone().requires_grad_() for t in (q, k, v, bias)]
    ref = attnkit.attention(*leaves[:3], bias=leaves[3], causal=True, engine="reference", **kw)
    refs = [ref.detach(), *torch.autograd.grad(ref, leaves, dout)]
    ql, kl, vl = (shard_sequence(t, rank, world).requires_grad_() for t in (q, k, v))
    b = bias.clone().requires_grad_()
    out = ring_attention(ql, kl, vl, bias=b, causal=True, **kw)
    ours = [out.detach(), *torch.autograd.grad(out, (ql, kl, vl, b), shard_sequence(dout, rank, world))]
    mine = [shard_sequence(t, rank, world) for t in refs[:4]] + [refs[4]]  # bias.grad: the whole gradient
    return [err(a, r) for a, r in zip(ours, mine)]


def test_ring_dropout_and_bias_gradient_equal_reference():
    for rank, errs in enumerate(values(run_ranks(_dropout_and_bias, 2))):
        assert max(errs) <= 64 * 2 * 2 * 5 * EPS64, (rank, errs)  # [out, dq, dk, dv, dbias]


def test_sharding_round_trip_and_balance():
    x = torch.arange(24).view(1, 1, 24, 1)
    for layout in ("zigzag", "contiguous"):
        shards = [shard_sequence(x, r, 3, layout=layout) for r in range(3)]
        assert torch.equal(unshard_sequence(shards, layout=layout), x)
    # Causal work per rank (visible key chunks summed over its query chunks): zig-zag is balanced.
    for P in (2, 4, 8):
        work = [sum(qc + 1 for qc in chunk_ids(r, P)) for r in range(P)]
        assert len(set(work)) == 1
    with pytest.raises(attnkit.AttnkitError, match="divisible by 6"):
        shard_sequence(torch.zeros(1, 1, 10, 1), 0, 3)


def test_docstring_examples_run():
    import doctest

    import attnkit.engines.ring

    assert doctest.testmod(attnkit.engines.ring).failed == 0


def test_exported_where_users_look():
    import attnkit.distributed
    import attnkit.engines.ring as ring

    for name in ("ring_attention", "shard_sequence", "gather_sequence"):
        assert getattr(attnkit, name) is getattr(attnkit.distributed, name) is getattr(ring, name)


def test_without_process_group_raises():
    q = torch.randn(1, 1, 4, 2)
    with pytest.raises(attnkit.AttnkitError, match="init_process_group"):
        ring_attention(q, q, q)


# --------------------------------------------------------------------------- failures


def _failing(rank: int, world: int, mode: str) -> dict:
    """Rank 1 misbehaves; the others report what they raised and how long it took."""
    torch.manual_seed(0)
    shard = 4 if mode == "mismatch" and rank == 1 else 6
    q, k, v = (torch.randn(1, 2, shard, 4, requires_grad=True) for _ in range(3))
    # Every rank has joined the group first: a rank killed while another is still connecting makes
    # that one's init_process_group fail (gloo connects the full mesh there), which is not the case
    # tested (seen in CI on a loaded machine: rank 2 still connecting when rank 1 died).
    dist.barrier()
    if rank == 1 and mode.startswith("die_before"):
        os.kill(os.getpid(), signal.SIGKILL)
    if rank == 1 and mode.startswith("stall"):
        time.sleep(60)
    t0 = time.monotonic()
    try:
        timeout = 3.0 if mode == "stall_call_timeout" else None  # else the group's 3 s
        check = mode not in ("die_before_unchecked", "stall_call_timeout")  # these hit the ring exchange itself
        out = ring_attention(q, k, v, causal=True, check=check, timeout=timeout)
        if rank == 1 and mode == "die_in_backward":
            os.kill(os.getpid(), signal.SIGKILL)
        out.sum().backward()
    except attnkit.AttnkitError as e:
        return dict(raised=True, msg=str(e), elapsed=time.monotonic() - t0)
    return dict(raised=False, elapsed=time.monotonic() - t0)


@pytest.mark.parametrize(
    "mode", ["die_before", "die_before_unchecked", "die_in_backward", "stall", "stall_call_timeout", "mismatch"]
)
def test_failures_raise_within_the_timeout(mode):
    """A rank dies (SIGKILL) before or during the ring, stalls, or passes other shapes: the others raise."""
    timeout = 3.0
    world = 2 if mode == "mismatch" else 3
    survivors = [0, 2] if mode != "mismatch" else [0, 1]
    group_timeout = 60.0 if mode == "stall_call_timeout" else timeout  # then ring_attention(timeout=3) bounds it
    results = run_ranks(_failing, world, mode, timeout_s=group_timeout, wait_for=survivors)
    for r in survivors:
        res = results[r]
        assert res is not None and res["ok"], res and res.get("tb")
        got = res["value"]
        assert got["raised"], f"rank {r} did not raise in mode {mode}"
        assert got["msg"].startswith("expected") and "fix:" in got["msg"]
        # Bounded by the process group's timeout (plus scheduling slack on a loaded machine).
        assert got["elapsed"] <= timeout + 10.0, got
        print(f"{mode}, rank {r} after {got['elapsed']:.2f} s: {got['msg']}")
        if mode == "mismatch":
            assert "rank 0: [1, 2, 2, 6, 6" in got["msg"] and "rank 1: [1, 2, 2, 4, 4" in got["msg"]
            assert "requires_grad" in got["msg"]


@pytest.mark.slow
def test_example_runs_under_torchrun(tmp_path):
    """The documented command, small: self-check passes on rank 0 and every rank reports memory."""
    import json
    import subprocess
    import sys

    out = tmp_path / "ring.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "attnkit.examples.ring_attention", "--seq-len", "512", "--check-len", "128", "--timeout", "60",
           "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "self-check (seq 128, 2 ranks" in proc.stdout
    ranks = json.loads(out.read_text())["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["shard"] == 256 and r["rss_peak_MiB"] > 0 for r in ranks)


def _huge_bias_rows(rank: int, world: int) -> list[tuple[float, float, float]]:
    """float32, a bias of -1e10 / finfo.min on whole rows, one rank per group, the contiguous layout
    (one chunk per rank) and zig-zag (two chunks: the forward merges partials, by their row maxima and
    sums, which keep log l where lse has lost it): (ours, same-dtype reference, scale) per gradient."""
    groups = [dist.new_group([r]) for r in range(world)]
    B, H, G, D, N = 1, 2, 1, 8, 12
    rows = []
    for offset in (-1e10, torch.finfo(torch.float32).min):
        q, k, v = qkv(B, H, G, N, N, D, dtype=torch.float64, seed=11 + rank)
        bias = torch.randn(1, H, N, N, dtype=torch.float64, generator=torch.Generator().manual_seed(12))
        bias[:, :, ::3] = offset  # every key of rows 0, 3, ...: uniform weights, lse = offset
        dout = torch.randn(B, H, N, D, dtype=torch.float64, generator=torch.Generator().manual_seed(13))
        refs = {}
        for dt in (torch.float64, torch.float32):
            leaves = [t.to(dt).clone().requires_grad_() for t in (q, k, v, bias)]
            ref = attnkit.attention(*leaves[:3], bias=leaves[3], engine="reference")
            refs[dt] = torch.autograd.grad(ref, leaves, dout.to(dt))
        for layout in ("contiguous", "zigzag"):
            leaves = [t.float().clone().requires_grad_() for t in (q, k, v, bias)]
            out = ring_attention(*leaves[:3], bias=leaves[3], group=groups[rank], layout=layout)
            ref = attnkit.attention(q, k, v, bias=bias, engine="reference")
            ours = [out.detach(), *torch.autograd.grad(out, leaves, dout.float())]
            base = [attnkit.attention(q.float(), k.float(), v.float(), bias=bias.float(), engine="reference"),
                    *refs[torch.float32]]
            rows += [(err(a, r64), err(r32, r64), float(r64.abs().max()))
                     for a, r64, r32 in zip(ours, [ref, *refs[torch.float64]], base)]
    return rows


def test_ring_backward_at_huge_bias_offsets():
    """The ring's output and gradients at huge offsets (dq, dk, dv, d(bias) were S× too large; with
    several chunks per rank the merged output was off)."""
    for rank, rows in enumerate(values(run_ranks(_huge_bias_rows, 2))):
        for ours, base, scale in rows:
            assert ours <= 2 * base + 2e-5 * max(1.0, scale), (rank, rows)
