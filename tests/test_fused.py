"""The fused C++ tile path (engines/kernel/fused.py + kernel/csrc/) against the float64 reference.

The kernel is driven through the contract's one autograd function, ``kernel.attend``, with the
fused path forced (``force_path("fused")``), or through the op wrapper's ``forward``/``backward``
directly, so these tests do not depend on path selection. Accuracy: FlashAttention's rule — error vs float64 at most twice the error of the
reference engine run in the same precision.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import attnkit

from attnkit.dropout import keep_mask
from attnkit.engines import kernel
from attnkit.engines.kernel import build, fused as fused_path
from attnkit.spec import AttentionSpec, BlockIndex

from conftest import assert_flash_rule, err, qkv
from test_flash import _materialize as flash_materialize

_REASON = fused_path.status()
# CI has a compiler: there a kernel that does not build is a failure of every test here, not a skip.
IN_CI = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
pytestmark = pytest.mark.skipif(_REASON is not None and not IN_CI, reason=f"fused kernel unavailable: {_REASON}")


def test_the_kernel_builds():
    assert _REASON is None, f"the fused kernel did not build: {_REASON}"

SPEC_DEFAULTS = dict(
    mask=None, causal=False, window=None, kv_lengths=None, q_lengths=None, scale=None, score_mod=None, bias=None,
    alibi_slopes=None, softcap=None, normalizer="softmax", dropout_p=0.0, seed=None, return_lse=True,
    return_weights=False,
)


def make_spec(q, k, v, **kw):
    return AttentionSpec.build(q, k, v, **{**SPEC_DEFAULTS, **kw})


def fused(q, k, v, **kw):
    """``(out, lse)`` through the one autograd function, on the fused path."""
    spec = make_spec(q, k, v, **kw)
    with kernel.force_path("fused"):
        return kernel.attend(q, k, v, spec)


def materialize(case, B, H, L, S):
    """test_flash's cases (float32 masks/biases, as for half inputs) plus two broadcast shapes the
    kernel reads through strides: a float mask over keys only and a bias broadcast over heads."""
    kw, g, extra = dict(case), torch.Generator().manual_seed(7), {}
    if kw.get("mask") == "float_cols":
        extra["mask"] = torch.randn(1, 1, 1, S, generator=g)
        del kw["mask"]
    if kw.get("bias") == "bias":
        extra["bias"] = torch.randn(B, 1, L, S, generator=g)
        del kw["bias"]
    return {**flash_materialize(kw, B, H, L, S, torch.float32), **extra}


CASES = [
    dict(),
    dict(causal=True),
    dict(causal="top_left"),
    dict(window=(20, 0)),
    dict(window=(7, 11)),
    dict(causal="top_left", window=(30, None)),
    dict(kv_lengths=[70, 0, 33]),
    dict(q_lengths=[1, 97, 50], kv_lengths=[70, 12, 33], causal=True),
    dict(alibi_slopes="alibi", causal=True),
    dict(softcap=3.0),
    dict(mask="bool"),
    dict(mask="float"),
    dict(mask="float_cols", bias="bias", causal=True),
]
# (B, H, G, L, S, D, E): GQA, MQA, D 59/111, L != S, L = 1, and S > 512 (several forward key blocks).
SHAPES = [(3, 4, 2, 97, 70, 59, 59), (3, 6, 1, 33, 150, 111, 8), (2, 2, 2, 1, 300, 16, 16), (1, 2, 1, 130, 700, 32, 32)]


def check_all(q, k, v, kw, dtype, grads_of_masks=False):
    """out, lse and every gradient under FlashAttention's rule."""
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    kw64 = {n: (t.double() if torch.is_tensor(t) and t.is_floating_point() else t) for n, t in kw.items()}
    extras = [n for n in ("mask", "bias") if torch.is_tensor(kw.get(n)) and kw[n].is_floating_point()]
    if grads_of_masks:
        for n in extras:
            kw64[n] = kw64[n].detach().requires_grad_()
    ref = attnkit.attention(q64, k64, v64, engine="reference", return_lse=True, **kw64)
    qd, kd, vd = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    kwb = {n: (t.detach().requires_grad_() if n in extras and grads_of_masks else t) for n, t in kw.items()}
    base = attnkit.attention(qd, kd, vd, engine="reference", return_lse=True, **kwb)
    qf, kf, vf = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    kwf = {n: (t.detach().requires_grad_() if n in extras and grads_of_masks else t) for n, t in kw.items()}
    out, lse = fused(qf, kf, vf, **kwf)
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert_flash_rule(out, base.out, ref.out)
    assert_flash_rule(lse, base.lse, ref.lse)
    do = torch.randn(ref.out.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def grads(o, inputs):
        return torch.autograd.grad((o.double() * do).sum(), inputs, allow_unused=True)

    leaves = lambda a, b, c, kws: (a, b, c, *(kws[n] for n in extras if grads_of_masks))  # noqa: E731
    for a, b, r in zip(grads(out, leaves(qf, kf, vf, kwf)), grads(base.out, leaves(qd, kd, vd, kwb)),
                       grads(ref.out, leaves(q64, k64, v64, kw64))):
        assert_flash_rule(a, b, r)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(c) or "full")
def test_fp32_forward_backward(shape, case):
    B, H, G, L, S, D, E = shape
    q, k, v = qkv(B, H, G, L, S, D, E, seed=L + S + D)
    check_all(q, k, v, materialize(case, B, H, L, S), torch.float32)


@pytest.mark.parametrize("case", [dict(), dict(q_lengths=[3, 5], kv_lengths=[600, 250], causal=True),
                                  dict(mask="float", alibi_slopes="alibi", window=(100, 0))], ids=str)
def test_decode_shapes_pack_query_heads(case):
    """Few queries, many heads per kv head: several heads share one tile of K/V."""
    B, H, G, L, S, D = 2, 8, 2, 5, 600, 32
    q, k, v = qkv(B, H, G, L, S, D, seed=12)
    check_all(q, k, v, materialize(case, B, H, L, S), torch.float32)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("layout", ["contiguous", "model"])
@pytest.mark.parametrize("shape, case", [
    ((2, 8, 2, 48, 80, 32), dict(causal=True, mask="float")),  # 2 heads of 48 rows per 128-row block
    ((2, 8, 2, 48, 80, 32), dict(q_lengths=[30, 48], kv_lengths=[80, 41], window=(20, 5))),
    ((1, 1, 1, 128, 128, 16), dict(causal=True)),  # one head: halved so every thread gets a block
    ((1, 3, 1, 160, 90, 24), dict(alibi_slopes="alibi")),  # 128 + 32 rows
], ids=["gqa-packed", "gqa-lengths-window", "one-head", "two-blocks"])
def test_short_ranges_take_whole_heads_per_block(shape, case, layout, threads):
    """Ranges of 32 to 191 queries: one block per head (up to blocks.QUERY_TILE_SHORT rows), the
    heads of a GQA group packed where q's layout allows, else one head per block; exact either way
    and whatever the number of threads (which can halve the block)."""
    B, H, G, L, S, D = shape
    q, k, v = qkv(B, H, G, L, S, D, seed=L + H)
    if layout == "model":
        q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        check_all(q, k, v, materialize(case, B, H, L, S), torch.float32)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", [dict(), dict(causal=True), dict(mask="float", window=(40, 3)),
                                  dict(alibi_slopes="alibi", softcap=5.0, kv_lengths=[60, 17])], ids=str)
@pytest.mark.parametrize("half_gemm", ["1", "0", ""], ids=["half-gemm", "f32-gemm", "machine-choice"])
@pytest.mark.parametrize("D", [59, 64], ids=["D59", "D64"])
def test_half_precision(dtype, case, half_gemm, D, monkeypatch):
    """Half inputs: f32 GEMMs (widened), half GEMMs through MKL, or — where the CPU multiplies the
    dtype natively and D is even — the VNNI products (csrc/gemm.h; S odd pairs the last key with zeros)."""
    monkeypatch.setenv("ATTNKIT_FUSED_HALF_GEMM", half_gemm)
    B, H, G, L, S = 2, 4, 2, 97, 131
    q, k, v = qkv(B, H, G, L, S, D, seed=3)
    check_all(q, k, v, materialize(case, B, H, L, S), dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("mode", [build.WIDEN, build.HALF_IF_EVEN], ids=["widen", "half-if-even"])
@pytest.mark.parametrize("shape", [(2, 8, 2, 1, 600, 64), (2, 8, 2, 5, 301, 59), (2, 4, 4, 3, 77, 64),
                                   (2, 6, 3, 1, 45, 21), (2, 2, 2, 1, 33, 8)], ids=lambda s: "x".join(map(str, s)))
def test_half_decode_steps_widen_their_tiles_in_the_pass(dtype, mode, shape, monkeypatch):
    """A decode range of half inputs multiplied in float32 (WIDEN, or HALF_IF_EVEN below a query
    block): the op widens each tile of q, K and V as its pass reads it, not a copy of the cache; the
    hot path's blocks of at most FEW_ROWS rows widen K and V in registers (csrc/few_rows.h: head dims
    below and across a vector width here).
    Hot path and forward op, contiguous and a model's (B, L, H, D) layout, NaN garbage past
    kv_lengths: every output under the rule against the float64 oracle."""
    from attnkit.engines import hot

    B, H, G, L, S, D = shape
    q, k, v = qkv(B, H, G, L, S, D, seed=S)
    lengths = torch.tensor([S, S // 3])
    k[1, :, S // 3:], v[1, :, S // 3:] = float("nan"), float("nan")  # a cache's unwritten tail
    assert type(hot.plan(q, k, v)) is tuple  # loads the op (and hot._half_modes)
    monkeypatch.setitem(hot._half_modes, dtype, mode)
    monkeypatch.setattr(fused_path, "half_gemm", lambda dt: mode)
    ref = attnkit.attention(q.double(), k.double(), v.double(), kv_lengths=lengths, engine="reference", return_lse=True)
    base = attnkit.attention(*(t.to(dtype) for t in (q, k, v)), kv_lengths=lengths, engine="reference",
                             return_lse=True)
    for layout in ("contiguous", "model"):
        qh, kh, vh = (t.to(dtype) for t in (q, k, v))
        if layout == "model":
            qh, kh, vh = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (qh, kh, vh))
        plan = hot.plan(qh, kh, vh, kv_lengths=lengths)
        assert type(plan) is tuple and plan[-1] == 0, plan  # widened: the op's half_gemm argument
        out, lse = hot.run(plan)
        assert out.dtype == dtype and torch.isfinite(out).all()
        assert_flash_rule(out, base.out, ref.out)
        assert_flash_rule(lse, base.lse, ref.lse)
        with torch.no_grad():
            out, lse = fused(qh, kh, vh, kv_lengths=lengths)  # the forward op (general path)
        assert_flash_rule(out, base.out, ref.out)
        assert_flash_rule(lse, base.lse, ref.lse)


@pytest.mark.parametrize("mode", [build.WIDEN, build.HALF_IF_EVEN, build.HALF])
def test_half_gemm_modes_pick_the_gemm_dtype(mode, monkeypatch):
    """HALF_IF_EVEN (native VNNI products: even head dims, at least a query block of rows) widens odd
    head dims and decode steps to float32 rather than send them to MKL's emulated half GEMM."""
    monkeypatch.setattr(fused_path, "half_gemm", lambda dtype: mode)
    even, odd = torch.zeros(1, 1, 32, 64), torch.zeros(1, 1, 32, 59)
    step = torch.zeros(1, 1, 1, 64)  # a decode step: every step's cache length is a new brgemm shape
    # half products for (even dims, odd D, odd E, decode step)
    half = {build.WIDEN: (False,) * 4, build.HALF_IF_EVEN: (True, False, False, False), build.HALF: (True,) * 4}[mode]
    for (q, v), want in zip(((even, even), (odd, even), (even, odd), (step, step)), half):
        got = fused_path._gemm_dtype(torch.bfloat16, q, v)
        assert got == (torch.bfloat16 if want else torch.float32), (q.shape, v.shape)
    assert fused_path._gemm_dtype(torch.float32, odd, odd) == torch.float32


@pytest.mark.parametrize("vendor, flags, modes", [
    ("GenuineIntel", {"avx512_bf16", "amx_bf16", "amx_fp16"}, (build.HALF, build.HALF)),  # AMX tiles
    ("GenuineIntel", {"avx512_bf16", "avx512_fp16"}, (build.WIDEN, build.WIDEN)),  # measured here
    ("AuthenticAMD", {"avx512_bf16"}, (build.HALF_IF_EVEN, build.WIDEN)),  # brgemm's dot products
    ("AuthenticAMD", {"avx2"}, (build.WIDEN, build.WIDEN)),
], ids=["intel-amx", "intel-avx512-bf16", "amd-avx512-bf16", "avx2"])
def test_each_cpu_multiplies_half_inputs_the_way_measured_fastest_there(vendor, flags, modes, monkeypatch):
    """(bf16, fp16) modes per CPU (build.half_gemm's docstring has the measurements)."""
    monkeypatch.setattr(build, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(build, "_cpu_flags", lambda: sorted(flags))
    monkeypatch.delenv("ATTNKIT_FUSED_HALF_GEMM", raising=False)
    build._half_gemm_here.cache_clear()
    try:
        assert (build.half_gemm(torch.bfloat16), build.half_gemm(torch.float16)) == modes
    finally:
        build._half_gemm_here.cache_clear()


@pytest.mark.parametrize("case", [dict(mask="float"), dict(mask="float_cols", bias="bias", causal=True),
                                  dict(bias="bias", softcap=4.0, alibi_slopes="alibi")], ids=str)
def test_mask_and_bias_gradients(case):
    B, H, G, L, S, D = 2, 4, 2, 45, 200, 24
    q, k, v = qkv(B, H, G, L, S, D, seed=9)
    check_all(q, k, v, materialize(case, B, H, L, S), torch.float32, grads_of_masks=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_transposed_inputs_are_read_in_place_forward_and_backward(dtype):
    """q/k/v as a model holds them, (B, L, H, D) storage seen as (B, H, L, D): the forward reads them
    in place, the backward gets contiguous copies; both under the rule, gradients included."""
    B, H, G, L, S, D = 2, 4, 2, 70, 90, 32
    q, k, v = qkv(B, H, G, L, S, D, seed=22)
    views = [t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v)]
    assert not views[0].is_contiguous()
    check_all(*views, materialize(dict(causal=True, mask="float"), B, H, L, S), dtype)


@pytest.mark.parametrize("path", ["fused", "torch"])
def test_a_models_layout_end_to_end_gradients(path):
    """As in a Hugging Face layer: q/k/v are (B, L, H, D) storage seen as (B, H, L, D) and the loss
    reads out.transpose(1, 2), so dO reaches the backward in that layout too; both are read in place
    and the gradients come back in q/k/v's layout (autograd passes them on without a copy)."""
    B, H, G, L, S, D = 2, 4, 2, 50, 50, 16
    g = torch.Generator().manual_seed(23)
    base = [torch.randn(B, n, L, D, generator=g, dtype=torch.float64) for n in (H, G, G)]
    w = torch.randn(B, L, H, D, generator=g, dtype=torch.float64)

    def grads(dtype, path):
        leaves = [t.transpose(1, 2).contiguous().transpose(1, 2).to(dtype).requires_grad_() for t in base]
        if path is None:
            out = attnkit.attention(*leaves, causal=True, engine="reference")
        else:
            with kernel.force_path(path):
                out = kernel.attend(*leaves, make_spec(*leaves, causal=True))[0]
        loss = (out.transpose(1, 2).contiguous().double() * w).sum()
        return torch.autograd.grad(loss, leaves)

    ref, base32 = grads(torch.float64, None), grads(torch.float32, None)
    for ours, b, r in zip(grads(torch.float32, path), base32, ref):
        assert_flash_rule(ours, b, r)
        assert ours.transpose(1, 2).is_contiguous()


def test_weights_below_the_normal_range_are_flushed_and_the_callers_float_mode_is_kept():
    """exp() of a score ~90 below its row's max is a denormal float; the kernel's threads flush such
    results to 0 (an Intel core takes a microcode assist for each one: ALiBi's far keys cost 1.3x),
    which no float32 sum can see: under the rule against the float64 oracle, gradients included.
    The calling thread's floating-point mode is restored (it still makes denormals afterwards)."""
    B, H, G, L, S, D = 1, 2, 2, 40, 300, 16
    q, k, v = qkv(B, H, G, L, S, D, seed=31)
    fmask = torch.zeros(1, 1, L, S)
    fmask[..., ::3], fmask[..., 1::7] = -95.0, -88.0  # e^-95 ~ 5e-42, e^-88 ~ 6e-39: below 2^-126
    check_all(q, k, v, dict(mask=fmask), torch.float32)
    with torch.inference_mode():
        out = attnkit.attention(q[:, :, :4], k[:, :, :8], v[:, :, :8], mask=fmask[..., :4, :8])  # hot path, this thread
    assert torch.isfinite(out).all()
    tiny = torch.tensor([1e-30]) * torch.tensor([1e-10])
    assert tiny.item() != 0.0, "the caller's thread was left flushing denormals"


@pytest.mark.parametrize("layout", ["contiguous", "keys-strided", "padding"])
def test_boolean_masks_in_the_score_pass(layout):
    """A boolean mask is applied in the score pass, a vector of keys at a time (one byte load and a
    blend where the row is contiguous, a lane loop elsewhere), S = 150 so rows end mid-vector:
    every layout under the rule against the float64 oracle, gradients included."""
    B, H, G, L, S, D = 2, 4, 2, 37, 150, 16
    q, k, v = qkv(B, H, G, L, S, D, seed=41)
    g = torch.Generator().manual_seed(5)
    if layout == "padding":  # (B, 1, 1, S), a padding mask as a model passes it
        mask = (torch.arange(S)[None] < torch.tensor([[S], [61]]))[:, None, None, :]
    else:
        mask = torch.rand(B, H, L, S, generator=g) < 0.7
        mask[..., 0] = True
        if layout == "keys-strided":  # a transposed view: keys L apart
            mask = mask.transpose(-1, -2).contiguous().transpose(-1, -2)
            assert mask.stride(-1) != 1
    check_all(q, k, v, dict(mask=mask), torch.float32)


def test_fully_masked_rows_out_zero_lse_neg_inf():
    q, k, v = qkv(2, 2, 1, 9, 40, 8)
    out, lse = fused(q, k, v, kv_lengths=torch.tensor([0, 40]), q_lengths=torch.tensor([9, 4]))
    assert (out[0] == 0).all() and torch.isneginf(lse[0]).all()
    assert (out[1, :, 4:] == 0).all() and torch.isneginf(lse[1, :, 4:]).all()
    assert torch.isfinite(lse[1, :, :4]).all()


def test_key_ranges_with_offsets_merge_to_the_whole():
    """forward over [i0, i0+Lb) x [j0, j0+Sb) with absolute positions, merged with kernel.merge: the
    outputs, lse, row maxima (exactly) and row sums of the whole."""
    B, H, G, L, S, D = 2, 4, 2, 50, 900, 16
    q, k, v = qkv(B, H, G, L, S, D, seed=4)
    kw = materialize(dict(mask="float", causal=True, alibi_slopes="alibi", kv_lengths=[800, 600]), B, H, L, S)
    spec = make_spec(q, k, v, **kw)
    whole = fused_path.forward(q, k, v, spec)
    rows = []
    for i0, i1 in ((0, 17), (17, 50)):
        acc = None
        for j0, j1 in ((0, 333), (333, 610), (610, 900)):
            part = fused_path.forward(q[:, :, i0:i1], k[:, :, j0:j1], v[:, :, j0:j1], spec, i0, j0)
            acc = part if acc is None else kernel.merge(acc, part)
        rows.append(acc)
    out, lse, m, l = (torch.cat([r[n] for r in rows], 2) for n in range(4))
    assert err(out, whole[0]) < 1e-5 and err(lse, whole[1]) < 1e-5
    assert torch.equal(m, whole[2]) and err(l / whole[3].clamp_min(1e-30), torch.ones_like(l)) < 1e-6


def test_backward_over_key_ranges_accumulates():
    B, H, G, L, S, D = 1, 2, 1, 40, 300, 16
    q, k, v = qkv(B, H, G, L, S, D, seed=6)
    spec = make_spec(q, k, v, causal=True)
    out, lse, m, l = fused_path.forward(q, k, v, spec)
    do = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    delta = (do * out).sum(-1)
    whole = [torch.zeros(t.shape) for t in (q, k, v)]
    fused_path.backward(q, k, v, do, m, l, delta, spec, dq=whole[0], dk=whole[1], dv=whole[2])
    dq, dk, dv = (torch.zeros(t.shape) for t in (q, k, v))
    for j0, j1 in ((0, 100), (100, 300)):
        fused_path.backward(q, k[:, :, j0:j1], v[:, :, j0:j1], do, m, l, delta, spec, 0, j0,
                            dq=dq, dk=dk[:, :, j0:j1], dv=dv[:, :, j0:j1])
    for a, b in zip((dq, dk, dv), whole):
        assert err(a, b) < 1e-5


def test_dropout_keep_mask_bitwise_equal():
    """With v = one-hot rows (E = S), out·(1-p)·l / p_ij recovers keep_ij exactly as 0/1."""
    B, H, L, S, p = 2, 3, 37, 64, 0.5
    g = torch.Generator().manual_seed(0)
    q = torch.zeros(B, H, L, 8)  # all scores equal: p_ij = 1/S
    k = torch.randn(B, H, S, 8, generator=g)
    v = torch.eye(S).expand(B, H, S, S).contiguous()
    spec = make_spec(q, k, v, dropout_p=p, seed=123456789012345)
    out = fused_path.forward(q, k, v, spec)[0]
    keep = (out * (1 - p) * S).round()
    expected = keep_mask(spec.seed, p, BlockIndex.ranges(range(B), range(H), range(L), range(S)), H)
    assert torch.equal(keep.bool(), expected)
    assert set(keep.unique().tolist()) <= {0.0, 1.0}


def test_dropout_matches_reference_forward_and_backward():
    B, H, G, L, S, D = 2, 4, 2, 33, 90, 16
    q, k, v = qkv(B, H, G, L, S, D, seed=8)
    check_all(q, k, v, dict(dropout_p=0.3, seed=77, causal=True), torch.float32)


def test_nan_query_row_stays_in_its_row():
    q, k, v = qkv(1, 1, 1, 5, 30, 8)
    q[0, 0, 2, 0] = float("nan")
    out, lse = fused(q, k, v)
    assert torch.isnan(out[0, 0, 2]).all() and torch.isfinite(out[0, 0, [0, 1, 3, 4]]).all()
    assert torch.isnan(lse[0, 0, 2]) and torch.isfinite(lse[0, 0, [0, 1, 3, 4]]).all()


def test_meta_tensors_and_op_registration():
    q = torch.empty(2, 4, 7, 16, device="meta")
    k = torch.empty(2, 2, 9, 16, device="meta")
    v = torch.empty(2, 2, 9, 5, device="meta")
    spec = make_spec(torch.zeros(2, 4, 7, 16), torch.zeros(2, 2, 9, 16), torch.zeros(2, 2, 9, 5))
    out, lse, m, l = torch.ops.attnkit_fused.forward(q, k, v, **fused_path.spec_args(spec, 0, 0))
    assert out.shape == (2, 4, 7, 5) and out.dtype == torch.float32
    assert all(t.shape == (2, 4, 7) and t.dtype == torch.float32 for t in (lse, m, l))


def test_ops_take_the_spec_by_name():
    """The schemas name every argument; spec_args builds exactly the shared tail, by name (the
    forward's own last argument, half_gemm, after it)."""
    q, k, v = qkv(1, 2, 1, 3, 5, 8)
    names = set(fused_path.spec_args(make_spec(q, k, v), 0, 0))
    for op, head, tail in ((torch.ops.attnkit_fused.forward, 3, ["half_gemm"]), (torch.ops.attnkit_fused.backward, 12, [])):
        args = [a.name for a in op.default._schema.arguments]
        end = len(args) - len(tail)
        assert set(args[head:end]) == names and end == head + len(names) and args[end:] == tail, args
    assert {"causal", "window_left", "window_right", "scale", "softcap", "dropout_p"} <= names


def test_the_build_key_hashes_every_source_file(tmp_path, monkeypatch):
    """A change to any header or source of csrc/ gives another cache directory (a rebuild)."""
    import shutil

    csrc = tmp_path / "csrc"
    shutil.copytree(build.CSRC, csrc)
    monkeypatch.setattr(build, "CSRC", csrc)
    before = build.build_dir()
    for name in ("params.h", "row_step.h", "register.cpp"):
        (csrc / name).write_text((csrc / name).read_text() + "\n// changed\n")
        after = build.build_dir()
        assert after != before, name
        before = after


def test_the_tile_rule_is_compiled_in_from_blocks_py(monkeypatch):
    """csrc/ writes no tile size: params.h takes each from blocks.py's -D defines, and a changed
    rule is another cache directory (a rebuild)."""
    import re

    from attnkit.engines.kernel import blocks

    params = (build.CSRC / "params.h").read_text()
    for flag in blocks.defines():
        name = flag[2:].split("=")[0]
        assert flag in build._compile_flags(build._cpu_flags()) and name in params, name
    # no literal block size left in the C++ (only the -D names define them)
    assert not re.search(r"k(Fwd|Bwd)Block\w* = \d", params) and "kMinCols = 16" not in params
    before = build.build_dir()
    monkeypatch.setattr(blocks, "KEY_TILE", blocks.KEY_TILE * 2)
    assert build.build_dir() != before


def test_torch_compile_sees_one_operator():
    q, k, v = qkv(1, 2, 1, 8, 20, 16)
    spec = make_spec(q, k, v, causal=True)
    compiled = torch.compile(lambda a, b, c: fused_path.forward(a, b, c, spec)[0], backend="eager", fullgraph=True)
    assert err(compiled(q, k, v), fused_path.forward(q, k, v, spec)[0]) == 0


def test_unsupported_reasons():
    q, k, v = qkv(1, 2, 1, 4, 6, 8)
    spec = make_spec(q, k, v)
    assert fused_path.unsupported(spec) is None  # K/V that may hold NaN are checked on the result instead
    spec64 = make_spec(q.double(), k.double(), v.double())
    assert "float64" in fused_path.unsupported(spec64)
    assert "score_mod" in fused_path.unsupported(make_spec(q, k, v, score_mod=lambda s, b, h, i, j: s))


def _run(code: str, env: dict) -> subprocess.CompletedProcess:
    src = str(Path(attnkit.__file__).parents[1])
    full_env = {**os.environ, "PYTHONPATH": src, **env}
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=600)


def test_cached_build_loads_without_compiling():
    """A second process finds the cached library: no compile line on stderr."""
    res = _run("from attnkit.engines.kernel import build; print(build.build_status())", {})
    assert res.returncode == 0 and res.stdout.strip() == "None", res.stderr
    assert "compiling" not in res.stderr


def test_disabled_by_env_falls_back_with_reason():
    code = (
        "import torch, attnkit; from attnkit.engines.kernel import build; from attnkit import functional;"
        "q = torch.randn(1, 1, 3, 4);"
        "print(build.build_status())"
    )
    res = _run(code, {"ATTNKIT_NO_FUSED": "1"})
    assert res.returncode == 0 and "ATTNKIT_NO_FUSED" in res.stdout


def test_failed_build_reports_first_line(tmp_path):
    """No compiler → a one-line reason, no crash (fresh cache so nothing is found)."""
    code = "from attnkit.engines.kernel import build; print(build.build_status())"
    res = _run(code, {"ATTNKIT_CACHE": str(tmp_path), "CXX": "no-such-compiler-xyz"})
    assert res.returncode == 0 and "no C++ compiler" in res.stdout, res.stderr


def test_import_attnkit_stays_light():
    res = _run("import sys, attnkit; print('torch.utils.cpp_extension' in sys.modules)", {})
    assert res.stdout.strip() == "False"


def test_cli_build_reports_cache_and_time(capsys):
    from attnkit.cli import main

    assert main(["build"]) == 0
    printed = capsys.readouterr().out
    assert "already built (cached)" in printed and str(build.cache_root()) in printed


def test_cli_build_failure_is_one_line_exit_2(tmp_path):
    res = _run("import sys; from attnkit.cli import main; sys.exit(main(['build']))",
               {"ATTNKIT_CACHE": str(tmp_path), "CXX": "no-such-compiler-xyz"})
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "no C++ compiler" in res.stderr


def test_hidden_garbage_on_the_fused_path_is_caught_and_redone():
    # Decoding shapes leave K/V unchecked (spec.kv_nonfinite is True): the fused result is checked,
    # and a leak of hidden NaN (0·NaN in the tile GEMM) sends the range to the torch path.
    q, k, v = qkv(2, 4, 2, 3, 700, 16, seed=9)
    lengths = torch.tensor([700, 301])
    ref = attnkit.attention(q.double(), k.double(), v.double(), kv_lengths=lengths, engine="reference")
    k[1, :, 301:], v[1, :, 301:] = float("nan"), float("inf")
    with kernel.force_path("fused"):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = attnkit.attention(*leaves, kv_lengths=lengths, engine="flash")
        grads = torch.autograd.grad(out.sum(), leaves)
    assert torch.isfinite(out).all() and err(out, ref) < 1e-5
    assert torch.isfinite(grads[0]).all() and torch.isfinite(grads[1][1, :, :301]).all()


@pytest.mark.parametrize("window, causal", [((20, 0), False), ((16, 16), False), ((40, None), True)])
def test_narrow_bands_use_small_query_blocks_and_stay_exact(window, causal):
    # L >= 768 starts from 256-row blocks; a narrow band shrinks them (span/4 rows) — same answer.
    q, k, v = qkv(1, 2, 1, 800, 800, 32, seed=11)
    ref = attnkit.attention(q.double(), k.double(), v.double(), window=window, causal=causal, engine="reference")
    base = attnkit.attention(q, k, v, window=window, causal=causal, engine="reference")
    with kernel.force_path("fused"):
        out = attnkit.attention(q, k, v, window=window, causal=causal, engine="flash")
    assert_flash_rule(out, base, ref)
