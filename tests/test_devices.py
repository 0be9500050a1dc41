"""Device problems are AttnkitErrors (expected / got / fix), raised before any work, at every public
entry point that takes a device or tensors — never torch's AssertionError, NotImplementedError or
RuntimeError from deep inside."""

from __future__ import annotations

import pytest
import torch

import attnkit
from attnkit import AttnkitError
from attnkit.nn import KVCache, MultiHeadAttention

META = "meta"
# A device this machine lacks (the suite runs on CPU-only machines; with a GPU, an index past the count).
MISSING = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"


def _qkv():
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(2, 2, 3, 4, generator=g) for _ in range(3))


def _bool(*shape, device=META):
    return torch.ones(*shape, dtype=torch.bool, device=device)


CASES = {
    # the two reports
    "attention kv_lengths on meta": lambda: attnkit.attention(*_qkv(), kv_lengths=torch.tensor([2, 3], device=META)),
    "SoftmaxState.empty on a missing device": lambda: attnkit.SoftmaxState.empty((4,), device=MISSING),
    # the other entry points that take a device or tensors
    "attention q_lengths on meta": lambda: attnkit.attention(*_qkv(), q_lengths=torch.tensor([2, 3], device=META)),
    "attention alibi_slopes on meta": lambda: attnkit.attention(*_qkv(), alibi_slopes=torch.ones(2, device=META)),
    "attention mask on meta": lambda: attnkit.attention(*_qkv(), mask=_bool(3, 3)),
    "attention key on meta": lambda: attnkit.attention(_qkv()[0], torch.randn(2, 2, 3, 4, device=META), _qkv()[2]),
    "explain kv_lengths on meta": lambda: attnkit.explain(*_qkv(), kv_lengths=torch.tensor([2, 3], device=META)),
    "SoftmaxState.empty bad spelling": lambda: attnkit.SoftmaxState.empty((4,), device="gpu0"),
    "SoftmaxState.update chunk elsewhere": lambda: attnkit.SoftmaxState.empty((4,)).update(torch.randn(4, 3, device=META)),
    "softmax mask on meta": lambda: attnkit.softmax(torch.randn(3), mask=_bool(3)),
    "log_softmax mask on meta": lambda: attnkit.log_softmax(torch.randn(3), mask=_bool(3)),
    "logsumexp mask on meta": lambda: attnkit.logsumexp(torch.randn(3), mask=_bool(3)),
    "sparsemax mask on meta": lambda: attnkit.sparsemax(torch.randn(3), mask=_bool(3)),
    "entmax15 mask on meta": lambda: attnkit.entmax15(torch.randn(3), mask=_bool(3)),
    "sigmoid mask on meta": lambda: attnkit.sigmoid(torch.randn(3), mask=_bool(3)),
    "merge_partials across devices": lambda: attnkit.merge_partials(
        torch.randn(2, 3), torch.randn(2), torch.randn(2, 3, device=META), torch.randn(2)),
    "softmax_cross_entropy target on meta": lambda: attnkit.softmax_cross_entropy(
        torch.randn(2, 3), torch.tensor([0, 1], device=META)),
    "softmax_cross_entropy all meta": lambda: attnkit.softmax_cross_entropy(
        torch.randn(2, 3, device=META), torch.tensor([0, 1], device=META)),
    "KVCache counts on meta": lambda: KVCache().append(torch.randn(1, 1, 2, 4), torch.randn(1, 1, 2, 4),
                                                       counts=torch.tensor([1], device=META)),
    "MultiHeadAttention on a missing device": lambda: MultiHeadAttention(8, 2, device=MISSING),
    "MultiHeadAttention input elsewhere": lambda: MultiHeadAttention(8, 2)(torch.randn(1, 3, 8, device=META)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_device_problems_are_attnkit_errors(name):
    with pytest.raises(AttnkitError) as info:
        CASES[name]()
    msg = str(info.value)
    assert msg.startswith("expected ") and ", got " in msg and "; fix: " in msg, msg


def test_kv_cache_reorder_index_on_meta():
    cache = KVCache()
    cache.append(torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 4))
    with pytest.raises(AttnkitError, match="index with values"):
        cache.reorder(torch.tensor([1, 0], device=META))


def test_the_error_names_the_argument_and_the_fix():
    with pytest.raises(AttnkitError, match=r"kv_lengths with values .* got a meta tensor"):
        CASES["attention kv_lengths on meta"]()
    with pytest.raises(AttnkitError, match=r"device that this machine has, got .*sees no CUDA device"):
        CASES["SoftmaxState.empty on a missing device"]()
    with pytest.raises(AttnkitError, match=r"o_b on cpu like o_a, got o_b on meta; fix: move it with o_b.to\('cpu'\)"):
        CASES["merge_partials across devices"]()


def test_devices_that_exist_still_work():
    assert attnkit.SoftmaxState.empty((4,), device="cpu").m.device.type == "cpu"
    assert attnkit.SoftmaxState.empty((4,), device=META).m.device.type == META  # shapes only: fine
    out = attnkit.attention(*_qkv(), kv_lengths=[2, 3])  # a list still works
    assert out.shape == (2, 2, 3, 4)
