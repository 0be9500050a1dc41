"""Issue 10's cases, one test each: no silent wrong result, no NaN from valid input, clear errors.

Every engine is forced in turn and compared with the float64 reference engine; each case here
failed before its fix (the issue gives the numbers).
"""

from __future__ import annotations

import math

import pytest
import torch

import attnkit
from attnkit import AttnkitError

from conftest import ENGINES, err, qkv, skip_unless_accepts

NAN, INF = float("nan"), float("inf")


# --------------------------------------------------------------------------- silent wrong results


@pytest.mark.parametrize("engine", ["auto", *ENGINES])
def test_nan_keys_stay_nan_on_every_engine(engine):
    q, k, v = qkv(1, 2, 2, 4, 5, 8, seed=1)
    k = torch.full_like(k, NAN)
    skip_unless_accepts(engine, q, k, v) if engine != "auto" else None
    out = attnkit.attention(q, k, v, engine=engine)
    assert out.isnan().all(), "a NaN key visible to every row makes every row NaN (the reference's answer)"


def test_nan_or_infinite_scale_is_rejected():
    q, k, v = qkv(1, 2, 2, 4, 5, 8)
    for scale in (NAN, INF, -INF, "0.5"):
        with pytest.raises(AttnkitError, match="scale"):
            attnkit.attention(q, k, v, scale=scale)


@pytest.mark.parametrize("engine", ["auto", *ENGINES])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mask, expected", [([2049.0, 2048.0], 1 / (1 + math.exp(-1))), ([7e4, 0.0], 1.0)])
def test_float_masks_keep_float32_precision_for_half_inputs(engine, dtype, mask, expected):
    q, k = torch.zeros(1, 1, 1, 1, dtype=dtype), torch.zeros(1, 1, 2, 1, dtype=dtype)
    v = torch.tensor([1.0, 0.0], dtype=dtype).view(1, 1, 2, 1)
    m = torch.tensor(mask).view(1, 1, 1, 2)
    if engine != "auto":
        skip_unless_accepts(engine, q, k, v, mask=m)
    out = attnkit.attention(q, k, v, mask=m, engine=engine)
    assert abs(out.item() - expected) <= 2 * abs(torch.tensor(expected).to(dtype).item() - expected) + 1e-7


@pytest.mark.parametrize("engine", ["auto", *ENGINES])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_backward_accumulates_in_float32(engine, dtype):
    # One key: every weight is 1, so dv = Σ_i g_i exactly; SDPA's half backward was off by 0.5 (bf16).
    g0 = torch.Generator().manual_seed(0)
    q = torch.randn(1, 12, 339, 256, generator=g0).to(dtype).requires_grad_()
    k = torch.randn(1, 12, 1, 256, generator=g0).to(dtype).requires_grad_()
    v = torch.randn(1, 12, 1, 256, generator=g0).to(dtype).requires_grad_()
    g = torch.randn(1, 12, 339, 256, generator=g0).to(dtype)
    if engine != "auto":
        skip_unless_accepts(engine, q, k, v)
    (dv,) = torch.autograd.grad(attnkit.attention(q, k, v, engine=engine), v, g)
    exact = g.double().sum(2, keepdim=True)
    rounding = err(exact.to(dtype), exact)  # the error of storing the exact answer in `dtype`
    assert err(dv, exact) <= 2 * rounding + 1e-6


def _hidden_garbage(where: str, fill: float):
    """Inputs whose hidden keys hold garbage, and the same inputs with clean hidden keys."""
    q, k, v = qkv(2, 4, 2, 6, 40, 16, seed=7)
    kw: dict = {}
    hidden = torch.zeros(2, 1, 6, 40, dtype=torch.bool)
    if where == "kv_lengths":
        kw["kv_lengths"] = torch.tensor([40, 23])
        hidden[1, :, :, 23:] = True
    else:  # a False mask (on every row for some keys, on some rows for others)
        mask = torch.ones(2, 1, 6, 40, dtype=torch.bool)
        mask[:, :, :, 30:] = False
        mask[0, :, :3, 10:12] = False
        kw["mask"] = mask
        hidden = ~mask
    dirty_k, dirty_v = k.clone(), v.clone()
    cols = hidden.all(2).squeeze(1)  # keys hidden from every row of a batch entry: (B, S)
    for b in range(2):
        dirty_k[b, :, cols[b]] = fill
        dirty_v[b, :, cols[b]] = fill
    if where == "mask":  # keys 10, 11 are hidden from rows 0-2 only: garbage there reaches rows 3-5
        pass
    return (q, k, v), (q, dirty_k, dirty_v), kw


@pytest.mark.parametrize("engine", ["auto", *ENGINES])
@pytest.mark.parametrize("where", ["kv_lengths", "mask"])
@pytest.mark.parametrize("fill", [NAN, INF, -INF])
@pytest.mark.parametrize("causal", [False, True])
def test_hidden_keys_never_influence_output_or_gradients(engine, where, fill, causal):
    (q, k, v), (_, dk, dv), kw = _hidden_garbage(where, fill)
    kw["causal"] = causal
    if engine != "auto":
        skip_unless_accepts(engine, q, dk, dv, **kw)
    clean = attnkit.attention(q.double(), k.double(), v.double(), engine="reference", **kw)
    qd, kd, vd = (t.clone().requires_grad_() for t in (q, dk, dv))
    out = attnkit.attention(qd, kd, vd, engine=engine, **kw)
    assert torch.isfinite(out).all()
    assert err(out, clean) < 1e-5
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    grads = torch.autograd.grad(out, (qd, kd, vd), g, allow_unused=True)
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    ref = torch.autograd.grad(attnkit.attention(q64, k64, v64, engine="reference", **kw), (q64, k64, v64), g.double())
    finite = torch.isfinite(dk).all(-1, keepdim=True)  # compare dK, dV on the clean keys only
    assert err(grads[0], ref[0]) < 1e-4
    assert torch.isfinite(grads[0]).all() and torch.isfinite(grads[1]).all() and torch.isfinite(grads[2]).all()
    assert err(grads[1] * finite, ref[1] * finite) < 1e-4 and err(grads[2] * finite, ref[2] * finite) < 1e-4


@pytest.mark.parametrize("engine", ENGINES)
def test_visible_garbage_reaches_exactly_the_rows_that_see_it(engine):
    # Keys 10, 11 hold NaN and are hidden from rows 0-2 only: rows 3-5 are NaN, rows 0-2 exact.
    q, k, v = qkv(1, 2, 2, 6, 16, 8, seed=2)
    mask = torch.ones(1, 1, 6, 16, dtype=torch.bool)
    mask[:, :, :3, 10:12] = False
    skip_unless_accepts(engine, q, k, v, mask=mask)
    dv = v.clone()
    dv[:, :, 10:12] = NAN
    out = attnkit.attention(q, k, dv, mask=mask, engine=engine)
    clean = attnkit.attention(q.double(), k.double(), v.double(), mask=mask, engine="reference")
    assert out[:, :, 3:].isnan().all()
    assert err(out[:, :, :3], clean[:, :, :3]) < 1e-5


# --------------------------------------------------------------------------- precision at large offsets


def _ulp_err(ours: torch.Tensor, exact: torch.Tensor) -> float:
    return float((ours.double() - exact).abs().max())


@pytest.mark.parametrize("offset, dtype", [(-1e4, torch.float32), (1e4, torch.float32), (-6e4, torch.float16), (6e4, torch.float16)])
def test_log_softmax_and_logsumexp_keep_precision_at_large_offsets(offset, dtype):
    g = torch.Generator().manual_seed(0)
    rows = [torch.full((33,), offset, dtype=torch.float64), offset + torch.randn(33, generator=g, dtype=torch.float64)]
    for x64 in rows:
        x = x64.to(dtype)
        exact_ls = torch.log_softmax(x.double(), -1)
        exact_lse = torch.logsumexp(x.double(), -1)
        torch_ls_err = _ulp_err(torch.log_softmax(x.float(), -1).to(dtype), exact_ls)
        torch_lse_err = _ulp_err(torch.logsumexp(x.float(), -1).to(dtype), exact_lse)
        assert _ulp_err(attnkit.log_softmax(x), exact_ls) <= 2 * torch_ls_err + 1e-12
        assert _ulp_err(attnkit.logsumexp(x), exact_lse) <= 2 * torch_lse_err + 1e-12
        state = attnkit.SoftmaxState.empty((1,), dtype=attnkit.softmax.compute_dtype(dtype) if False else torch.float32)
        for chunk in x.float().view(1, -1).split(7, dim=1):
            state.update(chunk.clone())
        assert _ulp_err(state.lse, exact_lse.view(1)) <= 2 * _ulp_err(torch.logsumexp(x.float(), -1), exact_lse) + 1e-12
        assert _ulp_err(state.normalize(x.float().view(1, -1)), torch.softmax(x.double(), -1).view(1, -1)) < 1e-6


def test_the_issue_example_log_softmax_of_equal_large_values():
    out = attnkit.log_softmax(torch.full((33,), -1e4))
    assert abs(float(out[0]) + math.log(33)) < 1e-6  # was -3.4961 instead of -3.4965


@pytest.mark.parametrize("offset", [-1e4, 1e4])
def test_merge_partials_and_engine_lse_at_large_offsets(offset):
    q, k, v = qkv(1, 2, 2, 5, 64, 8, seed=4)
    bias = torch.full((1, 1, 1, 64), offset) + torch.randn(1, 1, 1, 64, generator=torch.Generator().manual_seed(1))
    ref = attnkit.attention(q.double(), k.double(), v.double(), bias=bias.double(), return_lse=True, engine="reference")
    s64 = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(8) + bias.double()
    torch_err = _ulp_err(torch.logsumexp(s64.float(), -1), torch.logsumexp(s64, -1))
    assert _ulp_err(ref.lse, torch.logsumexp(s64, -1)) < 1e-9
    for engine in ENGINES:
        try:
            res = attnkit.attention(q, k, v, bias=bias, return_lse=True, engine=engine)
        except AttnkitError:
            continue
        assert _ulp_err(res.lse, ref.lse) <= 2 * torch_err + 1e-9, engine
    a = attnkit.attention(q, k[:, :, :20], v[:, :, :20], bias=bias[..., :20], return_lse=True, engine="reference")
    b = attnkit.attention(q, k[:, :, 20:], v[:, :, 20:], bias=bias[..., 20:], return_lse=True, engine="reference")
    out, lse = attnkit.merge_partials(a.out, a.lse, b.out, b.lse)
    assert _ulp_err(lse, ref.lse) <= 2 * torch_err + 1e-9
    # Each float32 lse carries |lse|·2⁻²⁴ of rounding, which the merge weights inherit (documented).
    assert err(out, ref.out) <= 4 * abs(offset) * 2**-24 * float(v.abs().max()) + 1e-6


def test_cross_entropy_keeps_precision_at_large_offsets():
    z = torch.full((1, 33), -1e4, requires_grad=True)
    loss = attnkit.softmax_cross_entropy(z, torch.tensor([0]))
    assert abs(loss.item() - math.log(33)) < 1e-6
    loss.backward()
    expected = torch.full((1, 33), 1 / 33)
    expected[0, 0] -= 1
    assert err(z.grad, expected) < 1e-6


# --------------------------------------------------------------------------- bad shapes are rejected


def test_softmax_mask_may_not_grow_x():
    with pytest.raises(AttnkitError, match="mask broadcastable to x's shape"):
        attnkit.softmax(torch.randn(5), mask=torch.ones(2, 5, dtype=torch.bool))


def test_merge_partials_rejects_broadcasting_and_non_tensors():
    o4, l4 = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4)
    o1, l1 = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1)
    with pytest.raises(AttnkitError, match="same queries"):
        attnkit.merge_partials(o4, l4, o1, l1)
    with pytest.raises(AttnkitError, match="floating-point tensor"):
        attnkit.merge_partials(o4.tolist(), l4, o4, l4)
    with pytest.raises(AttnkitError, match="floating-point tensor"):
        attnkit.merge_partials(o4.int(), l4, o4, l4)


def test_softmax_state_rejects_broadcast_chunks_wrapped_dims_and_mismatched_merges():
    state = attnkit.SoftmaxState.empty((4,))
    with pytest.raises(AttnkitError, match="row shape"):
        state.update(torch.randn(1, 10))  # one row would broadcast over four
    with pytest.raises(AttnkitError, match="dim in"):
        state.update(torch.randn(4, 10), dim=2)  # used to wrap to 0
    with pytest.raises(AttnkitError, match="row shape"):
        state.merge(attnkit.SoftmaxState.empty((1,)))
    with pytest.raises(AttnkitError, match="floating-point"):
        state.update(torch.arange(40).view(4, 10))


@pytest.mark.parametrize("fn", [attnkit.softmax, attnkit.log_softmax, attnkit.logsumexp, attnkit.online_softmax])
def test_integer_inputs_and_bad_dims_are_rejected(fn):
    with pytest.raises(AttnkitError, match="floating-point"):
        fn(torch.tensor([1, 2, 3]))
    with pytest.raises(AttnkitError, match="dim in"):
        fn(torch.randn(3), dim=5)


def test_online_softmax_block_must_be_a_positive_int():
    for block in (2.5, 0, "8"):
        with pytest.raises(AttnkitError, match="block"):
            attnkit.online_softmax(torch.randn(3, 10), block=block)


# --------------------------------------------------------------------------- NaN from valid or invalid input


def test_infinite_softcap_and_non_numbers_are_rejected():
    q, k, v = qkv(1, 1, 1, 3, 3, 4)
    with pytest.raises(AttnkitError, match="softcap"):
        attnkit.attention(q, k, v, softcap=INF)
    with pytest.raises(AttnkitError, match="dropout_p"):
        attnkit.attention(q, k, v, dropout_p="0.1")
    with pytest.raises(AttnkitError, match="seed"):
        attnkit.attention(q, k, v, dropout_p=0.1, seed="1")
    with pytest.raises(AttnkitError, match="meta"):
        attnkit.attention(q.to("meta"), k.to("meta"), v.to("meta"))


def test_temperature_limits_are_exact():
    assert torch.equal(attnkit.softmax(torch.tensor([1.0, 2.0]), temperature=1e-40), torch.tensor([0.0, 1.0]))
    assert torch.equal(attnkit.softmax(torch.tensor([3e38, 3e38]), temperature=0.5), torch.tensor([0.5, 0.5]))
    assert torch.equal(attnkit.softmax(torch.tensor([1.0, 2.0, 2.0]), temperature=1e-40), torch.tensor([0.0, 0.5, 0.5]))
    assert attnkit.log_softmax(torch.tensor([1.0, 2.0]), temperature=1e-40)[1] == 0
    for bad in (0.0, -1.0, INF, NAN, "1"):
        with pytest.raises(AttnkitError, match="temperature"):
            attnkit.softmax(torch.tensor([1.0, 2.0]), temperature=bad)


def test_logsumexp_of_inf_follows_torch():
    x = torch.tensor([INF, 0.0])
    assert attnkit.logsumexp(x) == torch.logsumexp(x, 0) == INF


def test_score_mod_must_return_a_tensor_of_the_block_shape():
    q, k, v = qkv(1, 1, 1, 3, 3, 4)
    with pytest.raises(AttnkitError, match="score_mod"):
        attnkit.attention(q, k, v, score_mod=lambda s, b, h, i, j: 1.0, engine="reference")
    with pytest.raises(AttnkitError, match="score_mod"):
        attnkit.attention(q, k, v, score_mod=lambda s, b, h, i, j: s.sum(-1), engine="reference")


# --------------------------------------------------------------------------- modules: clear errors


def test_multihead_rejects_integer_input_and_missing_devices():
    mha = attnkit.nn.MultiHeadAttention(16, 4)
    with pytest.raises(AttnkitError, match="floating-point"):
        mha(torch.randint(0, 10, (2, 5, 16)))
    if not torch.cuda.is_available():
        with pytest.raises(AttnkitError, match="CUDA"):
            attnkit.nn.MultiHeadAttention(16, 4, device="cuda")


def test_kv_cache_reorder_checks_the_index():
    cache = attnkit.KVCache()
    k = torch.randn(2, 1, 3, 4)
    cache.append(k, k)
    with pytest.raises(AttnkitError, match=r"row indices in \[0, 2\)"):
        cache.reorder(torch.tensor([0, 5]))
    with pytest.raises(AttnkitError, match="integer"):
        cache.reorder(torch.tensor([0.0, 1.0]))
    cache.reorder(torch.tensor([1, 1, 0]))
    assert cache.keys.shape[0] == 3 and torch.equal(cache.keys[0], k[1])


def test_top_level_kv_cache_works_with_multihead_attention():
    torch.manual_seed(0)
    mha = attnkit.nn.MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 6, 16)
    full, _ = mha(x, causal=True)
    cache = attnkit.KVCache()
    steps = [mha(x[:, t : t + 1], cache=cache, causal=True)[0] for t in range(6)]
    assert err(torch.cat(steps, 1), full) < 1e-5
