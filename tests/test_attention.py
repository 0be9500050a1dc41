"""attnkit.attention (reference engine) against SDPA, brute-force masks, and the edge rules."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import attnkit
from attnkit import AttnkitError

from conftest import ENGINES, assert_flash_rule, bad_call, err, qkv, skip_unless_accepts

SHAPES = [  # B, H, G, L, S, D, E
    (2, 4, 4, 97, 97, 59, 59),
    (1, 6, 2, 1, 130, 111, 111),
    (2, 4, 1, 97, 40, 64, 32),
    (1, 2, 2, 1025, 1025, 16, 16),
    (3, 8, 2, 33, 70, 32, 48),
]


def _sdpa(q, k, v, **kw):
    return F.scaled_dot_product_attention(q, k, v, enable_gqa=q.shape[1] != k.shape[1], **kw)


def brute_mask(L, S, *, causal=None, window=None, kv_len=None, q_len=None):
    """Visibility from DESIGN.md's definitions, one (i, j) at a time."""
    kv_len = S if kv_len is None else kv_len
    q_len = L if q_len is None else q_len
    off = 0 if causal == "top_left" else kv_len - q_len
    m = torch.zeros(L, S, dtype=torch.bool)
    for i in range(L):
        p = i + off
        for j in range(S):
            ok = j < kv_len and i < q_len
            if causal:
                ok &= j <= p
            if window is not None:
                left, right = window
                ok &= left is None or j >= p - left
                ok &= right is None or j <= p + right
            m[i, j] = ok
    return m


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("causal", [False, "top_left"])
def test_every_engine_matches_float64_reference(engine, shape, causal):
    B, H, G, L, S, D, E = shape
    q, k, v = qkv(B, H, G, L, S, D, E, seed=sum(shape))
    skip_unless_accepts(engine, q, k, v, causal=causal)
    ref64 = attnkit.attention(q.double(), k.double(), v.double(), causal=causal, engine="reference")
    ours = attnkit.attention(q, k, v, causal=causal, engine=engine)
    theirs = _sdpa(q, k, v, is_causal=bool(causal))
    assert ours.shape == (B, H, L, E) and ours.dtype == q.dtype
    assert_flash_rule(ours, theirs, ref64)
    # The float64 reference agrees with float64 SDPA to float64 rounding.
    assert err(ref64, _sdpa(q.double(), k.double(), v.double(), is_causal=bool(causal))) < 1e-12


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_flash_rule(engine, dtype):
    q, k, v = qkv(2, 4, 2, 65, 80, 64, seed=3)
    skip_unless_accepts(engine, q.to(dtype), k.to(dtype), v.to(dtype))
    ref64 = attnkit.attention(q.double(), k.double(), v.double(), engine="reference")
    ours = attnkit.attention(q.to(dtype), k.to(dtype), v.to(dtype), engine=engine)
    assert ours.dtype == dtype
    assert_flash_rule(ours, _sdpa(q.to(dtype), k.to(dtype), v.to(dtype)), ref64)


def _masked_grads(engine_or_sdpa: str):
    q, k, v = qkv(2, 4, 2, 37, 45, 24, seed=5, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(2, 1, 37, 45, generator=torch.Generator().manual_seed(1)) > 0.3
    do = torch.randn(2, 4, 37, 24, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    if engine_or_sdpa == "torch sdpa":
        out = _sdpa(q, k, v, attn_mask=mask)
    else:
        skip_unless_accepts(engine_or_sdpa, q, k, v, mask=mask)
        out = attnkit.attention(q, k, v, mask=mask, engine=engine_or_sdpa)
    return torch.autograd.grad((out * do).sum(), (q, k, v))


# The oracle is not among the engines under test (comparing it with itself compares nothing).
@pytest.mark.parametrize("engine", [e for e in ENGINES if e != "reference"])
def test_gradients_match_float64_reference(engine):
    for a, b in zip(_masked_grads(engine), _masked_grads("reference")):
        assert err(a, b) < 1e-12


def test_reference_gradients_match_torch_autograd_of_sdpa():
    """The oracle itself, against the ecosystem: torch's SDPA differentiated by autograd, float64."""
    for a, b in zip(_masked_grads("reference"), _masked_grads("torch sdpa")):
        assert err(a, b) < 1e-12


@pytest.mark.parametrize("causal", [True, "top_left", False])
@pytest.mark.parametrize("window", [None, (3, 0), (2, 5), (None, 1), (0, None)])
@pytest.mark.parametrize("LS", [(7, 7), (5, 9), (9, 5)])
def test_structured_masks_match_brute_force(causal, window, LS):
    L, S = LS
    q, k, v = qkv(1, 2, 2, L, S, 8, seed=L * S, dtype=torch.float64)
    res = attnkit.attention(q, k, v, causal=causal, window=window, return_weights=True, return_lse=True)
    align = "top_left" if causal == "top_left" else ("bottom_right" if causal else None)
    dense = brute_mask(L, S, causal=align, window=window)
    want = attnkit.attention(q, k, v, mask=dense)
    assert err(res.out, want) < 1e-12
    assert ((res.weights > 0) == dense).all()
    assert (torch.isinf(res.lse[0, 0]) == ~dense.any(-1)).all()


def test_bottom_right_is_kv_cache_alignment_and_top_left_is_sdpa():
    q, k, v = qkv(1, 2, 2, 3, 8, 16, seed=9)
    full = attnkit.attention(q, k, v, causal=True)
    # The last query of a KV-cache decoding step sees every key.
    torch.testing.assert_close(full[:, :, -1:], attnkit.attention(q[:, :, -1:], k, v))
    torch.testing.assert_close(attnkit.attention(q, k, v, causal="top_left"), _sdpa(q, k, v, is_causal=True))


def test_lengths_are_padding_per_sequence():
    B, L, S = 3, 6, 10
    q, k, v = qkv(B, 2, 1, L, S, 8, seed=11, dtype=torch.float64)
    kv_len, q_len = torch.tensor([10, 4, 0]), torch.tensor([6, 2, 5])
    res = attnkit.attention(q, k, v, kv_lengths=kv_len, q_lengths=q_len, causal=True, return_lse=True)
    for b in range(B):
        dense = brute_mask(L, S, causal="bottom_right", kv_len=int(kv_len[b]), q_len=int(q_len[b]))
        want = attnkit.attention(q[b : b + 1], k[b : b + 1], v[b : b + 1], mask=dense)
        assert err(res.out[b : b + 1], want) < 1e-12
    assert (res.out[2] == 0).all() and (res.lse[2] == float("-inf")).all()
    assert (res.out[1, :, 2:] == 0).all()  # padding queries


def test_float_mask_bias_alibi_softcap_score_mod_compose():
    B, H, L, S, D = 2, 4, 6, 9, 8
    q, k, v = qkv(B, H, H, L, S, D, seed=13, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    fmask = torch.randn(1, H, L, S, generator=g, dtype=torch.float64)
    bias = torch.randn(B, 1, 1, S, generator=g, dtype=torch.float64)
    slopes = attnkit.alibi_slopes(H).double()
    cap = 2.0
    mod = lambda s, b, h, i, j: s + 0.1 * (b + h) - 0.01 * (i - j) ** 2  # noqa: E731
    ours = attnkit.attention(q, k, v, mask=fmask, bias=bias, alibi_slopes=slopes, softcap=cap, score_mod=mod, causal=True)
    # Explicit formula, in DESIGN order: scale, softcap, alibi, biases, score_mod, masks.
    s = q @ k.transpose(-1, -2) / math.sqrt(D)
    s = cap * torch.tanh(s / cap)
    i = torch.arange(L)[:, None] + (S - L)
    j = torch.arange(S)[None, :]
    s = s - slopes[None, :, None, None] * (i - j).abs()
    s = s + fmask + bias
    b_, h_ = torch.arange(B)[:, None, None, None], torch.arange(H)[None, :, None, None]
    s = s + 0.1 * (b_ + h_) - 0.01 * (torch.arange(L)[:, None] - j) ** 2
    s = s.masked_fill(j > i, float("-inf"))
    want = torch.softmax(s, -1) @ v
    assert err(ours, want) < 1e-12


def test_bias_gradient():
    q, k, v = qkv(1, 2, 2, 4, 5, 8, seed=2, dtype=torch.float64)
    bias = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda b_: attnkit.attention(q, k, v, bias=b_, causal=True), (bias,))


def test_dropout_is_counter_based_and_unbiased():
    q, k, v = qkv(2, 4, 4, 64, 64, 16, seed=4)
    a = attnkit.attention(q, k, v, dropout_p=0.3, seed=123)
    b = attnkit.attention(q, k, v, dropout_p=0.3, seed=123)
    c = attnkit.attention(q, k, v, dropout_p=0.3, seed=124)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # The same entries are dropped when the computation is split over keys (tiling independence).
    res = attnkit.attention(q, k, v, return_weights=True)
    eye = torch.eye(64).expand(2, 4, 64, 64).contiguous()
    dropped = attnkit.attention(q, k, eye, dropout_p=0.3, seed=123)  # = dropout(P) itself
    kept = dropped > 0
    frac = float(kept[res.weights > 0].float().mean())
    n = int((res.weights > 0).sum())
    assert abs(frac - 0.7) < 5 * math.sqrt(0.21 / n)  # 5 sigma of a binomial proportion
    torch.testing.assert_close(dropped[kept], res.weights[kept] / 0.7)
    torch.manual_seed(7)
    d1 = attnkit.attention(q, k, v, dropout_p=0.2)
    torch.manual_seed(7)
    assert torch.equal(d1, attnkit.attention(q, k, v, dropout_p=0.2))


def test_edge_rules_fully_masked_and_empty():
    q, k, v = qkv(1, 2, 2, 4, 6, 8, seed=1, dtype=torch.float64, requires_grad=True)
    mask = torch.ones(1, 1, 4, 6, dtype=torch.bool)
    mask[..., 1, :] = False
    res = attnkit.attention(q, k, v, mask=mask, return_lse=True, return_weights=True)
    assert (res.out[:, :, 1] == 0).all() and (res.lse[:, :, 1] == float("-inf")).all() and (res.weights[:, :, 1] == 0).all()
    (res.out.sum() + res.lse[:, :, [0, 2, 3]].sum()).backward()
    assert (q.grad[:, :, 1] == 0).all() and all(torch.isfinite(t.grad).all() for t in (q, k, v))
    # Empty L and empty S.
    q0, k0, v0 = qkv(2, 2, 2, 0, 5, 8)
    assert attnkit.attention(q0, k0, v0).shape == (2, 2, 0, 8)
    q1, k1, v1 = qkv(2, 2, 2, 3, 0, 8, E=4)
    r = attnkit.attention(q1, k1, v1, return_lse=True)
    assert (r.out == 0).all() and r.out.shape == (2, 2, 3, 4) and (r.lse == float("-inf")).all()


def test_extreme_logits_and_nan_confinement():
    q, k, v = qkv(2, 2, 2, 5, 7, 8, seed=3)
    big = attnkit.attention(q * 1e4, k, v, scale=1.0)
    assert torch.isfinite(big).all()
    q = q.clone()
    q[0, 1, 2, 0] = float("nan")
    out = attnkit.attention(q, k, v)
    assert torch.isnan(out[0, 1, 2]).all()
    nan_rows = torch.isnan(out).any(-1)
    assert int(nan_rows.sum()) == 1


@pytest.mark.parametrize("name", ["sparsemax", "entmax15", "sigmoid"])
def test_alternative_normalizers(name):
    q, k, v = qkv(1, 2, 2, 5, 7, 8, seed=3, dtype=torch.float64)
    mask = torch.rand(1, 1, 5, 7, generator=torch.Generator().manual_seed(0)) > 0.4
    res = attnkit.attention(q, k, v, normalizer=name, mask=mask, return_weights=True)
    by_fn = attnkit.attention(q, k, v, normalizer=getattr(attnkit, name), mask=mask)
    s = (q @ k.transpose(-1, -2)) / math.sqrt(8)
    w = getattr(attnkit, name)(s, -1, mask=mask)
    assert err(res.out, w @ v) < 1e-12 and err(by_fn, res.out) < 1e-12
    assert (res.weights[~mask.expand_as(res.weights)] == 0).all()
    with pytest.raises(AttnkitError, match="return_lse"):
        attnkit.attention(q, k, v, normalizer=name, return_lse=True)


def test_custom_normalizer_callable():
    q, k, v = qkv(1, 1, 1, 3, 4, 8, dtype=torch.float64)
    relu_norm = lambda s, dim=-1, mask=None: torch.relu(s) * (1 if mask is None else mask)  # noqa: E731
    out = attnkit.attention(q, k, v, normalizer=relu_norm)
    assert err(out, torch.relu(q @ k.transpose(-1, -2) / math.sqrt(8)) @ v) < 1e-12
    assert attnkit.explain(q, k, v, normalizer=relu_norm).engine == "reference"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(key=torch.zeros(2, 3, 5, 8)), "key heads G dividing"),
        (dict(key=torch.zeros(2, 2, 5, 7)), "key of shape"),
        (dict(value=torch.zeros(2, 2, 4, 8)), "value of shape"),
        (dict(key=torch.zeros(2, 2, 5, 8, dtype=torch.float64)), "dtype"),
        (dict(query=torch.zeros(2, 6, 8)), "4-D|3-D"),
        (dict(mask=torch.ones(3, 1, 6, 5, dtype=torch.bool)), "mask broadcastable"),
        (dict(mask=torch.ones(1, 1, 6, 5, dtype=torch.int32)), "boolean"),
        (dict(causal="bottom"), "causal"),
        (dict(window=(3,)), "window"),
        (dict(window=(-1, 0)), "window"),
        (dict(kv_lengths=torch.tensor([5, 6])), "kv_lengths in"),
        (dict(kv_lengths=torch.tensor([5.0, 1.0])), "integer tensor"),
        (dict(alibi_slopes=torch.ones(3)), "alibi_slopes"),
        (dict(softcap=0.0), "softcap"),
        (dict(dropout_p=1.0), "dropout_p"),
        (dict(normalizer="softmin"), "normalizer"),
        (dict(engine="cuda-magic"), "engine"),
    ],
)
def test_errors_say_expected_got_fix(kwargs, match):
    q, k, v, opts = bad_call(kwargs)
    with pytest.raises(AttnkitError, match=match) as info:
        attnkit.attention(q, k, v, **opts)
    assert "expected" in str(info.value) and "got" in str(info.value) and "fix" in str(info.value)


def test_explain_reports_engine():
    q, k, v = qkv(1, 2, 2, 4, 4, 8)
    d = attnkit.explain(q, k, v, causal=True)
    assert d.engine in attnkit.engines.ENGINE_ORDER
    assert "engine:" in str(d)
