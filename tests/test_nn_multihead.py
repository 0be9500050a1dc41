"""attnkit.nn.MultiHeadAttention against torch.nn.MultiheadAttention, GQA, structured masks and the KV cache.

Comparisons run in float64 unless stated: the two modules compute the same formula with different
summation orders, so they agree to float64 rounding (<= 1e-12 for O(1) inputs of these sizes).
"""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

import attnkit
from attnkit import AttnkitError
from attnkit.nn import MultiHeadAttention

from conftest import err

TOL64 = 1e-12
E, H = 24, 4  # embed_dim, heads (head dim 6)


def _inputs(B, L, S, kdim=E, vdim=E, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, L, E, generator=g, dtype=dtype), torch.randn(B, S, kdim, generator=g, dtype=dtype),
            torch.randn(B, S, vdim, generator=g, dtype=dtype))


def _pair(batch_first, kdim=None, vdim=None, bias=True, seed=0):
    torch.manual_seed(seed)
    ref = torch.nn.MultiheadAttention(E, H, batch_first=batch_first, kdim=kdim, vdim=vdim, bias=bias).double().eval()
    return ref, MultiHeadAttention.from_torch(ref).eval()


def _bf(t, batch_first):
    return t if batch_first or t is None else t.transpose(0, 1)


def _masks(kind, B, L, S):
    g = torch.Generator().manual_seed(7)
    kpm = torch.zeros(B, S, dtype=torch.bool)
    kpm[0, S - 2:] = True  # padding at the end of the first sequence
    if kind == "none":
        return {}
    if kind == "bool_attn_mask":
        return {"attn_mask": torch.rand(L, S, generator=g) > 0.7}  # torch: True = not allowed
    if kind == "float_attn_mask":
        return {"attn_mask": torch.randn(L, S, generator=g, dtype=torch.float64)}
    if kind == "per_head_attn_mask":
        return {"attn_mask": torch.rand(B * H, L, S, generator=g) > 0.7}
    if kind == "key_padding_mask":
        return {"key_padding_mask": kpm}
    if kind == "both":
        return {"key_padding_mask": kpm, "attn_mask": torch.rand(L, S, generator=g) > 0.7}
    if kind == "both_float":  # torch also takes additive float masks for both
        return {"key_padding_mask": torch.randn(B, S, generator=g, dtype=torch.float64),
                "attn_mask": torch.randn(L, S, generator=g, dtype=torch.float64)}
    raise AssertionError(kind)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("mode", ["self", "cross", "cross_kdim"])
@pytest.mark.parametrize("masks", ["none", "bool_attn_mask", "float_attn_mask", "per_head_attn_mask", "key_padding_mask", "both", "both_float"])
@torch.no_grad()
def test_matches_torch(batch_first, mode, masks):
    B, L = 2, 5
    S = L if mode == "self" else 7
    kdim, vdim = (10, 13) if mode == "cross_kdim" else (None, None)
    ref, ours = _pair(batch_first, kdim, vdim)
    q, k, v = _inputs(B, L, S, kdim or E, vdim or E)
    if mode == "self":
        k = v = q
    args = [_bf(t, batch_first) for t in (q, k, v)]
    kw = _masks(masks, B, L, S)
    for average in (True, False):
        o_ref, w_ref = ref(*args, need_weights=True, average_attn_weights=average, **kw)
        o, w = ours(*args, need_weights=True, average_attn_weights=average, **kw)
        assert o.shape == o_ref.shape and w.shape == w_ref.shape
        assert err(o, o_ref) < TOL64 and err(w, w_ref) < TOL64
    o_fast, w_none = ours(*args, **kw)  # need_weights=False: same output, no weights
    assert w_none is None and err(o_fast, o_ref) < TOL64


@torch.no_grad()
def test_unbatched_and_positional_torch_signature():
    ref, ours = _pair(batch_first=False)
    q, k, v = (t[0] for t in _inputs(1, 4, 6))
    kpm = torch.tensor([False, False, False, False, True, True])
    o_ref, w_ref = ref(q, k, v, kpm, True)  # torch's positional order
    o, w = ours(q, k, v, kpm, True)
    assert o.shape == (4, E) and w.shape == (4, 6)
    assert err(o, o_ref) < TOL64 and err(w, w_ref) < TOL64


def test_gradients_match_torch():
    ref, ours = _pair(batch_first=True)
    q, k, v = (t.requires_grad_() for t in _inputs(2, 5, 6, seed=3))
    kpm = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    go = torch.randn(2, 5, E, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    g_ref = torch.autograd.grad((ref(q, k, v, key_padding_mask=kpm)[0] * go).sum(), (q, k, v, ref.in_proj_weight))
    g = torch.autograd.grad((ours(q, k, v, key_padding_mask=kpm)[0] * go).sum(),
                            (q, k, v, ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight))
    for a, b in zip(g[:3], g_ref[:3]):
        assert err(a, b) < TOL64
    assert err(torch.cat(g[3:]), g_ref[3]) < TOL64


@torch.no_grad()
def test_float32_matches_torch_within_rounding():
    torch.manual_seed(0)
    ref = torch.nn.MultiheadAttention(64, 8, batch_first=True).eval()
    ours = MultiHeadAttention.from_torch(ref).eval()
    x = torch.randn(2, 33, 64, generator=torch.Generator().manual_seed(1))
    ref64 = MultiHeadAttention.from_torch(ref.double()).eval()(x.double())[0]
    ref.float()
    # FlashAttention's rule against torch's own float32 result.
    e_ours, e_torch = err(ours(x)[0], ref64), err(ref(x, x, x)[0], ref64)
    assert e_ours <= 2 * e_torch + 1e-6


@pytest.mark.parametrize("num_kv_heads", [4, 2, 1])
@torch.no_grad()
def test_gqa_and_mqa(num_kv_heads):
    torch.manual_seed(0)
    mha = MultiHeadAttention(E, H, num_kv_heads=num_kv_heads, kdim=11, vdim=9).double()
    assert mha.k_proj.out_features == num_kv_heads * (E // H)
    x, mem, mem_v = _inputs(2, 5, 7, kdim=11, vdim=9)
    mask = torch.rand(2, 1, 5, 7, generator=torch.Generator().manual_seed(1)) > 0.3
    out, _ = mha(x, mem, mem_v, mask=mask)

    B, L, S, D = 2, 5, 7, E // H
    q = mha.q_proj(x).view(B, L, H, D).transpose(1, 2)
    k = mha.k_proj(mem).view(B, S, num_kv_heads, D).transpose(1, 2).repeat_interleave(H // num_kv_heads, 1)
    v = mha.v_proj(mem_v).view(B, S, num_kv_heads, D).transpose(1, 2).repeat_interleave(H // num_kv_heads, 1)
    ref = mha.out_proj(F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(B, L, E))
    assert err(out, ref) < TOL64


@torch.no_grad()
def test_structured_masks_equal_dense_masks():
    torch.manual_seed(0)
    mha = MultiHeadAttention(E, H, num_kv_heads=2).double()
    x, mem, _ = _inputs(2, 6, 9)
    i, j = torch.arange(6)[:, None], torch.arange(9)[None, :]
    lengths = torch.tensor([9, 7])
    p = i[None] + (lengths - 6)[:, None, None]  # bottom-right alignment per sequence: kv_len - L
    dense = (j <= p) & (j >= p - 2) & (j < lengths[:, None, None])  # (B, L, S)
    out, w = mha(x, mem, causal=True, window=(2, 0), kv_lengths=lengths, need_weights=True, average_attn_weights=False)
    out_d, w_d = mha(x, mem, mask=dense[:, None], need_weights=True, average_attn_weights=False)
    assert err(out, out_d) < TOL64 and err(w, w_d) < TOL64
    assert (w[~dense[:, None].expand_as(w)] == 0).all()


@pytest.mark.parametrize("chunks", [[1] * 11, [4, 1, 3, 1, 2]], ids=["token_by_token", "chunks"])
@pytest.mark.parametrize("num_kv_heads", [4, 2])
@torch.no_grad()
def test_incremental_decoding_equals_full_causal(chunks, num_kv_heads):
    torch.manual_seed(0)
    mha = MultiHeadAttention(E, H, num_kv_heads=num_kv_heads).double().eval()
    x = torch.randn(2, sum(chunks), E, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    full, w_full = mha(x, causal=True, need_weights=True)
    cache, outs, start = mha.new_cache(initial_capacity=2), [], 0
    for n in chunks:
        o, w = mha(x[:, start : start + n], causal=True, cache=cache, need_weights=True)
        assert w.shape == (2, n, start + n)
        assert err(w, w_full[:, start : start + n, : start + n]) < TOL64
        outs.append(o)
        start += n
    assert err(torch.cat(outs, 1), full) < TOL64
    assert len(cache) == sum(chunks) and cache.keys.shape == (2, num_kv_heads, sum(chunks), E // H)


@torch.no_grad()
def test_dropout_is_reproducible_and_off_in_eval():
    torch.manual_seed(0)
    mha = MultiHeadAttention(E, H, dropout=0.5)
    x = torch.randn(2, 6, E, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(3)
    a = mha(x)[0]
    torch.manual_seed(3)
    b = mha(x)[0]
    assert torch.equal(a, b)
    mha.eval()
    assert err(mha(x)[0], a) > 1e-3 and torch.equal(mha(x)[0], mha(x)[0])


def test_errors():
    with pytest.raises(AttnkitError, match="num_kv_heads"):
        MultiHeadAttention(E, H, num_kv_heads=3)
    with pytest.raises(AttnkitError, match="divisible"):
        MultiHeadAttention(25, H)
    with pytest.raises(AttnkitError, match="add_bias_kv"):
        MultiHeadAttention.from_torch(torch.nn.MultiheadAttention(E, H, add_bias_kv=True))
    mha = MultiHeadAttention(E, H)
    x = torch.randn(2, 5, E)
    with pytest.raises(AttnkitError, match="attn_mask of shape"):
        mha(x, attn_mask=torch.zeros(4, 5, dtype=torch.bool))
    with pytest.raises(AttnkitError, match="key_padding_mask of shape"):
        mha(x, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(AttnkitError, match="query of shape"):
        mha(torch.randn(2, 5, E + 1))


def test_is_exported_lazily():
    assert attnkit.nn.MultiHeadAttention is MultiHeadAttention


@pytest.mark.parametrize("module", ["attnkit.nn.multihead"])
def test_docstring_examples(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0
