"""KVCache (attnkit.nn.kv_cache, exported as attnkit.KVCache): geometric growth (counted
reallocations), ragged rows, exact decoding through the decode engine and MultiHeadAttention."""

from __future__ import annotations

import math

import pytest
import torch

import attnkit
from attnkit.nn import MultiHeadAttention
from attnkit.nn.kv_cache import KVCache

from conftest import err, qkv

EPS64 = torch.finfo(torch.float64).eps


def test_single_token_appends_reallocate_logarithmically():
    cache = KVCache(initial_capacity=16)
    ks, vs, ptrs = [], [], set()
    for _ in range(1000):
        k, v = torch.randn(2, 3, 1, 8), torch.randn(2, 3, 1, 5)
        before = cache.reallocations
        cache.append(k, v)
        ks.append(k), vs.append(v)
        if cache.reallocations == before:  # no growth: writes land in the same storage
            ptrs.add(cache.keys.data_ptr())
        else:
            ptrs = {cache.keys.data_ptr()}
    assert cache.reallocations == math.ceil(math.log2(1000 / 16)) == 6
    assert cache.capacity == 1024 and len(cache) == 1000 and len(ptrs) == 1
    assert torch.equal(cache.keys, torch.cat(ks, 2)) and torch.equal(cache.values, torch.cat(vs, 2))
    assert cache.kv_lengths is None and cache.lengths.tolist() == [1000, 1000]


def test_big_append_grows_to_what_is_needed():
    cache = KVCache(initial_capacity=4, growth=1.5)
    cache.append(torch.randn(1, 1, 3, 2), torch.randn(1, 1, 3, 2))
    cache.append(torch.randn(1, 1, 50, 2), torch.randn(1, 1, 50, 2))  # more than 1.5x: jump to 53
    assert cache.capacity == 53 and cache.reallocations == 1
    cache.append(torch.randn(1, 1, 1, 2), torch.randn(1, 1, 1, 2))
    assert cache.capacity == math.ceil(53 * 1.5) and cache.reallocations == 2


def test_ragged_counts_write_each_row_at_its_own_length():
    g = torch.Generator().manual_seed(0)
    cache = KVCache(initial_capacity=2)
    rows: list[list[torch.Tensor]] = [[], [], []]
    for _ in range(6):
        T = 3
        k = torch.randn(3, 2, T, 4, generator=g)
        counts = torch.randint(0, T + 1, (3,), generator=g)
        cache.append(k, k * 2, counts=counts)
        for b in range(3):
            rows[b].append(k[b, :, : int(counts[b])])
    lengths = [sum(x.shape[1] for x in r) for r in rows]
    assert cache.lengths.tolist() == lengths and len(cache) == max(lengths)
    for b in range(3):
        assert torch.equal(cache.keys[b, :, : lengths[b]], torch.cat(rows[b], 1))
        assert torch.equal(cache.values[b, :, : lengths[b]], 2 * torch.cat(rows[b], 1))
    assert cache.kv_lengths is not None or len(set(lengths)) == 1


@pytest.mark.parametrize("H,G", [(8, 8), (8, 2), (4, 1)])
def test_decoding_through_a_ragged_cache_equals_per_row_reference(H, G):
    """Each row attends to exactly its own cached keys; the batch hides the raggedness."""
    g = torch.Generator().manual_seed(H * G)
    B, D = 3, 16
    cache = KVCache(initial_capacity=8)
    prompt = torch.tensor([5, 17, 1])
    k0, v0 = torch.randn(B, G, 17, D, generator=g, dtype=torch.float64), torch.randn(B, G, 17, D, generator=g, dtype=torch.float64)
    cache.append(k0, v0, counts=prompt)
    slopes = attnkit.alibi_slopes(H).double()
    for _ in range(20):
        cache.append(torch.randn(B, G, 1, D, generator=g, dtype=torch.float64), torch.randn(B, G, 1, D, generator=g, dtype=torch.float64))
        q = torch.randn(B, H, 1, D, generator=g, dtype=torch.float64)
        # Short caches dispatch to the reference engine (one block); force the engine under test.
        out = attnkit.attention(q, cache.keys, cache.values, kv_lengths=cache.kv_lengths, causal=True,
                                alibi_slopes=slopes, engine="decode")
        for b in range(B):
            n = int(cache.lengths[b])
            ref = attnkit.attention(
                q[b : b + 1], cache.keys[b : b + 1, :, :n], cache.values[b : b + 1, :, :n], causal=True,
                alibi_slopes=slopes, engine="reference",
            )
            assert err(out[b : b + 1], ref) <= 16 * n * EPS64
    assert cache.reallocations == 2  # first allocation fits the 17-token prompt, then 17 → 34 → 68 for 37 tokens


def test_incremental_decoding_equals_full_causal_attention():
    B, H, G, S, D = 2, 4, 2, 33, 8
    q, k, v = qkv(B, H, G, S, S, D, dtype=torch.float64, seed=9)
    full = attnkit.attention(q, k, v, causal=True, engine="reference")
    cache = KVCache(initial_capacity=4)
    for t in range(S):
        cache.append(k[:, :, t : t + 1], v[:, :, t : t + 1])
        step = attnkit.attention(q[:, :, t : t + 1], cache.keys, cache.values, causal=True)
        assert err(step, full[:, :, t : t + 1]) <= 16 * S * EPS64


def test_reorder_and_reset():
    cache = KVCache(initial_capacity=4)
    k = torch.arange(2 * 1 * 3 * 2, dtype=torch.float32).view(2, 1, 3, 2)
    cache.append(k, k, counts=torch.tensor([3, 1]))
    cache.reorder(torch.tensor([1, 1, 0]))
    assert cache.lengths.tolist() == [1, 1, 3] and torch.equal(cache.keys[2], k[0])
    cache.reset()
    assert len(cache) == 0 and cache.capacity == 4
    cache.append(torch.zeros(3, 1, 1, 2), torch.zeros(3, 1, 1, 2))
    assert cache.lengths.tolist() == [1, 1, 1] and cache.kv_lengths is None


def test_docstring_examples_run():
    import doctest

    import attnkit.nn.kv_cache

    assert attnkit.KVCache is KVCache
    assert doctest.testmod(attnkit.nn.kv_cache).failed == 0


def test_errors_say_what_and_how():
    cache = KVCache()
    with pytest.raises(attnkit.AttnkitError, match="append"):
        _ = cache.keys
    cache.append(torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4))
    with pytest.raises(attnkit.AttnkitError, match=r"\(B, G, D, E\)"):
        cache.append(torch.randn(2, 2, 1, 8), torch.randn(2, 2, 1, 4))
    with pytest.raises(attnkit.AttnkitError, match="counts"):
        cache.append(torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4), counts=torch.tensor([2, 0]))
    with pytest.raises(attnkit.AttnkitError, match="growth"):
        KVCache(initial_capacity=8, growth=1.0)


# Growth and checks as MultiHeadAttention's cache was tested (moved from test_nn_multihead.py).
# One definition of reallocations: the first allocation is not counted (it copies nothing),
# and a first append longer than initial_capacity allocates exactly what it needs.


def test_kv_cache_grows_by_doubling():
    cache = KVCache(initial_capacity=4)
    n = 100
    for t in range(n):
        k_all, v_all = cache.append(torch.full((1, 2, 1, 3), float(t)), torch.full((1, 2, 1, 5), -float(t)))
    assert cache.reallocations == math.ceil(math.log2(n / 4)) and cache.capacity == 128
    assert torch.equal(k_all[0, 0, :, 0], torch.arange(n, dtype=torch.float32))
    assert torch.equal(v_all[0, 1, :, 4], -torch.arange(n, dtype=torch.float32))
    cache.reset()
    assert len(cache) == 0 and cache.append(torch.zeros(1, 2, 3, 3), torch.zeros(1, 2, 3, 5))[0].shape == (1, 2, 3, 3)
    assert cache.reallocations == math.ceil(math.log2(n / 4))  # reset keeps the buffers
    # A long first append allocates enough at once.
    big = KVCache(initial_capacity=4)
    big.append(torch.zeros(1, 1, 37, 2), torch.zeros(1, 1, 37, 2))
    assert big.capacity == 37 and big.reallocations == 0


def test_kv_cache_rejects_mismatches():
    cache = KVCache()
    cache.append(torch.zeros(1, 2, 1, 3), torch.zeros(1, 2, 1, 5))
    with pytest.raises(attnkit.AttnkitError, match="like the cached ones"):
        cache.append(torch.zeros(1, 4, 1, 3), torch.zeros(1, 4, 1, 5))
    with pytest.raises(attnkit.AttnkitError, match="sharing"):
        cache.append(torch.zeros(1, 2, 2, 3), torch.zeros(1, 2, 1, 5))
    with pytest.raises(attnkit.AttnkitError, match="like the cache"):
        cache.append(torch.zeros(1, 2, 1, 3, dtype=torch.float64), torch.zeros(1, 2, 1, 5, dtype=torch.float64))
    with pytest.raises(attnkit.AttnkitError, match="initial_capacity"):
        KVCache(0)


def test_multihead_attention_decodes_through_a_ragged_attnkit_kv_cache():
    """attnkit.KVCache is MultiHeadAttention's cache; a ragged one supplies kv_lengths itself."""
    torch.manual_seed(0)
    E, H, G = 24, 4, 2
    mha = MultiHeadAttention(E, H, num_kv_heads=G).double().eval()
    g = torch.Generator().manual_seed(1)
    prompt_lengths = [5, 2, 7]
    x = torch.randn(3, 7 + 4, E, generator=g, dtype=torch.float64)  # prompts padded to 7, then 4 steps
    cache = attnkit.KVCache(initial_capacity=2)
    assert isinstance(mha.new_cache(), attnkit.KVCache)
    with torch.no_grad():
        D = E // H
        k = mha.k_proj(x[:, :7]).view(3, 7, G, D).transpose(1, 2)
        v = mha.v_proj(x[:, :7]).view(3, 7, G, D).transpose(1, 2)
        cache.append(k, v, counts=torch.tensor(prompt_lengths))
        for t in range(4):
            out, _ = mha(x[:, 7 + t : 8 + t], causal=True, cache=cache)
            for b, n in enumerate(prompt_lengths):
                seq = torch.cat([x[b : b + 1, :n], x[b : b + 1, 7 : 8 + t]], 1)  # the row without padding
                full, _ = mha(seq, causal=True)
                assert err(out[b], full[0, -1:]) < 1e-12
    assert cache.lengths.tolist() == [n + 4 for n in prompt_lengths]


def test_old_import_path_and_keyword_still_work_with_a_warning():
    import importlib
    import sys

    sys.modules.pop("attnkit.kv_cache", None)
    with pytest.warns(DeprecationWarning, match="attnkit.kv_cache"):
        old = importlib.import_module("attnkit.kv_cache")
    assert old.KVCache is KVCache
    with pytest.warns(DeprecationWarning, match="initial_capacity"):
        assert KVCache(capacity=8).initial_capacity == 8
