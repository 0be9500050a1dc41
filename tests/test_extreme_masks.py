"""The backward at huge float-mask offsets: a row whose every key carries -1e30 (or finfo.min).

The forward computes weights as ``exp(s - m) / l``; a backward that recomputes ``P = exp(s - lse)``
from a float ``lse = m + log l`` loses ``log l`` once ``|m|`` is large (``-3.4e38 + log 10`` rounds to
``-3.4e38``), so its P sums to S, not 1, and every gradient of the row is S× too large. These tests
force every engine (and both tile paths) at offsets from -1e4 to ``finfo.min`` and check dq, dk, dv
and the float mask's gradient against the float64 reference with FlashAttention's rule; the floor
does not grow with ``|lse|`` (a floor of ``|lse|·eps`` would accept any answer at 3.4e38).
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import attnkit
from attnkit.engines import kernel
from attnkit.engines.kernel import tiles as torch_tiles

from conftest import ENGINES, err

FLOOR = {torch.float32: 2e-5, torch.float16: 2e-2}
F32_MIN, F16_MIN = torch.finfo(torch.float32).min, torch.finfo(torch.float16).min


@contextlib.contextmanager
def small_tiles(rows: int = 4, keys: int = 16):
    """Several query and key tiles on the torch path even for small problems (restored after)."""
    names = ("_MAX_TILE_Q", "_MIN_TILE_Q", "_MIN_TILE_K", "_TILE_ELEMS")
    before = [getattr(torch_tiles, n) for n in names]
    for n, value in zip(names, (rows, rows, keys, rows * keys)):
        setattr(torch_tiles, n, value)
    try:
        yield
    finally:
        for n, value in zip(names, before):
            setattr(torch_tiles, n, value)


def _grads(q, k, v, mask, dout, dtype, mask_dtype, engine, path=None):
    """(dq, dk, dv, dmask) of ``attention(q, k, v, mask=mask)`` in ``dtype`` on ``engine``."""
    leaves = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    m = mask.detach().to(mask_dtype).requires_grad_()
    with kernel.force_path(path) if path else contextlib.nullcontext():
        out = attnkit.attention(*leaves, mask=m, engine=engine)
    grads = torch.autograd.grad(out, [*leaves, m], dout.to(dtype))
    return [g.double() for g in grads]


def _check(q, k, v, mask, dtype, mask_dtype, engine, path, what):
    g = torch.Generator().manual_seed(7)
    dout = torch.randn(*q.shape[:3], v.shape[-1], generator=g, dtype=torch.float64)
    ref = _grads(q, k, v, mask, dout, torch.float64, torch.float64, "reference")
    base = _grads(q, k, v, mask, dout, dtype, mask_dtype, "reference")
    ours = _grads(q, k, v, mask, dout, dtype, mask_dtype, engine, path)
    for name, a, b, r in zip(("dq", "dk", "dv", "dmask"), ours, base, ref):
        assert torch.isfinite(a).all(), f"{name} not finite ({what})"
        floor = FLOOR[dtype] * max(1.0, float(r.abs().max()))
        assert err(a, r) <= 2 * err(b, r) + floor, f"{name}: {err(a, r):.3g} vs reference {err(b, r):.3g} ({what})"


def _problem(B, H, G, L, S, D, offset, seed=0):
    """q, k, v and a float mask (N(0, 9)) whose rows 0, 3, 6, ... carry ``offset`` on every key and
    rows 1, 4, ... on every other key (their lse stays normal)."""
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in
               ((B, H, L, D), (B, G, S, D), (B, G, S, D)))
    mask = torch.randn(B, H, L, S, generator=g, dtype=torch.float64) * 3
    mask[:, :, 0::3] = offset  # whole rows: every key at the same huge offset (uniform weights)
    mask[:, :, 1::3, ::2] = offset
    return q, k, v, mask


# (B, H, G, L, S, D): the issue's case; GQA over several key tiles (decode accepts L <= 16);
# and L > 16 for sdpa, which leaves decoding shapes to the engines that check K/V.
SHAPES = {"issue": (1, 1, 1, 2, 10, 8), "gqa": (2, 4, 2, 13, 150, 16), "long": (2, 4, 2, 40, 90, 16)}
OFFSETS = [-1e4, -1e6, -1e10, -1e30, F32_MIN]
RUNS = [(e, p) for e in ENGINES for p in ((None, "torch") if e in ("flash", "decode") else (None,))]


def _shapes_for(engine: str) -> list[str]:
    return ["long"] if engine == "sdpa" else ["issue", "gqa"] if engine == "decode" else ["issue", "gqa", "long"]


@pytest.mark.parametrize("offset", OFFSETS, ids=lambda o: f"{o:g}")
@pytest.mark.parametrize("engine,path", RUNS)
def test_float32_gradients_at_huge_mask_offsets(engine, path, offset):
    with small_tiles():
        for shape in _shapes_for(engine):
            q, k, v, mask = _problem(*SHAPES[shape], offset)
            _check(q, k, v, mask, torch.float32, torch.float32, engine, path, f"{engine}/{path} {shape} {offset:g}")


@pytest.mark.parametrize("offset,mask_dtype", [(-1e4, torch.float16), (-3e4, torch.float16), (F16_MIN, torch.float16),
                                               (-1e10, torch.float32), (-1e30, torch.float32), (F32_MIN, torch.float32)],
                         ids=lambda x: f"{x:g}" if isinstance(x, float) else str(x).split(".")[-1])
@pytest.mark.parametrize("engine,path", [r for r in RUNS if r[0] != "sdpa"])  # sdpa declines half backward
def test_float16_gradients_at_huge_mask_offsets(engine, path, offset, mask_dtype):
    with small_tiles():
        for shape in _shapes_for(engine):
            q, k, v, mask = _problem(*SHAPES[shape], offset)
            _check(q, k, v, mask, torch.float16, mask_dtype, engine, path, f"{engine}/{path} {shape} {offset:g}")


def test_the_issue_case_is_uniform_and_its_dq_matches():
    """The reported case: row 0 masked by finfo.min everywhere; dq was 10x (S x) the reference's."""
    q, k, v, mask = _problem(1, 1, 1, 2, 10, 8, F32_MIN, seed=3)
    mask[:, :, 1] = 0.0
    for engine in ("flash", "decode"):
        res = attnkit.attention(q.float(), k.float(), v.float(), mask=mask.float(), engine=engine, return_weights=False)
        assert torch.allclose(res[0, 0, 0], v.float()[0, 0].mean(0), atol=1e-6)  # uniform over the 10 keys
        dout = torch.ones(1, 1, 2, 8, dtype=torch.float64)
        ours = _grads(q, k, v, mask, dout, torch.float32, torch.float32, engine)
        ref = _grads(q, k, v, mask, dout, torch.float64, torch.float64, "reference")
        ratio = float(ours[2][0, 0].abs().sum() / ref[2][0, 0].abs().sum())
        assert abs(ratio - 1) < 1e-5, f"{engine}: dv is {ratio:.3g}x the reference's"
        assert err(ours[0], ref[0]) <= 1e-5 * float(ref[0].abs().max())


# ---- property test: huge negative constants per row ---------------------------------------

HUGE = [-1e4, -1e7, -1e12, -1e20, -1e38, F32_MIN]


@st.composite
def masked_problems(draw):
    engine = draw(st.sampled_from(ENGINES))
    path = draw(st.sampled_from([None, "torch"])) if engine in ("flash", "decode") else None
    B, G, R = draw(st.integers(1, 2)), draw(st.integers(1, 2)), draw(st.sampled_from([1, 2]))
    L = draw(st.integers(17, 24)) if engine == "sdpa" else draw(st.integers(1, 16 if engine == "decode" else 24))
    S, D = draw(st.integers(1, 40)), draw(st.sampled_from([1, 5, 8]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    q = torch.randn(B, G * R, L, D, generator=g, dtype=torch.float64) * 2
    k = torch.randn(B, G, S, D, generator=g, dtype=torch.float64) * 2
    v = torch.randn(B, G, S, D, generator=g, dtype=torch.float64)
    mask = torch.randn(B, G * R, L, S, generator=g, dtype=torch.float64) * draw(st.sampled_from([0.0, 1.0, 3.0]))
    for _ in range(draw(st.integers(1, 4))):  # a few rows (in some batches and heads) get a huge constant
        b, h, i = draw(st.integers(0, B - 1)), draw(st.integers(0, G * R - 1)), draw(st.integers(0, L - 1))
        c = draw(st.sampled_from(HUGE))
        if draw(st.booleans()):
            mask[b, h, i] += c  # the whole row
        else:
            keys = torch.rand(S, generator=g) < 0.5
            mask[b, h, i, keys] += c  # some of its keys
    return q, k, v, mask, engine, path, f"{engine}/{path} B{B} G{G} R{R} L{L} S{S} D{D}"


@settings(max_examples=max(50, settings().max_examples // 3), deadline=None)
@given(masked_problems())
def test_gradients_with_huge_per_row_constants_match_float64(p):
    q, k, v, mask, engine, path, what = p
    with small_tiles(4, 8):
        _check(q, k, v, mask.clamp(min=F32_MIN), torch.float32, torch.float32, engine, path, what)


@pytest.mark.parametrize("engine", ["flash", "decode"])
def test_huge_mask_backward_with_structured_masks_on_a_decode_shape(engine):
    # L < 17 leaves K/V unchecked for NaN (kv_nonfinite) and causal hides keys: the fused row
    # statistics take their result check; a merge had left that check calling a removed name.
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, n, 8, generator=g, dtype=torch.float64) for n in (3, 10, 10))
    mask = torch.zeros(1, 1, 3, 10, dtype=torch.float64)
    mask[0, 0, 0] = torch.finfo(torch.float32).min
    grads = {}
    for name, dt in (("ours", torch.float32), ("ref", torch.float64)):
        leaves = [t.to(dt).requires_grad_() for t in (q, k, v)]
        out = attnkit.attention(*leaves, mask=mask.to(dt), causal=True, engine=engine if name == "ours" else "reference")
        grads[name] = torch.autograd.grad(out.sum(), leaves)
    for ours, ref in zip(grads["ours"], grads["ref"]):
        assert err(ours, ref) < 1e-5
