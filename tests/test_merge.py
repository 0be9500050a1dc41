"""The mergeable softmax state: any split and any merge order give softmax within float32 rounding."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnkit
from attnkit import SoftmaxState, merge_partials

from conftest import assert_flash_rule, qkv

NEG_INF = float("-inf")

# Tolerance: float32 results of sums of n terms; relative error grows ~ n·eps, use 8·eps·n_parts.
EPS32 = torch.finfo(torch.float32).eps


def _row(n, seed, scale):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, n, generator=g) * scale


def _split(n, cuts):
    pts = sorted({c % (n + 1) for c in cuts} | {0, n})
    return list(zip(pts[:-1], pts[1:]))


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 300),
    cuts=st.lists(st.integers(0, 300), max_size=8),
    scale=st.sampled_from([1.0, 30.0, 1e4]),
    seed=st.integers(0, 2**16),
    order_seed=st.integers(0, 2**16),
)
def test_any_split_any_merge_order(n, cuts, scale, seed, order_seed):
    x = _row(n, seed, scale)
    parts = []
    for a, b in _split(n, cuts):
        st_ = SoftmaxState.empty((3,))
        st_.update(x[:, a:b])
        parts.append(st_)
    random.Random(order_seed).shuffle(parts)
    # Merge as a random binary tree, not just left to right.
    rng = random.Random(order_seed + 1)
    while len(parts) > 1:
        i = rng.randrange(len(parts) - 1)
        parts[i : i + 2] = [parts[i].merge(parts[i + 1])]
    n_parts = len(_split(n, cuts))
    # Each merge rounds l once (relative eps) and p = exp(x - lse) inherits eps·|x| from the
    # subtraction; the floor scales with both, on top of FlashAttention's 2x-torch rule.
    floor = 4 * EPS32 * n_parts * float(x.abs().max().clamp_min(1.0))
    ref_lse = torch.logsumexp(x.double(), -1)
    assert_flash_rule(parts[0].lse, torch.logsumexp(x, -1), ref_lse, floor)
    assert_flash_rule(parts[0].normalize(x), torch.softmax(x, -1), torch.softmax(x.double(), -1), floor)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 200), block=st.integers(1, 64), seed=st.integers(0, 999))
def test_online_softmax_matches(n, block, seed):
    x = _row(n, seed, 5.0)
    ours = attnkit.online_softmax(x, -1, block)
    ref = torch.softmax(x.double(), -1) if n else torch.empty(3, 0, dtype=torch.float64)
    assert ours.shape == x.shape
    if n:
        assert float((ours.double() - ref).abs().max()) <= 8 * EPS32 * (n // block + 1)


def test_update_returns_rescale_for_accumulators():
    x = _row(10, 0, 3.0)
    v = torch.randn(10, 4)
    st_ = SoftmaxState.empty((3,))
    acc = torch.zeros(3, 4)
    for a in range(0, 10, 3):
        p, alpha = st_.update(x[:, a : a + 3])
        acc = acc * alpha[:, None] + p @ v[a : a + 3]
    out = acc / st_.l[:, None]
    torch.testing.assert_close(out, torch.softmax(x, -1) @ v)


def test_empty_states_merge_without_nan():
    e1, e2 = SoftmaxState.empty((2,)), SoftmaxState.empty((2,))
    m = e1.merge(e2)
    assert (m.lse == NEG_INF).all() and not torch.isnan(m.l).any()
    full = SoftmaxState.empty((2,))
    full.update(torch.tensor([[1.0, 2.0], [NEG_INF, NEG_INF]]))  # second row fully masked
    assert full.lse[1] == NEG_INF and not torch.isnan(full.lse).any()
    both = full.merge(e1)
    torch.testing.assert_close(both.lse, full.lse)
    assert (full.normalize(torch.tensor([[1.0, 2.0], [NEG_INF, NEG_INF]]))[1] == 0).all()


def test_merge_partials_of_attention_equals_full():
    q, k, v = qkv(2, 4, 2, 9, 20, 8, seed=1)
    full = attnkit.attention(q, k, v, return_lse=True)
    cut = [0, 3, 11, 20]
    parts = [attnkit.attention(q, k[:, :, a:b], v[:, :, a:b], return_lse=True) for a, b in zip(cut[:-1], cut[1:])]
    out, lse = parts[0].out, parts[0].lse
    for p in parts[1:]:
        out, lse = merge_partials(out, lse, p.out, p.lse)
    torch.testing.assert_close(out, full.out, atol=4 * EPS32, rtol=4 * EPS32)
    torch.testing.assert_close(lse, full.lse, atol=4 * EPS32 * 10, rtol=4 * EPS32)


def test_merge_partials_with_empty_parts():
    o = torch.randn(1, 1, 3, 4)
    lse = torch.tensor([[[0.5, NEG_INF, 1.0]]])
    empty_o, empty_lse = torch.zeros_like(o), torch.full_like(lse, NEG_INF)
    out, l2 = merge_partials(o, lse, empty_o, empty_lse)
    assert not torch.isnan(out).any()
    assert (out[0, 0, 1] == 0).all() and l2[0, 0, 1] == NEG_INF
    torch.testing.assert_close(out[0, 0, [0, 2]], o[0, 0, [0, 2]])
    out, l2 = merge_partials(empty_o, empty_lse, empty_o, empty_lse)
    assert (out == 0).all() and (l2 == NEG_INF).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_merge_partials_low_precision_returns_input_dtype(dtype):
    o = torch.randn(2, 5, 4).to(dtype)
    lse = torch.randn(2, 5)
    out, l2 = merge_partials(o, lse, o, lse)
    assert out.dtype == dtype and l2.dtype == torch.float32
    torch.testing.assert_close(l2, lse + torch.log(torch.tensor(2.0)))
