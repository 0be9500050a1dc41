"""Adaptive attention span (Sukhbaatar et al., 2019): each head learns how far back it looks.

Head ``h`` has a learnable span ``z_h``; its attention weights are multiplied by the soft mask of
the query-key distance ``x = p - j`` (``p`` the query's aligned position) and renormalized::

    m(x) = clamp((R + z - x) / R, 0, 1)        1 up to distance z, a ramp of width R, 0 from z + R on
    a_j  = m(x_j)·exp(s_j) / Σ_k m(x_k)·exp(s_k)

Multiplying by ``m`` and renormalizing is a softmax of ``s + log m(x)``: the mask is a float
``bias`` on the scores (``-inf`` from ``z + R`` on), so it runs on attnkit's fused kernel, and the
gradient reaches ``z`` through the bias gradient ``dS`` (``∂ log m/∂z = 1/(R·m)`` on the ramp, 0
elsewhere). Keys at distance ``>= z + R`` get weight exactly 0, so the call also passes
``window=(ceil(max z + R) - 1, 0)``: the kernel skips key blocks beyond the longest span, and
[`adaptive_span_attention`][attnkit.nn.adaptive_span.adaptive_span_attention] cuts the queries into chunks, batched in one call, that each see
only the keys they can reach, so the bias it builds is ``O(chunk·w)`` and the work ``O(L·w)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._numerics import NEG_INF
from ..errors import AttnkitError
from ..functional import attention

__all__ = ["AdaptiveSpan", "AdaptiveSpanAttention", "adaptive_span_attention", "span_mask"]


def span_mask(distance: Tensor, span: Tensor, ramp: float) -> Tensor:
    """The soft mask ``m(x) = clamp((R + z - x) / R, 0, 1)``.

    Args:
        distance: query-key distances ``x`` (any shape ``(..., L, S)``; negative = a future key).
        span: ``z`` per head, ``(H,)``; broadcast as ``(H, 1, 1)`` against ``distance``.
        ramp: ``R > 0``, the width of the linear ramp.

    Example:
        >>> import torch
        >>> from attnkit.nn.adaptive_span import span_mask
        >>> span_mask(torch.arange(6.0).view(1, 6), torch.tensor([2.0]), ramp=2.0)
        tensor([[[1.0000, 1.0000, 1.0000, 0.5000, 0.0000, 0.0000]]])
    """
    return ((ramp + span.view(-1, 1, 1) - distance) / ramp).clamp(0.0, 1.0)


def _log_mask(distance: Tensor, span: Tensor, ramp: float) -> Tensor:
    """``log m(x)``, ``-inf`` where ``m = 0``; the log of a clamped-away 0 never meets autograd (no 0·inf)."""
    m = span_mask(distance, span, ramp)
    pos = m > 0
    return torch.where(pos, torch.log(torch.where(pos, m, torch.ones_like(m))), torch.full_like(m, NEG_INF))


def adaptive_span_attention(q: Tensor, k: Tensor, v: Tensor, span: Tensor, ramp: float, *, scale: float | None = None,
                            alibi_slopes: Tensor | None = None, chunk: int | None = None, dropout_p: float = 0.0,
                            engine: str = "auto") -> Tensor:
    """Causal attention (bottom-right) with a soft span mask per head, differentiable in ``span``.

    Args:
        q: ``(B, H, L, D)``; k: ``(B, G, S, D)``; v: ``(B, G, S, E)`` with ``S >= L``: the
            ``L`` queries are the last ``L`` positions (a memory of ``S - L`` earlier keys
            comes first, as in Transformer-XL).
        span: ``z``, ``(H,)``, in tokens (may require grad).
        ramp: ``R``, the ramp width in tokens.
        scale: as in [`attnkit.attention`][attnkit.functional.attention].
        alibi_slopes: as in [`attnkit.attention`][attnkit.functional.attention].
        dropout_p: as in [`attnkit.attention`][attnkit.functional.attention].
        engine: as in [`attnkit.attention`][attnkit.functional.attention].
        chunk: query rows per chunk (default ``max(64, window)``). Chunks become the batch of one
            [`attnkit.attention`][attnkit.functional.attention] call, each with only the ``chunk + window`` keys its rows can
            reach (a copy of K/V, unfolded) and one shared ``(1, H, chunk, chunk + window)`` bias:
            memory and work are ``O(L·(chunk + window))``, not ``O(L·S)``.

    Returns:
        ``(B, H, L, E)`` in ``q``'s dtype.

    Example:
        >>> import torch
        >>> from attnkit.nn.adaptive_span import adaptive_span_attention
        >>> q = k = v = torch.randn(1, 2, 10, 8)
        >>> z = torch.tensor([1.0, 30.0], requires_grad=True)
        >>> out = adaptive_span_attention(q, k, v, z, ramp=4.0)
        >>> out.sum().backward(); out.shape, z.grad.shape
        (torch.Size([1, 2, 10, 8]), torch.Size([2]))
    """
    B, H, L, _ = q.shape
    S = k.shape[2]
    if span.shape != (H,):
        raise AttnkitError.build(f"span of shape (H,) = ({H},)", str(tuple(span.shape)), "one span per query head")
    if not ramp > 0:
        raise AttnkitError.build("ramp > 0", repr(ramp), "e.g. ramp=32")
    if S < L:
        raise AttnkitError.build("S >= L (the queries are the last L keys' positions)", f"L={L}, S={S}",
                                 "pass the segment's own keys after any memory")
    zmax = float(span.detach().clamp_min(0).max()) if H else 0.0
    left = max(0, math.ceil(zmax + ramp) - 1)  # m(x) > 0  <=>  x < z + R  <=>  x <= ceil(z + R) - 1
    off = S - L  # query i sits at key position i + off
    c = min(L, max(64, left) if chunk is None else max(1, int(chunk)))
    if L == 0 or left + 1 >= S or c == L:
        # One call over everything the queries may see (the span covers the keys, or one chunk).
        j0 = max(0, off - left)
        p = torch.arange(off, off + L, device=q.device, dtype=span.dtype)
        j = torch.arange(j0, S, device=q.device, dtype=span.dtype)
        bias = _log_mask(p[:, None] - j[None, :], span, ramp).unsqueeze(0)  # (1, H, L, S - j0)
        return attention(q, k[:, :, j0:], v[:, :, j0:], causal=True, window=(left, 0), bias=bias, scale=scale,
                         alibi_slopes=alibi_slopes, dropout_p=dropout_p, engine=engine)
    # Query chunks of c rows become the batch: chunk m (rows m·c..m·c+c-1) gets the c + left keys
    # ending at its last query, cut from K/V with unfold. Every chunk has the same query-key
    # distances, so one (1, H, c, c + left) bias serves all; one kernel call does the whole problem.
    B, n, Sc = q.shape[0], -(-L // c), c + left
    front, back = max(0, left - off), n * c - L  # keys before position 0 (masked), query rows past L (dropped)
    qc = torch.nn.functional.pad(q, (0, 0, 0, back))  # (B, H, n·c, D)
    qc = qc.view(B, H, n, c, -1).transpose(1, 2).reshape(B * n, H, c, -1)  # (B·n, H, c, D)

    def windows(t: Tensor) -> Tensor:  # (B, G, S, ·) -> (B·n, G, c + left, ·)
        t = torch.nn.functional.pad(t, (0, 0, front, back))[:, :, max(0, off - left):]
        t = t.unfold(2, Sc, c)  # (B, G, n, ·, c + left)
        return t.permute(0, 2, 1, 4, 3).reshape(B * n, t.shape[1], Sc, t.shape[3])

    p = torch.arange(left, left + c, device=q.device, dtype=span.dtype)
    j = torch.arange(Sc, device=q.device, dtype=span.dtype)
    bias = _log_mask(p[:, None] - j[None, :], span, ramp).unsqueeze(0)  # (1, H, c, c + left)
    mask = None
    if front:  # the padding keys in front of position 0 are not keys
        real = torch.arange(n, device=q.device)[:, None] * c + torch.arange(Sc, device=q.device)[None, :] >= front
        mask = real.repeat(B, 1).view(B * n, 1, 1, Sc)
    slopes = alibi_slopes.repeat_interleave(n, 0) if alibi_slopes is not None and alibi_slopes.dim() == 2 else alibi_slopes
    out = attention(qc, windows(k), windows(v), mask=mask, causal=True, window=(left, 0), bias=bias, scale=scale,
                    alibi_slopes=slopes, dropout_p=dropout_p, engine=engine)  # (B·n, H, c, E)
    return out.view(B, n, H, c, -1).transpose(1, 2).reshape(B, H, n * c, -1)[:, :, :L]


class AdaptiveSpan(nn.Module):
    """Learnable per-head spans ``z`` (in tokens), their ramp ``R`` and the span regularizer.

    Args:
        num_heads: ``H``.
        max_span: upper bound of ``z`` (tokens); [`clamp_`][attnkit.nn.adaptive_span.AdaptiveSpan.clamp_] keeps ``z`` in ``[0, max_span]``.
        ramp: ``R`` (tokens).
        init_span: initial ``z`` of every head (default ``max_span``).

    Train with ``loss = task_loss + coef · span.regularizer()`` and call ``span.clamp_()``
    after each optimizer step (as the paper's code does).

    Example:
        >>> from attnkit.nn import AdaptiveSpan
        >>> span = AdaptiveSpan(4, max_span=64, ramp=8, init_span=16)
        >>> span.regularizer().item(), span.window()
        (16.0, 23)
    """

    def __init__(self, num_heads: int, max_span: int, ramp: float = 32.0, init_span: float | None = None) -> None:
        super().__init__()
        if max_span < 0 or not ramp > 0:
            raise AttnkitError.build("max_span >= 0 and ramp > 0", f"max_span={max_span}, ramp={ramp}", "e.g. max_span=1024, ramp=32")
        self.max_span, self.ramp = int(max_span), float(ramp)
        init = float(max_span if init_span is None else init_span)
        self.span = nn.Parameter(torch.full((num_heads,), init))  # z, per head

    def extra_repr(self) -> str:
        return f"num_heads={self.span.numel()}, max_span={self.max_span}, ramp={self.ramp}"

    def clamp_(self) -> None:
        """Keep every ``z`` in ``[0, max_span]`` (call after the optimizer step)."""
        with torch.no_grad():
            self.span.clamp_(0.0, float(self.max_span))

    def regularizer(self) -> Tensor:
        """The span penalty: the mean span over heads, in tokens (multiply by a coefficient)."""
        return self.span.clamp(0.0, float(self.max_span)).mean()

    def window(self) -> int:
        """The farthest distance any head can see: ``ceil(max z + R) - 1``."""
        z = float(self.span.detach().clamp(0.0, float(self.max_span)).max())
        return max(0, math.ceil(z + self.ramp) - 1)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, *, scale: float | None = None, alibi_slopes: Tensor | None = None,
                chunk: int | None = None, dropout_p: float = 0.0, engine: str = "auto") -> Tensor:
        """[`adaptive_span_attention`][attnkit.nn.adaptive_span.adaptive_span_attention] with this module's spans (clamped to ``[0, max_span]``)."""
        return adaptive_span_attention(q, k, v, self.span.clamp(0.0, float(self.max_span)), self.ramp, scale=scale,
                                       alibi_slopes=alibi_slopes, chunk=chunk, dropout_p=dropout_p, engine=engine)


def kv_heads(embed_dim: int, num_heads: int, num_kv_heads: int | None) -> int:
    """The number of key/value heads ``G`` (``num_heads`` when ``None``), checked: ``num_heads``
    divides ``embed_dim`` and ``G`` divides ``num_heads`` (shared by the attention modules here)."""
    G = num_heads if num_kv_heads is None else num_kv_heads
    if num_heads < 1 or embed_dim % num_heads or G < 1 or num_heads % G:
        raise AttnkitError.build("num_heads dividing embed_dim and num_kv_heads dividing num_heads",
                                 f"embed_dim={embed_dim}, num_heads={num_heads}, num_kv_heads={num_kv_heads}",
                                 "e.g. embed_dim=512, num_heads=8, num_kv_heads=2")
    return G


class AdaptiveSpanAttention(nn.Module):
    """Causal multi-head self-attention whose heads learn their spans (projections + [`AdaptiveSpan`][attnkit.nn.adaptive_span.AdaptiveSpan]).

    Args:
        embed_dim: model dim, split into ``num_heads`` heads.
        num_heads: ``H``.
        max_span: of the [`AdaptiveSpan`][attnkit.nn.adaptive_span.AdaptiveSpan] (``self.span``).
        ramp: of the [`AdaptiveSpan`][attnkit.nn.adaptive_span.AdaptiveSpan].
        init_span: of the [`AdaptiveSpan`][attnkit.nn.adaptive_span.AdaptiveSpan].
        num_kv_heads: ``G`` with ``H % G == 0`` (GQA).
        bias: biases in the projections.

    Shapes: ``x (B, L, embed_dim)`` → ``(B, L, embed_dim)``; ``memory (B, M, embed_dim)``, if given,
    holds earlier positions the queries may also see (within their spans).

    Example:
        >>> import torch
        >>> from attnkit.nn import AdaptiveSpanAttention
        >>> layer = AdaptiveSpanAttention(32, 4, max_span=64, ramp=8)
        >>> y = layer(torch.randn(2, 20, 32))
        >>> loss = y.pow(2).mean() + 1e-3 * layer.span.regularizer()
        >>> loss.backward(); layer.span.span.grad.shape
        torch.Size([4])
    """

    def __init__(self, embed_dim: int, num_heads: int, *, max_span: int, ramp: float = 32.0, init_span: float | None = None,
                 num_kv_heads: int | None = None, bias: bool = True) -> None:
        super().__init__()
        G = kv_heads(embed_dim, num_heads, num_kv_heads)
        self.embed_dim, self.num_heads, self.num_kv_heads = embed_dim, num_heads, G
        self.head_dim = embed_dim // num_heads
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim, G * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, G * self.head_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.span = AdaptiveSpan(num_heads, max_span, ramp, init_span)

    def forward(self, x: Tensor, memory: Tensor | None = None, *, chunk: int | None = None, engine: str = "auto") -> Tensor:
        B, L, _ = x.shape
        H, G, D = self.num_heads, self.num_kv_heads, self.head_dim
        h = x if memory is None else torch.cat([memory, x], dim=1)  # (B, S, embed_dim)
        q = self.q_proj(x).view(B, L, H, D).transpose(1, 2)  # (B, H, L, D)
        k = self.k_proj(h).view(B, -1, G, D).transpose(1, 2)  # (B, G, S, D)
        v = self.v_proj(h).view(B, -1, G, D).transpose(1, 2)  # (B, G, S, D)
        out = self.span(q, k, v, chunk=chunk, engine=engine)
        return self.out_proj(out.transpose(1, 2).reshape(B, L, H * D))
