"""Tests for attnkit.normalizers: sparsemax, 1.5-entmax and sigmoid.

Oracle: the entmax package (deep-spin/entmax) in float64. Accuracy in float32 / float16 /
bfloat16 uses the project's FlashAttention rule: our error against the float64 oracle may be
at most twice the entmax package's own error in the same dtype, plus a floor of a few eps.
"""

from __future__ import annotations

import doctest
import math

import entmax
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnkit import normalizers
from attnkit.errors import AttnkitError
from attnkit.normalizers import NORMALIZERS, Entmax15Function, SparsemaxFunction, entmax15, sigmoid, sparsemax

torch.set_num_threads(2)  # the suite runs on 2 cores; do not oversubscribe

SPARSE = [(sparsemax, entmax.sparsemax), (entmax15, entmax.entmax15)]
SPARSE_IDS = ["sparsemax", "entmax15"]
ALL = [sparsemax, entmax15, sigmoid]
ALL_IDS = ["sparsemax", "entmax15", "sigmoid"]
LOW = [torch.float16, torch.bfloat16]


def rand(*shape, seed=0, scale=3.0, dtype=torch.float64):
    """Seeded normal scores; scale 3 gives rows with both zeros and several nonzeros."""
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)


def err(a, b):
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def floor(dtype, ref):
    """A few units of rounding at the magnitude of the reference values."""
    return 4 * torch.finfo(dtype).eps * max(1.0, float(ref.abs().max()) if ref.numel() else 1.0)


def value_and_grad(fn, x, g, **kw):
    x = x.detach().clone().requires_grad_(True)
    y = fn(x, **kw)
    y.backward(g.to(y.dtype))
    return y.detach(), x.grad


def assert_flash_rule(ours, base, ref64, dtype):
    assert err(ours, ref64) <= 2 * err(base, ref64) + floor(dtype, ref64), (err(ours, ref64), err(base, ref64))


SHAPES = [((5, 7), -1), ((5, 7), 0), ((3, 4, 6), 0), ((3, 4, 6), 1), ((3, 4, 6), -1), ((4, 1), -1), ((2, 97), 1)]


@pytest.mark.parametrize("ours,pkg", SPARSE, ids=SPARSE_IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, *LOW], ids=str)
@pytest.mark.parametrize("shape,dim", SHAPES)
def test_matches_entmax_package(ours, pkg, dtype, shape, dim):
    x, g = rand(*shape, seed=1, dtype=dtype), rand(*shape, seed=2, scale=1.0)
    y64, gx64 = value_and_grad(lambda t: pkg(t, dim=dim), x.double(), g)
    y, gx = value_and_grad(ours, x, g, dim=dim)
    yb, gxb = value_and_grad(lambda t: pkg(t, dim=dim), x, g)
    assert y.dtype == gx.dtype == dtype and not y.isnan().any() and not gx.isnan().any()
    assert_flash_rule(y, yb, y64, dtype)
    assert_flash_rule(gx, gxb, gx64, dtype)


@pytest.mark.parametrize("ours,pkg", SPARSE, ids=SPARSE_IDS)
@pytest.mark.parametrize("dtype", LOW, ids=str)
def test_low_precision_computed_in_float32(ours, pkg, dtype):
    # 1025 near-equal scores: a large support whose cumsums a float16/bfloat16 pass would ruin.
    # Computing in float32 and rounding once is within 2x the rounding of the exact answer.
    x, g = (1.0 + rand(2, 1025, seed=17, scale=1e-3)).to(dtype), rand(2, 1025, seed=18, scale=1.0)
    y64, gx64 = value_and_grad(pkg, x.double(), g)
    y, gx = value_and_grad(ours, x, g)
    assert y.dtype == gx.dtype == dtype
    assert err(y, y64) <= 2 * err(y64.to(dtype), y64) + floor(torch.float32, y64)
    assert err(gx, gx64) <= 2 * err(gx64.to(dtype), gx64) + floor(torch.float32, gx64)


@pytest.mark.parametrize("fn", [SparsemaxFunction, Entmax15Function], ids=SPARSE_IDS)
@pytest.mark.parametrize("dim", [0, -1])
def test_gradcheck_functions(fn, dim):
    # random float64 normals: no ties and no entry within gradcheck's 1e-6 step of the threshold
    x = rand(4, 6, seed=3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: fn.apply(t, dim), (x,))


@pytest.mark.parametrize("fn", ALL, ids=ALL_IDS)
def test_gradcheck_masked(fn):
    x = rand(3, 5, seed=4).requires_grad_(True)
    mask = torch.tensor([[True, False, True, True, False], [False] * 5, [True] * 5])
    assert torch.autograd.gradcheck(lambda t: fn(t, mask=mask, temperature=0.7), (x,))


@pytest.mark.parametrize("fn", [sparsemax, entmax15], ids=SPARSE_IDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_rows_are_distributions(fn, dtype):
    y = fn(rand(6, 5, 33, seed=5, dtype=dtype), dim=1)
    assert (y >= 0).all()
    torch.testing.assert_close(y.sum(1), torch.ones(6, 33, dtype=dtype), rtol=0, atol=33 * torch.finfo(dtype).eps)
    assert (y == 0).any()  # genuinely sparse, unlike softmax


@pytest.mark.parametrize("ours,pkg", SPARSE, ids=SPARSE_IDS)
def test_mask_equals_normalizing_visible_entries(ours, pkg):
    x, g = rand(4, 9, seed=6), rand(4, 9, seed=7)
    mask = rand(4, 9, seed=8) > 0
    mask[2] = False  # fully masked row
    y, gx = value_and_grad(ours, x, g, mask=mask)
    assert (y[~mask] == 0).all() and (gx[~mask] == 0).all()
    assert (y[2] == 0).all() and (gx[2] == 0).all()
    for r in (0, 1, 3):
        m = mask[r]
        y_ref, gx_ref = value_and_grad(pkg, x[r, m], g[r, m])
        torch.testing.assert_close(y[r, m], y_ref, rtol=0, atol=floor(torch.float64, y_ref))
        torch.testing.assert_close(gx[r, m], gx_ref, rtol=0, atol=floor(torch.float64, gx_ref))


@pytest.mark.parametrize("fn", ALL, ids=ALL_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, *LOW], ids=str)
def test_mask_broadcast_and_fully_masked(fn, dtype):
    x = rand(2, 3, 5, seed=9, dtype=dtype)
    mask = torch.tensor([True, False, True, True, False]).expand(3, 5).clone()
    mask[1] = False  # broadcast over the leading dim; row 1 fully masked
    y, gx = value_and_grad(fn, x, rand(2, 3, 5, seed=10), mask=mask)
    assert y.dtype == dtype
    assert (y[:, ~mask] == 0).all() and (gx[:, ~mask] == 0).all()
    assert not y.isnan().any() and not gx.isnan().any()


@pytest.mark.parametrize("fn", [sparsemax, entmax15], ids=SPARSE_IDS)
def test_neg_inf_scores_act_as_masked(fn):
    x = rand(3, 6, seed=11)
    x[0, 2] = x[1] = -math.inf
    mask = x != -math.inf
    y, gx = value_and_grad(fn, x, torch.ones(3, 6))
    y_m, gx_m = value_and_grad(fn, x.masked_fill(~mask, 0.0), torch.ones(3, 6), mask=mask)
    assert torch.equal(y, y_m) and torch.equal(gx, gx_m) and (y[1] == 0).all()


@pytest.mark.parametrize("ours,pkg", SPARSE, ids=SPARSE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, *LOW], ids=str)
def test_extreme_logits(ours, pkg, dtype):
    x = torch.tensor([[1e4, 1e4 - 0.5, -1e4, 0.0], [-1e4, -1e4, -1e4 + 1, -1e4], [1e4, -1e4, 1e4, 1e4]])
    y, gx = value_and_grad(ours, x.to(dtype), torch.ones(3, 4))
    assert y.dtype == dtype and torch.isfinite(y).all() and torch.isfinite(gx).all()
    ref = pkg(x.to(dtype).double())  # the exact answer for the rounded input
    assert err(y, ref) <= floor(dtype, ref)


@pytest.mark.parametrize("fn", ALL, ids=ALL_IDS)
@pytest.mark.parametrize("shape,dim", [((0, 5), -1), ((3, 0), -1), ((3, 0), 0), ((0,), 0)])
def test_empty(fn, shape, dim):
    x = torch.zeros(shape, dtype=torch.float16).requires_grad_(True)
    y = fn(x, dim=dim, mask=torch.ones(shape, dtype=torch.bool))
    y.sum().backward()
    assert y.shape == shape and y.dtype == x.dtype and x.grad.shape == shape


@pytest.mark.parametrize("fn", ALL, ids=ALL_IDS)
def test_nan_stays_in_its_row(fn):
    x = rand(4, 6, seed=12)
    x_nan = x.clone()
    x_nan[1, 3] = math.nan
    y, gx = value_and_grad(fn, x_nan, torch.ones(4, 6))
    y_ok, gx_ok = value_and_grad(fn, x, torch.ones(4, 6))
    rows = [0, 2, 3]
    assert torch.equal(y[rows], y_ok[rows]) and torch.equal(gx[rows], gx_ok[rows])
    assert y[1, 3].isnan()
    # masked slots of a NaN row are still exactly 0 (no NaN * 0)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[1, 0] = False
    assert fn(x_nan, mask=mask)[1, 0] == 0
    # a NaN behind the mask is ignored (a padding slot may hold garbage)
    y_masked = fn(x_nan, mask=~x_nan.isnan())
    assert not y_masked.isnan().any() and y_masked[1, 3] == 0


@pytest.mark.parametrize("fn", [SparsemaxFunction, Entmax15Function], ids=SPARSE_IDS)
def test_function_all_neg_inf_row_is_finite(fn):
    # the wrapper zeroes such rows; the Function itself must not produce NaN on them either
    x = torch.full((2, 4), -math.inf, dtype=torch.float64, requires_grad=True)
    y = fn.apply(x, -1)
    y.backward(torch.ones_like(y))
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()


def test_sigmoid_values():
    x = rand(3, 7, seed=13)
    mask = rand(3, 7, seed=14) > 0
    y = sigmoid(x, mask=mask, temperature=2.0)
    assert torch.equal(y, torch.where(mask, torch.sigmoid(x / 2.0), 0.0))
    y16 = sigmoid(x.half())
    assert y16.dtype == torch.float16 and err(y16, torch.sigmoid(x.half().double())) <= floor(torch.float16, y16)


@pytest.mark.parametrize("fn", ALL, ids=ALL_IDS)
@pytest.mark.parametrize("t", [0.25, 3.0])
def test_temperature_divides_scores(fn, t):
    x = rand(4, 8, seed=15)
    assert torch.equal(fn(x, temperature=t), fn(x / t))


@pytest.mark.parametrize("fn", [sparsemax, entmax15], ids=SPARSE_IDS)
def test_temperature_limits(fn):
    x = rand(5, 8, seed=16)
    one_hot = torch.nn.functional.one_hot(x.argmax(-1), 8).double()
    assert torch.equal(fn(x, temperature=1e-3), one_hot)
    # at large T every score is within 1/n of the max, so all are in the support
    y = fn(x, temperature=1e4)
    assert (y > 0).all() and err(y, torch.full_like(y, 1 / 8)) < float(x.abs().max()) / 1e4


@pytest.mark.parametrize("fn", ALL, ids=ALL_IDS)
def test_invalid_arguments(fn):
    x = torch.zeros(2, 3)
    for t in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(AttnkitError, match="temperature"):
            fn(x, temperature=t)
    with pytest.raises(AttnkitError, match="boolean mask"):
        fn(x, mask=torch.ones(2, 3))
    with pytest.raises(AttnkitError, match="broadcastable"):
        fn(x, mask=torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(AttnkitError, match="dim"):
        fn(x, dim=2)
    with pytest.raises(AttnkitError, match="floating-point"):
        fn(torch.zeros(2, 3, dtype=torch.long))


def test_registry_and_exports():
    assert NORMALIZERS == {"sparsemax": sparsemax, "entmax15": entmax15, "sigmoid": sigmoid}
    assert all(hasattr(normalizers, name) for name in normalizers.__all__)


def test_docstring_examples_run():
    assert doctest.testmod(normalizers).failed == 0


finite = st.floats(-50, 50, allow_nan=False, width=64)
rows = st.lists(finite, min_size=1, max_size=12)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(data=st.data(), which=st.sampled_from([0, 1]), n=st.integers(1, 12))
def test_property_matches_package_and_sums_to_one(data, which, n):
    ours, pkg = SPARSE[which]
    x = data.draw(st.lists(st.lists(finite, min_size=n, max_size=n), min_size=1, max_size=4))
    x = torch.tensor(x, dtype=torch.float64)
    y = ours(x)
    tol = floor(torch.float64, x)
    assert (y >= 0).all() and err(y.sum(-1), torch.ones(len(x))) <= tol
    assert err(y, pkg(x)) <= tol


@settings(max_examples=60, deadline=None, derandomize=True)
@given(x=rows, which=st.sampled_from([0, 1]), data=st.data())
def test_property_mask_drops_entries(x, which, data):
    ours, pkg = SPARSE[which]
    x = torch.tensor(x, dtype=torch.float64)
    mask = torch.tensor(data.draw(st.lists(st.booleans(), min_size=len(x), max_size=len(x))))
    y = ours(x, mask=mask)
    assert (y[~mask] == 0).all()
    if mask.any():
        assert err(y[mask], pkg(x[mask])) <= floor(torch.float64, x)
    else:
        assert (y == 0).all()
