"""The classic encoder-decoder score functions as modules: dot, bilinear ("general"), additive ("concat").

A decoder state ``s`` (the query) scores every encoder state ``h_j`` (the keys); softmax
turns the scores into weights ``α``; the context is ``C = Σ_j α_j v_j`` (values default to
the keys)::

    dot       score(s, h) = sᵀh            (optionally / √D)      Luong et al. 2015
    general   score(s, h) = sᵀ W h                                Luong et al. 2015
    concat    score(s, h) = vᵀ tanh(W_q s + W_k h)                Bahdanau et al. 2015

Dot and bilinear are ordinary scaled-dot-product attention with one head (bilinear projects
the query by ``Wᵀ`` first: ``sᵀWh = (Wᵀs)ᵀh``), so they call [`attnkit.attention`][attnkit.functional.attention].
The additive score is not a dot product: a naive implementation broadcasts ``W_q s_i + W_k h_j``
into an ``(B, L, S, A)`` tensor. Here it is computed tile by tile over query and key blocks,
forward and backward (the backward recomputes each tile's ``tanh`` instead of saving it), so
memory beyond the ``(B, L, S)`` scores is one tile.

Shapes: ``query (B, L, Dq)`` or ``(B, Dq)`` for a single decoder step,
``keys (B, S, Dk)``, ``values (B, S, Dv)``. Every module returns ``(context, weights)``:
``(B, L, Dv)`` and ``(B, L, S)``, or ``(B, Dv)`` and ``(B, S)`` for a 2-D query.

Masks: ``mask`` is boolean, True = may attend; a 2-D mask is ``(B, S)`` (key padding, the same
for every query), a 3-D mask broadcasts to ``(B, L, S)``. ``kv_lengths`` ``(B,)``: keys at or past
the length are padding. A query that sees no key gets weights 0 and context 0 (never NaN).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import AttnkitError
from ..functional import attention
from ..softmax import softmax

__all__ = ["DotAttention", "BilinearAttention", "AdditiveAttention", "additive_scores"]

TILE_ELEMENTS = 1 << 22
"""Default cap on the elements of one additive-score tile ``(B, Lb, Sb, A)`` (4 Mi floats = 16 MB fp32)."""


# --------------------------------------------------------------------------- argument checks


def _prepare(query: Tensor, keys: Tensor, values: Tensor | None) -> tuple[Tensor, Tensor, Tensor, bool]:
    """``(query (B, L, Dq), keys, values, single_step)`` with shapes checked."""
    values = keys if values is None else values
    single = query.dim() == 2
    if query.dim() not in (2, 3):
        raise AttnkitError.build("query of shape (B, L, Dq) or (B, Dq)", f"{tuple(query.shape)}", "batch the queries")
    if keys.dim() != 3 or values.dim() != 3:
        raise AttnkitError.build(
            "keys (B, S, Dk) and values (B, S, Dv)", f"{tuple(keys.shape)} and {tuple(values.shape)}",
            "put the source positions on dim 1",
        )
    q = query.unsqueeze(1) if single else query
    if keys.shape[0] != q.shape[0] or values.shape[:2] != keys.shape[:2]:
        raise AttnkitError.build(
            f"keys and values with batch B={q.shape[0]} and the same S",
            f"keys {tuple(keys.shape)}, values {tuple(values.shape)}", "match batch and source length",
        )
    return q, keys, values, single


def _visible(mask: Tensor | None, kv_lengths: Tensor | None, B: int, L: int, S: int, device: torch.device) -> Tensor | None:
    """One boolean ``(B|1, L|1, S)`` tensor (True = may attend) from ``mask`` and ``kv_lengths``."""
    vis = None
    if mask is not None:
        if mask.dtype != torch.bool:
            raise AttnkitError.build("a boolean mask (True = may attend)", str(mask.dtype), "use mask.bool()")
        m = mask.unsqueeze(1) if mask.dim() == 2 else mask  # (B, S) is key padding for every query
        try:
            if m.dim() != 3 or torch.broadcast_shapes(m.shape, (B, L, S)) != (B, L, S):
                raise RuntimeError
        except RuntimeError:
            raise AttnkitError.build(
                f"mask of shape (B, S) = ({B}, {S}) or broadcastable to (B, L, S) = ({B}, {L}, {S})",
                f"{tuple(mask.shape)}", "pass a key-padding mask (B, S) or a (B|1, L|1, S) mask",
            ) from None
        vis = m.to(device)
    if kv_lengths is not None:
        lengths = torch.as_tensor(kv_lengths, device=device)
        if lengths.shape != (B,) or lengths.is_floating_point():
            raise AttnkitError.build(f"integer kv_lengths of shape ({B},)", f"{lengths.dtype} {tuple(lengths.shape)}",
                                     "one length per batch row")
        keep = (torch.arange(S, device=device) < lengths.view(B, 1)).unsqueeze(1)  # (B, 1, S)
        vis = keep if vis is None else vis & keep
    return vis


def _finish(context: Tensor, weights: Tensor, single: bool) -> tuple[Tensor, Tensor]:
    return (context.squeeze(1), weights.squeeze(1)) if single else (context, weights)


def _dot(q: Tensor, keys: Tensor, values: Tensor, vis: Tensor | None, scale: float) -> tuple[Tensor, Tensor]:
    """``softmax(q·kᵀ·scale)·v`` via [`attnkit.attention`][attnkit.functional.attention] with one head: ``(B, L, Dv), (B, L, S)``."""
    if q.shape[-1] != keys.shape[-1]:
        raise AttnkitError.build(
            f"query dim Dq equal to key dim Dk={keys.shape[-1]} for a dot score", f"Dq={q.shape[-1]}",
            "use BilinearAttention(query_dim, key_dim) or project the query",
        )
    mask4 = None if vis is None else vis.unsqueeze(1)  # (B|1, 1, L|1, S): one head
    res = attention(q.unsqueeze(1), keys.unsqueeze(1), values.unsqueeze(1), mask=mask4, scale=scale,
                    return_weights=True)
    return res.out.squeeze(1), res.weights.squeeze(1)


# --------------------------------------------------------------------------- dot and bilinear


class DotAttention(nn.Module):
    """Luong's dot score ``score(s, h) = sᵀh`` (or ``sᵀh / √D`` with ``scaled=True``); no parameters.

    Needs ``Dq == Dk``. See the module docstring for shapes and masks.

    Example:
        >>> import torch
        >>> from attnkit.nn import DotAttention
        >>> s, h = torch.randn(2, 16), torch.randn(2, 7, 16)
        >>> context, weights = DotAttention()(s, h, kv_lengths=torch.tensor([7, 3]))
        >>> context.shape, weights.shape, weights[1, 3:].abs().sum().item()
        (torch.Size([2, 16]), torch.Size([2, 7]), 0.0)
    """

    def __init__(self, scaled: bool = False) -> None:
        super().__init__()
        self.scaled = scaled

    def forward(self, query: Tensor, keys: Tensor, values: Tensor | None = None, *, mask: Tensor | None = None,
                kv_lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        q, keys, values, single = _prepare(query, keys, values)
        vis = _visible(mask, kv_lengths, q.shape[0], q.shape[1], keys.shape[1], q.device)
        scale = 1.0 / math.sqrt(q.shape[-1]) if self.scaled and q.shape[-1] else 1.0
        return _finish(*_dot(q, keys, values, vis, scale), single)

    def extra_repr(self) -> str:
        return f"scaled={self.scaled}"


class BilinearAttention(nn.Module):
    """Luong's "general" score ``score(s, h) = sᵀ W h`` with ``W`` of shape ``(Dq, Dk)``.

    Computed as the dot score of the projected query ``Wᵀs`` (one ``(B, L, Dk)`` matmul), then
    [`attnkit.attention`][attnkit.functional.attention]. See the module docstring for shapes and masks.

    Example:
        >>> import torch
        >>> from attnkit.nn import BilinearAttention
        >>> att = BilinearAttention(query_dim=8, key_dim=12)
        >>> context, weights = att(torch.randn(2, 5, 8), torch.randn(2, 7, 12))
        >>> context.shape, weights.sum(-1).allclose(torch.ones(2, 5))
        (torch.Size([2, 5, 12]), True)
    """

    def __init__(self, query_dim: int, key_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(query_dim, key_dim))  # W in sᵀWh
        nn.init.xavier_uniform_(self.weight)

    def forward(self, query: Tensor, keys: Tensor, values: Tensor | None = None, *, mask: Tensor | None = None,
                kv_lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        q, keys, values, single = _prepare(query, keys, values)
        if q.shape[-1] != self.weight.shape[0]:
            raise AttnkitError.build(f"query dim Dq={self.weight.shape[0]}", f"{q.shape[-1]}", "match query_dim")
        vis = _visible(mask, kv_lengths, q.shape[0], q.shape[1], keys.shape[1], q.device)
        return _finish(*_dot(q @ self.weight, keys, values, vis, 1.0), single)  # sᵀW, then ·h


# --------------------------------------------------------------------------- additive, tiled


def _tiles(n: int, block: int) -> list[tuple[int, int]]:
    return [(i, min(i + block, n)) for i in range(0, n, block)]


class _AdditiveScores(torch.autograd.Function):
    """``scores[b,i,j] = Σ_a v_a·tanh(qp[b,i,a] + kp[b,j,a])``, one ``(B, Lb, Sb, A)`` tile at a time.

    Backward recomputes each tile's ``t = tanh(·)`` (nothing of size L·S·A is saved) and uses
    ``∂t/∂x = 1 - t²``: with ``g`` the incoming gradient and ``u = g·v·(1 - t²)``,
    ``∂qp[i] = Σ_j u``, ``∂kp[j] = Σ_i u``, ``∂v = Σ_{b,i,j} g·t``.
    """

    @staticmethod
    def forward(ctx, qp: Tensor, kp: Tensor, v: Tensor, lb: int, sb: int) -> Tensor:  # type: ignore[override]
        B, L, _ = qp.shape
        S = kp.shape[1]
        scores = qp.new_empty(B, L, S)
        for i0, i1 in _tiles(L, lb):
            for j0, j1 in _tiles(S, sb):
                t = (qp[:, i0:i1, None, :] + kp[:, None, j0:j1, :]).tanh_()  # (B, Lb, Sb, A), in place: one tile
                scores[:, i0:i1, j0:j1] = t.mul_(v).sum(-1)
        ctx.save_for_backward(qp, kp, v)
        ctx.blocks = (lb, sb)
        return scores

    @staticmethod
    def backward(ctx, g: Tensor):  # type: ignore[override]
        qp, kp, v = ctx.saved_tensors
        lb, sb = ctx.blocks
        dq, dk, dv = torch.zeros_like(qp), torch.zeros_like(kp), torch.zeros_like(v)
        for i0, i1 in _tiles(qp.shape[1], lb):
            for j0, j1 in _tiles(kp.shape[1], sb):
                t = (qp[:, i0:i1, None, :] + kp[:, None, j0:j1, :]).tanh_()  # recomputed, (B, Lb, Sb, A)
                gt = g[:, i0:i1, j0:j1]  # (B, Lb, Sb)
                dv += torch.einsum("blsa,bls->a", t, gt)
                u = t.square_().neg_().add_(1).mul_(gt[..., None]).mul_(v)  # g·v·(1 - t²), reusing t's memory
                dq[:, i0:i1] += u.sum(2)
                dk[:, j0:j1] += u.sum(1)
        return dq, dk, dv, None, None


def _block_sizes(B: int, L: int, S: int, A: int, tile_elements: int) -> tuple[int, int]:
    """Query and key block sizes with ``B·Lb·Sb·A <= tile_elements`` (at least one pair)."""
    pairs = max(1, tile_elements // max(1, B * A))
    lb = max(1, min(L, 64, pairs))
    sb = max(1, min(S, pairs // lb))
    return lb, sb


def additive_scores(qp: Tensor, kp: Tensor, v: Tensor, *, tile: tuple[int, int] | None = None,
                    tile_elements: int = TILE_ELEMENTS) -> Tensor:
    """Bahdanau scores ``vᵀ tanh(qp_i + kp_j)`` for projected queries and keys, without an L×S×A tensor.

    Args:
        qp: projected queries ``W_q s``, ``(B, L, A)``.
        kp: projected keys ``W_k h`` (plus any bias), ``(B, S, A)``.
        v: ``(A,)``.
        tile: ``(Lb, Sb)`` query and key block sizes; ``None`` picks the largest blocks with
            ``B·Lb·Sb·A <= tile_elements``. The result does not depend on the tiling.

    Returns:
        Scores ``(B, L, S)``. Differentiable in ``qp``, ``kp`` and ``v``; the backward pass
        recomputes tiles, so its extra memory is also one tile.

    Example:
        >>> import torch
        >>> qp, kp, v = torch.randn(2, 5, 8), torch.randn(2, 9, 8), torch.randn(8)
        >>> naive = (torch.tanh(qp[:, :, None] + kp[:, None]) * v).sum(-1)  # (B, L, S, A) materialized
        >>> torch.allclose(additive_scores(qp, kp, v, tile=(2, 3)), naive, atol=1e-6)
        True
    """
    if qp.dim() != 3 or kp.dim() != 3 or v.dim() != 1 or not (qp.shape[0] == kp.shape[0]) \
            or not (qp.shape[2] == kp.shape[2] == v.shape[0]):
        raise AttnkitError.build(
            "qp (B, L, A), kp (B, S, A), v (A,)", f"{tuple(qp.shape)}, {tuple(kp.shape)}, {tuple(v.shape)}",
            "project queries and keys to the same attention dim A",
        )
    B, L, A = qp.shape
    S = kp.shape[1]
    if tile is None:
        lb, sb = _block_sizes(B, L, S, A, tile_elements)
    else:
        lb, sb = (int(x) for x in tile)
        if lb < 1 or sb < 1:
            raise AttnkitError.build("tile=(Lb, Sb) with positive sizes", repr(tile), "e.g. tile=(64, 128)")
    return _AdditiveScores.apply(qp, kp, v, lb, sb)


class AdditiveAttention(nn.Module):
    """Bahdanau's "concat" score ``score(s, h) = vᵀ tanh(W_q s + W_k h + b)``.

    Scores are computed by `additive_scores` (tiled; no ``(B, L, S, A)`` tensor when ``L``
    and ``S`` are large), normalized with `attnkit.softmax` under the mask; a query with
    no visible key gets weights 0 and context 0. See the module docstring for shapes and masks.

    Args:
        query_dim: ``Dq``, the width of a query.
        key_dim: ``Dk``, the width of a key.
        attn_dim: ``A``, the width of the hidden layer inside the score (default ``Dk``).
        tile: fixed ``(Lb, Sb)`` block sizes, or ``None`` to bound a tile by ``tile_elements``.

    Example:
        >>> import torch
        >>> from attnkit.nn import AdditiveAttention
        >>> att = AdditiveAttention(query_dim=8, key_dim=12, attn_dim=10)
        >>> mask = torch.tensor([[True] * 7, [True] * 2 + [False] * 5])
        >>> context, weights = att(torch.randn(2, 8), torch.randn(2, 7, 12), mask=mask)
        >>> context.shape, weights.sum(-1).allclose(torch.ones(2)), weights[1, 2:].abs().sum().item()
        (torch.Size([2, 12]), True, 0.0)
    """

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int | None = None, *,
                 tile: tuple[int, int] | None = None, tile_elements: int = TILE_ELEMENTS) -> None:
        super().__init__()
        attn_dim = key_dim if attn_dim is None else attn_dim
        self.query_proj = nn.Linear(query_dim, attn_dim, bias=False)  # W_q
        self.key_proj = nn.Linear(key_dim, attn_dim)  # W_k and b
        self.v = nn.Parameter(torch.empty(attn_dim).uniform_(-1 / math.sqrt(attn_dim), 1 / math.sqrt(attn_dim)))
        self.tile, self.tile_elements = tile, tile_elements

    def forward(self, query: Tensor, keys: Tensor, values: Tensor | None = None, *, mask: Tensor | None = None,
                kv_lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        q, keys, values, single = _prepare(query, keys, values)
        B, L, S = q.shape[0], q.shape[1], keys.shape[1]
        vis = _visible(mask, kv_lengths, B, L, S, q.device)
        scores = additive_scores(self.query_proj(q), self.key_proj(keys), self.v, tile=self.tile,
                                 tile_elements=self.tile_elements)  # (B, L, S)
        weights = softmax(scores, -1, mask=vis)  # masked -> 0; rows with no visible key -> all 0
        return _finish(weights @ values, weights, single)
