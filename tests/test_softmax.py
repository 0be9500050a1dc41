"""The safe softmax family against torch, in the extreme cases, and its gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import attnkit
from attnkit import AttnkitError

from conftest import assert_flash_rule

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _x(shape, dtype=torch.float32, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dim", [-1, 0, 1])
def test_agrees_with_torch(dtype, dim):
    x = _x((5, 7, 9), dtype)
    ref = x.double()
    pairs = [
        (attnkit.softmax, lambda t: torch.softmax(t, dim)),
        (attnkit.log_softmax, lambda t: torch.log_softmax(t, dim)),
        (attnkit.logsumexp, lambda t: torch.logsumexp(t, dim)),
    ]
    for ours_fn, torch_fn in pairs:
        ours, same_dtype, ref64 = ours_fn(x, dim), torch_fn(x), torch_fn(ref)
        assert ours.dtype == dtype
        # FlashAttention's rule against torch in the same dtype; the floor is a few output ulps.
        floor = 4 * torch.finfo(dtype).eps * float(ref64.abs().max())
        assert_flash_rule(ours, same_dtype, ref64, floor)


@pytest.mark.parametrize("dtype,big", [(torch.float32, 1e4), (torch.float16, 6e4), (torch.bfloat16, 1e4), (torch.float64, 1e300)])
def test_extreme_logits_no_nan(dtype, big):
    x = torch.tensor([[big, -big, 0.0], [-big, -big, -big], [big, big, -big]], dtype=dtype)
    p = attnkit.softmax(x)
    assert torch.isfinite(p).all()
    torch.testing.assert_close(p.double(), torch.tensor([[1.0, 0, 0], [1 / 3] * 3, [0.5, 0.5, 0]], dtype=torch.float64),
                               atol=torch.finfo(dtype).eps, rtol=0)
    assert torch.isfinite(attnkit.logsumexp(x)).all()
    lsm = attnkit.log_softmax(x)
    assert not torch.isnan(lsm).any()


def test_fully_masked_row_zero_output_and_grads():
    x = _x((3, 6), torch.float64).requires_grad_()
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[1] = False
    mask[2, :3] = False
    p = attnkit.softmax(x, mask=mask)
    assert (p[1] == 0).all() and (p[2, :3] == 0).all()
    torch.testing.assert_close(p[2, 3:], torch.softmax(x[2, 3:], -1))
    lse = attnkit.logsumexp(x, mask=mask)
    lsm = attnkit.log_softmax(x, mask=mask)
    assert lse[1] == float("-inf") and (lsm[1] == float("-inf")).all() and (lsm[2, :3] == float("-inf")).all()
    (p.sum() + lse[0] + lse[2] + (p * torch.arange(6.0)).sum() + lsm[0].sum() + lsm[2, 3:].sum()).backward()
    assert torch.isfinite(x.grad).all()
    assert (x.grad[1] == 0).all() and (x.grad[2, :3] == 0).all()


def test_all_neg_inf_row_and_empty():
    x = torch.full((2, 4), float("-inf"), requires_grad=True)
    p = attnkit.softmax(x)
    assert (p == 0).all()
    p.sum().backward()
    assert (x.grad == 0).all()
    assert attnkit.softmax(torch.empty(0, 5)).shape == (0, 5)
    assert (attnkit.logsumexp(torch.empty(3, 0)) == float("-inf")).all()
    assert attnkit.log_softmax(torch.empty(3, 0)).shape == (3, 0)


def test_nan_stays_in_its_row():
    x = _x((4, 5))
    x[1, 2] = float("nan")
    for f in (attnkit.softmax, attnkit.log_softmax):
        y = f(x)
        assert torch.isnan(y[1]).all()
        assert torch.isfinite(y[[0, 2, 3]]).all()


def test_temperature():
    x = _x((4, 5), torch.float64)
    torch.testing.assert_close(attnkit.softmax(x, temperature=0.5), torch.softmax(x / 0.5, -1))
    with pytest.raises(AttnkitError, match="temperature > 0"):
        attnkit.softmax(x, temperature=0.0)


def test_mask_errors():
    with pytest.raises(AttnkitError, match="boolean mask"):
        attnkit.softmax(torch.zeros(2, 3), mask=torch.ones(2, 3))
    with pytest.raises(AttnkitError, match="broadcastable"):
        attnkit.softmax(torch.zeros(2, 3), mask=torch.ones(4, dtype=torch.bool))


def test_autograd_matches_torch():
    x = _x((4, 9), torch.float64).requires_grad_()
    w = _x((4, 9), torch.float64, seed=1)
    for ours, theirs in [(attnkit.softmax, torch.softmax), (attnkit.log_softmax, torch.log_softmax)]:
        (g1,) = torch.autograd.grad((ours(x) * w).sum(), x)
        (g2,) = torch.autograd.grad((theirs(x, -1) * w).sum(), x)
        torch.testing.assert_close(g1, g2)
    assert torch.autograd.gradcheck(lambda t: attnkit.logsumexp(t, temperature=0.7), (x,))


# --------------------------------------------------------------------------- cross-entropy


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_matches_torch(smoothing, reduction):
    z = _x((6, 5), torch.float64).requires_grad_()
    y = torch.tensor([0, 4, -100, 2, 2, 1])
    ours = attnkit.softmax_cross_entropy(z, y, label_smoothing=smoothing, reduction=reduction)
    theirs = F.cross_entropy(z, y, label_smoothing=smoothing, reduction=reduction)
    torch.testing.assert_close(ours, theirs)
    w = torch.arange(1.0, 1.0 + ours.numel(), dtype=torch.float64).reshape(ours.shape)
    (g1,) = torch.autograd.grad((ours * w).sum(), z)
    (g2,) = torch.autograd.grad((theirs * w).sum(), z)
    torch.testing.assert_close(g1, g2)


def test_cross_entropy_closed_form_gradient_is_p_minus_y():
    z = _x((3, 4), torch.float64).requires_grad_()
    y = torch.tensor([1, 0, 3])
    attnkit.softmax_cross_entropy(z, y, reduction="sum").backward()
    torch.testing.assert_close(z.grad, torch.softmax(z.detach(), -1) - F.one_hot(y, 4).double())


def test_cross_entropy_spatial_and_probability_targets_and_half():
    z = _x((2, 5, 3, 4), torch.float64).requires_grad_()
    y = torch.randint(0, 5, (2, 3, 4), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(attnkit.softmax_cross_entropy(z, y, reduction="none"), F.cross_entropy(z, y, reduction="none"))
    probs = torch.softmax(_x((2, 5, 3, 4), torch.float64, seed=3), 1)
    for red in ("mean", "none"):
        torch.testing.assert_close(attnkit.softmax_cross_entropy(z, probs, reduction=red, label_smoothing=0.2),
                                   F.cross_entropy(z, probs, reduction=red, label_smoothing=0.2))
    zh = _x((8, 10), torch.float16)
    yh = torch.arange(8)
    out = attnkit.softmax_cross_entropy(zh, yh)
    assert out.dtype == torch.float16
    assert abs(float(out) - float(F.cross_entropy(zh.float(), yh))) <= float(torch.finfo(torch.float16).eps) * 4


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_gradcheck(reduction):
    z = _x((5, 4), torch.float64).requires_grad_()
    y = torch.tensor([0, 3, -100, 1, 2])
    fn = lambda t: attnkit.softmax_cross_entropy(t, y, label_smoothing=0.1, reduction=reduction)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (z,))


def test_cross_entropy_extreme_and_errors():
    z = torch.tensor([[1e4, -1e4, 0.0]], requires_grad=True)
    loss = attnkit.softmax_cross_entropy(z, torch.tensor([1]))
    assert torch.isfinite(loss) and float(loss.detach()) == pytest.approx(2e4)
    loss.backward()
    assert torch.isfinite(z.grad).all()
    with pytest.raises(AttnkitError, match="class indices"):
        attnkit.softmax_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(AttnkitError, match="target of shape"):
        attnkit.softmax_cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1, 2]))


_FAMILY = [attnkit.softmax, attnkit.log_softmax, attnkit.logsumexp, attnkit.sparsemax, attnkit.entmax15, attnkit.sigmoid]


@pytest.mark.parametrize("fn", _FAMILY, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    "x, kwargs",
    [
        (torch.randn(2, 3), {"temperature": True}),  # a bool is not a temperature (sparsemax took it)
        (torch.randn(2, 3), {"temperature": 0.0}),
        (torch.randn(2, 3), {"temperature": float("nan")}),
        (torch.randn(2, 3), {"dim": True}),
        (torch.randn(2, 3), {"dim": 2}),
        (torch.randn(2, 3), {"mask": torch.ones(3, 2, 3, dtype=torch.bool)}),  # would enlarge x
        (torch.randn(2, 3), {"mask": torch.ones(2, 3)}),  # not boolean
        (torch.tensor(2.0), {}),  # 0-d: softmax raised IndexError
        (torch.arange(3), {}),  # integer
    ],
    ids=["temp-bool", "temp-0", "temp-nan", "dim-bool", "dim-out", "mask-enlarges", "mask-float", "0-d", "int"],
)
def test_the_softmax_family_shares_one_input_check(fn, x, kwargs):
    with pytest.raises(AttnkitError):
        fn(x, **kwargs)
