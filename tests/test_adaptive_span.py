"""Adaptive attention span: the soft mask as a bias, its gradient to the spans, the window, the regularizer."""

from __future__ import annotations

import doctest

import pytest
import torch

import attnkit
import attnkit.nn.adaptive_span as adaptive_span
from attnkit.engines import kernel
from attnkit.nn import AdaptiveSpan, AdaptiveSpanAttention, SegmentMemoryAttention
from attnkit.nn.adaptive_span import adaptive_span_attention, span_mask
from conftest import ENGINES, assert_flash_rule, qkv

ENGINE_PATHS = [(e, None) for e in ENGINES] + [("flash", "fused"), ("flash", "torch")]
RAMP = 4.0


def multiply_renormalize(q, k, v, z, ramp, alibi=None):
    """The paper's definition in plain torch: causal softmax weights × m(x), renormalized."""
    B, H, L, D = q.shape
    S, R = k.shape[2], H // k.shape[1]
    k, v = k.repeat_interleave(R, 1), v.repeat_interleave(R, 1)
    x = (torch.arange(L)[:, None] + S - L - torch.arange(S)[None, :]).to(q.dtype)  # query-key distance
    s = q @ k.transpose(-1, -2) / D**0.5
    if alibi is not None:
        s = s - alibi.to(q.dtype).view(H, 1, 1) * x
    a = torch.softmax(s.masked_fill(x < 0, float("-inf")), -1) * span_mask(x, z, ramp)
    return (a / a.sum(-1, keepdim=True)) @ v


def dz_floor(q, k, v, z, ramp, up):
    """Per head, the rounding floor of dz = Σ_{b,i,j} dBias·∂log m/∂z: float32 rounds each of those
    terms (the kernel's dBias) to ~eps relative, so the sum is off by up to ~eps·Σ|terms| (float64 here)."""
    H, L, S, D = q.shape[1], q.shape[2], k.shape[2], q.shape[3]
    x = (torch.arange(L)[:, None] + S - L - torch.arange(S)[None, :]).double()
    m = span_mask(x, z.detach().double(), ramp)
    bias = torch.where(m > 0, m.clamp_min(1e-300).log(), torch.full_like(m, float("-inf"))).requires_grad_(True)
    kk, vv = (t.double().repeat_interleave(H // k.shape[1], 1) for t in (k, v))
    s = (q.double() @ kk.transpose(-1, -2) / D**0.5 + bias).masked_fill(x < 0, float("-inf"))
    ((torch.softmax(s, -1) @ vv) * up.double()).sum().backward()
    dlogm_dz = torch.where((m > 0) & (m < 1), 1 / (ramp * m), torch.zeros_like(m))
    return 2 * torch.finfo(torch.float32).eps * (bias.grad * dlogm_dz).abs().sum((1, 2))


# Spans away from the mask's kinks (z and z + R not integers): the gradient is then unique.
SPANS = [0.3, 5.6, 9.25, 17.5]  # z + R < S - 8: each head's mask cuts some keys


@pytest.mark.parametrize("engine,path", ENGINE_PATHS)
@pytest.mark.parametrize("L,S,G,chunk", [(12, 30, 2, None), (70, 70, 4, None), (70, 90, 1, 16)])
def test_span_gradient_matches_float64(engine, path, L, S, G, chunk):
    """Output and gradients (q, k, v and the spans z) against the float64 multiply-renormalize
    definition; the baseline is that definition in float32."""
    q, k, v = qkv(2, 4, G, L, S, 16, seed=L + S)
    up = torch.randn(2, 4, L, 16, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    z = torch.tensor(SPANS, dtype=torch.float64)

    def run(fn, dtype):
        ins = [t.detach().to(dtype).requires_grad_(True) for t in (q, k, v, z)]
        out = fn(*ins)
        return [out.detach(), *torch.autograd.grad((out * up.to(dtype)).sum(), ins)]

    try:
        with kernel.force_path(path):
            ours = run(lambda a, b, c, s: adaptive_span_attention(a, b, c, s, RAMP, chunk=chunk, engine=engine), torch.float32)
    except attnkit.AttnkitError as why:
        pytest.skip(f"{engine}: {why}")
    ref64 = run(lambda a, b, c, s: multiply_renormalize(a, b, c, s, RAMP), torch.float64)
    base = run(lambda a, b, c, s: multiply_renormalize(a, b, c, s, RAMP), torch.float32)
    for a, b, c in zip(ours[:4], base[:4], ref64[:4]):  # out, dq, dk, dv
        assert_flash_rule(a, b, c)
    floor = dz_floor(q, k, v, z, RAMP, up)
    for h in range(4):  # dz, per head, with its own rounding floor
        assert_flash_rule(ours[4][h], base[4][h], ref64[4][h], floor=float(floor[h]))
    assert ours[4].abs().min() > 0  # every head's span gets a gradient


@pytest.mark.parametrize("engine", ["reference", "flash"])
def test_gradcheck_in_float64(engine):
    q, k, v = qkv(1, 2, 2, 9, 13, 4, dtype=torch.float64, seed=1, requires_grad=True)
    z = torch.tensor([2.3, 6.6], dtype=torch.float64, requires_grad=True)
    slopes = torch.tensor([0.5, 0.1], dtype=torch.float64)
    fn = lambda a, b, c, s: adaptive_span_attention(a, b, c, s, 3.0, alibi_slopes=slopes, chunk=4, engine=engine)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, v, z))


def test_keys_beyond_the_span_are_never_read():
    """Keys at distance >= z + R have weight exactly 0 and are outside the window: NaN there changes nothing."""
    q, k, v = qkv(1, 2, 2, 64, 64, 8, seed=3)
    z = torch.tensor([3.5, 9.5])
    clean = adaptive_span_attention(q, k, v, z, RAMP, chunk=16, engine="flash")
    k2, v2 = k.clone(), v.clone()
    # Query i sees keys i-13..i (z + R = 13.5): poison keys 0..15 for queries 32.. and compare those.
    k2[:, :, :16], v2[:, :, :16] = float("nan"), float("nan")
    poisoned = adaptive_span_attention(q, k2, v2, z, RAMP, chunk=16, engine="flash")
    assert torch.isfinite(poisoned[:, :, 32:]).all()
    # (the call holding NaN keys may take the tile path that guards hidden keys: equal up to rounding)
    torch.testing.assert_close(poisoned[:, :, 32:], clean[:, :, 32:], rtol=0, atol=1e-6)


def test_window_and_chunks_bound_what_each_call_sees(monkeypatch):
    """One call: query chunks as the batch, each with only the keys its rows can reach, one shared
    O(chunk·w) bias, window = ceil(max z + R) - 1."""
    calls = []
    real = adaptive_span.attention
    monkeypatch.setattr(adaptive_span, "attention", lambda *a, **kw: calls.append((a[0].shape, a[1].shape, kw)) or real(*a, **kw))
    q, k, v = qkv(2, 2, 1, 100, 120, 8, seed=4)
    adaptive_span_attention(q, k, v, torch.tensor([3.5, 10.2]), RAMP, chunk=32)
    ((qs, ks, kw),) = calls
    assert qs == (2 * 4, 2, 32, 8) and ks == (2 * 4, 1, 32 + 14, 8)  # 100 rows -> 4 chunks of 32; 14 = ceil(14.2) - 1
    assert kw["window"] == (14, 0) and kw["causal"] is True and kw["mask"] is None  # 20 memory keys cover the front
    assert kw["bias"].shape == (1, 2, 32, 32 + 14)  # never (L, S)
    calls.clear()
    adaptive_span_attention(q, k[:, :, :100], v[:, :, :100], torch.tensor([3.5, 10.2]), RAMP, chunk=32)
    assert calls[0][2]["mask"].shape == (8, 1, 1, 46)  # no memory: the keys before position 0 are masked


@pytest.mark.parametrize("chunk", [1, 7, 32, 64, None])
@pytest.mark.parametrize("S", [50, 64, 90])
def test_chunking_does_not_change_the_answer(chunk, S):
    q, k, v = qkv(2, 4, 2, 50, S, 8, dtype=torch.float64, seed=S)
    z, slopes = torch.tensor([0.5, 3.5, 9.25, 30.0], dtype=torch.float64), torch.rand(2, 4, dtype=torch.float64)
    ours = adaptive_span_attention(q, k, v, z, RAMP, alibi_slopes=slopes, chunk=chunk, engine="reference")
    one = adaptive_span_attention(q, k, v, z, RAMP, alibi_slopes=slopes, chunk=50, engine="reference")
    torch.testing.assert_close(ours, one, rtol=0, atol=1e-12)


def test_mask_values_and_bias():
    x = torch.arange(8.0).view(1, 8)
    m = span_mask(x, torch.tensor([2.5]), 2.0)
    assert torch.equal(m, torch.tensor([[[1, 1, 1, 0.75, 0.25, 0, 0, 0]]]))
    b = adaptive_span._log_mask(x, torch.tensor([2.5], requires_grad=True), 2.0)
    assert torch.equal(b.isinf(), m == 0)
    b.masked_fill(b.isinf(), 0).sum().backward()  # no 0·inf: finite gradient to z


def test_regularizer_clamp_and_module():
    span = AdaptiveSpan(4, max_span=50, ramp=8, init_span=20)
    span.regularizer().backward()
    assert torch.allclose(span.span.grad, torch.full((4,), 0.25))  # d mean(z) / dz_h = 1/H
    with torch.no_grad():
        span.span.copy_(torch.tensor([-3.0, 10.0, 60.0, 49.5]))
    span.clamp_()
    assert span.span.tolist() == [0.0, 10.0, 50.0, 49.5] and span.window() == 57

    torch.manual_seed(0)
    layer = AdaptiveSpanAttention(32, 4, max_span=16, ramp=4, init_span=6, num_kv_heads=2)
    x, mem = torch.randn(2, 10, 32), torch.randn(2, 12, 32)
    y = layer(x, mem)
    (y.pow(2).mean() + 0.1 * layer.span.regularizer()).backward()
    assert y.shape == (2, 10, 32) and torch.isfinite(layer.span.span.grad).all()


def test_training_shrinks_spans_the_task_does_not_need():
    """With the regularizer, a task that needs only the previous token drives every span down."""
    torch.manual_seed(0)
    layer = AdaptiveSpanAttention(16, 2, max_span=32, ramp=4, init_span=24)
    spans = [layer.span.span]
    others = [p for n, p in layer.named_parameters() if not n.startswith("span.")]
    opt = torch.optim.Adam([{"params": others, "lr": 0.05}, {"params": spans, "lr": 0.5}])  # spans move in tokens
    for _ in range(60):
        x = torch.randn(8, 40, 16)
        target = torch.roll(x, 1, dims=1)  # the previous token
        loss = (layer(x) - target)[:, 1:].pow(2).mean() + 0.05 * layer.span.regularizer()
        opt.zero_grad()
        loss.backward()
        opt.step()
        layer.span.clamp_()
    assert layer.span.span.max() < 12, layer.span.span


def test_segment_memory_with_a_span_matches_the_definition():
    """SegmentMemoryAttention(span=...) = ALiBi + the span mask over [memory; x]."""
    torch.manual_seed(1)
    span = AdaptiveSpan(4, max_span=20, ramp=3, init_span=7.5)
    layer = SegmentMemoryAttention(32, 4, mem_len=12, span=span).double()
    x, mem = torch.randn(2, 9, 32, dtype=torch.float64), torch.randn(2, 12, 32, dtype=torch.float64)
    out, _ = layer(x, mem)
    h = torch.cat([mem, x], 1)
    q = layer.q_proj(x).view(2, 9, 4, 8).transpose(1, 2)
    k = layer.k_proj(h).view(2, 21, 4, 8).transpose(1, 2)
    v = layer.v_proj(h).view(2, 21, 4, 8).transpose(1, 2)
    expect = multiply_renormalize(q, k, v, span.span.double(), 3.0, alibi=layer.slopes)
    torch.testing.assert_close(out, layer.out_proj(expect.transpose(1, 2).reshape(2, 9, 32)), rtol=0, atol=1e-12)


def test_errors():
    q, k, v = qkv(1, 2, 2, 8, 8, 4)
    with pytest.raises(attnkit.AttnkitError, match="span of shape"):
        adaptive_span_attention(q, k, v, torch.ones(3), 2.0)
    with pytest.raises(attnkit.AttnkitError, match="ramp"):
        adaptive_span_attention(q, k, v, torch.ones(2), 0.0)
    with pytest.raises(attnkit.AttnkitError, match="S >= L"):
        adaptive_span_attention(q, k[:, :, :4], v[:, :, :4], torch.ones(2), 2.0)


def test_docstring_examples():
    assert doctest.testmod(adaptive_span, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE).failed == 0
