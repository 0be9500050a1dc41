"""FlashAttention's accuracy rule on the grid case that failed (issue 21): fp32, causal + local window,
D = 128, L = 203 / S = 113 and swapped, batch 8 — dq, dk, dv against the float64 reference.

The backward recomputes P' = exp(s - lse) from the forward's float lse, whose rounding and exp make
each row of P' sum to 1 ± 1e-6, and took Δ = rowsum(dO ∘ O) from the forward's output, which differs
from Σ_j P'·dP by as much: dV came out 3× the reference engine's error and dK 2×. With P = P'/n and
Δ = Σ_j P·dP (engines/kernel.py, row_stats) both are at the reference's level; see _OPEN below for
where the backward takes that pass today.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import attnkit
from attnkit.engines import kernel

from conftest import err

FLOOR = 1e-6


def _grads(q, k, v, dout, dtype, engine, path=None, **kw):
    leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
    with kernel.force_path(path) if path else contextlib.nullcontext():
        out = attnkit.attention(*leaves, engine=engine, **kw)
    return [out.detach(), *torch.autograd.grad(out, leaves, dout.to(dtype))]


# The row-statistics pass that makes every variant pass costs a forward+backward 1.36x (B=1 H=8
# L=2048 D=64 fp32, measured 2026-12-06), so the backward takes it only where the lse lost its log l
# (|lse| >= 128). Without it these variants exceed the rule by up to 1.6x (dV 4.4e-6 against an
# allowance of 3.8e-6; torch's own SDPA kernel exceeds it on other variants, dV 5.6e-6 vs 5.1e-6).
# Issue 21 item 2 stays open on them: strict, so a fix that makes them pass shows up.
_OPEN = {("flash", "fused", 203, 113, True, 10), ("flash", "fused", 203, 113, True, 60),
         ("flash", "torch", 203, 113, True, 60), ("flash", "torch", 203, 113, "top_left", 10),
         ("flash", "torch", 203, 113, "top_left", 60), ("flash", "torch", 113, 203, True, 10),
         ("flash", "torch", 113, 203, True, 60), ("flash", "torch", 113, 203, "top_left", 10),
         ("flash", "torch", 113, 203, "top_left", 60), ("auto", None, 203, 113, True, 10),
         ("auto", None, 203, 113, True, 60)}
_VARIANTS = [
    pytest.param(e, p, L, S, c, w, marks=pytest.mark.xfail(strict=True, reason="issue 21 item 2 (see _OPEN)"))
    if (e, p, L, S, c, w) in _OPEN else (e, p, L, S, c, w)
    for e, p in [("flash", "fused"), ("flash", "torch"), ("auto", None)]
    for L, S in [(203, 113), (113, 203)] for c in [True, "top_left"] for w in [10, 60]
]


@pytest.mark.parametrize("engine,path,L,S,causal,window", _VARIANTS)
def test_causal_local_grid_case_follows_the_flash_rule(engine, path, L, S, causal, window):
    g = torch.Generator().manual_seed(0)
    B, H, D = 8, 4, 128
    q, k, v = (torch.randn(B, H, n, D, generator=g) for n in (L, S, S))
    dout = torch.randn(B, H, L, D, generator=g)
    kw = dict(causal=causal, window=(window, 0))
    ref = _grads(q, k, v, dout, torch.float64, "reference", **kw)
    base = _grads(q, k, v, dout, torch.float32, "reference", **kw)
    ours = _grads(q, k, v, dout, torch.float32, engine, path, **kw)
    for name, a, b, r in zip(("out", "dq", "dk", "dv"), ours, base, ref):
        assert err(a, r) <= 2 * err(b, r) + FLOOR, f"{name}: {err(a, r):.3g} vs reference engine {err(b, r):.3g}"
