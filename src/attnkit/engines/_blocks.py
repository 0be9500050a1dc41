"""Exact attention of one contiguous block of a larger problem, forward and backward.

The split-KV decode engine and ring attention both cut one attention problem into blocks
(queries ``[i0, i0 + Lb)`` × keys ``[j0, j0 + Sb)`` of a problem described by an
:class:`AttentionSpec`), compute each block's ``(out, lse)`` and merge the partials with
:func:`attnkit.merge_partials`. This module computes one block, tiled so it never holds more
than a tile of scores: the online softmax (:class:`SoftmaxState`) inside the block, and the
FlashAttention backward (recompute ``P = exp(S - lse)`` from the saved ``lse``,
``dS = P ∘ (dP - Δ)`` with ``Δ = rowsum(dO ∘ O)``) for the gradients.

Both functions take absolute offsets ``i0, j0`` so causal/window masks, ``kv_lengths``,
ALiBi and dense masks see true positions, and return results in the compute dtype
(float32, or float64 for float64 input) so callers merge without rounding to half.
A faster engine can replace :func:`block_forward` as long as it keeps this contract.

GQA: query heads are packed per key/value head, ``(B, H, L, D) → (B, G, R·L, D)`` with
``R = H // G``, so each key/value tile is read once for all ``R`` query heads of its group.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..masks import block_class, visible
from ..scores import apply_score_mods
from ..softmax import _NEG_INF, SoftmaxState
from ..spec import AttentionSpec, BlockIndex

__all__ = ["block_forward", "block_backward", "tile_sizes"]

# Scores held at once per tile, in elements (1 MiB of float32): small enough to stay in cache
# between the QKᵀ and PV products, big enough that per-tile Python overhead is small
# (measured best of 64K..4M elements on the 2-core benchmark machine, RESULTS.md).
_TILE_ELEMS = 1 << 18
_MAX_TILE_Q = 256
_MIN_TILE_K = 128
# Packed query rows (R·Lt) up to which scores are computed keys-major (see _scores).
_KEYS_MAJOR_ROWS = 64


def tile_sizes(spec: AttentionSpec, Lb: int, Sb: int) -> tuple[int, int]:
    """Query and key tile lengths for a ``Lb × Sb`` block: about ``_TILE_ELEMS`` scores per tile,
    with at least ``_MIN_TILE_K`` keys (so a large ``B·H`` shrinks the query tile, not the key tile)."""
    bh = max(1, spec.B * spec.H)
    tq = max(1, min(Lb, _MAX_TILE_Q, _TILE_ELEMS // (bh * _MIN_TILE_K)))
    tk = max(1, min(Sb, max(_MIN_TILE_K, _TILE_ELEMS // (bh * tq))))
    return tq, tk


def _pack(x: Tensor, G: int) -> Tensor:
    """``(B, H, Lt, X) → (B, G, R·Lt, X)``: the R query heads of a group side by side."""
    B, H, Lt, X = x.shape
    return x.reshape(B, G, (H // G) * Lt, X)


def _unpack(x: Tensor, H: int) -> Tensor:
    """``(B, G, R·Lt, X) → (B, H, Lt, X)``."""
    B, G, RL, X = x.shape
    return x.reshape(B, H, RL * G // H, X)


def _scores(qp: Tensor, k_t: Tensor, spec: AttentionSpec, i0: int, j0: int, mods: bool, keys_major: bool) -> Tensor:
    """Scaled scores of a tile after score mods and masks (hidden: -inf), packed per group:
    ``(B, G, R·Lt, St)``, or keys-major ``(B, G, St, R·Lt)``.

    Keys-major computes ``K·qᵀ``, which streams the long operand through the GEMM: 2x faster
    than ``q·Kᵀ`` for the few query rows of decoding, slower for big query tiles (RESULTS.md).
    """
    B, H, G = spec.B, spec.H, spec.G
    RL, St = qp.shape[2], k_t.shape[2]
    Lt = RL * G // H
    # qp carries the scale
    s = torch.matmul(k_t, qp.transpose(-1, -2)) if keys_major else torch.matmul(qp, k_t.transpose(-1, -2))
    cls = block_class(spec, i0, i0 + Lt, j0, j0 + St)
    if not mods and cls == "full":
        return s
    s4 = (s.transpose(-1, -2) if keys_major else s).reshape(B, H, Lt, St)  # the layout the mods index
    idx = BlockIndex.ranges(range(B), range(H), range(i0, i0 + Lt), range(j0, j0 + St), device=s.device)
    if mods:
        s4 = apply_score_mods(s4, spec, idx)
    vis = visible(spec, idx) if cls == "partial" else None
    if vis is not None:
        s4 = s4.masked_fill(~vis, _NEG_INF)
    s = s4.reshape(B, G, RL, St)
    return s.transpose(-1, -2) if keys_major else s


def block_forward(
    q: Tensor, k: Tensor, v: Tensor, spec: AttentionSpec, i0: int = 0, j0: int = 0
) -> tuple[Tensor, Tensor]:
    """Softmax attention of queries ``[i0, i0+Lb)`` over keys ``[j0, j0+Sb)`` of ``spec``'s problem.

    Args:
        q: ``(B, H, Lb, D)``; k: ``(B, G, Sb, D)``; v: ``(B, G, Sb, E)`` — the block's slices.
        spec: the whole problem (masks, score mods, scale, positions); dropout and
            non-softmax normalizers are not handled here.
        i0, j0: absolute position of the block's first query and first key.

    Returns:
        ``(out, lse)``: ``out (B, H, Lb, E)`` normalized over this block's visible keys and
        ``lse (B, H, Lb)``, both in the compute dtype; rows with no visible key in the block
        give ``out = 0, lse = -inf``.
    """
    B, H, G, E, ct = spec.B, spec.H, spec.G, spec.E, spec.compute_dtype
    Lb, Sb = q.shape[2], k.shape[2]
    out = torch.zeros(B, H, Lb, E, dtype=ct, device=q.device)
    lse = torch.full((B, H, Lb), _NEG_INF, dtype=ct, device=q.device)
    if Lb == 0 or Sb == 0:
        return out, lse
    mods = spec.has_score_mods
    tq, tk = tile_sizes(spec, Lb, Sb)
    kc, vc = k.to(ct), v.to(ct)
    for a in range(0, Lb, tq):
        b = min(a + tq, Lb)
        qp = _pack(q[:, :, a:b].to(ct) * spec.scale, G)  # (B, G, R·Lt, D)
        keys_major = qp.shape[2] <= _KEYS_MAJOR_ROWS
        state = SoftmaxState.empty((B, G, qp.shape[2]), dtype=ct, device=q.device)
        acc = torch.zeros(B, G, qp.shape[2], E, dtype=ct, device=q.device)
        for c in range(0, Sb, tk):
            d = min(c + tk, Sb)
            if block_class(spec, i0 + a, i0 + b, j0 + c, j0 + d) == "empty":
                continue
            s = _scores(qp, kc[:, :, c:d], spec, i0 + a, j0 + c, mods, keys_major)
            p, alpha = state.update(s, dim=-2 if keys_major else -1)  # p = exp(s - m_new); alpha rescales the past
            acc = acc * alpha.unsqueeze(-1) + torch.matmul(p.transpose(-1, -2) if keys_major else p, vc[:, :, c:d])
        total = state.l.unsqueeze(-1)
        out[:, :, a:b] = _unpack(acc / total.masked_fill(total == 0, 1.0), H)
        lse[:, :, a:b] = state.lse.reshape(B, H, b - a)
    return out, lse


def block_backward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    dout: Tensor,
    lse: Tensor,
    delta: Tensor,
    spec: AttentionSpec,
    i0: int = 0,
    j0: int = 0,
    *,
    dq: Tensor | None = None,
    dk: Tensor | None = None,
    dv: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of a block's contribution, recomputing probabilities from the final ``lse``.

    Args:
        q, k, v: the block's slices as in :func:`block_forward`.
        dout: ``(B, H, Lb, E)`` gradient of the *final* (merged) output of these queries.
        lse: ``(B, H, Lb)`` *final* log-normalizer of these queries (over all keys, not the block).
        delta: ``(B, H, Lb)`` ``rowsum(dout ∘ out)`` with the final ``out``.
        dq, dk, dv: optional accumulators in the compute dtype (views allowed) to add this
            block's contribution into, in place; zeros are allocated when omitted.

    Returns:
        ``(dq, dk, dv)`` in the compute dtype, with this block's additive contribution
        (sum over blocks). Rows with ``lse = -inf`` contribute zero.
    """
    B, H, G, ct = spec.B, spec.H, spec.G, spec.compute_dtype
    Lb, Sb = q.shape[2], k.shape[2]
    q, k, v, dout = q.detach(), k.detach(), v.detach(), dout.detach()
    dq = torch.zeros(B, H, Lb, spec.D, dtype=ct, device=q.device) if dq is None else dq
    dk = torch.zeros(B, G, Sb, spec.D, dtype=ct, device=q.device) if dk is None else dk
    dv = torch.zeros(B, G, Sb, spec.E, dtype=ct, device=q.device) if dv is None else dv
    if Lb == 0 or Sb == 0:
        return dq, dk, dv
    mods = spec.has_score_mods
    # Elementwise non-additive mods change dS/dS_raw; autograd differentiates them per tile.
    nonlinear = spec.softcap is not None or spec.score_mod is not None
    tq, tk = tile_sizes(spec, Lb, Sb)
    kc, vc = k.to(ct), v.to(ct)
    lse_safe = lse.to(ct).masked_fill(lse == _NEG_INF, 0.0)  # empty rows: exp(-inf - 0) = 0
    for a in range(0, Lb, tq):
        b = min(a + tq, Lb)
        q_t = q[:, :, a:b].to(ct)
        qp = _pack(q_t * spec.scale, G)
        do_p = _pack(dout[:, :, a:b].to(ct), G)  # (B, G, R·Lt, E)
        m_t = lse_safe[:, :, a:b].unsqueeze(-1)
        dl_t = delta[:, :, a:b].to(ct).unsqueeze(-1)
        dq_p = torch.zeros_like(qp)
        for c in range(0, Sb, tk):
            d = min(c + tk, Sb)
            if block_class(spec, i0 + a, i0 + b, j0 + c, j0 + d) == "empty":
                continue
            k_t = kc[:, :, c:d]
            with torch.enable_grad():
                raw = torch.matmul(qp, k_t.transpose(-1, -2)).view(B, H, b - a, d - c)
                if nonlinear:
                    raw = raw.detach().requires_grad_()
                s, vis, idx = raw, None, None
                if mods or block_class(spec, i0 + a, i0 + b, j0 + c, j0 + d) != "full":
                    idx = BlockIndex.ranges(range(B), range(H), range(i0 + a, i0 + b), range(j0 + c, j0 + d), device=q.device)
                    s = apply_score_mods(raw, spec, idx) if mods else raw
                    vis = visible(spec, idx)
            p = torch.exp(s.detach() - m_t)
            if vis is not None:
                p = p.masked_fill(~vis, 0.0)
            pp = _pack(p, G)  # (B, G, R·Lt, St)
            dv[:, :, c:d] += torch.matmul(pp.transpose(-1, -2), do_p)
            dp = _unpack(torch.matmul(do_p, vc[:, :, c:d].transpose(-1, -2)), H)
            ds = p * (dp - dl_t)  # softmax backward with Δ = rowsum(dO ∘ O) = Σ_j P·dP
            if nonlinear:
                (ds,) = torch.autograd.grad(s, raw, ds)
            ds_p = _pack(ds, G)
            dq_p += torch.matmul(ds_p, k_t)
            dk[:, :, c:d] += torch.matmul(ds_p.transpose(-1, -2), qp)  # qp carries the scale
        dq[:, :, a:b] += _unpack(dq_p, H) * spec.scale
    return dq, dk, dv
