"""The implementations ``attnkit bench`` times: attnkit's engine and the alternatives a user has.

Each ``make_<impl>(case, q, k, v)`` returns ``(runner, note)``: a zero-argument callable computing
the case's attention with ``q (B, H, L, D)``, ``k, v (B, G, S, D)``, and a note for the table
(``""`` if none); or it raises `Unavailable` with a short reason (an ``n/a`` cell, never a
crash):

- ``flash``: attnkit with the case's engine (``flash``, or ``decode`` for decoding shapes);
- ``plain``: the same engine without ALiBi/softcap (for "≤ 1.3× our plain forward" targets);
- ``sdpa``: ``torch`` SDPA in the same dtype, with the equivalent dense mask/bias where SDPA
  lacks the feature (window → bool mask, ALiBi → float bias; softcap is not expressible);
- ``naive``: the materialized ``softmax(q·kᵀ·scale + bias)·v`` a user would write;
- ``flex``: ``torch.compile(flex_attention)``, forward only, window/causal as a block mask and
  ALiBi/softcap as a ``score_mod``; compiled once here, outside the timing.

The dense masks use the aligned query position ``p = i + S - L`` (bottom-right, DESIGN.md), so
every implementation computes the same result; ``tests/test_bench.py`` checks that.
:func:`step` turns one of them into the timed step (forward, or forward and backward).
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .._numerics import NEG_INF
from ..functional import attention, explain
from ..scores import alibi_slopes
from .cases import NAIVE_LIMIT_BYTES, Case

__all__ = ["Unavailable", "MAKERS", "dense_masks", "inputs", "step"]

Runner = Callable[[], Tensor]
Made = tuple[Runner, str]


class Unavailable(Exception):
    """An implementation cannot run a case; ``str(err)`` is the short reason shown in the table."""


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:160]}" if text else type(err).__name__


def dense_masks(case: Case) -> tuple[Tensor | None, Tensor | None]:
    """``(visible, bias)``: the ``(L, S)`` bool mask (True = attend) for causal/window, or ``None``;
    the ``(1, H, L, S)`` float32 ALiBi bias ``-slope·|p - j|``, or ``None``."""
    L, S = case.L, case.S
    p = torch.arange(L).view(-1, 1) + (S - L)  # aligned query positions, bottom-right
    j = torch.arange(S).view(1, -1)
    visible = None
    if case.causal:
        visible = j <= p
    if case.window is not None:
        left, right = case.window
        w = torch.ones(L, S, dtype=torch.bool)
        if left is not None:
            w &= j >= p - left
        if right is not None:
            w &= j <= p + right
        visible = w if visible is None else visible & w
    bias = None
    if case.alibi:
        bias = -alibi_slopes(case.H).view(1, -1, 1, 1) * (p - j).abs().float()
    return visible, bias


def make_flash(case: Case, q: Tensor, k: Tensor, v: Tensor, *, plain: bool = False) -> Made:
    kw: dict = dict(causal=case.causal, window=case.window, engine=case.engine)
    if case.dropout:
        kw.update(dropout_p=case.dropout, seed=1)
    if not plain and case.alibi:
        kw["alibi_slopes"] = alibi_slopes(case.H)
    if not plain and case.softcap is not None:
        kw["softcap"] = case.softcap
    # explain() says which engine and tile path run (and why), so a slow row is not misread.
    how = "; ".join(line.strip() for line in str(explain(q, k, v, **kw)).splitlines())
    return (lambda: attention(q, k, v, **kw)), how


def make_plain(case: Case, q: Tensor, k: Tensor, v: Tensor) -> Made:
    if not (case.alibi or case.softcap is not None):
        raise Unavailable("the case has no ALiBi/softcap to leave out")
    run, how = make_flash(case, q, k, v, plain=True)
    return run, f"without ALiBi/softcap; {how}"


def make_sdpa(case: Case, q: Tensor, k: Tensor, v: Tensor) -> Made:
    if case.softcap is not None:
        raise Unavailable("softcap is not expressible in SDPA")
    visible, bias = dense_masks(case)
    is_causal = case.causal and case.L == case.S and case.window is None  # SDPA's causal is top-left
    if is_causal:
        visible = None
    mask = visible
    if bias is not None:
        mask = bias if visible is None else bias.masked_fill(~visible, NEG_INF)
    kw = dict(attn_mask=mask, is_causal=is_causal, dropout_p=case.dropout, enable_gqa=case.G != case.H)
    note = ("dense float bias" if bias is not None else "dense bool mask") if mask is not None else ""
    return (lambda: F.scaled_dot_product_attention(q, k, v, **kw)), note


def make_naive(case: Case, q: Tensor, k: Tensor, v: Tensor) -> Made:
    B, H, G, L, S = case.B, case.H, case.G, case.L, case.S
    scale = 1.0 / math.sqrt(case.D)
    visible, bias = dense_masks(case)

    def naive() -> Tensor:
        # GQA without copying K/V: the H/G query heads of a group share one key matrix.
        s = (q.reshape(B, G, H // G * L, -1) @ k.transpose(-1, -2)).view(B, H, L, S) * scale
        if case.softcap is not None:
            s = torch.tanh(s / case.softcap) * case.softcap
        if bias is not None:
            s = s + bias.to(s.dtype)
        if visible is not None:
            s = s.masked_fill(~visible, NEG_INF)
        p = torch.softmax(s, -1)
        if case.dropout:
            p = F.dropout(p, case.dropout)
        return (p.view(B, G, H // G * L, S) @ v).view(B, H, L, -1)

    return naive, "materialized (B, H, L, S)"


def _flex_compile() -> Callable:
    """A fresh ``torch.compile(flex_attention)``; dynamo's cache is reset so that every case
    compiles once and none falls back to eager after hitting the recompilation limit."""
    from torch.nn.attention.flex_attention import flex_attention

    torch._dynamo.reset()
    return torch.compile(flex_attention, dynamic=False)


def make_flex(case: Case, q: Tensor, k: Tensor, v: Tensor) -> Made:
    if case.dropout:
        raise Unavailable("flex_attention has no dropout")
    if q.requires_grad:
        raise Unavailable("forward only in this benchmark")
    try:
        from torch.nn.attention.flex_attention import create_block_mask
    except ImportError as err:
        raise Unavailable(f"no flex_attention in torch {torch.__version__}") from err
    off = case.S - case.L
    window = case.window

    def mask_mod(b, h, i, j):
        p = i + off
        ok = j >= 0
        if case.causal:
            ok = ok & (j <= p)
        if window is not None and window[0] is not None:
            ok = ok & (j >= p - window[0])
        if window is not None and window[1] is not None:
            ok = ok & (j <= p + window[1])
        return ok

    slopes = alibi_slopes(case.H)
    cap = case.softcap

    def score_mod(s, b, h, i, j):  # same order as attnkit.scores: softcap, then ALiBi
        if cap is not None:
            s = torch.tanh(s / cap) * cap
        if case.alibi:
            s = s - slopes[h] * (i + off - j).abs()
        return s

    has_mask = case.causal or window is not None
    try:
        flex = _flex_compile()
        block_mask = create_block_mask(mask_mod, None, None, case.L, case.S, device="cpu") if has_mask else None
        kw = dict(
            score_mod=score_mod if (cap is not None or case.alibi) else None, block_mask=block_mask,
            scale=1.0 / math.sqrt(case.D), enable_gqa=case.G != case.H,
        )
        start = time.perf_counter()
        with torch.no_grad():
            flex(q, k, v, **kw)  # compile here, outside the timing
        compile_s = time.perf_counter() - start
    except Exception as err:  # noqa: BLE001 -- any compiler/dynamo failure becomes the column's note
        raise Unavailable(f"compile failed: {_first_line(err)}") from err
    return (lambda: flex(q, k, v, **kw)), f"torch.compile(flex_attention), compiled in {compile_s:.1f} s"


MAKERS: dict[str, Callable[..., Made]] = {
    "flash": make_flash, "plain": make_plain, "sdpa": make_sdpa, "naive": make_naive, "flex": make_flex,
}
"""Implementation name → runner factory, in table order."""


def inputs(c: Case, requires_grad: bool) -> list[Tensor]:
    """Seeded ``q (B, H, L, D)``, ``k, v (B, G, S, D)`` of the case's dtype."""
    g = torch.Generator().manual_seed(0)
    shapes = [(c.B, c.H, c.L, c.D), (c.B, c.G, c.S, c.D), (c.B, c.G, c.S, c.D)]
    dtype = getattr(torch, c.dtype)
    return [torch.randn(s, generator=g).to(dtype).requires_grad_(requires_grad) for s in shapes]


def step(c: Case, impl: str, mode: str) -> tuple[Callable[[], None], str]:
    """``(one timed step, note)`` of ``impl`` on ``c`` in ``mode`` (``"fwd"`` or ``"fwd+bwd"``);
    raises :class:`Unavailable`."""
    if impl == "naive" and c.B * c.H * c.L * c.S * 4 > NAIVE_LIMIT_BYTES:
        raise Unavailable(f"one fp32 score matrix is {c.B * c.H * c.L * c.S * 4 / 2**30:.0f} GiB")
    q, k, v = inputs(c, requires_grad=mode != "fwd")
    run, note = MAKERS[impl](c, q, k, v)
    if mode == "fwd":

        def fwd() -> None:
            with torch.no_grad():
                run()

        return fwd, note
    do = torch.randn(c.B, c.H, c.L, c.D, generator=torch.Generator().manual_seed(1)).to(q.dtype)

    def fwd_bwd() -> None:
        torch.autograd.grad(run(), (q, k, v), do)

    return fwd_bwd, note
