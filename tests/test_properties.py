"""Property tests (hypothesis): every engine that accepts a spec agrees with the float64 reference.

Each example draws an engine *other than* the oracle (``reference``) and a problem: shapes (odd D,
L != S, L = 1, empty) × masks (bool, float, causal in both alignments, windows, lengths, fully
masked rows, NaN/inf in hidden keys) × features (ALiBi, softcap, bias, dropout, score_mod) × GQA
× dtypes × tile geometry (the fused path's own blocks, with S past its 128-key backward and
512-key forward blocks; or the PyTorch tile path forced, with tiles of a few rows and keys so
even short inputs span several query and key tiles; decode with short key segments on three
workers, so an odd count of partials merges). Checked with FlashAttention's rule
``max|ours - ref64| <= 2·max|baseline - ref64| + floor`` (baseline: the reference engine in the
same dtype). An engine that declines the spec (with its reason) is assumed away; ``sdpa`` is
checked without ``lse`` (it returns none).

Every example that compared a non-empty result is counted; the counts are printed at the end of
the run (tests/conftest.py), and the last test fails below ``MIN_COMPARED`` (2,000) under the ci profile.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Iterator

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import attnkit
from attnkit import AttnkitError
from attnkit.engines import kernel, decode
from attnkit.engines.kernel import tiles as torch_tiles

from conftest import COMPARED, ENGINES, MIN_COMPARED, err

FLOOR = {torch.float64: 1e-10, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
_SETTINGS = dict(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
# The oracle is never an engine under test: comparing reference with itself compares nothing.
UNDER_TEST = [e for e in ENGINES if e != "reference"]


@st.composite
def problems(draw, dtypes=(torch.float32, torch.float64)):
    """A random attention call: tensors, keyword arguments, engine, tile geometry and a description."""
    engine = draw(st.sampled_from(UNDER_TEST))
    B, G, R = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.sampled_from([1, 2, 3]))
    # L = 0 (empty: nothing to compare) in about 1 example of 40, so nearly every example compares
    # (an inner value: hypothesis draws the bounds of a range far more often than 1 in 40).
    L = 0 if draw(st.integers(0, 39)) == 20 else draw(st.integers(1, decode.MAX_QUERIES if engine == "decode" else 19))
    # Tiles: None = the default geometry (the fused C++ path's 512-key forward / 128-key backward
    # blocks, reached by the longer S); (rows, keys) = the PyTorch tile path forced with tiny tiles.
    tiles = draw(st.sampled_from([None, None, (2, 3), (4, 8), (8, 5)]))
    size = draw(st.sampled_from(["short", "short", "medium", "long"] if tiles is None else ["short", "medium"]))
    S = draw({"short": st.integers(0, 23), "medium": st.integers(24, 150), "long": st.integers(513, 600)}[size])
    D, E = draw(st.sampled_from([1, 3, 8, 11])), draw(st.sampled_from([1, 5, 8]))
    dtype = draw(st.sampled_from(dtypes))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    H = G * R
    q = torch.randn(B, H, L, D, generator=g, dtype=torch.float64) * 2
    k = torch.randn(B, G, S, D, generator=g, dtype=torch.float64) * 2
    v = torch.randn(B, G, S, E, generator=g, dtype=torch.float64)
    kw: dict = {"scale": draw(st.sampled_from([None, 0.3, 2.0]))}
    kind = draw(st.sampled_from(["none", "bool", "float", "causal", "top_left", "window", "kv_lengths", "q_lengths", "empty_rows"]))
    if kind == "bool":
        kw["mask"] = torch.rand(B, 1, L, S, generator=g) > 0.4
    elif kind == "float":
        kw["mask"] = (torch.randn(1, H, L, S, generator=g, dtype=torch.float64) * 3).to(dtype)
    elif kind in ("causal", "top_left"):
        kw["causal"] = True if kind == "causal" else "top_left"
    elif kind == "window":
        kw["window"] = (draw(st.integers(0, 6)), draw(st.sampled_from([0, 3, None])))
        kw["causal"] = draw(st.booleans())
    elif kind == "kv_lengths":
        kw["kv_lengths"] = torch.randint(0, S + 1, (B,), generator=g)
        kw["causal"] = draw(st.booleans())
    elif kind == "q_lengths":
        kw["q_lengths"] = torch.randint(0, L + 1, (B,), generator=g)
        kw["kv_lengths"] = torch.randint(0, S + 1, (B,), generator=g)
    elif kind == "empty_rows" and L:
        mask = torch.rand(B, H, L, S, generator=g) > 0.3
        mask[:, :, : max(1, L // 3)] = False  # fully masked rows: out 0, lse -inf
        kw["mask"] = mask
    feature = draw(st.sampled_from(["none", "none", "alibi", "softcap", "bias", "dropout", "score_mod", "alibi+softcap"]))
    if "alibi" in feature:
        kw["alibi_slopes"] = attnkit.alibi_slopes(H)
    if "softcap" in feature:
        kw["softcap"] = draw(st.sampled_from([2.0, 30.0]))
    if feature == "bias":
        kw["bias"] = (torch.randn(B, H, 1, S, generator=g, dtype=torch.float64) * 2).to(dtype)
    if feature == "dropout":
        kw["dropout_p"], kw["seed"] = draw(st.sampled_from([0.1, 0.5])), seed  # the same keep mask on every engine
    if feature == "score_mod":
        kw["score_mod"] = _relative_bias
    garbage = draw(st.sampled_from([None, float("nan"), float("inf"), float("-inf")]))
    if garbage is not None and "kv_lengths" in kw:
        # A KV cache allocated with torch.empty: whatever lies past the lengths must not matter.
        for b, n in enumerate(kw["kv_lengths"].tolist()):
            k[b, :, n:] = garbage
            v[b, :, n:] = garbage
    what = f"{kind}+{feature} {dtype} B{B} G{G} R{R} L{L} S{S} D{D} E{E} tiles={tiles}"
    return q.to(dtype), k.to(dtype), v.to(dtype), kw, engine, tiles, what


def _relative_bias(s, b, h, i, j):
    return s - 0.05 * (i - j).abs()


@contextlib.contextmanager
def geometry(engine: str, tiles: tuple[int, int] | None) -> Iterator[None]:
    """Tiny tiles on the PyTorch tile path (several query and key tiles per example), and short
    decode segments (several partials to merge); restored afterwards."""
    saved = {n: getattr(torch_tiles, n) for n in ("_MAX_TILE_Q", "_MIN_TILE_Q", "_MIN_TILE_K", "_TILE_ELEMS")}
    saved_segment, saved_split = decode.MIN_SEGMENT, decode.split_kv_forward
    try:
        if engine == "decode":
            # Three workers (an odd count of partials to merge) over segments of >= 4 keys.
            decode.MIN_SEGMENT = 4
            decode.split_kv_forward = functools.partial(saved_split, workers=3)
        if tiles is None:
            yield
            return
        rows, keys = tiles
        torch_tiles._MAX_TILE_Q = torch_tiles._MIN_TILE_Q = rows
        torch_tiles._MIN_TILE_K, torch_tiles._TILE_ELEMS = keys, 1  # the budget never widens a tile past (rows, keys)
        with kernel.force_path("torch"):
            yield
    finally:
        for n, value in saved.items():
            setattr(torch_tiles, n, value)
        decode.MIN_SEGMENT, decode.split_kv_forward = saved_segment, saved_split


def _run(q, k, v, kw, engine, tiles, **extra):
    """The engine's result, or ``None`` when it declines this spec (it says why)."""
    try:
        with geometry(engine, tiles):
            return attnkit.attention(q, k, v, engine=engine, **kw, **extra)
    except AttnkitError as why:
        if "computes exactly" in str(why) or "cannot run" in str(why):
            return None
        raise


def _as64(kw: dict) -> dict:
    return {n: (t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t) for n, t in kw.items()}


def _merges(S: int, tiles: tuple[int, int] | None) -> int:
    """Key blocks whose partial results are merged per row (each merge rounds once more)."""
    return max(1, math.ceil(S / (tiles[1] if tiles else 128)))


def _check_forward(q, k, v, kw, engine, tiles, what, test):
    want_lse = True
    ours = _run(q, k, v, kw, engine, tiles, return_lse=True)
    if ours is None:  # sdpa returns no lse: check its output alone
        want_lse = False
        ours = _run(q, k, v, kw, engine, tiles)
    assume(ours is not None)  # the engine declines this spec
    out = ours.out if want_lse else ours
    ref64 = attnkit.attention(q.double(), k.double(), v.double(), engine="reference", return_lse=True, **_as64(kw))
    base = attnkit.attention(q, k, v, engine="reference", return_lse=True, **kw)
    # Fused kernels use a vectorized exp accurate to ~1e-6 relative (SDPA's CPU kernel uses the same,
    # torch.softmax does not), and the weights inherit each score's rounding, |s|·eps: both scale
    # with the largest score and the largest value, so the floor does too; every merge of key
    # blocks rounds the running output once more.
    finite = torch.isfinite(ref64.lse)
    s_max = float(ref64.lse[finite].abs().max()) if finite.any() else 0.0
    v_max = float(v.double().nan_to_num(0.0, 0.0, 0.0).abs().max()) if v.numel() else 0.0
    if kw.get("dropout_p"):
        v_max /= 1 - kw["dropout_p"]
    eps = torch.finfo(torch.float32).eps
    floor = FLOOR[q.dtype] + 8 * eps * (1 + s_max) * v_max + 2 * eps * _merges(k.shape[2], tiles) * v_max
    assert out.dtype == q.dtype and out.shape == ref64.out.shape, what
    assert torch.isfinite(out).all(), f"{engine}: non-finite output from finite visible inputs ({what})"
    assert err(out, ref64.out) <= 2 * err(base.out, ref64.out) + floor, f"{engine} out ({what})"
    if want_lse:
        assert err(ours.lse, ref64.lse) <= 2 * err(base.lse, ref64.lse) + floor * 10, f"{engine} lse ({what})"
    if out.numel():
        COMPARED[test] += 1


@settings(**_SETTINGS)
@given(problems())
def test_forward_and_lse_agree_with_float64_reference(p):
    _check_forward(*p, test="forward")


@settings(**_SETTINGS)
@given(problems(dtypes=(torch.float16, torch.bfloat16)))
def test_half_precision_forward_follows_the_flash_rule(p):
    _check_forward(*p, test="half forward")


@settings(**_SETTINGS)
@given(problems())
def test_gradients_agree_with_float64_reference(p):
    q, k, v, kw, engine, tiles, what = p
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    ours = _run(*leaves, kw, engine, tiles)
    assume(ours is not None)  # the engine declines this spec
    if ours.numel() == 0:
        return
    g = torch.randn(ours.shape, generator=torch.Generator().manual_seed(ours.numel()), dtype=torch.float64)
    with geometry(engine, tiles):
        got = torch.autograd.grad(ours, leaves, g.to(q.dtype), allow_unused=True)
    l64 = [t.double().requires_grad_() for t in (q, k, v)]
    ref = torch.autograd.grad(attnkit.attention(*l64, engine="reference", **_as64(kw)), l64, g, allow_unused=True)
    lb = [t.clone().requires_grad_() for t in (q, k, v)]
    base = torch.autograd.grad(attnkit.attention(*lb, engine="reference", **kw), lb, g.to(q.dtype), allow_unused=True)
    hidden_garbage = ~torch.isfinite(k).all(-1, keepdim=True) | ~torch.isfinite(v).all(-1, keepdim=True)
    # FlashAttention's backward recomputes P = exp(s - lse) with s from another GEMM blocking than the
    # forward's: a relative error of about |s|·eps in every weight, which the reference's autograd
    # (one materialized softmax) does not have. Bound it from this example's own scores.
    with torch.no_grad():
        lse = attnkit.attention(*(t.double() for t in (q, k, v)), engine="reference", return_lse=True, **_as64(kw)).lse
    s_max = float(lse[torch.isfinite(lse)].abs().max()) if torch.isfinite(lse).any() else 0.0
    recompute = 4 * torch.finfo(q.dtype).eps * (s_max + _merges(k.shape[2], tiles))
    if kw.get("dropout_p"):
        recompute /= 1 - kw["dropout_p"]
    for name, a, r, b in zip("qkv", got, ref, base):
        zero = torch.zeros(())
        a, r, b = (zero if t is None else t for t in (a, r, b))
        if name != "q" and hidden_garbage.any():  # gradients *of* garbage keys are not compared
            a, r, b = (t.masked_fill(hidden_garbage, 0.0) if t.dim() else t for t in (a, r, b))
        assert torch.isfinite(a).all(), f"{engine} d{name} not finite ({what})"
        scale = float(r.abs().max()) if r.numel() else 0.0
        assert err(a, r) <= 2 * err(b, r) + FLOOR[q.dtype] * 10 + recompute * scale, f"{engine} d{name} ({what})"
    COMPARED["gradients"] += 1


@settings(**_SETTINGS)
@given(
    st.integers(1, 40),
    st.integers(1, 6),
    st.sampled_from([0.0, 1e4, -1e4, 80.0]),
    st.integers(0, 2**16),
)
def test_partials_merge_in_any_order_and_extreme_logits_stay_finite(S, parts, offset, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, S, generator=g, dtype=torch.float64) * 5 + offset
    x[0, : S // 2] = float("-inf")  # masked entries
    cuts = sorted(torch.randint(0, S + 1, (parts - 1,), generator=g).tolist())
    bounds = list(zip([0, *cuts], [*cuts, S]))
    states = []
    for a, b in bounds:
        st_ = attnkit.SoftmaxState.empty((3,), dtype=torch.float32)
        st_.update(x[:, a:b].float().clone())
        states.append(st_)
    order = torch.randperm(len(states), generator=g).tolist()
    merged = states[order[0]]
    for i in order[1:]:
        merged = merged.merge(states[i])
    exact = torch.logsumexp(x, -1)
    torch_err = float((torch.logsumexp(x.float(), -1).double() - exact).abs().max())
    # One float32 rounding of the result (torch's error) plus a rescale rounding per merged part.
    bound = 2 * torch_err + parts * 2e-7 * (1 + abs(offset)) + 1e-6
    assert float((merged.lse.double() - exact).abs().max()) <= bound
    p = attnkit.softmax(x.float())
    assert torch.isfinite(p).all() and torch.allclose(p.sum(-1), torch.ones(3), atol=1e-5)
    exact_ls = torch.log_softmax(x, -1)
    finite = torch.isfinite(exact_ls)
    ours_err = float((attnkit.log_softmax(x.float()).double() - exact_ls)[finite].abs().max()) if finite.any() else 0.0
    torch_ls_err = float((torch.log_softmax(x.float(), -1).double() - exact_ls)[finite].abs().max()) if finite.any() else 0.0
    # Twice torch's error, or two float32 roundings of the largest result (one ulp each way can land
    # either side: torch's own error on one example is no floor for another's rounding).
    ulps = 4 * torch.finfo(torch.float32).eps * (float(exact_ls[finite].abs().max()) if finite.any() else 0.0)
    assert ours_err <= 2 * torch_ls_err + ulps + 1e-7
    assert not math.isnan(float(attnkit.logsumexp(x.float()).sum()))


def test_the_property_tests_compared_enough_examples():
    """Runs after the three engine property tests above (file order): under the ci profile they
    must have compared at least MIN_COMPARED examples with the oracle."""
    if set(COMPARED) != {"forward", "half forward", "gradients"}:
        pytest.skip("needs the three engine property tests above in the same run")
    if settings().max_examples < 700:
        pytest.skip("a profile smaller than ci")
    assert sum(COMPARED.values()) >= MIN_COMPARED, dict(COMPARED)
