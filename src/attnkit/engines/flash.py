"""The flash engine: exact tiled attention with the online softmax (FlashAttention-2 on CPU).

Forward walks query blocks × key blocks, keeps the running ``(m, l)`` state
(:class:`~attnkit.softmax.SoftmaxState`) and an unnormalized accumulator, and never holds
more than one ``(B·H, Lb, Sb)`` block of scores: memory is O(L + S), not O(L·S). It saves
only ``out`` and ``lse``; backward recomputes each block of scores from ``q``, ``k`` and
``lse`` and uses ``Δ = rowsum(dO ∘ O)`` (Dao, 2023, Algorithm 2).

Layout: query head ``h = g·R + r`` reads key/value head ``g``. A query block is packed as
``(B·G, R·Lb, D)`` so one batched matmul serves all ``R`` heads of a group without repeating
K/V, and the scores view back to ``(B, H, Lb, Sb)`` for masks and score mods at no cost.

Block skipping: :func:`attnkit.masks.block_class` classifies each block from the structured
masks; hidden blocks are never computed and fully visible ones skip the mask work, so causal
costs about half and a window of ``w`` costs O(L·w).
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from ..dropout import keep_mask
from ..masks import block_class, visible
from ..scores import apply_score_mods
from ..softmax import _NEG_INF, SoftmaxState
from ..spec import AttentionOutput, AttentionSpec, BlockIndex
from . import _tiling

NAME = "flash"


def unsupported(spec: AttentionSpec) -> str | None:
    """Why the flash engine cannot compute ``spec`` (``None`` if it can)."""
    if spec.normalizer != "softmax":
        name = spec.normalizer if isinstance(spec.normalizer, str) else getattr(spec.normalizer, "__name__", "callable")
        return f"normalizer={name!r} is reference-only (it needs the whole score row, not an online normalizer)"
    return None


class _Plan:
    """Shared per-call geometry: packed views of q/k/v and the block grid."""

    def __init__(self, q: Tensor, k: Tensor, v: Tensor, spec: AttentionSpec):
        B, H, G, L, S = spec.B, spec.H, spec.G, spec.L, spec.S
        self.spec, self.R, self.BG = spec, H // G, B * G
        ct = spec.compute_dtype
        self.q5 = q.to(ct).reshape(B * G, self.R, L, spec.D)  # (BG, R, L, D)
        self.k3 = k.to(ct).reshape(B * G, S, spec.D)  # (BG, S, D)
        self.v3 = v.to(ct).reshape(B * G, S, spec.E)  # (BG, S, E)
        self.bq, self.bk = _tiling.block_sizes(spec)  # shared with dispatch's one-block rule
        self.q_blocks = [(i, min(i + self.bq, L)) for i in range(0, L, self.bq)]
        self.k_blocks = [(j, min(j + self.bk, S)) for j in range(0, S, self.bk)]
        # causal/window alone depend only on (rows, cols, j0 - i0): diagonal blocks share one mask.
        self._shift_invariant = spec.mask is None and spec.kv_lengths is None and spec.q_lengths is None
        self._hidden_cache: dict[tuple[int, int, int], Tensor] = {}
        self._buffers: dict[tuple[str, int, int], Tensor] = {}

    def buffer(self, name: str, rows: int, cols: int) -> Tensor:
        """A reusable (BG, rows, cols) scratch block: the inner loop allocates nothing per step."""
        key = (name, rows, cols)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = torch.empty(self.BG, rows, cols, dtype=self.q5.dtype, device=self.q5.device)
        return buf

    def hidden(self, idx: BlockIndex, i0: int, i1: int, j0: int, j1: int) -> Tensor | None:
        """``~visible`` for the block (True = hide), cached when it is shift-invariant."""
        key = (i1 - i0, j1 - j0, j0 - i0)
        if self._shift_invariant and key in self._hidden_cache:
            return self._hidden_cache[key]
        vis = visible(self.spec, idx)
        hid = None if vis is None else ~vis
        if self._shift_invariant and hid is not None:
            self._hidden_cache[key] = hid
        return hid

    def q_block(self, i0: int, i1: int) -> Tensor:
        """Queries of rows [i0, i1) packed as (BG, R·Lb, D)."""
        return self.q5[:, :, i0:i1].reshape(self.BG, -1, self.spec.D)

    def index(self, i0: int, i1: int, j0: int, j1: int) -> BlockIndex:
        s = self.spec
        return BlockIndex.ranges(range(s.B), range(s.H), range(i0, i1), range(j0, j1), device=s.device)

    def as4d(self, t: Tensor, rows: int) -> Tensor:
        """(BG, R·Lb, X) → (B, H, Lb, X) view."""
        return t.view(self.spec.B, self.spec.H, rows, t.shape[-1])

    def scores(self, qb: Tensor, i0: int, i1: int, j0: int, j1: int, cls: str, *, grad_mods: bool = False):
        """Masked, modified scores of a block as (BG, R·Lb, Sb); with ``grad_mods`` also the
        pre-mod leaf and the modified tensor for autograd through the score mods."""
        buf = self.buffer("s", qb.shape[1], j1 - j0)
        # (q·k)·scale in one BLAS call, rounded like eager attention's `q @ kᵀ * scale`.
        s = torch.baddbmm(buf, qb, self.k3[:, j0:j1].transpose(1, 2), beta=0.0, alpha=self.spec.scale, out=buf)
        spec, rows = self.spec, i1 - i0
        raw = mod = None
        if spec.has_score_mods or cls == "partial":
            idx = self.index(i0, i1, j0, j1)
            s4 = self.as4d(s, rows)
            if spec.has_score_mods:
                if grad_mods:
                    raw = s4.detach().requires_grad_()
                    with torch.enable_grad():
                        mod = apply_score_mods(raw, spec, idx)
                    s4 = mod.detach().clone()
                else:
                    s4 = apply_score_mods(s4, spec, idx)
            if cls == "partial":
                hid = self.hidden(idx, i0, i1, j0, j1)
                if hid is not None:
                    s4 = s4.masked_fill_(hid, _NEG_INF)
            s = s4.reshape(self.BG, -1, j1 - j0)
        return s, raw, mod

    def keep(self, i0: int, i1: int, j0: int, j1: int) -> Tensor:
        """Dropout keep-mask of a block as (BG, R·Lb, Sb), the same entries as every engine."""
        spec = self.spec
        m = keep_mask(spec.seed, spec.dropout_p, self.index(i0, i1, j0, j1), spec.H)
        return m.reshape(self.BG, -1, j1 - j0)


def _forward(
    q: Tensor, k: Tensor, v: Tensor, spec: AttentionSpec, rows_out: list[SoftmaxState] | None = None
) -> tuple[Tensor, Tensor]:
    """Exact attention ``(out (B,H,L,E) compute dtype, lse (B,H,L))`` without the L×S matrix.

    ``rows_out``, if given, receives each query block's final ``(m, l)`` state (for weights)."""
    plan = _Plan(q, k, v, spec)
    ct, pd = spec.compute_dtype, spec.dropout_p
    out = torch.zeros(spec.B, spec.H, spec.L, spec.E, dtype=ct, device=spec.device)
    lse = torch.full((spec.B, spec.H, spec.L), _NEG_INF, dtype=ct, device=spec.device)
    for i0, i1 in plan.q_blocks:
        rows = i1 - i0
        qb = plan.q_block(i0, i1)
        state = SoftmaxState.empty((plan.BG, qb.shape[1]), dtype=ct, device=spec.device)
        acc = torch.zeros(plan.BG, qb.shape[1], spec.E, dtype=ct, device=spec.device)
        for j0, j1 in plan.k_blocks:
            cls = block_class(spec, i0, i1, j0, j1)
            if cls == "empty":
                continue
            s, _, _ = plan.scores(qb, i0, i1, j0, j1, cls)
            p, alpha = state.update(s, inplace=True)
            acc.mul_(alpha.unsqueeze(-1))
            if pd > 0:
                p = p.mul_(plan.keep(i0, i1, j0, j1))  # l already holds the undropped sum
            acc.baddbmm_(p, plan.v3[:, j0:j1])
        norm = state.l.masked_fill(state.l == 0, 1.0).unsqueeze(-1)
        if pd > 0:
            norm = norm * (1.0 - pd)
        out[:, :, i0:i1] = plan.as4d(acc.div_(norm), rows)
        lse[:, :, i0:i1] = state.lse.view(spec.B, spec.H, rows)
        if rows_out is not None:
            rows_out.append(state)
    return out, lse


def _backward(q, k, v, out, lse, dout, dlse, spec: AttentionSpec, mod_inputs: list[Tensor]):
    """Gradients for q, k, v (and the tensors in ``mod_inputs``, e.g. a bias that requires grad)."""
    plan = _Plan(q, k, v, spec)
    ct, pd, BG, R = spec.compute_dtype, spec.dropout_p, plan.BG, plan.R
    do5 = dout.to(ct).reshape(BG, R, spec.L, spec.E)
    delta = (dout.to(ct) * out.to(ct)).sum(-1)  # Δ = rowsum(dO ∘ O), (B, H, L)
    if dlse is not None:
        delta = delta - dlse.to(ct)  # d lse / d s = p, so ds = p·(dp - Δ + dlse)
    delta4 = delta.reshape(BG, R, spec.L)
    lse_safe = lse.masked_fill(lse == _NEG_INF, 0.0).reshape(BG, R, spec.L)  # p = exp(-inf - 0) = 0
    dq = torch.zeros(BG, R, spec.L, spec.D, dtype=ct, device=spec.device)
    dk = torch.zeros(BG, spec.S, spec.D, dtype=ct, device=spec.device)
    dv = torch.zeros(BG, spec.S, spec.E, dtype=ct, device=spec.device)
    d_mod = [torch.zeros_like(t, dtype=ct) for t in mod_inputs]
    for i0, i1 in plan.q_blocks:
        qb = plan.q_block(i0, i1)
        dob = do5[:, :, i0:i1].reshape(BG, -1, spec.E)
        lse_b = lse_safe[:, :, i0:i1].reshape(BG, -1, 1)
        delta_b = delta4[:, :, i0:i1].reshape(BG, -1, 1)
        dqb = torch.zeros_like(qb)
        for j0, j1 in plan.k_blocks:
            cls = block_class(spec, i0, i1, j0, j1)
            if cls == "empty":
                continue
            s, raw, mod = plan.scores(qb, i0, i1, j0, j1, cls, grad_mods=spec.has_score_mods)
            p = s.sub_(lse_b).exp_()
            dp = torch.bmm(dob, plan.v3[:, j0:j1].transpose(1, 2), out=plan.buffer("dp", dob.shape[1], j1 - j0))
            if pd > 0:
                keep = plan.keep(i0, i1, j0, j1)
                dv[:, j0:j1].baddbmm_((p * keep).transpose(1, 2), dob, alpha=1.0 / (1.0 - pd))
                dp.mul_(keep).div_(1.0 - pd)
            else:
                dv[:, j0:j1].baddbmm_(p.transpose(1, 2), dob)
            ds = p.mul_(dp.sub_(delta_b))  # dS = P ∘ (dP - Δ)
            if raw is not None:
                grads = torch.autograd.grad(mod, [raw, *mod_inputs], plan.as4d(ds, i1 - i0), allow_unused=True)
                ds = grads[0].reshape(BG, -1, j1 - j0)
                for acc, g in zip(d_mod, grads[1:]):
                    if g is not None:
                        acc += g
            dqb.baddbmm_(ds, plan.k3[:, j0:j1])
            dk[:, j0:j1].baddbmm_(ds.transpose(1, 2), qb, alpha=spec.scale)  # dK = scale·dSᵀ·Q
        dq[:, :, i0:i1] = dqb.view(BG, R, i1 - i0, spec.D)
    dq = dq.mul_(spec.scale).view(spec.B, spec.H, spec.L, spec.D)
    return dq, dk.view(spec.B, spec.G, spec.S, spec.D), dv.view(spec.B, spec.G, spec.S, spec.E), d_mod


class FlashAttentionFunction(torch.autograd.Function):
    """Autograd wrapper: saves ``q, k, v, out, lse`` (never the probabilities)."""

    @staticmethod
    def forward(ctx, q, k, v, spec: AttentionSpec, states: list | None, *mod_inputs):  # type: ignore[override]
        out, lse = _forward(q, k, v, spec, states)
        ctx.spec = spec
        ctx.save_for_backward(q, k, v, out, lse, *mod_inputs)
        ctx.set_materialize_grads(False)
        return out.to(q.dtype), lse

    @staticmethod
    def backward(ctx, dout, dlse):  # type: ignore[override]
        q, k, v, out, lse, *mod_inputs = ctx.saved_tensors
        if dout is None:
            dout = torch.zeros_like(out)
        need = ctx.needs_input_grad[5:]
        spec, leaves = _rebind(ctx.spec, mod_inputs, need)
        dq, dk, dv, d_mod = _backward(q, k, v, out, lse, dout, dlse, spec, leaves)
        it = iter(d_mod)
        grads_mod = [_unbroadcast(next(it), t).to(t.dtype) if n else None for t, n in zip(mod_inputs, need)]
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, *grads_mod


def _rebind(spec: AttentionSpec, mod_inputs: list[Tensor], need: tuple[bool, ...]) -> tuple[AttentionSpec, list[Tensor]]:
    """Point the spec's float_mask/bias at fresh leaves so autograd.grad can return their gradients."""
    names = [n for n in ("float_mask", "bias") if getattr(spec, n) is not None]
    fresh = {n: t.detach().requires_grad_(bool(r)) for n, t, r in zip(names, mod_inputs, need)}
    return replace(spec, **fresh), [fresh[n] for n, r in zip(names, need) if r]


def _unbroadcast(g: Tensor, like: Tensor) -> Tensor:
    """Sum a gradient gathered over a broadcast block back to the shape of the original tensor."""
    return g.sum_to_size(like.shape) if g.shape != like.shape else g


def _weights(q: Tensor, k: Tensor, v: Tensor, spec: AttentionSpec, states: list[SoftmaxState]) -> Tensor:
    """Exact normalized weights, rebuilt block by block in a second pass.

    ``exp(score - m) / l`` with each row's final max ``m`` and sum ``l`` — the same number as
    ``exp(score - lse)``, but rounded like a plain softmax (``lse`` itself carries ``eps·|lse|``).
    """
    plan = _Plan(q, k, v, spec)
    w = torch.zeros(spec.B, spec.H, spec.L, spec.S, dtype=q.dtype, device=spec.device)
    for (i0, i1), state in zip(plan.q_blocks, states):
        qb = plan.q_block(i0, i1)
        m = state.m.masked_fill(state.m == _NEG_INF, 0.0).unsqueeze(-1)
        inv_l = 1.0 / state.l.masked_fill(state.l == 0, 1.0).unsqueeze(-1)
        for j0, j1 in plan.k_blocks:
            cls = block_class(spec, i0, i1, j0, j1)
            if cls == "empty":
                continue
            s, _, _ = plan.scores(qb, i0, i1, j0, j1, cls)
            w[:, :, i0:i1, j0:j1] = plan.as4d(s.sub_(m).exp_().mul_(inv_l), i1 - i0)
    return w


def run(q: Tensor, k: Tensor, v: Tensor, spec: AttentionSpec) -> AttentionOutput:
    """Flash attention for ``q (B, H, L, D)``, ``k (B, G, S, D)``, ``v (B, G, S, E)``."""
    mod_inputs = [t for t in (spec.float_mask, spec.bias) if t is not None]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, *mod_inputs))
    states: list[SoftmaxState] | None = [] if spec.return_weights else None
    if needs_grad:
        out, lse = FlashAttentionFunction.apply(q, k, v, spec, states, *mod_inputs)
    else:
        with torch.no_grad():
            out, lse = _forward(q, k, v, spec, states)
        out = out.to(q.dtype)
    weights = None
    if states is not None:
        with torch.no_grad():
            weights = _weights(q, k, v, spec, states)
    return AttentionOutput(out, lse if spec.return_lse else None, weights)
