"""The hot path (attnkit.engines.hot): the common call as one compiled op.

Every case asserts that the call really takes the hot path (``hot.plan`` returns the op's
arguments), then compares with the float64 reference engine by FlashAttention's rule, the
baseline being the reference engine in the input dtype. Bad inputs must raise the same
AttnkitError on the hot path as on the general path (AttentionSpec.build), including the ones
only the C++ checks can see (lengths out of range, mask shapes).
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import attnkit
from attnkit import AttnkitError
from attnkit.engines import decode, hot
from attnkit.spec import AttentionSpec

from conftest import assert_flash_rule, bad_call, err, qkv

if hot.status() is not None:  # CI has a compiler: there a failed build must fail this module, not skip it
    import os

    if os.environ.get("CI"):
        raise RuntimeError(f"the fused kernel did not build in CI: {hot.status()}")
    pytest.skip(f"hot path unavailable: {hot.status()}", allow_module_level=True)

SHAPES = {  # (B, H, G, L, S, D, E)
    "encoder_tiny": (1, 12, 12, 16, 16, 32, 32),
    "encoder_batch": (3, 4, 4, 65, 65, 32, 32),
    "decode": (2, 8, 2, 1, 513, 64, 64),
    "decode_mha": (2, 8, 8, 1, 513, 64, 64),  # one row per block: products in registers (few_rows.h)
    "decode_odd_dims": (2, 6, 2, 1, 70, 21, 37),  # three rows (a pair and one), head dims ending mid-vector
    "decode_chunk": (2, 4, 1, 5, 300, 16, 24),
    "awkward": (2, 6, 3, 97, 131, 59, 111),
    "many_blocks": (1, 2, 1, 300, 1100, 16, 16),
}


def _options(name, B, H, L, S, g):
    lengths = torch.randint(0, S + 1, (B,), generator=g)
    qlen = torch.randint(0, L + 1, (B,), generator=g)
    return {
        "plain": {},
        "causal": dict(causal=True),
        "top_left": dict(causal="top_left"),
        "window": dict(window=(7, 2)),
        "causal_window": dict(causal=True, window=(33, 0)),
        "kv_lengths": dict(kv_lengths=lengths, causal=True),
        "q_lengths": dict(kv_lengths=lengths, q_lengths=qlen),
        "bool_mask": dict(mask=torch.rand(B, 1, L, S, generator=g) > 0.4),
        "float_mask": dict(mask=torch.randn(1, H, L, S, generator=g) * 3),
        "key_mask_2d": dict(mask=torch.rand(L, S, generator=g) > 0.2),
        "alibi": dict(alibi_slopes=attnkit.alibi_slopes(H), causal=True),
        "alibi_batch": dict(alibi_slopes=torch.rand(B, H, generator=g)),
        "softcap_scale": dict(softcap=4.0, scale=0.5),
        "empty_row_mask": dict(mask=torch.zeros(1, 1, L, S, dtype=torch.bool)),
    }[name]


OPTIONS = ["plain", "causal", "top_left", "window", "causal_window", "kv_lengths", "q_lengths", "bool_mask",
           "float_mask", "key_mask_2d", "alibi", "alibi_batch", "softcap_scale", "empty_row_mask"]


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_hot_path_matches_the_float64_reference(shape, option):
    B, H, G, L, S, D, E = SHAPES[shape]
    q, k, v = qkv(B, H, G, L, S, D, E, seed=len(shape) + len(option))
    kw = _options(option, B, H, L, S, torch.Generator().manual_seed(3))
    assert type(hot.plan(q, k, v, **kw, return_lse=True)) is tuple, hot.plan(q, k, v, **kw, return_lse=True)
    ours = attnkit.attention(q, k, v, **kw, return_lse=True)
    base = attnkit.attention(q, k, v, **kw, return_lse=True, engine="reference")
    ref = attnkit.attention(q.double(), k.double(), v.double(), **kw, return_lse=True, engine="reference")
    assert ours.out.dtype == q.dtype and ours.out.shape == (B, H, L, E) and ours.lse.dtype == torch.float32
    assert_flash_rule(ours.out, base.out, ref.out)
    assert torch.equal(ours.lse == float("-inf"), ref.lse == float("-inf"))  # the same empty rows
    assert_flash_rule(ours.lse.masked_fill(ref.lse == float("-inf"), 0), base.lse.masked_fill(ref.lse == float("-inf"), 0),
                      ref.lse.masked_fill(ref.lse == float("-inf"), 0), floor=1e-5)
    plain = attnkit.attention(q, k, v, **kw)  # without return_lse: the tensor alone
    assert torch.equal(plain, ours.out)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("option", ["plain", "causal", "kv_lengths", "float_mask", "alibi"])
def test_hot_path_half_precision_follows_the_flash_rule(dtype, option):
    B, H, G, L, S, D, E = 2, 4, 2, 33, 70, 32, 32
    q, k, v = qkv(B, H, G, L, S, D, E, dtype=dtype, seed=5)
    kw = _options(option, B, H, L, S, torch.Generator().manual_seed(4))
    assert type(hot.plan(q, k, v, **kw)) is tuple
    ours = attnkit.attention(q, k, v, **kw)
    base = attnkit.attention(q, k, v, **kw, engine="reference")
    ref = attnkit.attention(q.double(), k.double(), v.double(), **kw, engine="reference")
    assert ours.dtype == dtype
    assert_flash_rule(ours, base, ref)


@pytest.mark.parametrize("mode", [0, 1, 2], ids=["widen", "half-if-even", "half"])
def test_the_hot_path_decides_half_products_by_the_forward_ops_rule(mode, monkeypatch):
    """The op's last argument (1: half-precision products, 0: widened) is `fused._gemm_dtype`'s
    decision for the same inputs: one rule (fused.half_products) for every entry into the kernel."""
    from attnkit.engines.kernel import fused

    q, k, v = qkv(1, 2, 2, 40, 50, 32, dtype=torch.bfloat16)
    assert type(hot.plan(q, k, v)) is tuple  # loads the op (and hot._half_modes)
    monkeypatch.setitem(hot._half_modes, torch.bfloat16, mode)
    monkeypatch.setattr(fused, "half_gemm", lambda dtype: mode)
    for L, D, E in ((40, 32, 32), (40, 31, 32), (40, 32, 33), (1, 32, 32)):  # even, odd D / E, a decode step
        q, k, v = qkv(1, 2, 2, L, 50, D, E, dtype=torch.bfloat16)
        plan = hot.plan(q, k, v)
        assert type(plan) is tuple and plan[-1] == int(fused._gemm_dtype(q.dtype, q, v) == torch.bfloat16), (L, D, E)
    assert hot.plan(*qkv(1, 2, 2, 40, 50, 32))[-1] == 0  # float32 has nothing to widen


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("where", ["kv_lengths", "causal", "bool_mask", "window"])
def test_hidden_garbage_never_reaches_an_output_and_visible_garbage_reaches_its_rows(where, dtype):
    # A KV cache from torch.empty holds anything: NaN/inf in keys a row cannot see must not leak into
    # that row through the P·V product (0·NaN) — the kernel's pass keeps them out, with no scan of
    # K/V first. The garbage sits inside the key range the tile reads (rows of one tile see it or not).
    # bf16 (even D): where the CPU has native bf16 products, keys are paired from an even key, so a
    # window starting at an odd key pairs its first key with a hidden one (garbage included).
    B, H, G, L, S, D = 2, 4, 2, 40, 40, 16
    q, k, v = qkv(B, H, G, L, S, D, seed=9, dtype=dtype)
    k, v = k.clone(), v.clone()
    bad = slice(30, 33)
    k[:, :, bad] = float("inf")
    v[:, :, bad] = float("nan")
    kw = {"kv_lengths": dict(kv_lengths=torch.tensor([30, 40]), causal=True),  # batch 0: hidden by its length
          "causal": dict(causal=True),                                          # rows 0..29 never see them
          "bool_mask": dict(mask=(torch.arange(S) < 30) | (torch.arange(S) >= 33)),  # hidden from every row
          "window": dict(window=(4, 0), causal=True)}[where]                    # rows 37+ have passed them
    assert type(hot.plan(q, k, v, **kw)) is tuple
    out = attnkit.attention(q, k, v, **kw)
    ref = attnkit.attention(q.double(), k.double(), v.double(), **kw, engine="reference")
    nan_rows = torch.isnan(ref).any(-1)
    assert (~nan_rows).any() and torch.equal(torch.isnan(out).any(-1), nan_rows)
    if dtype == torch.float32:
        assert err(out, ref) < 1e-5  # NaN in the same places, the rest exact
    else:
        base = attnkit.attention(q, k, v, **kw, engine="reference")
        assert_flash_rule(out[~nan_rows], base[~nan_rows], ref[~nan_rows])
    if where == "bool_mask":
        assert not nan_rows.any()
    if where in ("causal", "kv_lengths"):
        assert not nan_rows[..., :30].any() and nan_rows[1, :, 30:].all()


@pytest.mark.parametrize("S, bad", [(40, 7), (1100, 7), (1100, 700)], ids=["one-block", "first-block", "later-block"])
@pytest.mark.parametrize("kw", [{}, dict(softcap=30.0), dict(alibi_slopes=torch.tensor([0.5, 0.1])), dict(softcap=5.0, causal=True)],
                         ids=["plain", "softcap", "alibi", "softcap-causal"])
def test_a_nan_key_makes_every_row_that_sees_it_nan(S, bad, kw):
    # The fused exp (exp_u20) turns NaN into a large finite number, so NaN must be kept out of it:
    # softcap's tanh (built on that exp) and the one-pass step of later key blocks both check.
    q, k, v = qkv(1, 2, 2, 40, S, 16, seed=13)
    k = k.clone()
    k[0, 0, bad] = float("nan")
    assert type(hot.plan(q, k, v, **kw)) is tuple
    out = attnkit.attention(q, k, v, **kw)
    ref = attnkit.attention(q.double(), k.double(), v.double(), **kw, engine="reference")
    nan_rows = torch.isnan(ref).all(-1)
    assert nan_rows[0, 0].any() and not nan_rows[0, 1].any()  # (causal: rows before the key do not see it)
    assert torch.equal(torch.isnan(out).all(-1), nan_rows) and not torch.isnan(out[0, 1]).any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("jump", [2.0, 20.0, 300.0], ids=["within-slack", "rescaled", "past-exp-range"])
@pytest.mark.parametrize("L, G, kw", [(40, 2, {}), (40, 2, dict(causal=True)), (40, 2, dict(mask=torch.arange(1100) % 7 != 3)),
                                      (40, 2, dict(alibi_slopes=torch.tensor([0.5, 0.03, 0.001, 0.0]))),
                                      (40, 2, dict(softcap=30.0, causal=True)), (1, 2, {}), (1, 4, {})],
                         ids=["encoder", "causal", "bool-mask", "alibi", "softcap", "decode-gqa", "decode-mha"])
def test_a_later_key_block_that_outscores_the_earlier_ones(L, G, kw, jump, dtype):
    # The hot path takes a row's later key blocks (blocks.KEY_TILE keys) in one pass relative to the
    # max of the blocks before (row_step.h, lazy_exp_sum_row). A key in the second block outscores
    # row 0's best earlier key by `jump` (scaled score units): within the slack the row's max stays
    # (2); past it (20, and 300, where exp relative to the old max would overflow) the rest of the row
    # is weighed against the new max and the weights before it rescaled. The other rows score that
    # key anywhere from far below to far above their own maxima.
    B, H, S, D = 1, 4, 1100, 32  # key blocks [0, 512), [512, 1024), [1024, 1100)
    q, k, v = qkv(B, H, G, L, S, D, seed=12, dtype=torch.float64)
    scale = D ** -0.5
    for h in range(H):
        g, q0 = h // (H // G), q[0, h, 0]
        if h % (H // G) == 0:  # one boosted key per kv head, aimed at its first query head
            best = (scale * k[0, g, :512] @ q0).max()
            k[0, g, 600 + g] = q0 * (best + jump) / (scale * q0 @ q0)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    assert type(hot.plan(q, k, v, **kw)) is tuple
    out = attnkit.attention(q, k, v, **kw)
    ref = attnkit.attention(q.double(), k.double(), v.double(), **kw, engine="reference")
    base = attnkit.attention(q, k, v, **kw, engine="reference")
    # A row that one key dominates (weight ~1) carries the fused exp's own error into its output: the
    # kernel's exp (ATen's exp_u20, as SDPA's CPU kernel) is within 20 ulps, torch.exp within 1.
    assert_flash_rule(out, base, ref, floor=max(1e-6, 20 * 2.0**-24 * float(v.abs().max())))
    if jump == 300.0:  # row 0 of each group's first head is that key's value, to the last bit of float32
        first = torch.arange(H) % (H // G) == 0
        assert err(out[0, first, 0], ref[0, first, 0]) < 1e-6
    k[0, 0, 700] = float("nan")  # a NaN key in a later block: the rows that see it are NaN, no other
    out = attnkit.attention(q, k, v, **kw)
    ref = attnkit.attention(q.double(), k.double(), v.double(), **kw, engine="reference")
    nan_rows = torch.isnan(ref).any(-1)
    assert nan_rows.any() and torch.equal(torch.isnan(out).any(-1), nan_rows)


@pytest.mark.parametrize("dtype, half", [(torch.float32, None), (torch.bfloat16, None), (torch.bfloat16, 2)],
                         ids=["float32", "bfloat16", "bfloat16-half-products"])
@pytest.mark.parametrize("L", [1, 5, 40])
@pytest.mark.parametrize("G", [2, 4], ids=["gqa", "mha"])
def test_a_cache_of_odd_length_never_reads_the_garbage_after_it(dtype, half, L, G, monkeypatch):
    # Rows see every key up to an odd length, so no structural mask marks the tile partial; with
    # native bf16 products (VNNI pairs: forced by mode 2 = HALF, where the build has them) the last
    # visible key is paired with the first hidden one. L = 1: a decode step's rows, multiplied in
    # registers (few_rows.h) for one row per block (mha) and widened half rows of a group (gqa).
    B, H, S, D = 2, 4, 48, 16
    q, k, v = qkv(B, H, G, L, S, D, seed=10, dtype=dtype)
    lengths = torch.tensor([29, 17])
    k, v = k.clone(), v.clone()
    for b, n in enumerate(lengths.tolist()):
        k[b, :, n:], v[b, :, n:] = float("inf"), float("nan")
    assert type(hot.plan(q, k, v, kv_lengths=lengths)) is tuple  # loads the op (and hot._half_modes)
    if half is not None:
        monkeypatch.setitem(hot._half_modes, dtype, half)
        assert hot.plan(q, k, v, kv_lengths=lengths)[-1] == 1
    out = attnkit.attention(q, k, v, kv_lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        qb, kb, vb = q[b:b + 1], k[b:b + 1, :, :n], v[b:b + 1, :, :n]
        ref = attnkit.attention(qb.double(), kb.double(), vb.double(), engine="reference")
        base = attnkit.attention(qb, kb, vb, engine="reference")
        assert not torch.isnan(out[b]).any()
        assert_flash_rule(out[b:b + 1], base, ref)


def _layout(t: torch.Tensor, how: str) -> torch.Tensor:
    """The same values as ``t`` (B, H, L, D) in another storage layout."""
    B, H, L, D = t.shape
    if how == "model":  # Hugging Face: (B, L, H, D) storage seen as (B, H, L, D)
        return t.transpose(1, 2).contiguous().transpose(1, 2)
    if how == "cache":  # the first L rows of a longer preallocated cache
        big = torch.full((B, H, L + 7, D), float("nan"), dtype=t.dtype)
        big[:, :, :L] = t
        return big[:, :, :L]
    if how == "odd":  # an odd row stride (copied for 2-byte types, read in place for float32)
        big = torch.zeros(B, H, L, D + 1, dtype=t.dtype)
        big[..., :D] = t
        return big[..., :D]
    assert how == "columns"  # rows not contiguous: always copied
    return t.transpose(2, 3).contiguous().transpose(2, 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("how", ["model", "cache", "odd", "columns"])
@pytest.mark.parametrize("L,S,kw", [(1, 300, {}), (7, 40, dict(causal=True)), (64, 64, dict(causal=True)),
                                    (300, 300, dict(window=(20, 0), causal=True))], ids=str)
def test_any_layout_gives_the_contiguous_answer(dtype, how, L, S, kw):
    # The op reads q/k/v in place where rows are contiguous (a model's transposed views, a slice of
    # a cache) and copies otherwise; GQA packs heads of short ranges into one block.
    B, H, G, D = 2, 8, 2, 32
    q, k, v = qkv(B, H, G, L, S, D, seed=21, dtype=dtype)
    ql, kl, vl = (_layout(t, how) for t in (q, k, v))
    assert type(hot.plan(ql, kl, vl, **kw)) is tuple
    out = attnkit.attention(ql, kl, vl, **kw)
    ref = attnkit.attention(q.double(), k.double(), v.double(), **kw, engine="reference")
    base = attnkit.attention(q, k, v, **kw, engine="reference")
    assert_flash_rule(out, base, ref)
    assert torch.equal(out, attnkit.attention(q, k, v, **kw))  # the contiguous call: the same numbers
    assert out.transpose(1, 2).is_contiguous()  # (B, L, H, E) storage: a model's transpose is free


def test_nan_query_rows_stay_in_their_rows():
    q, k, v = qkv(2, 4, 4, 8, 8, 16, seed=1)
    q = q.clone()
    q[1, 2, 5] = float("nan")
    out = attnkit.attention(q, k, v)
    nan_rows = torch.isnan(out).any(-1)
    assert nan_rows.sum() == 1 and nan_rows[1, 2, 5]


def test_empty_sequences_and_non_contiguous_inputs():
    q, k, v = qkv(2, 4, 2, 0, 9, 8)
    assert attnkit.attention(q, k, v).shape == (2, 4, 0, 8)
    q, k, v = qkv(2, 4, 2, 5, 0, 8)
    res = attnkit.attention(q, k, v, return_lse=True)
    assert torch.equal(res.out, torch.zeros(2, 4, 5, 8)) and torch.isinf(res.lse).all()
    # (B, L, H, D) memory viewed as (B, H, L, D): strided inputs are read correctly.
    x = torch.randn(2, 7, 4, 8).transpose(1, 2)
    assert type(hot.plan(x, x, x)) is tuple
    ref = attnkit.attention(x.double(), x.double(), x.double(), engine="reference")
    assert err(attnkit.attention(x, x, x), ref) < 1e-5


@contextlib.contextmanager
def _threads(n):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_calls_that_need_the_general_path_take_it_and_explain_says_why():
    q, k, v = qkv(1, 2, 2, 4, 6, 8)
    cases = {
        "engine='flash' is forced": dict(engine="flash"),
        "float64": dict(dtype=torch.float64),
        "autograd": dict(grad=True),
        "dropout": dict(dropout_p=0.1),
        "bias, return_weights or seed": dict(return_weights=True),
        "normalizer other than softmax": dict(normalizer="sparsemax"),
    }
    for why, kw in cases.items():
        kw = dict(kw)
        qq, kk, vv = q, k, v
        if kw.pop("dtype", None):
            qq, kk, vv = (t.double() for t in (q, k, v))
        if kw.pop("grad", None):
            qq = q.clone().requires_grad_()
        plan = hot.plan(qq, kk, vv, **kw)
        assert isinstance(plan, str) and why.split()[0] in plan, (why, plan)
        d = attnkit.explain(qq, kk, vv, **kw)
        assert not d.hot and d.not_hot == plan and f"not the hot path: {plan}" in str(d)
    d = attnkit.explain(q, k, v, causal=True)
    assert d.hot and d.engine == "flash" and "hot path" in str(d)
    # Arguments the op cannot take as given: the general path converts or rejects them.
    for kw, why in ((dict(kv_lengths=[6]), "kv_lengths is not a tensor"),
                    (dict(alibi_slopes=[0.5, 0.25]), "alibi_slopes is not a tensor"),
                    (dict(window=(2,)), "window is not a (left, right) pair"),
                    (dict(softcap=-1.0), "softcap is not a positive")):
        with torch.enable_grad():
            assert hot.plan(q, k, v, **kw).startswith(why), kw
    # A decode step over a long cache with fewer (batch, kv head) groups than threads: split-KV.
    step, cache = torch.zeros(1, 2, 1, 8), torch.zeros(1, 1, 2 * decode.MIN_SEGMENT, 8)
    with _threads(2):
        assert "split-KV" in hot.plan(step, cache, cache)
        assert attnkit.explain(step, cache, cache).engine == "decode"
    with _threads(1):
        assert type(hot.plan(step, cache, cache)) is tuple


BAD = [  # (argument overrides, what the general path's message says)
    (dict(key=torch.zeros(2, 3, 5, 8)), "key heads G dividing"),
    (dict(key=torch.zeros(2, 2, 5, 7)), "key of shape"),
    (dict(value=torch.zeros(2, 2, 4, 8)), "value of shape"),
    (dict(mask=torch.ones(3, 1, 6, 5, dtype=torch.bool)), "mask broadcastable"),
    (dict(mask=torch.ones(1, 1, 6, 5, dtype=torch.int32)), "boolean"),
    (dict(mask=torch.ones(2, 2, 1, 6, 5, dtype=torch.bool)), "mask broadcastable"),
    (dict(causal="bottom"), "causal"),
    (dict(window=(3,)), "window"),
    (dict(window=(-1, 0)), "window"),
    (dict(kv_lengths=torch.tensor([5, 6])), "kv_lengths in"),
    (dict(kv_lengths=torch.tensor([-1, 2])), "kv_lengths in"),
    (dict(q_lengths=torch.tensor([7, 1])), "q_lengths in"),
    (dict(kv_lengths=torch.tensor([5])), "kv_lengths as an integer tensor"),
    (dict(kv_lengths=torch.tensor([5.0, 1.0])), "integer tensor"),
    (dict(alibi_slopes=torch.ones(3)), "alibi_slopes"),
    (dict(alibi_slopes=torch.ones(4, dtype=torch.int64)), "alibi_slopes"),
    (dict(softcap=0.0), "softcap"),
    (dict(softcap=float("inf")), "softcap"),
    (dict(scale=float("nan")), "scale"),
    (dict(scale=float("inf")), "scale"),
    (dict(return_lse=1), "return_lse"),
]


@pytest.mark.parametrize("kwargs, match", BAD)
def test_bad_inputs_raise_the_general_paths_error(kwargs, match):
    q, k, v, opts = bad_call(kwargs)
    with pytest.raises(AttnkitError, match=match) as general:
        AttentionSpec.build(q, k, v, **opts)
    with pytest.raises(AttnkitError, match=match) as hot_call:
        attnkit.attention(q, k, v, **opts)
    assert str(hot_call.value) == str(general.value)


def test_the_op_itself_rejects_what_only_data_or_shapes_reveal():
    # These pass the cheap Python checks of plan(); the C++ checks must catch them (then the
    # general path raises), never compute garbage.
    q, k, v = torch.zeros(2, 4, 6, 8), torch.zeros(2, 2, 5, 8), torch.zeros(2, 2, 5, 8)
    for kw in (dict(kv_lengths=torch.tensor([5, 6])), dict(mask=torch.ones(3, 1, 6, 5, dtype=torch.bool)),
               dict(key=torch.zeros(2, 3, 5, 8)), dict(scale=float("nan")), dict(softcap=float("inf"))):
        key = kw.pop("key", k)
        plan = hot.plan(q, key, v, **kw)
        assert type(plan) is tuple, kw
        assert hot.run(plan) is None, kw


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generate_runs_every_attention_call_on_the_hot_path(cache):
    # A decode step of transformers' generate (dynamic or static cache, left padding) must reach the
    # compiled op, not the general path: the attention function's calls are recorded with the plan.
    transformers = pytest.importorskip("transformers")
    from attnkit.integrations import hf

    seen = []

    def recording(module, query, key, value, attention_mask, **kw):
        kwargs = hf._mask_kwargs(module, attention_mask, query.shape[2], key.shape[2], kw.get("is_causal"))
        seen.append(hot.plan(query, key, value, **kwargs, scale=kw.get("scaling")))
        return hf.attnkit_attention_forward(module, query, key, value, attention_mask, **kw)

    hf.register("attnkit_hot_probe")
    transformers.AttentionInterface.register("attnkit_hot_probe", recording)
    torch.manual_seed(0)
    cfg = dict(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=128)
    ids = torch.randint(3, 97, (3, 12), generator=torch.Generator().manual_seed(1))
    am = torch.ones(3, 12, dtype=torch.long)
    am[1, :4] = am[2, :7] = 0
    kw = dict(attention_mask=am, max_new_tokens=6, do_sample=False, pad_token_id=0, cache_implementation=cache)
    outs = {}
    for impl in ("eager", "attnkit_hot_probe"):
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg, attn_implementation=impl)).eval()
        with torch.no_grad():
            outs[impl] = model.generate(ids, **kw)
    assert torch.equal(outs["eager"], outs["attnkit_hot_probe"])
    assert len(seen) == 2 * 6 and all(type(p) is tuple for p in seen), [p for p in seen if type(p) is not tuple][:2]


def test_tensor_arguments_off_the_cpu_take_the_general_path():
    # A meta tensor among the arguments would send the op to its shape-only kernel: never computed.
    q, k, v = qkv(2, 4, 2, 6, 5, 8)
    for kw in (dict(kv_lengths=torch.tensor([2, 3], device="meta")), dict(mask=torch.ones(6, 5, dtype=torch.bool, device="meta")),
               dict(alibi_slopes=torch.ones(4, device="meta"))):
        plan = hot.plan(q, k, v, **kw)
        assert isinstance(plan, str) and "meta" in plan
        with pytest.raises(AttnkitError):
            attnkit.attention(q, k, v, **kw)


def test_without_the_fused_kernel_the_common_call_takes_the_pytorch_path():
    # The fallback half of "fused or PyTorch": with the kernel disabled (as without a compiler) the
    # same call runs on the general path's PyTorch tiles, says so, and matches the float64 reference.
    import os
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import torch, attnkit\n"
        "g = torch.Generator().manual_seed(0)\n"
        "q, k, v = (torch.randn(2, 4, 300, 16, generator=g) for _ in range(3))  # several tiles\n"
        "kw = dict(causal=True, window=(7, 0))\n"
        "d = attnkit.explain(q, k, v, **kw)\n"
        "out = attnkit.attention(q, k, v, **kw)\n"
        "ref = attnkit.attention(q.double(), k.double(), v.double(), engine='reference', **kw)\n"
        "print(d.hot, d.engine, d.not_hot, d.detail, float((out.double() - ref).abs().max()), sep='|')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(attnkit.__file__).parents[1]), "ATTNKIT_NO_FUSED": "1"}
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    hot_flag, engine, not_hot, detail, error = res.stdout.strip().split("|")
    assert hot_flag == "False" and engine == "flash" and "ATTNKIT_NO_FUSED" in not_hot
    assert "tile path: torch" in detail and float(error) < 1e-5


def test_torch_compile_traces_the_hot_path_into_one_graph():
    """`torch.compile(fullgraph=True)` fails on any graph break: plan's checks (a decode step over a
    long cache, a bf16 GQA step's product mode) trace, and the compiled call runs the registered op."""
    q, k, v = qkv(1, 2, 1, 1, 2 * decode.MIN_SEGMENT, 8, seed=12)
    attnkit.attention(q, k, v)  # loads the op outside the trace (a first build cannot be traced)
    compiled = torch.compile(lambda a, b, c: attnkit.attention(a, b, c), backend="eager", fullgraph=True)
    for dtype, (B, H, G, S, D) in ((torch.float32, (1, 2, 1, 2 * decode.MIN_SEGMENT, 8)),
                                   (torch.bfloat16, (1, 4, 2, 300, 64))):
        q, k, v = qkv(B, H, G, 1, S, D, dtype=dtype, seed=13)
        with torch.no_grad():
            out = compiled(q, k, v)
        ref = attnkit.attention(q.double(), k.double(), v.double(), engine="reference")
        base = attnkit.attention(q, k, v, engine="reference")
        assert out.dtype == dtype
        assert_flash_rule(out, base, ref)
