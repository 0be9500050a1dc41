"""Segment-level recurrence (Transformer-XL, Dai et al., 2019) on attnkit's kernel, with ALiBi positions.

A long sequence is processed segment by segment. Each segment's queries attend to the segment's
own tokens and to a *memory*: the layer inputs of the previous segment(s), cached with the
gradient stopped (``memory.detach()``), projected to keys/values with the current weights::

    h̃ = [stop_grad(memory); x]            (B, M + L, embed_dim)
    q = x·W_q,  k = h̃·W_k,  v = h̃·W_v      queries only for the L new tokens
    out = attention(q, k, v, causal=True, alibi_slopes=slopes)    bottom-right: query i sits at key M + i

Relative positions: ALiBi (``-slope_h · (i + M - j)`` added to the scores), not Transformer-XL's
``u``/``v`` biases with sinusoidal relative embeddings. Why: ALiBi needs no positional term in
the scores beyond a per-head slope, which attnkit's fused kernel computes inside the tile from
``(i, j)`` — nothing ``L × (M + L)`` is materialized, and block skipping and the exact backward stay
as they are; it is exactly relative (a query at aligned position ``p`` sees ``p - j``, whatever
the segment boundaries), so recurrence needs no re-indexing of cached positions. Transformer-XL's
``(q + v)·R_{i-j}`` term would be a dense ``(B, H, L, M + L)`` ``bias=`` tensor plus the
relative-shift trick per call. The cost: ALiBi's recency bias is fixed (monotone in distance); a
head that must look far back learns a small slope's worth of content scores to overcome it
(the experiment in ``benchmarks/RESULTS.md`` shows recall two and three segments back).

An [`AdaptiveSpan`][attnkit.nn.adaptive_span.AdaptiveSpan] can be attached (``span=``): the heads then also learn how far
back into the memory they look, and the kernel skips keys beyond the longest span.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import AttnkitError
from ..functional import attention
from ..scores import alibi_slopes as _alibi_slopes
from .adaptive_span import AdaptiveSpan, kv_heads

__all__ = ["SegmentMemoryAttention"]


class SegmentMemoryAttention(nn.Module):
    """Causal self-attention over a segment plus a gradient-stopped memory of earlier segments.

    Args:
        embed_dim: model dim, split into ``num_heads`` heads of ``D = embed_dim // num_heads``.
        num_heads: query heads ``H``.
        mem_len: how many past positions the memory keeps (``0``: no memory, each segment alone).
        num_kv_heads: key/value heads ``G`` (``H % G == 0``).
        bias: biases in the projections.
        dropout: attention dropout in training mode.
        slopes: ALiBi slopes ``(H,)`` (default [`attnkit.alibi_slopes`][attnkit.scores.alibi_slopes]); a buffer, not trained.
        span: an optional [`AdaptiveSpan`][attnkit.nn.adaptive_span.AdaptiveSpan] over ``H`` heads (learned per-head spans).

    Example:
        >>> import torch
        >>> from attnkit.nn import SegmentMemoryAttention
        >>> layer = SegmentMemoryAttention(32, 4, mem_len=16)
        >>> seq = torch.randn(2, 48, 32)
        >>> memory, outs = None, []
        >>> for seg in seq.split(16, dim=1):      # three segments of 16
        ...     out, memory = layer(seg, memory)
        ...     outs.append(out)
        >>> torch.cat(outs, 1).shape, memory.shape
        (torch.Size([2, 48, 32]), torch.Size([2, 16, 32]))
    """

    def __init__(self, embed_dim: int, num_heads: int, *, mem_len: int, num_kv_heads: int | None = None,
                 bias: bool = True, dropout: float = 0.0, slopes: Tensor | None = None,
                 span: AdaptiveSpan | None = None) -> None:
        super().__init__()
        G = kv_heads(embed_dim, num_heads, num_kv_heads)
        if mem_len < 0:
            raise AttnkitError.build("mem_len >= 0", repr(mem_len), "0 disables the memory")
        if not 0.0 <= dropout < 1.0:
            raise AttnkitError.build("dropout in [0, 1)", repr(dropout), "e.g. dropout=0.1")
        slopes = _alibi_slopes(num_heads) if slopes is None else torch.as_tensor(slopes, dtype=torch.float32)
        if slopes.shape != (num_heads,):
            raise AttnkitError.build(f"slopes of shape (H,) = ({num_heads},)", str(tuple(slopes.shape)), "one slope per head")
        if span is not None and span.span.shape != (num_heads,):
            raise AttnkitError.build(f"an AdaptiveSpan over {num_heads} heads", f"{span.span.numel()} heads", "match num_heads")
        self.embed_dim, self.num_heads, self.num_kv_heads, self.mem_len = embed_dim, num_heads, G, int(mem_len)
        self.head_dim, self.dropout = embed_dim // num_heads, float(dropout)
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim, G * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, G * self.head_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.register_buffer("slopes", slopes.float())
        self.span = span

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, num_kv_heads={self.num_kv_heads}, mem_len={self.mem_len}"

    def forward(self, x: Tensor, memory: Tensor | None = None, *, engine: str = "auto") -> tuple[Tensor, Tensor]:
        """Attend from segment ``x`` to ``[memory; x]`` (causal, ALiBi); return the output and the next memory.

        Args:
            x: ``(B, L, embed_dim)``, the current segment.
            memory: ``(B, M, embed_dim)`` from the previous call (``None`` at the start); its
                gradient is stopped here, whatever the caller passes.
            engine: forwarded to [`attnkit.attention`][attnkit.functional.attention].

        Returns:
            ``(out (B, L, embed_dim), new_memory (B, min(M + L, mem_len), embed_dim))``: the last
            ``mem_len`` positions of ``[memory; x]``, detached (empty when ``mem_len == 0``).
        """
        if x.dim() != 3 or x.shape[-1] != self.embed_dim:
            raise AttnkitError.build(f"x of shape (B, L, {self.embed_dim})", str(tuple(x.shape)), "batch first, features last")
        B, L, _ = x.shape
        if memory is not None:
            if memory.dim() != 3 or memory.shape[0] != B or memory.shape[2] != self.embed_dim:
                raise AttnkitError.build(f"memory of shape (B, M, {self.embed_dim}) with B={B}", str(tuple(memory.shape)),
                                         "pass the memory this module returned for the previous segment")
            memory = memory.detach()  # Transformer-XL's stop-gradient: no backprop into earlier segments
        h = x if memory is None or memory.shape[1] == 0 else torch.cat([memory, x], dim=1)  # (B, M + L, embed_dim)
        H, G, D = self.num_heads, self.num_kv_heads, self.head_dim
        q = self.q_proj(x).view(B, L, H, D).transpose(1, 2)  # (B, H, L, D)
        k = self.k_proj(h).view(B, -1, G, D).transpose(1, 2)  # (B, G, M + L, D)
        v = self.v_proj(h).view(B, -1, G, D).transpose(1, 2)  # (B, G, M + L, D)
        slopes = self.slopes.to(x.dtype) if x.dtype == torch.float64 else self.slopes
        p = self.dropout if self.training else 0.0
        if self.span is not None:
            out = self.span(q, k, v, alibi_slopes=slopes, dropout_p=p, engine=engine)
        else:
            out = attention(q, k, v, causal=True, alibi_slopes=slopes, dropout_p=p, engine=engine)
        out = self.out_proj(out.transpose(1, 2).reshape(B, L, H * D))
        new_memory = h[:, max(0, h.shape[1] - self.mem_len):].detach() if self.mem_len else h[:, :0].detach()
        return out, new_memory
