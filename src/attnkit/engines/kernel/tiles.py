"""The PyTorch tile path: the kernel contract (`attnkit.engines.kernel`) in PyTorch ops.

It runs what the fused C++ path does not: float64, any device, a ``score_mod`` callable, a
machine without a compiler. Per ``tq × tk`` tile (sizes from `tile_sizes`)::

    s = scale·q·kᵀ                  one baddbmm into a preallocated buffer (no allocation per tile)
    s = score mods, hidden → -inf   attnkit.scores.apply_score_mods, attnkit.masks.visible
    m, l, p = online softmax        SoftmaxState.update (in place)
    acc = acc·α + (p ∘ keep)·v      dropout keep mask = attnkit.dropout.keep_mask (counter hash)

GQA: query head ``h`` reads key/value head ``h // R`` (``R = H/G``); a query tile is packed as
``(B·G, R·Lt, D)`` so one batched product serves the ``R`` heads of a group without repeating K/V.
For few packed rows (decoding) scores are computed keys-major, ``K·qᵀ``, which streams the long
operand through the GEMM (2× faster at 4 rows, RESULTS.md "Keys-major scores") — in inference
only: a backward rebuilds the forward's weights and must make the same (query-major) scores.

Hidden non-finite keys: a key that is not visible never influences an output or a gradient,
even if its K/V hold NaN/±inf (a KV cache from ``torch.empty``). Hidden scores are -inf, so
``P = 0`` there, but ``0·NaN`` in ``P·V`` (forward) or ``dS·K`` (backward) would still spread.
With ``spec.kv_nonfinite`` (set by ``AttentionSpec.build``; True when unchecked) each tile's small product (``P·V``: ``R·Lt × E``;
``dS·K``: ``R·Lt × D``) is checked with one sum; only a non-finite one makes the tile redo its
products with the non-finite K/V entries zeroed, masking ``dS`` at hidden entries and adding
back the IEEE contributions of *visible* non-finite entries (rows that see a NaN get NaN, as in
the reference). A whole-tensor ``isfinite`` pass would cost more than a decode step itself.
The fused forward keeps them out in its own pass (in a tile where some row hides a key, the P·V
product of a row that came out non-finite is redone over that row's visible keys), so a decode step
reads the cache once. The fused backward checks its *result*: a leak always shows as a non-finite
gradient; only then is the range recomputed on the torch path.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from ..._numerics import NEG_INF as _NEG_INF, all_finite
from ...dropout import keep_mask
from ...masks import block_class, visible
from ...scores import apply_score_mods
from ...softmax import SoftmaxState
from ...spec import AttentionSpec, BlockIndex
from . import blocks

__all__ = ["Tiles", "tile_sizes", "single_block"]


# The tile rule is blocks.py (both backends). The torch tiles read it through these names, which
# tests shrink to force many tiles on small problems.
_TILE_ELEMS = blocks.TORCH_TILE_ELEMS
_MAX_TILE_Q = blocks.QUERY_TILE
_MIN_TILE_Q = blocks.TORCH_MIN_QUERY_TILE
_MIN_TILE_K = blocks.KEY_TILE
# Packed query rows (R·Lt) up to which forward scores are computed keys-major.
_KEYS_MAJOR_ROWS = 64


def tile_sizes(spec: AttentionSpec, Lb: int, Sb: int) -> tuple[int, int]:
    """Query and key tile lengths ``(tq, tk)`` of the torch tiles for a ``Lb × Sb`` range of ``spec``.

    `blocks`' rule at the torch path's grain: about ``TORCH_TILE_ELEMS`` scores per tile over all
    ``B·H`` heads; a band of ``span`` keys per row caps the key tile near the band width (at least
    ``TORCH_MIN_BAND_KEY_TILE``) and the query tile at the key tile, so the computed area stays O(L·w).
    """
    bh = max(1, spec.B * spec.H)
    tq = max(1, min(Lb, _MAX_TILE_Q, max(_MIN_TILE_Q, _TILE_ELEMS // (bh * _MIN_TILE_K))))
    tk = max(1, min(Sb, max(_MIN_TILE_K, _TILE_ELEMS // (bh * tq))))
    span = blocks.band_span(spec.window, spec.causal)
    if span is not None:
        tk = max(1, min(tk, max(blocks.TORCH_MIN_BAND_KEY_TILE, 1 << (span - 1).bit_length())))
        tq = max(1, min(tq, tk))
    return tq, tk


def single_block(spec: AttentionSpec) -> bool:
    """True when the whole ``(L, S)`` problem is one query tile × at most ``_MIN_TILE_K`` keys:
    tiling or splitting the keys gains nothing, and dispatch prefers the reference engine (a
    decode step over a long cache still splits)."""
    tq, tk = tile_sizes(spec, spec.L, spec.S)
    return spec.L <= tq and spec.S <= min(tk, _MIN_TILE_K)


class Tiles:
    """One call's geometry: packed views of q/k/v, the tile grid, scratch buffers, non-finite keys."""

    def __init__(self, q: Tensor, k: Tensor, v: Tensor, spec: AttentionSpec, i0: int, j0: int):
        B, H, G = spec.B, spec.H, spec.G
        ct = spec.compute_dtype
        self.spec, self.i0, self.j0, self.ct = spec, i0, j0, ct
        self.R, self.BG = H // G, B * G
        self.Lb, self.Sb = q.shape[2], k.shape[2]
        self.q5 = q.detach().to(ct).reshape(self.BG, self.R, self.Lb, q.shape[3])  # (BG, R, Lb, D)
        kc, vc = k.detach().to(ct), v.detach().to(ct)
        self.check = spec.kv_nonfinite  # K/V may hold NaN/±inf (hidden or not), or were not checked
        self.k3 = kc.reshape(self.BG, self.Sb, k.shape[3])  # (BG, Sb, D)
        self.v3 = vc.reshape(self.BG, self.Sb, v.shape[3])  # (BG, Sb, E)
        self.tq, self.tk = tile_sizes(spec, self.Lb, self.Sb)
        self.mods = spec.has_score_mods
        # causal/window alone depend only on (rows, cols, key - query offset): diagonal tiles share one mask.
        self._shift_invariant = spec.mask is None and spec.kv_lengths is None and spec.q_lengths is None
        self._hidden: dict[tuple[int, int, int], Tensor | None] = {}
        self._buffers: dict[tuple[str, int, int], Tensor] = {}

    # ---- setup helpers

    def bad_rows(self, t3: Tensor, c: int, d: int) -> list[int]:
        """Tile-relative key rows of ``t3[:, c:d]`` holding a non-finite entry (the careful path only)."""
        return (~torch.isfinite(t3[:, c:d])).any(-1).any(0).nonzero().flatten().tolist()

    def buffer(self, name: str, rows: int, cols: int) -> Tensor:
        """A reusable ``(BG, rows, cols)`` scratch block: the inner loop allocates nothing per tile."""
        key = (name, rows, cols)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = torch.empty(self.BG, rows, cols, dtype=self.ct, device=self.q5.device)
        return buf

    def tiles(self, n: int, t: int) -> list[tuple[int, int]]:
        return [(a, min(a + t, n)) for a in range(0, n, t)]

    def q_tile(self, a: int, b: int) -> Tensor:
        """Queries ``[a, b)`` packed as ``(BG, R·Lt, D)``."""
        return self.q5[:, :, a:b].reshape(self.BG, -1, self.q5.shape[-1])

    def index(self, a: int, b: int, c: int, d: int) -> BlockIndex:
        s = self.spec
        return BlockIndex.ranges(range(s.B), range(s.H), range(self.i0 + a, self.i0 + b),
                                 range(self.j0 + c, self.j0 + d), device=self.q5.device)

    def cls(self, a: int, b: int, c: int, d: int) -> str:
        return block_class(self.spec, self.i0 + a, self.i0 + b, self.j0 + c, self.j0 + d)

    def hidden(self, idx: BlockIndex, a: int, b: int, c: int, d: int) -> Tensor | None:
        """``~visible`` of a tile (True = hide), cached when shift-invariant."""
        key = (b - a, d - c, (self.j0 + c) - (self.i0 + a))
        if self._shift_invariant and key in self._hidden:
            return self._hidden[key]
        vis = visible(self.spec, idx)
        hid = None if vis is None else ~vis
        if self._shift_invariant:
            self._hidden[key] = hid
        return hid

    def keep(self, idx: BlockIndex, rl: int, st: int) -> Tensor:
        """Dropout keep mask of a tile as ``(BG, R·Lt, St)``: the same entries as every engine."""
        spec = self.spec
        return keep_mask(spec.seed, spec.dropout_p, idx, spec.H).reshape(self.BG, rl, st)

    def pack(self, t: Tensor, rl: int) -> Tensor:
        """``(B|1, H|1, Lt|1, St)`` broadcast → ``(BG, R·Lt, St)``."""
        s = self.spec
        return t.expand(s.B, s.H, rl * s.G // s.H, t.shape[-1]).reshape(self.BG, rl, t.shape[-1])

    # ---- scores

    def scores(self, qb: Tensor, a: int, b: int, c: int, d: int, cls: str, keys_major: bool = False,
               grad: bool = False):
        """Scaled, modified, masked scores of a tile: ``(BG, R·Lt, St)``, or ``(BG, St, R·Lt)`` keys-major.

        Returns ``(s, hid, idx, tape)``: ``hid`` the tile's hidden mask (``(B|1, H|1, Lt, St)``,
        None = all visible), ``idx`` its BlockIndex (None when unneeded). With ``grad`` (backward
        through nonlinear mods) ``tape`` holds what `grad_mods` differentiates.
        """
        spec, rl, st = self.spec, qb.shape[1], d - c
        kt = self.k3[:, c:d]
        # (q·k)·scale in one BLAS call into a reused buffer, rounded like eager `q @ kᵀ * scale`.
        if keys_major:
            buf = self.buffer("sT", st, rl)
            s = torch.baddbmm(buf, kt, qb.transpose(1, 2), beta=0.0, alpha=spec.scale, out=buf)
        else:
            buf = self.buffer("s", rl, st)
            s = torch.baddbmm(buf, qb, kt.transpose(1, 2), beta=0.0, alpha=spec.scale, out=buf)
        if not self.mods and cls == "full" and spec.dropout_p == 0:
            return s, None, None, None
        idx = self.index(a, b, c, d)
        if not self.mods and cls == "full":
            return s, None, idx, None
        s4 = (s.transpose(1, 2) if keys_major else s).reshape(spec.B, spec.H, b - a, st)  # the layout mods index
        tape = None
        if self.mods:
            if grad:
                tape = self._tape(s4, idx)
                s4 = tape["mod"].detach().clone()
            else:
                s4 = apply_score_mods(s4, spec, idx)
        hid = self.hidden(idx, a, b, c, d) if cls == "partial" else None
        if hid is not None:
            s4 = s4.masked_fill_(hid, _NEG_INF)
        s = s4.reshape(self.BG, rl, st)
        return (s.transpose(1, 2) if keys_major else s), hid, idx, tape

    def _tape(self, s4: Tensor, idx: BlockIndex) -> dict:
        """Run the score mods under autograd, tapping the point where float mask / bias were added
        (the input of ``score_mod``), so d(bias) = ∂L/∂(that point) without gathering full-size grads."""
        spec, tapped = self.spec, {}
        user = spec.score_mod

        def tap(s, b, h, i, j):
            tapped["post"] = s
            return user(s, b, h, i, j) if user is not None else s

        raw = s4.detach().requires_grad_()
        with torch.enable_grad():
            mod = apply_score_mods(raw, replace(spec, score_mod=tap), idx)
        return {"raw": raw, "mod": mod, "post": tapped["post"]}

    def grad_mods(self, tape: dict, ds4: Tensor, want_post: bool) -> tuple[Tensor, Tensor | None]:
        """``(∂L/∂raw, ∂L/∂post)`` from ``∂L/∂(modified scores)`` through the score mods."""
        inputs = [tape["raw"]] + ([tape["post"]] if want_post else [])
        grads = torch.autograd.grad(tape["mod"], inputs, ds4, allow_unused=True)
        d_raw = torch.zeros_like(tape["raw"]) if grads[0] is None else grads[0]
        return d_raw, (grads[1] if want_post else None)

    def add_visible(self, acc: Tensor, w: Tensor, x: Tensor, rows: list[int], hid: Tensor | None, rl: int) -> None:
        """``acc (BG, R·Lt, X) += Σ_{j ∈ rows, visible} w[:, :, j]·x_nf[:, j]``: the IEEE contributions of
        the non-finite entries ``x_nf`` of key rows ``rows``, which the products saw as zeros."""
        spec = self.spec
        xs = x[:, rows]  # (BG, J, X)
        nf = ~torch.isfinite(xs)
        if hid is not None:  # keep only rows non-finite where some query of that (b, g) can see them
            vis = (~hid[..., rows]).any(2).expand(spec.B, spec.H, len(rows))
            vis = vis.reshape(spec.B, spec.G, self.R, len(rows)).any(2).reshape(self.BG, len(rows))
            useful = (nf.any(-1) & vis).any(0).nonzero().flatten().tolist()
            if not useful:
                return
            rows, xs, nf = [rows[n] for n in useful], xs[:, useful], nf[:, useful]
        x_nf = xs.masked_fill(~nf, 0.0)
        # (BG, R·Lt, J, X) products, in chunks of J so a tile full of garbage keys stays small.
        step = max(1, (1 << 22) // max(1, self.BG * rl * xs.shape[-1]))
        for n in range(0, len(rows), step):
            cols = rows[n : n + step]
            prod = w[:, :, cols].unsqueeze(-1) * x_nf[:, n : n + step].unsqueeze(1)
            if hid is not None:
                prod = prod.masked_fill(self.pack(hid[..., cols], rl).unsqueeze(-1), 0.0)
            acc += prod.sum(2)

    def zeroed(self, t3: Tensor, c: int, d: int) -> Tensor:
        """Tile ``[c, d)`` of ``t3`` with its non-finite entries set to 0 (a copy)."""
        t = t3[:, c:d]
        return torch.where(torch.isfinite(t), t, torch.zeros_like(t))

    # ---- forward

    def forward(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        spec, ct = self.spec, self.ct
        B, H, E, pd = spec.B, spec.H, self.v3.shape[-1], spec.dropout_p
        out = torch.zeros(B, H, self.Lb, E, dtype=ct, device=self.q5.device)
        lse = torch.full((B, H, self.Lb), _NEG_INF, dtype=ct, device=self.q5.device)
        m, l = lse.clone(), torch.zeros_like(lse)
        if self.Lb == 0 or self.Sb == 0:
            return out, lse, m, l
        for a, b in self.tiles(self.Lb, self.tq):
            qb = self.q_tile(a, b)
            rl = qb.shape[1]
            # Keys-major products sum in another order than the backward's query-major ones: when a
            # backward will recompute these scores, both must be the same numbers (see `backward`).
            km = rl <= _KEYS_MAJOR_ROWS and not spec.needs_grad
            state = SoftmaxState.empty((self.BG, rl), dtype=ct, device=qb.device)
            acc = torch.zeros(self.BG, rl, E, dtype=ct, device=qb.device)
            for c, d in self.tiles(self.Sb, self.tk):
                cls = self.cls(a, b, c, d)
                if cls == "empty":
                    continue
                s, hid, idx, _ = self.scores(qb, a, b, c, d, cls, km)
                p, alpha = state.update(s, dim=1 if km else 2, inplace=True)  # p = exp(s - m_new)
                acc.mul_(alpha.unsqueeze(-1))  # rescale the past to the new max
                pr = p.transpose(1, 2) if km else p  # (BG, R·Lt, St)
                if pd > 0:
                    pr = pr.mul_(self.keep(idx, rl, d - c))  # l already holds the undropped sum
                if not self.check or hid is None:  # every key of the tile visible: IEEE as it comes
                    acc.baddbmm_(pr, self.v3[:, c:d])
                    continue
                pv = torch.bmm(pr, self.v3[:, c:d], out=self.buffer("pv", rl, E))
                if not all_finite(pv):  # a non-finite V entry (maybe hidden) or a NaN row: the careful path
                    bad = self.bad_rows(self.v3, c, d)
                    if bad and hid is not None:
                        pv = torch.bmm(pr, self.zeroed(self.v3, c, d))
                        self.add_visible(pv, pr, self.v3[:, c:d], bad, hid, rl)
                acc.add_(pv)
            norm = state.l.masked_fill(state.l == 0, 1.0).unsqueeze(-1)
            if pd > 0:
                norm = norm * (1.0 - pd)
            out[:, :, a:b] = acc.div_(norm).view(B, H, b - a, E)
            lse[:, :, a:b] = state.lse.view(B, H, b - a)
            m[:, :, a:b], l[:, :, a:b] = state.m.view(B, H, b - a), state.l.view(B, H, b - a)
        return out, lse, m, l

    # ---- backward

    def backward(self, dout, m, l, delta, dq, dk, dv, d_float_mask, d_bias) -> None:
        spec, ct = self.spec, self.ct
        B, H, G, BG, R, pd = spec.B, spec.H, spec.G, self.BG, self.R, spec.dropout_p
        D, E, Sb = self.k3.shape[-1], self.v3.shape[-1], self.Sb
        if self.Lb == 0 or Sb == 0:
            return
        do5 = dout.detach().to(ct).reshape(BG, R, self.Lb, E)
        empty = l == 0  # empty rows: p = exp(-inf - 0) / 1 = 0
        m5 = m.detach().to(ct).masked_fill(empty, 0.0).reshape(BG, R, self.Lb)
        l5 = l.detach().to(ct).masked_fill(empty, 1.0).reshape(BG, R, self.Lb)
        delta5 = delta.detach().to(ct).reshape(BG, R, self.Lb)
        # Accumulate straight into dk/dv when they can be viewed as (BG, Sb, X), else into scratch.
        dk3 = dk.view(BG, Sb, D) if dk.is_contiguous() else torch.zeros(BG, Sb, D, dtype=ct, device=dk.device)
        dv3 = dv.view(BG, Sb, E) if dv.is_contiguous() else torch.zeros(BG, Sb, E, dtype=ct, device=dv.device)
        extras = [t for t in (d_float_mask, d_bias) if t is not None]
        nonlinear = spec.softcap is not None or spec.score_mod is not None
        # Autograd only through nonlinear mods; ∂/∂(bias point) differs from dS only through score_mod.
        want_post = bool(extras) and spec.score_mod is not None
        for a, b in self.tiles(self.Lb, self.tq):
            qb = self.q_tile(a, b)
            rl = qb.shape[1]
            dob = do5[:, :, a:b].reshape(BG, rl, E)
            m_b, l_b = m5[:, :, a:b].reshape(BG, rl, 1), l5[:, :, a:b].reshape(BG, rl, 1)
            delta_b = delta5[:, :, a:b].reshape(BG, rl, 1)
            dqb = torch.zeros_like(qb)
            for c, d in self.tiles(Sb, self.tk):
                cls = self.cls(a, b, c, d)
                if cls == "empty":
                    continue
                st = d - c
                s, hid, idx, tape = self.scores(qb, a, b, c, d, cls, grad=nonlinear)
                p = s.sub_(m_b).exp_().div_(l_b)  # P = exp(S - m) / l: the forward's weights
                dp = torch.bmm(dob, self.v3[:, c:d].transpose(1, 2), out=self.buffer("dp", rl, st))
                if pd > 0:
                    keep = self.keep(idx, rl, st)
                    dv3[:, c:d].baddbmm_((p * keep).transpose(1, 2), dob, alpha=1.0 / (1.0 - pd))
                    dp.mul_(keep).div_(1.0 - pd)
                else:
                    dv3[:, c:d].baddbmm_(p.transpose(1, 2), dob)
                ds = p.mul_(dp.sub_(delta_b))  # dS = P ∘ (dP - Δ)
                d_post = ds
                if tape is not None:
                    d_raw, d_post4 = self.grad_mods(tape, ds.view(B, H, b - a, st), want_post)
                    d_post = d_post4.reshape(BG, rl, st) if d_post4 is not None else ds
                    ds = d_raw.reshape(BG, rl, st)
                dq_t = torch.bmm(ds, self.k3[:, c:d], out=self.buffer("dq", rl, D))
                if self.check and hid is not None and not all_finite(dq_t):
                    # The careful path: 0·NaN from a hidden V column (in dP) or a hidden K row (in dS·K).
                    bad_k = self.bad_rows(self.k3, c, d)
                    if bad_k or self.bad_rows(self.v3, c, d):
                        h = self.pack(hid, rl)
                        masked = ds.masked_fill(h, 0.0)
                        d_post = masked if d_post is ds else d_post.masked_fill(h, 0.0)
                        ds = masked
                        dq_t = torch.bmm(ds, self.zeroed(self.k3, c, d))
                        if bad_k:
                            self.add_visible(dq_t, ds, self.k3[:, c:d], bad_k, hid, rl)
                dqb.add_(dq_t)
                for acc_t in extras:
                    _scatter(acc_t, d_post.reshape(B, H, b - a, st), self.i0 + a, self.j0 + c)
                dk3[:, c:d].baddbmm_(ds.transpose(1, 2), qb, alpha=spec.scale)  # dK = scale·dSᵀ·Q
            dq[:, :, a:b] += dqb.mul_(spec.scale).view(B, H, b - a, D)
        if not dk.is_contiguous():
            dk += dk3.view(B, G, Sb, D)
        if not dv.is_contiguous():
            dv += dv3.view(B, G, Sb, E)

    # ---- weights

    def weights(self) -> Tensor:
        """Normalized weights, two passes over the tiles: the rows' running ``(m, l)`` first, then
        ``exp(s - m) / l`` — rounded like a plain softmax. ``exp(s - lse)`` would carry ``lse``'s own
        rounding (``|lse|·eps``, and whatever path computed it) into every weight."""
        spec = self.spec
        B, H = spec.B, spec.H
        w = torch.zeros(B, H, self.Lb, self.Sb, dtype=self.ct, device=self.q5.device)
        for a, b in self.tiles(self.Lb, self.tq):
            qb = self.q_tile(a, b)
            state = SoftmaxState.empty((self.BG, qb.shape[1]), dtype=self.ct, device=qb.device)
            cols = [(c, d, self.cls(a, b, c, d)) for c, d in self.tiles(self.Sb, self.tk)]
            cols = [(c, d, cls) for c, d, cls in cols if cls != "empty"]
            for c, d, cls in cols:
                state.update(self.scores(qb, a, b, c, d, cls)[0].clone(), inplace=True)
            empty = state.l == 0
            m = state.m.masked_fill(empty, 0.0).unsqueeze(-1)
            inv_l = 1.0 / state.l.masked_fill(empty, 1.0).unsqueeze(-1)
            for c, d, cls in cols:
                s = self.scores(qb, a, b, c, d, cls)[0]
                w[:, :, a:b, c:d] = s.sub_(m).exp_().mul_(inv_l).view(B, H, b - a, d - c)
        return w


def _scatter(dst: Tensor, g: Tensor, i0: int, j0: int) -> None:
    """``dst[..., rows, cols] += g`` summed over ``dst``'s broadcast (size-1) dims; ``g`` is ``(B, H, Lt, St)``."""
    dims = [n for n in range(4) if dst.shape[n] == 1 and g.shape[n] != 1]
    if dims:
        g = g.sum(dims, keepdim=True)
    rows = slice(i0, i0 + g.shape[2]) if dst.shape[2] != 1 else slice(None)
    cols = slice(j0, j0 + g.shape[3]) if dst.shape[3] != 1 else slice(None)
    dst[:, :, rows, cols] += g

