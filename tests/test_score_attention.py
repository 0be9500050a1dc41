"""DotAttention, BilinearAttention, AdditiveAttention against the textbook formulas in float64.

The oracle is written here in a few lines per score (materializing every tensor); masks follow
DESIGN.md (True = may attend; a query with no visible key gets weights 0 and context 0).
"""

from __future__ import annotations

import pytest
import torch

import attnkit.nn.score_attention as sa
from attnkit.errors import AttnkitError
from attnkit.nn import AdditiveAttention, BilinearAttention, DotAttention
from attnkit.nn.score_attention import additive_scores

F64 = torch.float64
EPS = 64 * torch.finfo(F64).eps  # a few float64 roundings per sum of ~dozens of terms


# Tiny tensors gain nothing from a second thread and stall on a busy machine.
pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(B=3, L=5, S=7, Dq=6, Dk=6, Dv=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, L, Dq, generator=g, dtype=F64)
    k = torch.randn(B, S, Dk, generator=g, dtype=F64)
    v = torch.randn(B, S, Dv, generator=g, dtype=F64)
    return q, k, v


def _make(kind: str, Dq: int, Dk: int) -> torch.nn.Module:
    torch.manual_seed(1)
    module = {
        "dot": lambda: DotAttention(),
        "dot_scaled": lambda: DotAttention(scaled=True),
        "bilinear": lambda: BilinearAttention(Dq, Dk),
        "additive": lambda: AdditiveAttention(Dq, Dk, attn_dim=5, tile=(2, 3)),
    }[kind]()
    return module.double()


def _ref_scores(module: torch.nn.Module, q, k):
    """score(s_i, h_j) for every pair, straight from the formulas."""
    if isinstance(module, DotAttention):
        return q @ k.transpose(1, 2) / (q.shape[-1] ** 0.5 if module.scaled else 1.0)
    if isinstance(module, BilinearAttention):
        return torch.einsum("bld,de,bse->bls", q, module.weight, k)  # sᵀ W h
    Wq, Wk, b = module.query_proj.weight, module.key_proj.weight, module.key_proj.bias
    hidden = torch.tanh((q @ Wq.T)[:, :, None, :] + (k @ Wk.T + b)[:, None, :, :])  # (B, L, S, A)
    return hidden @ module.v


def _ref(module, q, k, v, vis=None):
    scores = _ref_scores(module, q, k)
    if vis is not None:
        scores = scores.masked_fill(~vis, float("-inf"))
    w = torch.softmax(scores, -1).nan_to_num(0.0)  # softmax of an all -inf row is NaN; the rule says 0
    return w @ v, w


KINDS = ["dot", "dot_scaled", "bilinear", "additive"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("single_step", [False, True])
@pytest.mark.parametrize("values", ["separate", "default_to_keys"])
def test_matches_formula(kind, single_step, values):
    Dq = 6 if kind.startswith("dot") else 9
    q, k, v = _inputs(Dq=Dq)
    if values == "default_to_keys":
        v = k
    if single_step:
        q = q[:, 0]
    module = _make(kind, Dq, 6)
    ctx, w = module(q, k, None if values == "default_to_keys" else v)
    q3 = q.unsqueeze(1) if single_step else q
    ref_ctx, ref_w = _ref(module, q3, k, v)
    if single_step:
        ref_ctx, ref_w = ref_ctx.squeeze(1), ref_w.squeeze(1)
    assert ctx.shape == ref_ctx.shape and w.shape == ref_w.shape
    torch.testing.assert_close(w, ref_w, rtol=0, atol=EPS)
    torch.testing.assert_close(ctx, ref_ctx, rtol=0, atol=EPS)


def _masks(B=3, L=5, S=7):
    g = torch.Generator().manual_seed(3)
    return {
        "padding_2d": (torch.rand(B, S, generator=g) > 0.3, None),
        "broadcast_3d": (torch.rand(1, L, S, generator=g) > 0.4, None),
        "full_3d": (torch.rand(B, L, S, generator=g) > 0.5, None),
        "kv_lengths": (None, torch.tensor([7, 3, 1])),
        "both": (torch.rand(B, L, S, generator=g) > 0.3, torch.tensor([2, 7, 4])),
    }


def _vis(mask, lengths, B=3, L=5, S=7):
    vis = torch.ones(B, L, S, dtype=torch.bool)
    if mask is not None:
        vis = vis & (mask.unsqueeze(1) if mask.dim() == 2 else mask)
    if lengths is not None:
        vis = vis & (torch.arange(S) < lengths.view(B, 1, 1))
    return vis


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", list(_masks()))
def test_masks_and_lengths(kind, case):
    mask, lengths = _masks()[case]
    q, k, v = _inputs()
    module = _make(kind, 6, 6)
    ctx, w = module(q, k, v, mask=mask, kv_lengths=lengths)
    vis = _vis(mask, lengths)
    ref_ctx, ref_w = _ref(module, q, k, v, vis)
    torch.testing.assert_close(w, ref_w, rtol=0, atol=EPS)
    torch.testing.assert_close(ctx, ref_ctx, rtol=0, atol=EPS)
    assert not w[~vis].any(), "hidden keys must get exactly zero weight"
    rows = vis.any(-1)
    torch.testing.assert_close(w.sum(-1)[rows], torch.ones(int(rows.sum()), dtype=F64), rtol=0, atol=EPS)


@pytest.mark.parametrize("kind", KINDS)
def test_fully_masked_rows_are_zero_with_zero_gradients(kind):
    q, k, v = (t.requires_grad_() for t in _inputs())
    mask = torch.ones(3, 5, 7, dtype=torch.bool)
    mask[0, 2] = False  # one query of batch 0 sees nothing
    lengths = torch.tensor([7, 0, 4])  # batch 1 has an empty source
    module = _make(kind, 6, 6)
    ctx, w = module(q, k, v, mask=mask, kv_lengths=lengths)
    assert torch.isfinite(ctx).all() and torch.isfinite(w).all()
    assert not w[0, 2].any() and not ctx[0, 2].any()
    assert not w[1].any() and not ctx[1].any()
    ctx.sum().backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert not q.grad[0, 2].any() and not q.grad[1].any()  # no key, no signal
    assert not k.grad[1].any() and not v.grad[1].any()


@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck(kind):
    q, k, v = (t.requires_grad_() for t in _inputs(B=2, L=3, S=4, Dq=6, Dk=6, Dv=3))
    module = _make(kind, 6, 6)
    mask = torch.tensor([[True, True, False, True], [True, False, False, False]])
    assert torch.autograd.gradcheck(lambda q, k, v: module(q, k, v, mask=mask), (q, k, v))


def test_additive_scores_gradcheck_with_small_tiles():
    g = torch.Generator().manual_seed(5)
    qp, kp, v = (torch.randn(*s, generator=g, dtype=F64, requires_grad=True) for s in [(2, 5, 3), (2, 4, 3), (3,)])
    assert torch.autograd.gradcheck(lambda a, b, c: additive_scores(a, b, c, tile=(2, 3)), (qp, kp, v))


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("tile", [(1, 1), (3, 5), (16, 2), (7, 1000)])
def test_tiled_equals_untiled_exactly(dtype, tile):
    g = torch.Generator().manual_seed(7)
    qp, kp = torch.randn(2, 37, 24, generator=g).to(dtype), torch.randn(2, 53, 24, generator=g).to(dtype)
    v = torch.randn(24, generator=g).to(dtype)
    untiled = additive_scores(qp, kp, v, tile=(37, 53))
    assert torch.equal(additive_scores(qp, kp, v, tile=tile), untiled)  # each score is the same tile-local sum
    # Gradients accumulate over tiles in a different order: equal up to float rounding of the sums.
    grads = []
    for t in (tile, (37, 53)):
        a, b, c = (x.clone().requires_grad_() for x in (qp, kp, v))
        additive_scores(a, b, c, tile=t).pow(2).sum().backward()
        grads.append((a.grad, b.grad, c.grad))
    tol = 200 * torch.finfo(dtype).eps * float(untiled.abs().max()) * 53
    for got, want in zip(*grads):
        torch.testing.assert_close(got, want, rtol=0, atol=tol)


def test_tiling_bounds_saved_memory():
    """The training path saves O(B(L+S)A + BLS) for backward, never the (B, L, S, A) hidden layer."""
    B, L, S, A = 2, 96, 128, 64
    att = AdditiveAttention(32, 32, attn_dim=A, tile_elements=B * 16 * 16 * A)
    q, k = torch.randn(B, L, 32, requires_grad=True), torch.randn(B, S, 32)
    saved: list[int] = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ctx, _ = att(q, k)
    naive_hidden = B * L * S * A * 4
    assert sum(saved) < naive_hidden / 8, (sum(saved), naive_hidden)
    ctx.sum().backward()
    assert torch.isfinite(q.grad).all()


def test_auto_tile_respects_budget():
    assert sa._block_sizes(B=4, L=1000, S=1000, A=128, tile_elements=1 << 20) == (64, 32)
    assert sa._block_sizes(B=64, L=11, S=30, A=128, tile_elements=1 << 22) == (11, 30)  # small: one tile
    assert sa._block_sizes(B=1 << 20, L=5, S=5, A=8, tile_elements=16) == (1, 1)  # never below one pair


@pytest.mark.parametrize("kind", ["dot", "bilinear"])
def test_dot_and_bilinear_go_through_attnkit_attention(kind, monkeypatch):
    calls = []
    real = sa.attention

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(sa, "attention", spy)
    q, k, v = _inputs()
    _make(kind, 6, 6)(q, k, v, kv_lengths=torch.tensor([7, 2, 5]))
    assert len(calls) == 1 and calls[0]["return_weights"] is True


@pytest.mark.parametrize(
    "call",
    [
        lambda: DotAttention()(torch.randn(2, 3, 5), torch.randn(2, 4, 6)),  # Dq != Dk
        lambda: DotAttention()(torch.randn(2, 3, 5), torch.randn(2, 4, 5), mask=torch.ones(2, 4)),  # float mask
        lambda: DotAttention()(torch.randn(2, 3, 5), torch.randn(2, 4, 5), mask=torch.ones(2, 3, 3, dtype=torch.bool)),
        lambda: DotAttention()(torch.randn(2, 3, 5), torch.randn(3, 4, 5)),  # batch mismatch
        lambda: BilinearAttention(4, 5)(torch.randn(2, 3, 5), torch.randn(2, 4, 5)),
        lambda: AdditiveAttention(5, 5)(torch.randn(2, 5), torch.randn(2, 4, 5), kv_lengths=torch.tensor([1.0, 2.0])),
        lambda: additive_scores(torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(4), tile=(0, 2)),
    ],
)
def test_errors_say_what_was_expected(call):
    with pytest.raises(AttnkitError, match="expected"):
        call()


def test_docstring_examples():
    import doctest

    assert doctest.testmod(sa, optionflags=doctest.ELLIPSIS).failed == 0
