"""SegmentMemoryAttention (Transformer-XL recurrence, ALiBi): a dense float64 oracle, every engine, stop-gradient."""

from __future__ import annotations

import doctest

import pytest
import torch

import attnkit
import attnkit.nn.segment_memory as segment_memory
from attnkit.nn import SegmentMemoryAttention
from attnkit.engines import kernel
from conftest import ENGINES, assert_flash_rule

# Every engine, forced; the flash engine also on each tile path (fused C++ kernel, PyTorch tiles).
ENGINE_PATHS = [(e, None) for e in ENGINES] + [("flash", "fused"), ("flash", "torch")]


def dense_oracle(layer: SegmentMemoryAttention, seq: torch.Tensor, seg: int) -> torch.Tensor:
    """The whole sequence in one plain-torch pass: token t (in segment c = t // seg) sees keys
    ``max(0, c·seg - mem_len) <= j <= t`` with the ALiBi term ``-slope·(t - j)``."""
    B, T, _ = seq.shape
    H, G, D = layer.num_heads, layer.num_kv_heads, layer.head_dim
    q = layer.q_proj(seq).view(B, T, H, D).transpose(1, 2)
    k = layer.k_proj(seq).view(B, T, G, D).transpose(1, 2).repeat_interleave(H // G, 1)
    v = layer.v_proj(seq).view(B, T, G, D).transpose(1, 2).repeat_interleave(H // G, 1)
    t, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    first = ((t // seg) * seg - layer.mem_len).clamp_min(0)
    visible = (j <= t) & (j >= first)
    s = q @ k.transpose(-1, -2) / D**0.5 - layer.slopes.to(seq.dtype).view(H, 1, 1) * (t - j)
    w = torch.softmax(s.masked_fill(~visible, float("-inf")), -1)
    return layer.out_proj((w @ v).transpose(1, 2).reshape(B, T, H * D))


def segment_oracle(layer: SegmentMemoryAttention, seq: torch.Tensor, seg: int) -> torch.Tensor:
    """Plain torch, segment by segment, memory inputs detached: the gradients Transformer-XL defines."""
    H, G, D = layer.num_heads, layer.num_kv_heads, layer.head_dim
    outs = []
    for c0 in range(0, seq.shape[1], seg):
        m0 = max(0, c0 - layer.mem_len)
        h = torch.cat([seq[:, m0:c0].detach(), seq[:, c0:c0 + seg]], 1)
        B, S, L = h.shape[0], h.shape[1], min(seg, seq.shape[1] - c0)
        q = layer.q_proj(h[:, S - L:]).view(B, L, H, D).transpose(1, 2)
        k = layer.k_proj(h).view(B, S, G, D).transpose(1, 2).repeat_interleave(H // G, 1)
        v = layer.v_proj(h).view(B, S, G, D).transpose(1, 2).repeat_interleave(H // G, 1)
        dist = (torch.arange(L)[:, None] + S - L) - torch.arange(S)[None, :]
        s = q @ k.transpose(-1, -2) / D**0.5 - layer.slopes.to(seq.dtype).view(H, 1, 1) * dist
        w = torch.softmax(s.masked_fill(dist < 0, float("-inf")), -1)
        outs.append(layer.out_proj((w @ v).transpose(1, 2).reshape(B, L, H * D)))
    return torch.cat(outs, 1)


def run_segments(layer, seq, seg, engine="auto"):
    memory, outs = None, []
    for x in seq.split(seg, dim=1):
        out, memory = layer(x, memory, engine=engine)
        outs.append(out)
    return torch.cat(outs, 1), memory


def _layer(mem_len, G=4, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return SegmentMemoryAttention(32, 4, mem_len=mem_len, num_kv_heads=G).to(dtype)


@pytest.mark.parametrize("mem_len", [0, 7, 12, 24, 1000])
@pytest.mark.parametrize("G", [4, 2, 1])
def test_segments_equal_the_dense_oracle(mem_len, G):
    """Segment by segment with a memory of mem_len == one pass with Transformer-XL's visibility
    (mem_len >= the sequence: plain causal ALiBi attention over everything)."""
    layer = _layer(mem_len, G)
    seq = torch.randn(2, 36, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours, memory = run_segments(layer, seq, 12, engine="reference")
    torch.testing.assert_close(ours, dense_oracle(layer, seq, 12), rtol=0, atol=1e-12)
    torch.testing.assert_close(ours, segment_oracle(layer, seq, 12), rtol=0, atol=1e-12)
    assert memory.shape == (2, min(mem_len, 36), 32) and not memory.requires_grad


@pytest.mark.parametrize("engine,path", ENGINE_PATHS)
@pytest.mark.parametrize("seg,G", [(12, 2), (40, 4)])
def test_gradients_match_float64_on_every_engine(engine, path, seg, G):
    """Output and gradients (input and every weight) of a 3-segment run, engine forced, against the
    float64 oracle; the baseline is the same oracle in float32."""
    torch.manual_seed(2)
    layer32 = SegmentMemoryAttention(32, 4, mem_len=seg, num_kv_heads=G)
    layer64 = SegmentMemoryAttention(32, 4, mem_len=seg, num_kv_heads=G).double()
    layer64.load_state_dict(layer32.state_dict())
    seq = torch.randn(2, 3 * seg, 32, generator=torch.Generator().manual_seed(3))
    up = torch.randn(2, 3 * seg, 32, generator=torch.Generator().manual_seed(4))

    def grads(layer, fn, dtype):
        x = seq.to(dtype).requires_grad_(True)
        out = fn(layer, x)
        g = torch.autograd.grad((out * up.to(dtype)).sum(), [x, *layer.parameters()])
        return [out.detach(), *g]

    try:
        with kernel.force_path(path):
            ours = grads(layer32, lambda m, x: run_segments(m, x, seg, engine=engine)[0], torch.float32)
    except attnkit.AttnkitError as why:
        pytest.skip(f"{engine}: {why}")
    ref64 = grads(layer64, lambda m, x: segment_oracle(m, x, seg), torch.float64)
    base = grads(layer32, lambda m, x: segment_oracle(m, x, seg), torch.float32)
    for a, b, c in zip(ours, base, ref64):
        assert_flash_rule(a, b, c)


def test_memory_stops_the_gradient():
    """Segment 2's loss sends no gradient into segment 1 through the memory (Transformer-XL's SG)."""
    layer = _layer(16)
    x1 = torch.randn(1, 8, 32, dtype=torch.float64, requires_grad=True)
    x2 = torch.randn(1, 8, 32, dtype=torch.float64)
    out1, memory = layer(x1)
    out2, _ = layer(x2, memory)
    out2.sum().backward()
    assert x1.grad is None
    # ... even when the caller hands over a memory that is still attached to the graph,
    out2, _ = layer(x2, x1 * 2)
    (g,) = torch.autograd.grad(out2.sum(), x1, allow_unused=True)
    assert g is None
    # while the memory does change the output (it is used, only not differentiated):
    assert not torch.allclose(out2, layer(x2)[0])


def test_memory_keeps_the_last_mem_len_positions():
    layer = _layer(10)
    a, b = torch.randn(1, 6, 32, dtype=torch.float64), torch.randn(1, 6, 32, dtype=torch.float64)
    _, m1 = layer(a)
    _, m2 = layer(b, m1)
    assert torch.equal(m1, a) and torch.equal(m2, torch.cat([a, b], 1)[:, -10:])
    _, empty = _layer(0)(a)
    assert empty.shape == (1, 0, 32)


def test_alibi_runs_on_the_kernel_without_a_dense_bias(monkeypatch):
    """The relative positions reach attnkit.attention as alibi_slopes with bottom-right causal alignment."""
    seen = []
    real = segment_memory.attention
    monkeypatch.setattr(segment_memory, "attention", lambda *a, **k: seen.append((a[0].shape, a[1].shape, k)) or real(*a, **k))
    layer = _layer(16)
    layer(torch.randn(2, 8, 32, dtype=torch.float64), torch.randn(2, 16, 32, dtype=torch.float64))
    (qs, ks, kw), = seen
    assert qs[2] == 8 and ks[2] == 24 and kw["causal"] is True and kw.get("bias") is None
    assert torch.equal(kw["alibi_slopes"], attnkit.alibi_slopes(4).double())


def test_errors():
    with pytest.raises(attnkit.AttnkitError, match="mem_len"):
        SegmentMemoryAttention(32, 4, mem_len=-1)
    layer = _layer(4)
    with pytest.raises(attnkit.AttnkitError, match="memory of shape"):
        layer(torch.randn(2, 5, 32, dtype=torch.float64), torch.randn(3, 4, 32, dtype=torch.float64))


def test_docstring_examples():
    assert doctest.testmod(segment_memory, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE).failed == 0
