"""The flash engine equals the float64 reference: forward, lse, weights, gradients, dropout, across the axes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attnkit
from attnkit.engines import _tiling, flash

from conftest import assert_flash_rule, err, qkv

# float64 flash vs float64 reference differ only by summation order: a few ulps times the
# number of key blocks merged. 1e-10 is ~1e6 ulps of headroom for values of order 1.
TOL64 = 1e-10


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """Small blocks so modest inputs still span many query and key blocks (and ragged edges)."""
    monkeypatch.setattr(_tiling, "TARGET_ROWS", 64)
    monkeypatch.setattr(_tiling, "BLOCK_K", 32)


def both(q, k, v, **kw):
    ours = attnkit.attention(q, k, v, engine="flash", **kw)
    ref = attnkit.attention(q, k, v, engine="reference", **kw)
    return ours, ref


CASES = [
    dict(),
    dict(causal=True),
    dict(causal="top_left"),
    dict(window=(20, 0)),
    dict(window=(7, 11), causal=False),
    dict(causal=True, window=(None, 0)),
    dict(kv_lengths=[70, 0, 33]),
    dict(q_lengths=[1, 97, 50], kv_lengths=[70, 12, 33], causal=True),
    dict(alibi_slopes="alibi", causal=True),
    dict(softcap=3.0),
    dict(mask="bool"),
    dict(mask="float"),
    dict(score_mod="mod"),
    dict(dropout_p=0.25, seed=11),
]
SHAPES = [(3, 4, 2, 97, 70, 59, 59), (3, 4, 4, 97, 70, 16, 24), (3, 6, 1, 33, 70, 111, 8)]


def _materialize(kw, B, H, L, S, dtype):
    kw = dict(kw)
    g = torch.Generator().manual_seed(5)
    for name, n in (("kv_lengths", S), ("q_lengths", L)):
        if name in kw:
            kw[name] = torch.tensor(kw[name][:B]).clamp(max=n)
    if kw.get("alibi_slopes") == "alibi":
        kw["alibi_slopes"] = attnkit.alibi_slopes(H)
    if kw.get("mask") == "bool":
        m = torch.rand(B, 1, L, S, generator=g) > 0.3
        m[0, 0, 3] = False  # a fully masked row
        kw["mask"] = m
    elif kw.get("mask") == "float":
        kw["mask"] = torch.randn(1, H, L, S, generator=g, dtype=torch.float64).to(dtype)
    if kw.get("score_mod") == "mod":
        kw["score_mod"] = lambda s, b, h, i, j: s - 0.05 * (i - j).abs() + 0.1 * h
    return kw


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(c) or "full")
def test_forward_backward_equal_reference64(shape, case):
    B, H, G, L, S, D, E = shape
    q, k, v = qkv(B, H, G, L, S, D, E, dtype=torch.float64, seed=L + S + D, requires_grad=True)
    kw = _materialize(case, B, H, L, S, torch.float64)
    ours, ref = both(q, k, v, return_lse=True, return_weights=True, **kw)
    assert err(ours.out, ref.out) < TOL64
    assert err(ours.lse, ref.lse) < TOL64
    assert err(ours.weights, ref.weights) < TOL64
    do = torch.randn(ref.out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g_ours = torch.autograd.grad((ours.out * do).sum(), (q, k, v))
    g_ref = torch.autograd.grad((ref.out * do).sum(), (q, k, v))
    for a, b in zip(g_ours, g_ref):
        assert err(a, b) < TOL64


LOW_PRECISION = [
    (dtype, causal, shape)
    for dtype in (torch.float32, torch.float16, torch.bfloat16)
    for causal in (False, "top_left")
    for shape in ((2, 4, 2, 97, 97, 59), (2, 6, 3, 1, 300, 111))
] + [(torch.float32, causal, (1, 2, 2, 1025, 1025, 16)) for causal in (False, "top_left")]


@pytest.mark.parametrize("dtype,causal,shape", LOW_PRECISION)
def test_low_precision_flash_rule_vs_sdpa(dtype, causal, shape):
    B, H, G, L, S, D = shape
    q, k, v = qkv(B, H, G, L, S, D, seed=D, requires_grad=True)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = attnkit.attention(q64, k64, v64, causal=causal, engine="reference")
    qd, kd, vd = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    ours = attnkit.attention(qd, kd, vd, causal=causal, engine="flash")
    qs, ks, vs = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    theirs = F.scaled_dot_product_attention(qs, ks, vs, is_causal=bool(causal), enable_gqa=G != H)
    assert ours.dtype == dtype
    assert_flash_rule(ours, theirs, ref)
    do = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    g_ref = torch.autograd.grad((ref * do).sum(), (q64, k64, v64))
    g_ours = torch.autograd.grad((ours.double() * do).sum(), (qd, kd, vd))
    g_sdpa = torch.autograd.grad((theirs.double() * do).sum(), (qs, ks, vs))
    for a, b, r in zip(g_ours, g_sdpa, g_ref):
        assert_flash_rule(a, b, r)


def test_gradcheck_with_bias_and_lse():
    torch.manual_seed(0)
    q, k, v = qkv(1, 2, 1, 9, 40, 8, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(1, 2, 9, 40, dtype=torch.float64, requires_grad=True)

    def fn(q_, k_, v_, b_):
        res = attnkit.attention(q_, k_, v_, bias=b_, causal=True, engine="flash", return_lse=True)
        return res.out, res.lse.masked_fill(torch.isinf(res.lse), 0.0)

    assert torch.autograd.gradcheck(fn, (q, k, v, bias), fast_mode=True)


def test_gradcheck_score_mod_and_dropout():
    q, k, v = qkv(1, 2, 2, 6, 40, 4, dtype=torch.float64, requires_grad=True)
    mod = lambda s, b, h, i, j: s * (1.0 + 0.1 * h) - 0.02 * (i - j) ** 2  # noqa: E731
    fn = lambda q_, k_, v_: attnkit.attention(q_, k_, v_, score_mod=mod, dropout_p=0.3, seed=4, softcap=4.0, engine="flash")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v), fast_mode=True)


def test_broadcast_bias_gradient_matches_reference():
    q, k, v = qkv(2, 4, 2, 50, 70, 16, dtype=torch.float64)
    for shape in [(1, 4, 1, 70), (2, 1, 50, 70), (70,)]:
        b1 = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).requires_grad_()
        b2 = b1.detach().clone().requires_grad_()
        (attnkit.attention(q, k, v, bias=b1, engine="flash") ** 2).sum().backward()
        (attnkit.attention(q, k, v, bias=b2, engine="reference") ** 2).sum().backward()
        assert err(b1.grad, b2.grad) < TOL64


def test_dropout_identical_to_reference_any_tiling(monkeypatch):
    q, k, v = qkv(2, 4, 2, 97, 70, 16, seed=3)
    ref = attnkit.attention(q, k, v, dropout_p=0.4, seed=99, engine="reference")
    outs = []
    for rows, cols in [(64, 32), (512, 16), (4096, 1024)]:
        monkeypatch.setattr(_tiling, "TARGET_ROWS", rows)
        monkeypatch.setattr(_tiling, "BLOCK_K", cols)
        outs.append(attnkit.attention(q, k, v, dropout_p=0.4, seed=99, engine="flash"))
    for o in outs:
        assert_flash_rule(o, ref, attnkit.attention(q.double(), k.double(), v.double(), dropout_p=0.4, seed=99))


def _count_blocks(monkeypatch, **kw):
    calls = []
    original = flash._Plan.scores

    def spy(self, qb, i0, i1, j0, j1, cls, **extra):
        calls.append(cls)
        return original(self, qb, i0, i1, j0, j1, cls, **extra)

    monkeypatch.setattr(flash._Plan, "scores", spy)
    q, k, v = qkv(1, 1, 1, 1024, 1024, 8)
    monkeypatch.setattr(_tiling, "TARGET_ROWS", 64)
    monkeypatch.setattr(_tiling, "BLOCK_K", 64)
    attnkit.attention(q, k, v, engine="flash", **kw)
    return calls


def test_block_skipping(monkeypatch):
    full = _count_blocks(monkeypatch)
    assert len(full) == 16 * 16 and set(full) == {"full"}
    causal = _count_blocks(monkeypatch, causal=True)
    assert len(causal) == 16 * 17 // 2 and causal.count("partial") == 16  # only the diagonal is masked
    window = _count_blocks(monkeypatch, window=(64, 0))
    assert len(window) <= 16 * 3
    lengths = _count_blocks(monkeypatch, kv_lengths=torch.tensor([128]))
    assert len(lengths) == 16 * 2


def test_edges_empty_and_fully_masked():
    q, k, v = qkv(2, 2, 2, 0, 40, 8)
    assert attnkit.attention(q, k, v, engine="flash").shape == (2, 2, 0, 8)
    q, k, v = qkv(2, 2, 2, 5, 0, 8, E=3, requires_grad=True)
    res = attnkit.attention(q, k, v, engine="flash", return_lse=True)
    assert (res.out == 0).all() and (res.lse == float("-inf")).all()
    q, k, v = qkv(2, 2, 2, 40, 40, 8, requires_grad=True)
    res = attnkit.attention(q, k, v, engine="flash", kv_lengths=torch.tensor([0, 40]), return_lse=True, return_weights=True)
    assert (res.out[0] == 0).all() and (res.weights[0] == 0).all() and (res.lse[0] == float("-inf")).all()
    res.out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v)) and (q.grad[0] == 0).all()


def test_extreme_logits_and_nan_confined():
    q, k, v = qkv(2, 2, 2, 40, 50, 8)
    out = attnkit.attention(q * 1e4, k, v, scale=1.0, engine="flash")
    assert torch.isfinite(out).all()
    q = q.clone()
    q[1, 0, 7, 0] = float("nan")
    out = attnkit.attention(q, k, v, engine="flash")
    assert torch.isnan(out[1, 0, 7]).all() and int(torch.isnan(out).any(-1).sum()) == 1


def test_dispatch_reasons():
    q, k, v = qkv(1, 2, 2, 8, 8, 8)
    d = attnkit.explain(q, k, v, normalizer="entmax15")
    assert d.engine == "reference" and "reference-only" in d.reasons["flash"]
    with pytest.raises(attnkit.AttnkitError, match="flash"):
        attnkit.attention(q, k, v, normalizer="sparsemax", engine="flash")


def test_auto_dispatch_prefers_sdpa_then_flash_then_reference(monkeypatch):
    monkeypatch.setattr(_tiling, "BLOCK_K", 8)  # so these small inputs span several flash blocks
    q, k, v = qkv(1, 4, 2, 32, 200, 8)  # L > 16: not a decoding shape
    assert attnkit.explain(q, k, v).engine == "sdpa"
    assert attnkit.explain(q, k, v, causal="top_left").engine == "sdpa"
    d = attnkit.explain(q, k, v, causal=True)  # bottom-right with L != S
    assert d.engine == "flash" and "top-left" in d.reasons["sdpa"]
    assert attnkit.explain(q, k, v, window=(4, 0)).engine == "flash"
    assert attnkit.explain(q, k, v, dropout_p=0.1).engine == "flash"
    assert attnkit.explain(q, k, v, return_weights=True).engine == "flash"
    d = attnkit.explain(q, k, v, normalizer="sigmoid")
    assert d.engine == "reference" and set(d.reasons) >= {"sdpa", "flash"}


def test_single_block_problems_go_to_reference(monkeypatch):
    monkeypatch.setattr(_tiling, "BLOCK_K", 512)
    monkeypatch.setattr(_tiling, "TARGET_ROWS", 2048)
    q, k, v = qkv(1, 4, 2, 8, 12, 8)
    d = attnkit.explain(q, k, v, causal=True)
    assert d.engine == "reference" and "one block" in d.reasons["flash"]
    q, k, v = qkv(1, 4, 2, 600, 700, 8)
    assert attnkit.explain(q, k, v, causal=True).engine == "flash"


@pytest.mark.parametrize("kw", [dict(), dict(causal="top_left"), dict(mask="bool"), dict(mask="float")])
def test_sdpa_engine_equals_reference(kw):
    q, k, v = qkv(2, 4, 2, 33, 33, 16, dtype=torch.float64, requires_grad=True)
    kw = _materialize(kw, 2, 4, 33, 33, torch.float64)
    ours, ref = attnkit.attention(q, k, v, engine="sdpa", **kw), attnkit.attention(q, k, v, engine="reference", **kw)
    assert err(ours, ref) < TOL64
    g1 = torch.autograd.grad(ours.sum(), (q, k, v))
    g2 = torch.autograd.grad(ref.sum(), (q, k, v))
    assert all(err(a, b) < TOL64 for a, b in zip(g1, g2))
