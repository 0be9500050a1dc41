"""The split-KV decode engine equals the reference: ragged caches, GQA, masks, ALiBi, softcap, grads."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit.engines import kernel, decode
from attnkit.engines.kernel import tiles as torch_tiles

from conftest import assert_flash_rule, err, general_dispatch, qkv

EPS64 = torch.finfo(torch.float64).eps


def both(q, k, v, **kw):
    """(decode, reference) AttentionOutputs with lse."""
    ours = attnkit.attention(q, k, v, engine="decode", return_lse=True, **kw)
    ref = attnkit.attention(q, k, v, engine="reference", return_lse=True, **kw)
    return ours, ref


def tol64(S: int) -> float:
    # Both engines sum S products in float64 in different orders (tiles, segments, merges);
    # the rounding difference is bounded by ~S·eps relative to O(1) outputs; 8x for the merges.
    return 8 * max(S, 1) * EPS64


@pytest.fixture
def small_tiles(monkeypatch):
    """Force many query/key tiles and several thread segments on small inputs."""
    monkeypatch.setattr(torch_tiles, "_TILE_ELEMS", 96)
    monkeypatch.setattr(torch_tiles, "_MAX_TILE_Q", 3)
    monkeypatch.setattr(torch_tiles, "_MIN_TILE_Q", 1)
    monkeypatch.setattr(torch_tiles, "_MIN_TILE_K", 1)
    monkeypatch.setattr(decode, "MIN_SEGMENT", 16)


FEATURES = {
    "plain": lambda B, H, S, g: {},
    "causal": lambda B, H, S, g: dict(causal=True),
    "ragged": lambda B, H, S, g: dict(kv_lengths=torch.randint(0, S + 1, (B,), generator=g), causal=True),
    "alibi_softcap": lambda B, H, S, g: dict(alibi_slopes=attnkit.alibi_slopes(H), softcap=4.0),
    "window": lambda B, H, S, g: dict(window=(S // 3, 0), causal=True),
    "bool_mask": lambda B, H, S, g: dict(mask=torch.rand(B, 1, 1, S, generator=g) > 0.3),
    "float_mask": lambda B, H, S, g: dict(mask=torch.randn(1, H, 1, S, generator=g, dtype=torch.float64)),
}


@pytest.mark.parametrize("feature", sorted(FEATURES))
@pytest.mark.parametrize("H,G", [(4, 4), (8, 2), (6, 1)])  # MHA, GQA, MQA
@pytest.mark.parametrize("L", [1, 5, 16])
def test_equals_reference_float64(feature, H, G, L, small_tiles):
    B, S, D = 3, 97, 11
    g = torch.Generator().manual_seed(hash((feature, H, G, L)) % 2**31)
    q, k, v = qkv(B, H, G, L, S, D, 7, dtype=torch.float64, seed=L + H)
    kw = FEATURES[feature](B, H, S, g)
    ours, ref = both(q, k, v, **kw)
    assert err(ours.out, ref.out) <= tol64(S)
    assert err(ours.lse, ref.lse) <= tol64(S)


@pytest.mark.parametrize("feature", sorted(FEATURES))
@pytest.mark.parametrize("keys_major_rows", [0, 1 << 30], ids=["query_major", "keys_major"])
def test_both_score_orientations(feature, keys_major_rows, small_tiles, monkeypatch):
    """Scores are computed as K·qᵀ for few packed query rows and q·Kᵀ otherwise; both are exact."""
    monkeypatch.setattr(torch_tiles, "_KEYS_MAJOR_ROWS", keys_major_rows)
    B, H, G, L, S, D = 2, 8, 2, 7, 61, 9
    g = torch.Generator().manual_seed(len(feature))
    q, k, v = qkv(B, H, G, L, S, D, 5, dtype=torch.float64, seed=2)
    ours, ref = both(q, k, v, **FEATURES[feature](B, H, S, g))
    assert err(ours.out, ref.out) <= tol64(S) and err(ours.lse, ref.lse) <= tol64(S)


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_thread_segments_merge_exactly(workers, monkeypatch):
    # 3 segments give an odd merge tree; real tile sizes, long enough cache for several segments.
    monkeypatch.setattr(decode, "MIN_SEGMENT", 1024)
    B, H, G, L, S, D = 2, 8, 2, 2, 5000, 16
    q, k, v = qkv(B, H, G, L, S, D, dtype=torch.float64, seed=workers)
    kv_lengths = torch.tensor([5000, 3001])
    spec = attnkit.AttentionSpec.build(q, k, v, causal=True, kv_lengths=kv_lengths, return_lse=True)
    assert len(decode._segments(spec, workers)) == workers
    out, lse = decode.split_kv_forward(q, k, v, spec, workers=workers)[:2]
    ref = attnkit.attention(q, k, v, causal=True, kv_lengths=kv_lengths, engine="reference", return_lse=True)
    assert err(out, ref.out) <= tol64(S) and err(lse, ref.lse) <= tol64(S)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_low_precision_flash_rule(dtype):
    B, H, G, L, S, D = 2, 8, 2, 3, 3000, 64
    q, k, v = qkv(B, H, G, L, S, D, dtype=dtype, seed=3)
    kv_lengths = torch.tensor([3000, 1234])
    ours = attnkit.attention(q, k, v, kv_lengths=kv_lengths, causal=True, engine="decode")
    base = attnkit.attention(q, k, v, kv_lengths=kv_lengths, causal=True, engine="reference")
    ref = attnkit.attention(*(t.double() for t in (q, k, v)), kv_lengths=kv_lengths, causal=True, engine="reference")
    assert ours.dtype == dtype
    assert_flash_rule(ours, base, ref)


def test_dispatch_picks_decode_for_decoding_shapes():
    q, k, v = qkv(1, 8, 2, 1, 3000, 16)  # long enough that the keys span several blocks
    assert general_dispatch(q, k, v, causal=True).engine == "decode"
    q17 = torch.randn(1, 8, 17, 16)
    d = general_dispatch(q17, k, v)
    assert d.engine != "decode" and "L=17 > 16" in d.reasons["decode"]
    for kw, why in [
        (dict(normalizer="sparsemax"), "normalizer"),
        (dict(return_weights=True), "return_weights"),
        (dict(alibi_slopes=torch.ones(1, 8, requires_grad=True)), "alibi_slopes requires grad"),
    ]:
        d = general_dispatch(q, k, v, **kw)
        assert d.engine != "decode" and why in d.reasons["decode"], (kw, str(d))
    # The shared kernel runs dropout, score_mod callables and bias gradients for decode too.
    for kw in (dict(dropout_p=0.1), dict(score_mod=lambda s, b, h, i, j: s),
               dict(bias=torch.zeros(1, 8, 1, 3000, requires_grad=True))):
        assert general_dispatch(q, k, v, **kw).engine == "decode", kw
    q, k, v = qkv(1, 8, 2, 1, 300, 16)  # one block: the fused kernel runs it in one call
    with kernel.force_path("torch"):  # ... and on PyTorch tiles the reference engine is quicker
        d = general_dispatch(q, k, v, causal=True)
    assert d.engine == "reference" and "one block" in d.reasons["decode"]
    with pytest.raises(attnkit.AttnkitError, match="decode"):
        attnkit.attention(q17, k, v, engine="decode")


@pytest.mark.parametrize(
    "kw",
    [dict(), dict(causal=True, kv_lengths=torch.tensor([0, 5, 9])), dict(alibi_slopes=attnkit.alibi_slopes(4), softcap=2.0),
     dict(window=(3, 0), causal=True)],
    ids=["plain", "ragged_with_empty_row", "alibi_softcap", "window"],
)
def test_gradcheck_float64(kw):
    q, k, v = qkv(3, 4, 2, 2, 9, 3, 2, dtype=torch.float64, seed=1, requires_grad=True)

    def f(q, k, v):
        res = attnkit.attention(q, k, v, engine="decode", return_lse=True, **kw)
        # lse is differentiable too (merge_attention of partials backpropagates through it).
        return res.out, torch.where(torch.isinf(res.lse), 0.0, res.lse)

    assert torch.autograd.gradcheck(f, (q, k, v))


def test_grads_equal_reference_with_empty_rows(small_tiles):
    q, k, v = qkv(2, 6, 3, 4, 40, 8, dtype=torch.float64, seed=5, requires_grad=True)
    kw = dict(kv_lengths=torch.tensor([0, 33]), causal=True, softcap=3.0)
    dout = torch.randn(2, 6, 4, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grads = []
    for engine in ("decode", "reference"):
        out = attnkit.attention(q, k, v, engine=engine, **kw)
        grads.append(torch.autograd.grad(out, (q, k, v), dout))
    for a, b in zip(*grads):
        assert torch.isfinite(a).all() and err(a, b) <= tol64(40)
    assert (grads[0][0][0] == 0).all()  # the row with an empty cache has zero gradient


def test_edges_empty_and_nan_rows():
    q, k, v = qkv(2, 2, 2, 3, 0, 4)
    res = attnkit.attention(q, k, v, engine="decode", return_lse=True)
    assert (res.out == 0).all() and torch.isneginf(res.lse).all()
    q, k, v = qkv(2, 2, 2, 0, 5, 4)
    assert attnkit.attention(q, k, v, engine="decode").shape == (2, 2, 0, 4)
    q, k, v = qkv(2, 2, 1, 2, 50, 4)
    q[0, 1, 0] = float("nan")
    out = attnkit.attention(q, k, v, engine="decode")
    assert torch.isnan(out[0, 1, 0]).all() and not torch.isnan(out[1]).any() and not torch.isnan(out[0, 0]).any()


def test_dropout_equals_reference(small_tiles):
    """The counter hash drops the same entries in every segment/tile as in the reference engine."""
    B, H, G, L, S, D = 2, 8, 2, 3, 97, 9
    q, k, v = qkv(B, H, G, L, S, D, 5, dtype=torch.float64, seed=9, requires_grad=True)
    kw = dict(dropout_p=0.3, seed=1234, causal=True, kv_lengths=torch.tensor([97, 40]))
    ours, ref = both(q, k, v, **kw)
    assert err(ours.out, ref.out) <= tol64(S) and err(ours.lse, ref.lse) <= tol64(S)
    dout = torch.randn(ref.out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    for a, b in zip(torch.autograd.grad(ours.out, (q, k, v), dout), torch.autograd.grad(ref.out, (q, k, v), dout)):
        assert err(a, b) <= tol64(S)


@pytest.mark.parametrize("shape", [(1, 8, 1, 97), (2, 1, 3, 97), (97,)], ids=["per_head_key", "per_batch_row", "per_key"])
def test_bias_and_float_mask_gradients_equal_reference(shape, small_tiles):
    B, H, G, L, S, D = 2, 8, 2, 3, 97, 9
    q, k, v = qkv(B, H, G, L, S, D, dtype=torch.float64, seed=4, requires_grad=True)
    g = torch.Generator().manual_seed(6)
    base = [torch.randn(shape, dtype=torch.float64, generator=g) for _ in range(2)]
    grads = []
    for engine in ("decode", "reference"):
        bias, fmask = (t.clone().requires_grad_() for t in base)
        out = attnkit.attention(q, k, v, bias=bias, mask=fmask, softcap=5.0, causal=True, engine=engine)
        grads.append(torch.autograd.grad((out**2).sum(), (q, k, v, bias, fmask)))
    for a, b in zip(*grads):
        assert err(a, b) <= tol64(S)


def test_garbage_past_kv_lengths_is_ignored(small_tiles):
    """A KV cache from torch.empty: NaN/inf past each sequence's length never reaches any output or grad."""
    B, H, G, L, S, D = 2, 4, 2, 2, 60, 8
    q, k, v = qkv(B, H, G, L, S, D, dtype=torch.float64, seed=8)
    kv_lengths = torch.tensor([25, 60])
    k_bad, v_bad = k.clone(), v.clone()
    k_bad[0, :, 25:] = float("nan")
    v_bad[0, 1, 30:, 2] = float("inf")
    v_bad[0, 0, 40] = float("-inf")
    results = []
    for kk, vv, engine in ((k_bad, v_bad, "decode"), (k, v, "reference")):
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, kk, vv))
        res = attnkit.attention(qq, kk, vv, kv_lengths=kv_lengths, causal=True, engine=engine, return_lse=True)
        grads = torch.autograd.grad(res.out.sum() + res.lse.sum(), (qq, kk, vv))
        results.append((res.out, res.lse, *grads))
    for a, b in zip(*results):
        assert torch.isfinite(a).all() and err(a, b) <= tol64(S)


def _spy_kernel_calls(monkeypatch) -> list[tuple[int, int]]:
    """Record the key range ``(j0, j0 + S_b)`` of every kernel forward call."""
    calls: list[tuple[int, int]] = []
    real = kernel.forward

    def spy(q, k, v, spec, i0=0, j0=0):
        calls.append((j0, j0 + k.shape[2]))
        return real(q, k, v, spec, i0, j0)

    monkeypatch.setattr(kernel, "forward", spy)
    return calls


@pytest.mark.parametrize("workers", [2, 3, 4, 5])  # odd counts leave one partial unpaired in the merge tree
def test_split_kv_merges_every_segment_when_groups_are_fewer_than_workers(workers, monkeypatch):
    # B·G = 1 < workers: the keys are cut into `workers` segments on threads and their partials merged.
    monkeypatch.setattr(decode, "MIN_SEGMENT", 1000)
    q, k, v = qkv(1, 2, 1, 1, 5000, 16, dtype=torch.float64, seed=11)
    spec = attnkit.AttentionSpec.build(q, k, v, return_lse=True)
    calls = _spy_kernel_calls(monkeypatch)
    out, lse = decode.split_kv_forward(q, k, v, spec, workers=workers)[:2]
    assert len(calls) == workers and sorted(calls)[0][0] == 0 and sorted(calls)[-1][1] == 5000
    assert all(a[1] == b[0] for a, b in zip(sorted(calls), sorted(calls)[1:]))  # contiguous, no key twice
    ref = attnkit.attention(q, k, v, engine="reference", return_lse=True)
    assert err(out, ref.out) <= 1e-11 and err(lse, ref.lse) <= 1e-11


def test_split_kv_ragged_rows_with_an_empty_segment(monkeypatch):
    # Row 1 has 3001 keys: the third of three segments (keys 3334..4999) is empty for it (lse = -inf).
    monkeypatch.setattr(decode, "MIN_SEGMENT", 1000)
    q, k, v = qkv(2, 2, 1, 1, 5000, 16, dtype=torch.float64, seed=12)
    kv_lengths = torch.tensor([5000, 3001])
    spec = attnkit.AttentionSpec.build(q, k, v, kv_lengths=kv_lengths, return_lse=True)
    calls = _spy_kernel_calls(monkeypatch)
    out, lse = decode.split_kv_forward(q, k, v, spec, workers=3)[:2]
    assert len(calls) == 3 and max(j0 for j0, _ in calls) > 3001
    ref = attnkit.attention(q, k, v, kv_lengths=kv_lengths, engine="reference", return_lse=True)
    assert err(out, ref.out) <= 1e-11 and err(lse, ref.lse) <= 1e-11
