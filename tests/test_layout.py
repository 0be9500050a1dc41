"""``attention(..., layout="blhd")``: (B, L, H, D) tensors (FlashAttention's layout) on every engine.

Each engine is forced and compared with the float64 reference run on the same data in attnkit's
(B, H, L, D) order; the conversion must be views both ways (no copy of q, k, v or out).
"""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit import AttnkitError
from attnkit.engines import dispatch

from conftest import ENGINES, assert_flash_rule, err

CASES = {  # (B, H, G, L, S, D, E), attention options
    "self": ((2, 4, 4, 9, 9, 16, 16), dict()),
    "gqa causal L!=S": ((2, 8, 2, 5, 11, 16, 8), dict(causal=True)),
    "lengths window": ((2, 4, 2, 6, 13, 8, 8), dict(kv_lengths=torch.tensor([13, 7]), window=(4, 0), causal=True)),
    "decode step": ((3, 4, 1, 1, 20, 16, 16), dict()),
    "long": ((1, 2, 2, 40, 40, 16, 16), dict(causal="top_left")),
    "gqa long causal": ((2, 8, 2, 20, 20, 16, 8), dict(causal=True)),
}
# What the engines decline (each with a reason): decode takes L <= 16; sdpa leaves short (decoding)
# shapes, windows, lengths and bottom-right L != S to the others.
DECLINED = {("decode", "long"), ("decode", "gqa long causal"), ("sdpa", "self"), ("sdpa", "gqa causal L!=S"),
            ("sdpa", "lengths window"), ("sdpa", "decode step")}


def _blhd(seed, B, H, G, L, S, D, E):
    """Contiguous (B, L, H, D) tensors, as FlashAttention's callers hold them, in float64."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, L, H, D, generator=g, dtype=torch.float64), torch.randn(B, S, G, D, generator=g, dtype=torch.float64),
            torch.randn(B, S, G, E, generator=g, dtype=torch.float64))


def _bhld(*ts):
    return [t.transpose(1, 2) for t in ts]


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("engine", ENGINES)
def test_blhd_on_every_engine_matches_the_float64_reference(engine, case):
    dims, kw = CASES[case]
    q, k, v = _blhd(1, *dims)
    ran = False
    for dtype in (torch.float32, torch.float64):
        leaves = [t.to(dtype).requires_grad_() for t in (q, k, v)]
        try:
            out = attnkit.attention(*leaves, layout="blhd", engine=engine, **kw)
        except AttnkitError as why:
            assert "computes exactly" in str(why)  # the engine declines this spec, with a reason
            continue
        ran = True
        B, H, G, L, S, D, E = dims
        assert out.shape == (B, L, H, E) and out.dtype == dtype
        l64 = [t.detach().clone().requires_grad_() for t in (q, k, v)]
        ref = attnkit.attention(*_bhld(*l64), engine="reference", **kw).transpose(1, 2)  # back to (B, L, H, E)
        lb = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
        base = attnkit.attention(*_bhld(*lb), engine="reference", **kw).transpose(1, 2)
        dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        got = torch.autograd.grad(out, leaves, dout.to(dtype))
        want = torch.autograd.grad(ref, l64, dout)
        baseline = torch.autograd.grad(base, lb, dout.to(dtype))
        floor = 1e-12 if dtype == torch.float64 else 1e-6
        assert_flash_rule(out, base, ref, floor)
        for a, b, r in zip(got, baseline, want):
            assert a.shape == r.shape  # gradients come back in (B, L, H, D)
            assert_flash_rule(a, b, r, floor)
    assert ran == ((engine, case) not in DECLINED), f"{engine} {'declined' if not ran else 'ran'} {case}"


def test_blhd_without_the_argument_is_silently_something_else():
    """Why the argument exists: (B, L, H, D) read as (B, H, L, D) is a valid, different problem."""
    q, k, v = (t.float() for t in _blhd(3, 2, 4, 4, 9, 9, 16, 16))
    right = attnkit.attention(q, k, v, layout="blhd")
    wrong = attnkit.attention(q, k, v)  # the default reads L as heads and H as the sequence
    assert right.shape == wrong.shape and err(right, wrong) > 0.1


def test_the_layout_is_views_both_ways(monkeypatch):
    """No copy of q, k, v on the way in (the engine gets transposed views of the caller's memory),
    and out is a view of the engine's (B, H, L, E) result."""
    q, k, v = (t.float() for t in _blhd(4, 2, 4, 2, 6, 10, 8, 8))
    seen = {}
    real = dispatch.load

    def spy(name):
        mod = real(name)

        class Spy:
            def __getattr__(self, attr):
                return getattr(mod, attr)

            @staticmethod
            def run(q_, k_, v_, spec):
                seen["in"] = (q_, k_, v_)
                res = mod.run(q_, k_, v_, spec)
                seen["out"] = res.out
                return res

        return Spy()

    monkeypatch.setattr(dispatch, "load", spy)
    for engine in ("flash", "reference"):
        out = attnkit.attention(q, k, v, layout="blhd", engine=engine)
        for given, got in zip((q, k, v), seen["in"]):
            assert got.data_ptr() == given.data_ptr() and got.shape == given.transpose(1, 2).shape
            assert got.stride() == given.transpose(1, 2).stride()  # a view, not a copy
        assert out.data_ptr() == seen["out"].data_ptr() and out.shape == (2, 6, 4, 8)
    res = attnkit.attention(q, k, v, layout="blhd", engine="flash", return_lse=True, return_weights=True)
    assert res.out.shape == (2, 6, 4, 8) and res.lse.shape == (2, 4, 6) and res.weights.shape == (2, 4, 6, 10)


def test_layout_errors_and_explain():
    q = torch.randn(2, 5, 4, 8)
    with pytest.raises(AttnkitError, match=r"layout in \('bhld', 'blhd'\), got 'bshd'"):
        attnkit.attention(q, q, q, layout="bshd")
    with pytest.raises(AttnkitError, match=r'query of shape \(B, L, H, D\) for layout="blhd", got 3-D'):
        attnkit.attention(q[0], q, q, layout="blhd")
    plan = attnkit.explain(q, q, q, layout="blhd", causal=True)
    assert plan.engine == attnkit.explain(q.transpose(1, 2), q.transpose(1, 2), q.transpose(1, 2), causal=True).engine


def test_the_finiteness_check_reads_a_models_layout_in_place():
    # The spec's K/V check (one aminmax per tensor) on (B, L, H, D) storage seen as (B, H, L, D):
    # permuted back to storage order it is a view, not a copy, and still finds a NaN anywhere.
    from attnkit._numerics import _storage_order, all_finite

    t = torch.randn(2, 7, 3, 4).transpose(1, 2)  # a model's k
    assert _storage_order(t).data_ptr() == t.data_ptr() and _storage_order(t).is_contiguous()
    assert all_finite(t)
    for where in [(0, 0, 0, 0), (1, 2, 6, 3), (0, 1, 3, 2)]:
        bad = t.clone().transpose(1, 2).contiguous().transpose(1, 2)
        bad[where] = float("nan")
        assert not all_finite(bad)
    strided = torch.randn(4, 6)[:, ::2]  # no permutation makes it contiguous: checked as it is
    assert not _storage_order(strided).is_contiguous() and all_finite(strided)
