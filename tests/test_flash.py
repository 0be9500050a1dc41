"""The flash engine equals the float64 reference on both tile paths (PyTorch and fused C++, each forced):
forward, lse, weights, every gradient, dropout, hidden non-finite keys, across the axes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attnkit
from attnkit.spec import AttentionSpec
from attnkit.dropout import keep_mask
from attnkit.engines import kernel, flash
from attnkit.engines.kernel import tiles as torch_tiles
from attnkit.spec import BlockIndex

from conftest import assert_flash_rule, err, general_dispatch, qkv

# float64 flash vs float64 reference differ only by summation order: a few ulps times the
# number of key tiles merged. 1e-10 is ~1e6 ulps of headroom for values of order 1.
TOL64 = 1e-10
NAN, INF = float("nan"), float("inf")


def set_tiles(monkeypatch, rows: int, keys: int, budget: int | None = None) -> None:
    """Tiles of ``rows`` queries × ``keys`` keys (for B·H·rows·keys <= budget)."""
    monkeypatch.setattr(torch_tiles, "_MAX_TILE_Q", rows)
    monkeypatch.setattr(torch_tiles, "_MIN_TILE_Q", rows)
    monkeypatch.setattr(torch_tiles, "_MIN_TILE_K", keys)
    monkeypatch.setattr(torch_tiles, "_TILE_ELEMS", budget or rows * keys)


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch, one_thread):
    """Small tiles so modest inputs still span many query and key tiles (and ragged edges); one thread,
    because tiny per-tile ops on a 2-thread OpenMP team stall whenever another process holds a core."""
    set_tiles(monkeypatch, 8, 32)


@pytest.fixture(params=["torch", "fused"])
def tile_path(request):
    """Force one tile path for the test; the fused one is skipped (with the reason) when it cannot run."""
    if request.param == "fused" and kernel._fused()[0] is None:
        pytest.skip(f"fused tile path unavailable: {kernel._fused()[1]}")
    with kernel.force_path(request.param):
        yield request.param


def attention(*args, **kw):
    """attnkit.attention, skipping the test when the forced fused path cannot run this spec."""
    try:
        return attnkit.attention(*args, **kw)
    except attnkit.AttnkitError as e:
        if "fused tile path" in str(e):
            pytest.skip(str(e))
        raise


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
    dict(bias="bias", score_mod="mod"),
    dict(dropout_p=0.25, seed=11, bias="bias"),
    dict(kv_lengths=[50, 3, 70], mask="bool", hidden="nonfinite"),
    dict(kv_lengths=[50, 3, 70], softcap=2.0, dropout_p=0.2, seed=5, hidden="nonfinite"),
]
SHAPES = [(3, 4, 2, 97, 70, 59, 59), (3, 4, 4, 97, 70, 16, 24), (3, 6, 1, 33, 70, 111, 8)]


def _materialize(kw, B, H, L, S, dtype):
    """Concrete tensors for a case; ``hidden`` returns the keys that are hidden from every row."""
    kw = dict(kw)
    g = torch.Generator().manual_seed(5)
    for name, n in (("kv_lengths", S), ("q_lengths", L)):
        if name in kw:
            kw[name] = torch.tensor(kw[name][:B]).clamp(max=n)
    if kw.get("alibi_slopes") == "alibi":
        kw["alibi_slopes"] = attnkit.alibi_slopes(H)
    if kw.get("mask") == "bool":
        m = torch.rand(B, 1, L, S, generator=g) > 0.3
        m[0, 0, min(3, L - 1)] = False  # a fully masked row
        m[..., 5] = False  # a key hidden from every row
        kw["mask"] = m
    elif kw.get("mask") == "float":
        kw["mask"] = torch.randn(1, H, L, S, generator=g, dtype=torch.float64).to(dtype)
    if kw.get("bias") == "bias":
        bias_dtype = torch.float64 if dtype == torch.float64 else torch.float32  # biases keep float32 for half
        kw["bias"] = torch.randn(1, H, L, S, generator=g, dtype=torch.float64).to(bias_dtype)
    if kw.get("score_mod") == "mod":
        kw["score_mod"] = lambda s, b, h, i, j: s - 0.05 * (i - j).abs() + 0.1 * h
    return kw


def _poison(k, v, kw):
    """NaN/±inf in K and V where no row can see them: past kv_lengths and under an all-False mask column."""
    k, v = k.detach().clone(), v.detach().clone()
    for b, n in enumerate(kw["kv_lengths"].tolist()):
        k[b, :, n:, 0], v[b, :, n:, -1] = NAN, INF
        k[b, 0, n + 1 :], v[b, -1, n + 2 :] = -INF, NAN
    if isinstance(kw.get("mask"), torch.Tensor) and kw["mask"].dtype == torch.bool:
        k[:, :, 5, 1], v[:, :, 5] = INF, NAN
    return k, v


def _run_both(q, k, v, case, dtype=torch.float64, **extra):
    """(ours, ref, leaves_ours, leaves_ref): attention results and the tensors to differentiate."""
    B, H, L, S = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    kw = _materialize(case, B, H, L, S, dtype)
    hidden = kw.pop("hidden", None)
    bias = kw.pop("bias", None)
    kq, vq = _poison(k, v, kw) if hidden else (k.detach(), v.detach())
    out = []
    for engine, kk, vv in (("flash", kq, vq), ("reference", k.detach(), v.detach())):
        leaves = [q.detach().clone().requires_grad_(), kk.clone().requires_grad_(), vv.clone().requires_grad_()]
        b = None if bias is None else bias.detach().clone().requires_grad_()
        fn = attention if engine == "flash" else attnkit.attention
        res = fn(*leaves, engine=engine, bias=b, **kw, **extra)
        out.append((res, leaves + ([b] if b is not None else [])))
    return out


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(c) or "full")
def test_forward_backward_equal_reference64(tile_path, shape, case):
    B, H, G, L, S, D, E = shape
    q, k, v = qkv(B, H, G, L, S, D, E, dtype=torch.float64, seed=L + S + D)
    (ours, lo), (ref, lr) = _run_both(q, k, v, case, return_lse=True, return_weights=True)
    assert err(ours.out, ref.out) < TOL64
    assert err(ours.lse, ref.lse) < TOL64
    assert err(ours.weights, ref.weights) < TOL64
    do = torch.randn(ref.out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g_ours = torch.autograd.grad((ours.out * do).sum() + ours.lse.nan_to_num(0, 0, 0).sum(), lo)
    g_ref = torch.autograd.grad((ref.out * do).sum() + ref.lse.nan_to_num(0, 0, 0).sum(), lr)
    for a, b in zip(g_ours, g_ref):
        assert torch.isfinite(a).all() and err(a, b) < TOL64


LOW = [
    # (B, H, G, L, S, D, E): D 59/111, L != S, L = 1, GQA and MQA
    (2, 4, 2, 97, 70, 59, 59),
    (2, 6, 1, 1, 300, 111, 16),
    (1, 4, 4, 33, 97, 16, 24),
]
LOW_CASES = [
    dict(),
    dict(causal="top_left"),
    dict(kv_lengths=[0, 45], causal=True),  # batch 0: every row fully masked
    dict(kv_lengths=[50, 3], mask="bool", hidden="nonfinite"),
    dict(bias="bias", softcap=4.0, alibi_slopes="alibi"),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", LOW, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", LOW_CASES, ids=lambda c: "-".join(c) or "full")
def test_low_precision_flash_rule(tile_path, dtype, shape, case):
    """|ours - ref64| <= 2·|reference engine in the same dtype - ref64| + floor: out, lse, weights, every grad."""
    B, H, G, L, S, D, E = shape
    q, k, v = qkv(B, H, G, L, S, D, E, seed=D)  # float32 values, exactly representable in float64
    kw = _materialize(case, B, H, L, S, dtype)
    hidden, bias = kw.pop("hidden", None), kw.pop("bias", None)
    kq, vq = _poison(k, v, kw) if hidden else (k, v)
    do = torch.randn(B, H, L, E, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    results = []
    for engine, dt, kk, vv in (("flash", dtype, kq, vq), ("reference", dtype, k, v), ("reference", torch.float64, k, v)):
        leaves = [t.detach().to(dt).requires_grad_() for t in (q, kk, vv)]
        if bias is not None:
            leaves.append(bias.detach().to(dt if dt == torch.float64 else bias.dtype).requires_grad_())
        fn = attention if engine == "flash" else attnkit.attention
        res = fn(*leaves[:3], engine=engine, bias=leaves[3] if bias is not None else None,
                 return_lse=True, return_weights=True, **kw)
        grads = torch.autograd.grad((res.out.double() * do).sum(), leaves)
        results.append([res.out, res.lse, res.weights, *grads])
    assert results[0][0].dtype == dtype
    names = ["out", "lse", "weights", "dq", "dk", "dv", "dbias"]
    for name, ours, base, ref in zip(names, *results):
        assert torch.isfinite(ours).all() or name == "lse", name
        floor = 1e-6
        if name == "dbias":
            # d(bias) is dS itself: no sum over keys averages out the error of recomputing
            # P = exp(S - lse) from a float32 lse, |lse|·eps32 relative (FlashAttention's backward,
            # on both tile paths), which the materialized baseline does not have.
            lse_max = float(results[2][1].detach().masked_fill(torch.isinf(results[2][1]), 0).abs().max())
            floor += 2 * lse_max * torch.finfo(torch.float32).eps * float(ref.abs().max())
        try:
            assert_flash_rule(ours, base, ref, floor=floor)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None


@pytest.mark.parametrize("dtype,causal", [(torch.float32, False), (torch.bfloat16, "top_left")], ids=str)
def test_low_precision_vs_sdpa(tile_path, dtype, causal):
    """Against torch's own SDPA in the same dtype, at the default tile sizes, over several tiles."""
    B, H, G, L, S, D = 1, 2, 2, 600, 700, 16
    with pytest.MonkeyPatch.context() as mp:
        set_tiles(mp, 256, 512, 1 << 20)
        q, k, v = qkv(B, H, G, L, S, D, seed=D, requires_grad=True)
        q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
        ref = attnkit.attention(q64, k64, v64, causal=causal, engine="reference")
        qd, kd, vd = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
        ours = attention(qd, kd, vd, causal=causal, engine="flash")
        qs, ks, vs = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
        theirs = F.scaled_dot_product_attention(qs, ks, vs, is_causal=bool(causal))
        assert_flash_rule(ours, theirs, ref)
        do = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        g_ref = torch.autograd.grad((ref * do).sum(), (q64, k64, v64))
        g_ours = torch.autograd.grad((ours.double() * do).sum(), (qd, kd, vd))
        g_sdpa = torch.autograd.grad((theirs.double() * do).sum(), (qs, ks, vs))
        for a, b, r in zip(g_ours, g_sdpa, g_ref):
            assert_flash_rule(a, b, r)


def test_dropout_keep_masks_bitwise_equal_reference(tile_path, monkeypatch):
    """With V = identity, out[b, h, i, j] = w_ij·keep_ij/(1-p): the kept entries are readable, for any tiling."""
    B, H, G, L, S, p, seed = 2, 4, 2, 37, 45, 0.3, 99
    q, k, _ = qkv(B, H, G, L, S, 8, dtype=torch.float64, seed=3)
    v = torch.eye(S, dtype=torch.float64).expand(B, G, S, S)
    idx = BlockIndex.ranges(range(B), range(H), range(L), range(S))
    expected = keep_mask(seed, p, idx, H)
    ref = attnkit.attention(q, k, v, dropout_p=p, seed=seed, engine="reference")
    assert torch.equal(ref != 0, expected)
    for rows, keys in [(8, 32), (4, 7), (64, 512)]:
        set_tiles(monkeypatch, rows, keys)
        ours = attention(q, k, v, dropout_p=p, seed=seed, engine="flash")
        assert torch.equal(ours != 0, expected) and err(ours, ref) < TOL64


def test_gradcheck_with_bias_and_lse(tile_path):
    q, k, v = qkv(1, 2, 1, 9, 40, 8, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(1, 2, 9, 40, dtype=torch.float64, requires_grad=True, generator=torch.Generator().manual_seed(0))

    def fn(q_, k_, v_, b_):
        res = attention(q_, k_, v_, bias=b_, causal=True, engine="flash", return_lse=True)
        return res.out, res.lse.masked_fill(torch.isinf(res.lse), 0.0)

    assert torch.autograd.gradcheck(fn, (q, k, v, bias), fast_mode=True)


def test_gradcheck_score_mod_dropout_float_mask(tile_path):
    q, k, v = qkv(1, 2, 2, 6, 40, 4, dtype=torch.float64, requires_grad=True)
    fmask = torch.randn(1, 1, 6, 40, dtype=torch.float64, requires_grad=True, generator=torch.Generator().manual_seed(1))
    mod = lambda s, b, h, i, j: s * (1.0 + 0.1 * h) - 0.02 * (i - j) ** 2  # noqa: E731

    def fn(q_, k_, v_, m_):
        return attention(q_, k_, v_, mask=m_, score_mod=mod, dropout_p=0.3, seed=4, softcap=4.0, engine="flash")

    assert torch.autograd.gradcheck(fn, (q, k, v, fmask), fast_mode=True)


def test_broadcast_bias_gradient_matches_reference(tile_path):
    q, k, v = qkv(2, 4, 2, 50, 70, 16, dtype=torch.float64)
    for shape in [(1, 4, 1, 70), (2, 1, 50, 70), (70,)]:
        b1 = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).requires_grad_()
        b2 = b1.detach().clone().requires_grad_()
        (attention(q, k, v, bias=b1, engine="flash") ** 2).sum().backward()
        (attnkit.attention(q, k, v, bias=b2, engine="reference") ** 2).sum().backward()
        assert err(b1.grad, b2.grad) < TOL64


def _count_tiles(monkeypatch, **kw):
    calls = []
    original = torch_tiles.Tiles.scores

    def spy(self, qb, a, b, c, d, cls, *args, **extra):
        calls.append(cls)
        return original(self, qb, a, b, c, d, cls, *args, **extra)

    monkeypatch.setattr(torch_tiles.Tiles, "scores", spy)
    set_tiles(monkeypatch, 64, 64)
    q, k, v = qkv(1, 1, 1, 1024, 1024, 8)
    with kernel.force_path("torch"):
        attnkit.attention(q, k, v, engine="flash", **kw)
    return calls


def test_block_skipping(monkeypatch):
    full = _count_tiles(monkeypatch)
    assert len(full) == 16 * 16 and set(full) == {"full"}
    causal = _count_tiles(monkeypatch, causal=True)
    assert len(causal) == 16 * 17 // 2 and causal.count("partial") == 16  # only the diagonal is masked
    window = _count_tiles(monkeypatch, window=(64, 0))
    assert len(window) <= 16 * 3
    lengths = _count_tiles(monkeypatch, kv_lengths=torch.tensor([128]))
    assert len(lengths) == 16 * 2


def test_edges_empty_and_fully_masked(tile_path):
    q, k, v = qkv(2, 2, 2, 0, 40, 8)
    assert attention(q, k, v, engine="flash").shape == (2, 2, 0, 8)
    q, k, v = qkv(2, 2, 2, 5, 0, 8, E=3, requires_grad=True)
    res = attention(q, k, v, engine="flash", return_lse=True)
    assert (res.out == 0).all() and (res.lse == float("-inf")).all()
    q, k, v = qkv(2, 2, 2, 40, 40, 8, requires_grad=True)
    res = attention(q, k, v, engine="flash", kv_lengths=torch.tensor([0, 40]), return_lse=True, return_weights=True)
    assert (res.out[0] == 0).all() and (res.weights[0] == 0).all() and (res.lse[0] == float("-inf")).all()
    res.out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v)) and (q.grad[0] == 0).all()


def test_extreme_logits_and_nan_confined(tile_path):
    q, k, v = qkv(2, 2, 2, 40, 50, 8)
    out = attention(q * 1e4, k, v, scale=1.0, engine="flash")
    assert torch.isfinite(out).all()
    q = q.clone()
    q[1, 0, 7, 0] = NAN
    out = attention(q, k, v, engine="flash")
    assert torch.isnan(out[1, 0, 7]).all() and int(torch.isnan(out).any(-1).sum()) == 1


def test_visible_nonfinite_values_follow_ieee(tile_path):
    """A NaN/inf value reaches exactly the rows that can see it, in its own column (IEEE: p·NaN, p·inf)."""
    B, H, L, S = 2, 2, 40, 50
    q, k, v = qkv(B, H, 1, L, S, 8, dtype=torch.float64, seed=4)
    v_bad = v.clone()
    v_bad[0, 0, 20, 3], v_bad[1, 0, 30, 5] = NAN, INF
    ours = attention(q, k, v_bad, engine="flash", causal=True)
    expected = attnkit.attention(q, k, v, engine="reference", causal=True)
    # bottom-right causal: row i sees keys j <= i + S - L
    expected[0, :, 20 - (S - L) :, 3] = NAN
    expected[1, :, 30 - (S - L) :, 5] = INF
    assert err(ours, expected) < TOL64


def test_visible_nonfinite_key_gradients_stay_in_the_rows_that_see_it(tile_path):
    """Backward: a NaN/inf in a key row reaches the query rows that see it as IEEE says (the reference
    is exact for those rows) and leaves the other rows as if it were finite."""
    B, H, L, S = 1, 2, 40, 50
    q, k, v = qkv(B, H, 1, L, S, 8, dtype=torch.float64, seed=6)
    seen = 20 - (S - L)  # bottom-right causal: rows >= 10 see key 20
    for bad in ("k", "v"):
        kk, vv = k.clone(), v.clone()
        (kk if bad == "k" else vv)[0, 0, 20, 2] = -INF if bad == "k" else NAN
        grads = []
        for engine, kx, vx in (("flash", kk, vv), ("reference", kk, vv), ("reference", k, v)):
            qx = q.clone().requires_grad_()
            out = (attention if engine == "flash" else attnkit.attention)(qx, kx, vx, engine=engine, causal=True)
            grads.append(torch.autograd.grad(out.sum(), qx)[0])
        assert torch.isnan(grads[0][:, :, seen:]).any(), bad
        assert err(grads[0][:, :, seen:], grads[1][:, :, seen:]) < TOL64, bad
        assert err(grads[0][:, :, :seen], grads[2][:, :, :seen]) < TOL64, bad


def test_tile_path_choice_and_explain(monkeypatch):
    q, k, v = qkv(1, 2, 2, 8, 8, 8)
    spec = AttentionSpec.build(q, k, v)
    with kernel.force_path("torch"):
        assert flash.describe(spec) == "tile path: torch (forced by force_path('torch'))"
    monkeypatch.setattr(kernel, "_fused_state", (None, "not built"))
    assert kernel.path(spec) == ("torch", "fused: not built")
    assert flash.describe(spec) == "tile path: torch (fused: not built)"
    with kernel.force_path("fused"), pytest.raises(attnkit.AttnkitError, match="not built"):
        attnkit.attention(q, k, v, engine="flash")

    class Broken:  # a fused module whose check itself fails must not break attention
        @staticmethod
        def unsupported(spec):
            raise RuntimeError("boom")

    monkeypatch.setattr(kernel, "_fused_state", (Broken, ""))
    name, why = kernel.path(spec)
    assert name == "torch" and "boom" in why
    assert torch.isfinite(attnkit.attention(q, k, v, engine="flash")).all()
    with pytest.raises(attnkit.AttnkitError, match="force_path"):
        kernel.force_path("cuda").__enter__()


def test_dispatch_reasons():
    q, k, v = qkv(1, 2, 2, 8, 8, 8)
    d = general_dispatch(q, k, v, normalizer="entmax15")
    assert d.engine == "reference" and "reference-only" in d.reasons["flash"]
    with pytest.raises(attnkit.AttnkitError, match="flash"):
        attnkit.attention(q, k, v, normalizer="sparsemax", engine="flash")


def test_auto_dispatch_prefers_sdpa_then_flash_then_reference(monkeypatch):
    """Tiles in PyTorch: SDPA for what it computes exactly, flash for the rest, then the reference."""
    set_tiles(monkeypatch, 8, 8)  # so these small inputs span several tiles
    q, k, v = qkv(1, 4, 2, 32, 200, 8)  # L > 16: not a decoding shape
    with kernel.force_path("torch"):
        assert general_dispatch(q, k, v).engine == "sdpa"
        assert general_dispatch(q, k, v, causal="top_left").engine == "sdpa"
        d = general_dispatch(q, k, v, causal=True)  # bottom-right with L != S
        assert d.engine == "flash" and "top-left" in d.reasons["sdpa"]
        assert general_dispatch(q, k, v, window=(4, 0)).engine == "flash"
        assert general_dispatch(q, k, v, dropout_p=0.1).engine == "flash"
        assert general_dispatch(q, k, v, return_weights=True).engine == "flash"
        d = general_dispatch(q, k, v, normalizer="sigmoid")
        assert d.engine == "reference" and set(d.reasons) >= {"sdpa", "flash"}


def test_auto_dispatch_prefers_the_fused_kernel_to_sdpa(monkeypatch):
    """With the fused kernel, flash runs what SDPA could run too (its training step is faster)."""
    q, k, v = qkv(1, 4, 2, 32, 200, 8, requires_grad=True)
    fused = kernel.path(AttentionSpec.build(q, k, v))[0] == "fused"  # CI builds it (test_fused.py)
    for kw in (dict(), dict(causal="top_left"), dict(mask=torch.ones(32, 200, dtype=torch.bool))):
        d = general_dispatch(q, k, v, **kw)
        faster, slower = ("flash", "sdpa") if fused else ("sdpa", "flash")
        assert d.engine == faster and d.reasons[slower] == f"{faster} is faster for this spec", kw
    d = general_dispatch(q.double(), k.double(), v.double())  # float64: tiles in PyTorch, SDPA first
    assert d.engine == "sdpa" and "flash" in d.reasons


def test_single_block_problems_run_on_the_fused_kernel_and_reference_only_without_it(monkeypatch):
    set_tiles(monkeypatch, 256, 512, 1 << 20)  # the defaults
    q, k, v = qkv(1, 4, 2, 20, 24, 8)
    if kernel.path(AttentionSpec.build(q, k, v))[0] == "fused":
        d = general_dispatch(q, k, v, causal=True)
        assert d.engine == "flash" and "one block" not in str(d)
    with kernel.force_path("torch"):  # tiles in PyTorch: one block gains nothing from tiling
        d = general_dispatch(q, k, v, causal=True)
        assert d.engine == "reference" and "one block" in d.reasons["flash"]
    q, k, v = qkv(1, 4, 2, 600, 700, 8)
    assert general_dispatch(q, k, v, causal=True).engine == "flash"


@pytest.mark.parametrize("kw", [dict(), dict(causal="top_left"), dict(mask="bool"), dict(mask="float")])
def test_sdpa_engine_equals_reference(kw):
    q, k, v = qkv(2, 4, 2, 33, 33, 16, dtype=torch.float64, requires_grad=True)
    kw = _materialize(kw, 2, 4, 33, 33, torch.float64)
    ours, ref = attnkit.attention(q, k, v, engine="sdpa", **kw), attnkit.attention(q, k, v, engine="reference", **kw)
    assert err(ours, ref) < TOL64
    g1 = torch.autograd.grad(ours.sum(), (q, k, v))
    g2 = torch.autograd.grad(ref.sum(), (q, k, v))
    assert all(err(a, b) < TOL64 for a, b in zip(g1, g2))
