"""Ring attention (Liu et al. 2023): exact attention over a sequence sharded across processes.

Users import it from `attnkit.distributed` (or as ``attnkit.ring_attention``); this
module holds the algorithm, next to the other engines whose block kernel it shares.

``P`` ranks of a ``torch.distributed`` process group (gloo on CPU, NCCL on GPU) each hold
``L/P`` queries and ``S/P`` keys/values. The K/V shards travel around the ring: at step
``t`` rank ``r`` holds the shard of rank ``(r - t) mod P``, sends it on to ``r + 1`` and
receives the next one from ``r - 1`` (non-blocking ``isend``/``irecv``) *while* it
computes its queries against the shard it holds. Each step yields a partial
``(out, lse, m, l)``; `attnkit.engines.kernel.merge` merges them exactly (by row maxima and sums,
like [`attnkit.merge_partials`][attnkit.softmax.merge_partials] by lse, but exact at any offset).

Causal load balance: with contiguous shards, rank ``P-1`` sees every key and rank 0 only
its own. The zig-zag layout cuts the sequence into ``2P`` chunks and gives rank ``r``
chunks ``r`` and ``2P-1-r``, so every rank does the same work at every step. For
``P = 2`` (chunks 0..3)::

    rank 0: chunks 0, 3        rank 1: chunks 1, 2

Backward (so it trains): K/V rotate again with their gradient accumulators following one
step behind; each rank adds its queries' contribution to the ``dK, dV`` of the shard it
holds, and after ``P`` steps every accumulator is back home, complete. Probabilities are
recomputed from the saved row maxima and sums (FlashAttention's backward), so no rank stores more
than ``O(L/P + S/P)`` activations.

Memory per rank: its shards of Q, K, V, O, dO, dQ plus, for the overlap, two K|V buffers
(the shard in use and the next one arriving) and three dK|dV accumulators (being computed,
arriving, leaving), all allocated once per call.

Failures: every wait has a timeout (the process group's, or ``timeout=``); a dead, stuck or
mismatched rank makes the others raise [`attnkit.AttnkitError`][attnkit.errors.AttnkitError] instead of hanging.
"""

from __future__ import annotations

import re
from datetime import timedelta
from functools import partial
from typing import Iterator, Literal, Sequence

import torch
import torch.distributed as dist
from torch import Tensor

from .._numerics import NEG_INF
from ..errors import AttnkitError
from ..masks import block_class
from ..spec import AttentionSpec
from . import kernel

__all__ = ["ring_attention", "shard_sequence", "unshard_sequence", "gather_sequence", "chunk_ids"]

Layout = Literal["zigzag", "contiguous"]
_LAYOUTS = ("zigzag", "contiguous")
_TAG_KV, _TAG_DKV = 17, 18


# --------------------------------------------------------------------------- sharding


def chunk_ids(rank: int, world_size: int, layout: Layout = "zigzag") -> list[int]:
    """Which of the sequence's equal chunks rank ``rank`` holds, in order.

    ``"zigzag"``: ``2P`` chunks, rank ``r`` holds ``[r, 2P-1-r]``; ``"contiguous"``: ``P``
    chunks, rank ``r`` holds ``[r]``.

    Example:
        >>> from attnkit.engines.ring import chunk_ids
        >>> [chunk_ids(r, 4) for r in range(4)]
        [[0, 7], [1, 6], [2, 5], [3, 4]]
    """
    if layout not in _LAYOUTS:
        raise AttnkitError.build(f"layout in {_LAYOUTS}", repr(layout), 'use "zigzag" for causal attention')
    return [rank, 2 * world_size - 1 - rank] if layout == "zigzag" else [rank]


def _chunk_len(n: int, world_size: int, layout: Layout, what: str) -> int:
    parts = world_size * len(chunk_ids(0, world_size, layout))
    if n % parts:
        raise AttnkitError.build(
            f"{what} length divisible by {parts} ({layout} layout, {world_size} ranks)", str(n), "pad the sequence"
        )
    return n // parts


def shard_sequence(x: Tensor, rank: int, world_size: int, *, layout: Layout = "zigzag", dim: int = 2) -> Tensor:
    """Rank ``rank``'s shard of a full sequence ``x`` (sequence along ``dim``; 2 for ``(B, H, L, D)``).

    Example:
        >>> import torch
        >>> from attnkit.engines.ring import shard_sequence
        >>> shard_sequence(torch.arange(8).view(1, 1, 8, 1), 0, 2).flatten().tolist()
        [0, 1, 6, 7]
    """
    c = _chunk_len(x.shape[dim], world_size, layout, "sequence")
    return torch.cat([x.narrow(dim, i * c, c) for i in chunk_ids(rank, world_size, layout)], dim=dim)


def unshard_sequence(shards: Sequence[Tensor], *, layout: Layout = "zigzag", dim: int = 2) -> Tensor:
    """The full sequence from every rank's shard (``shards[r]`` from rank ``r``); inverts [`shard_sequence`][attnkit.engines.ring.shard_sequence]."""
    P = len(shards)
    per_rank = len(chunk_ids(0, P, layout))
    pieces: dict[int, Tensor] = {}
    for r, s in enumerate(shards):
        for i, cid in enumerate(chunk_ids(r, P, layout)):
            pieces[cid] = s.chunk(per_rank, dim=dim)[i]
    return torch.cat([pieces[i] for i in range(P * per_rank)], dim=dim)


def gather_sequence(
    x: Tensor, *, group: dist.ProcessGroup | None = None, layout: Layout = "zigzag", dim: int = 2
) -> Tensor:
    """All-gather every rank's shard and return the full sequence on every rank."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return unshard_sequence(parts, layout=layout, dim=dim)


# --------------------------------------------------------------------------- communication


class _Ring:
    """Neighbour exchange on a process group; every wait is bounded and errors become AttnkitError."""

    def __init__(self, group: dist.ProcessGroup | None, timeout: timedelta | None) -> None:
        self.group = group
        self.rank = dist.get_rank(group)
        self.size = dist.get_world_size(group)
        self.timeout = timeout

    def _fail(self, err: Exception, what: str) -> AttnkitError:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        first = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". This is typically")[0]  # drop gloo's source path
        limit = f"{self.timeout.total_seconds():g} s" if self.timeout else "the process group's timeout"
        return AttnkitError.build(
            f"all {self.size} ranks of the ring to {what} within {limit}",
            f"{type(err).__name__} on rank {self.rank}: {first[:300]}",
            "check the other ranks' logs: a rank died, raised, or is not calling ring_attention "
            "(forward and backward) with the same shapes; pass a larger timeout= for slow steps",
        )

    def exchange(self, send: Tensor, recv: Tensor, tag: int, what: str) -> list[dist.Work]:
        """Start sending ``send`` to the next rank and receiving ``recv`` from the previous one."""
        ops = [
            dist.P2POp(dist.isend, send, group=self.group, group_peer=(self.rank + 1) % self.size, tag=tag),
            dist.P2POp(dist.irecv, recv, group=self.group, group_peer=(self.rank - 1) % self.size, tag=tag),
        ]
        try:
            return dist.batch_isend_irecv(ops)
        except RuntimeError as err:
            raise self._fail(err, what) from err

    def wait(self, works: list[dist.Work], what: str) -> None:
        try:
            for w in works:
                if self.timeout is None:
                    w.wait()
                else:
                    w.wait(timeout=self.timeout)
        except RuntimeError as err:
            raise self._fail(err, what) from err

    def all_reduce(self, t: Tensor, what: str) -> None:
        """Sum ``t`` over the ranks in place, bounded by the timeout."""
        try:
            work = dist.all_reduce(t, group=self.group, async_op=True)
        except RuntimeError as err:
            raise self._fail(err, what) from err
        assert work is not None
        self.wait([work], what)

    def check_same(self, meta: list[int], describe: str) -> None:
        """All-gather a small description of each rank's call; raise on every rank if they differ."""
        mine = torch.tensor(meta, dtype=torch.int64)
        parts = [torch.empty_like(mine) for _ in range(self.size)]
        try:
            work = dist.all_gather(parts, mine, group=self.group, async_op=True)
            assert work is not None
            self.wait([work], "agree on the call's shapes")
        except RuntimeError as err:
            raise self._fail(err, "agree on the call's shapes") from err
        rows = [p.tolist() for p in parts]
        if any(r != rows[0] for r in rows):
            table = "; ".join(f"rank {i}: {r}" for i, r in enumerate(rows))
            raise AttnkitError.build(
                f"the same {describe} on every rank", table, "give every rank shards of one sequence, sharded the same way"
            )


# --------------------------------------------------------------------------- forward / backward


def _pairs(spec: AttentionSpec, ring: _Ring, src: int, layout: Layout, cq: int, ck: int):
    """Visible (query chunk, key chunk) pairs of this rank's queries against rank ``src``'s keys."""
    for qi, qc in enumerate(chunk_ids(ring.rank, ring.size, layout)):
        for ki, kc in enumerate(chunk_ids(src, ring.size, layout)):
            i0, j0 = qc * cq, kc * ck
            if block_class(spec, i0, i0 + cq, j0, j0 + ck) != "empty":
                yield slice(qi * cq, (qi + 1) * cq), slice(ki * ck, (ki + 1) * ck), i0, j0


def _pack_kv(k: Tensor, v: Tensor) -> Tensor:
    """K and V in one flat buffer: one message per step, and contiguous views on both sides."""
    return torch.cat([k.reshape(-1), v.reshape(-1)])


def _split_kv(buf: Tensor, k_shape: torch.Size, v_shape: torch.Size) -> tuple[Tensor, Tensor]:
    nk = k_shape.numel()
    return buf[:nk].view(k_shape), buf[nk:].view(v_shape)


def _rotate(k: Tensor, v: Tensor, ring: _Ring, what: str) -> Iterator[tuple[int, int, Tensor, Tensor]]:
    """Walk the K/V shards around the ring: yield ``(t, src, k_t, v_t)`` for ``t = 0 .. P-1``,
    with ``k_t, v_t`` the shard of rank ``src = (rank - t) mod P``.

    While the caller computes on one shard, the next one arrives: two K|V buffers in turn,
    allocated once (no allocator churn, and the peak is exactly two shards). The wait for the
    next shard comes after the caller's step, so everything the step sends overlaps it too.
    """
    if ring.size == 1:
        yield 0, ring.rank, k, v
        return
    bufs = [_pack_kv(k, v), torch.empty(k.numel() + v.numel(), dtype=k.dtype, device=k.device)]
    cur = 0
    for t in range(ring.size):
        step = f"pass K/V shards ({what} step {t})"
        last = t == ring.size - 1
        works = [] if last else ring.exchange(bufs[cur], bufs[1 - cur], _TAG_KV, step)
        if last:
            bufs[1 - cur] = bufs[cur]  # nothing more arrives: free the spare buffer
        k_t, v_t = _split_kv(bufs[cur], k.shape, v.shape)
        yield t, (ring.rank - t) % ring.size, k_t, v_t
        if works:
            ring.wait(works, step)
            cur = 1 - cur


def _ring_forward(q: Tensor, k: Tensor, v: Tensor, spec: AttentionSpec, *, ring: _Ring,
                  layout: Layout) -> kernel.Partial:
    """`kernel.attend`'s forward: this rank's queries against every shard, merged as they arrive
    (`kernel.merge`: by row maxima and sums, exact at any offset)."""
    per = len(chunk_ids(0, ring.size, layout))
    cq, ck = q.shape[2] // per, k.shape[2] // per
    ct = spec.compute_dtype
    rows = (spec.B, spec.H, q.shape[2])
    acc = (torch.zeros(*rows, spec.E, dtype=ct, device=q.device), torch.full(rows, NEG_INF, dtype=ct, device=q.device),
           torch.full(rows, NEG_INF, dtype=ct, device=q.device), torch.zeros(rows, dtype=ct, device=q.device))
    for _, src, k_t, v_t in _rotate(k, v, ring, "forward"):
        for qs, ks, i0, j0 in _pairs(spec, ring, src, layout, cq, ck):
            part = kernel.forward(q[:, :, qs], k_t[:, :, ks], v_t[:, :, ks], spec, i0, j0)
            for t, merged in zip(acc, kernel.merge(tuple(t[:, :, qs] for t in acc), part)):  # type: ignore[arg-type]
                t[:, :, qs] = merged
    return acc


def _ring_backward(
    q: Tensor, k: Tensor, v: Tensor, out: Tensor, m: Tensor, l: Tensor, dout: Tensor, dlse: Tensor | None,
    spec: AttentionSpec, d_extras: dict[str, Tensor | None], *, ring: _Ring, layout: Layout,
) -> tuple[Tensor, Tensor, Tensor]:
    """`kernel.attend`'s backward: K/V rotate again, their dK/dV accumulators one step behind."""
    d_bias = d_extras.get("bias")
    per = len(chunk_ids(0, ring.size, layout))
    cq, ck = q.shape[2] // per, k.shape[2] // per
    ct = spec.compute_dtype
    delta = kernel.delta(dout, out, l, dlse)  # rowsum(dO ∘ O) - dlse
    dq = torch.zeros(q.shape, dtype=ct, device=q.device)
    n = k.numel() + v.numel()
    # dK|dV accumulators, three in turn: one being computed into, one arriving from the previous
    # rank, one on its way to the next rank (so the transfer overlaps the next step's compute).
    acc = [torch.empty(n, dtype=ct, device=k.device) for _ in range(3 if ring.size > 1 else 1)]
    comp, sending, receiving = 0, -1, -1
    acc_works: list[dist.Work] = []
    for t, src, k_t, v_t in _rotate(k, v, ring, "backward"):
        g = acc[comp].zero_()  # this rank's dK|dV for rank src's shard
        gk, gv = _split_kv(g, k.shape, v.shape)
        for qs, ks, i0, j0 in _pairs(spec, ring, src, layout, cq, ck):
            kernel.backward(q[:, :, qs], k_t[:, :, ks], v_t[:, :, ks], dout[:, :, qs], m[:, :, qs], l[:, :, qs],
                            delta[:, :, qs], spec, i0, j0, dq=dq[:, :, qs], dk=gk[:, :, ks], dv=gv[:, :, ks], d_bias=d_bias)
        if ring.size > 1:
            if t > 0:
                ring.wait(acc_works, f"pass dK/dV accumulators (backward step {t})")
                g += acc[receiving]  # what the previous ranks added to this shard's gradient
            # Send on; after the last step this completes the circle: each gradient goes home.
            free = ({0, 1, 2} - {comp, receiving}).pop() if t > 0 else 1
            sending, receiving = comp, free
            acc_works = ring.exchange(acc[sending], acc[receiving], _TAG_DKV, f"pass dK/dV accumulators (backward step {t})")
            comp = ({0, 1, 2} - {sending, receiving}).pop()
    if ring.size > 1:
        ring.wait(acc_works, "return dK/dV to their owners")
    dk, dv = _split_kv(acc[receiving if ring.size > 1 else comp], k.shape, v.shape)
    if d_bias is not None:  # each rank added its queries' rows: the sum is the whole gradient
        ring.all_reduce(d_bias, "sum the bias gradient")
    return dq, dk, dv


# --------------------------------------------------------------------------- public API


def _check_shards(q: Tensor, k: Tensor, causal: bool, layout: str, dropout_p: float, seed: int | None) -> None:
    """What ring attention adds to the spec builder's checks: one sequence sharded the same way
    on every rank, and one dropout seed for all of them (the spec would draw one per rank)."""
    if layout not in _LAYOUTS:
        raise AttnkitError.build(f"layout in {_LAYOUTS}", repr(layout), 'use "zigzag" for causal attention')
    if dropout_p > 0 and seed is None:
        raise AttnkitError.build(
            "an int seed (the same on every rank) when dropout_p > 0", f"dropout_p={dropout_p}, seed=None",
            "pass e.g. dropout_p=0.1, seed=step",
        )
    if causal and q.shape[2] != k.shape[2]:
        raise AttnkitError.build(
            "query and key shards of equal length for causal ring attention (one sequence)",
            f"{q.shape[2]} and {k.shape[2]}", "shard q, k, v of the same sequence",
        )
    if layout == "zigzag" and (q.shape[2] % 2 or k.shape[2] % 2):
        raise AttnkitError.build(
            "even shard lengths (two zig-zag chunks per rank)", f"{q.shape[2]}, {k.shape[2]}", "pad the sequence to a multiple of 2P"
        )


def ring_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    causal: bool = False,
    scale: float | None = None,
    group: dist.ProcessGroup | None = None,
    layout: Layout = "zigzag",
    timeout: float | timedelta | None = None,
    bias: Tensor | None = None,
    dropout_p: float = 0.0,
    seed: int | None = None,
    return_lse: bool = False,
    check: bool = True,
) -> Tensor | tuple[Tensor, Tensor]:
    """Exact softmax attention of a sequence sharded across the ranks of ``group``.

    Call it on every rank with that rank's shards (see [`shard_sequence`][attnkit.engines.ring.shard_sequence]); each rank gets
    its own queries' output. Equals ``attnkit.attention`` on the gathered sequence.

    Args:
        query: ``(B, H, L/P, D)`` this rank's queries. key: ``(B, G, S/P, D)``; value:
            ``(B, G, S/P, E)`` with ``H % G == 0`` (GQA/MQA).
        causal: causal self-attention over one sequence (needs ``L == S``; with ``L == S``
            bottom-right and top-left alignment agree). Non-causal allows ``L != S``.
        scale: multiplier of ``q·k``, default ``1/√D``.
        group: the process group (default: the world, as set up by ``torchrun`` or
            ``torch.distributed.init_process_group``).
        layout: how the full sequence was sharded: ``"zigzag"`` (``2P`` chunks, rank ``r``
            holds ``r`` and ``2P-1-r``: balanced causal work) or ``"contiguous"``.
        timeout: seconds (or ``timedelta``) each communication may take before every live
            rank raises [`AttnkitError`][attnkit.errors.AttnkitError]; default: the process group's timeout.
        bias: float tensor broadcastable to the *whole* problem's ``(B, H, L, S)`` (absolute
            positions, e.g. ``(1, H, 1, S)``), the same on every rank, added to the scores. If it
            requires grad, backward all-reduces its gradient: every rank's ``bias.grad`` is the
            whole gradient (like a replicated parameter).
        dropout_p: attention dropout with the counter hash of ``attnkit.attention`` (the
            same entries as every engine for the same ``seed``).
        seed: the dropout seed; must be the same int on every rank and is required when
            ``dropout_p > 0``.
        return_lse: also return ``lse (B, H, L/P)`` (float32; float64 for float64 input).
        check: all-gather the call's shapes first, so a rank with mismatched shards makes
            every rank raise instead of exchanging garbage (one tiny collective per call).

    Returns:
        ``out (B, H, L/P, E)`` in the input dtype (and ``lse``). Differentiable in query, key
        and value; backward is collective too: every rank must call it.

    Raises:
        AttnkitError: shapes differ between ranks, a rank died or stalled past the timeout,
            or ``torch.distributed`` is not initialized.

    Example (run under ``torchrun --nproc-per-node 2``)::

        dist.init_process_group("gloo", timeout=timedelta(seconds=60))
        r, P = dist.get_rank(), dist.get_world_size()
        q, k, v = (shard_sequence(t, r, P) for t in (q_full, k_full, v_full))
        out = ring_attention(q, k, v, causal=True)          # this rank's rows
        full = gather_sequence(out)                          # == attnkit.attention(q_full, ..., causal=True)
    """
    if not dist.is_available() or not dist.is_initialized():
        raise AttnkitError.build(
            "an initialized torch.distributed process group", "none",
            'launch with torchrun, or call torch.distributed.init_process_group("gloo", timeout=...) first',
        )
    td = timedelta(seconds=timeout) if isinstance(timeout, (int, float)) else timeout
    ring = _Ring(group, td)
    # The local shards are checked like attnkit.attention's tensors; the spec describes the whole sequence.
    spec = AttentionSpec.build(query, key, value, causal=bool(causal), scale=scale, bias=bias, dropout_p=dropout_p,
                               seed=seed, shards=ring.size)
    _check_shards(query, key, causal, layout, dropout_p, seed)
    if check and ring.size > 1:
        dtypes = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
        bias_code = -1 if bias is None else int(bias.requires_grad)
        dtype_code = dtypes.index(spec.dtype) if spec.dtype in dtypes else -1
        meta = [spec.B, spec.H, spec.G, query.shape[2], key.shape[2], spec.D, spec.E, dtype_code,
                int(causal), _LAYOUTS.index(layout), int(spec.needs_grad), bias_code, int(spec.dropout_p * 2**20),
                spec.seed & (2**62 - 1)]
        # requires_grad too: a rank that will not run backward would leave the others waiting in theirs.
        ring.check_same(meta, "[B, H, G, L/P, S/P, D, E, dtype, causal, layout, requires_grad, bias, dropout, seed]")
    out, lse = kernel.attend(query, key, value, spec, partial(_ring_forward, ring=ring, layout=layout),
                             partial(_ring_backward, ring=ring, layout=layout))
    return (out, lse) if return_lse else out
