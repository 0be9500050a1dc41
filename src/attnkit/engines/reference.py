"""The reference engine: materializes the ``(B, H, L, S)`` scores. The oracle for every other engine.

Readable first: scores, score mods, masks, normalizer, dropout, weighted sum — the formula
``softmax(QKᵀ·scale)·V`` line by line. Computes in float64 for float64 input and float32
otherwise; autograd provides every gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..dropout import keep_mask
from ..masks import visible
from ..normalizers import NORMALIZERS
from ..scores import apply_score_mods
from ..softmax import logsumexp, softmax
from ..spec import AttentionOutput, AttentionSpec, BlockIndex

NAME = "reference"


def unsupported(spec: AttentionSpec) -> str | None:
    """The reference engine computes every spec."""
    return None


def run(q: Tensor, k: Tensor, v: Tensor, spec: AttentionSpec) -> AttentionOutput:
    """Attention for ``q (B, H, L, D)``, ``k (B, G, S, D)``, ``v (B, G, S, E)``; see [`attnkit.attention`][attnkit.functional.attention]."""
    B, H, G, L, S, ct = spec.B, spec.H, spec.G, spec.L, spec.S, spec.compute_dtype
    R = H // G  # query heads per key/value head; query head h reads kv head h // R
    q5 = q.to(ct).reshape(B, G, R, L, spec.D)
    idx = BlockIndex.ranges(range(B), range(H), range(L), range(S), device=q.device)
    vis = visible(spec, idx)
    guard = _HiddenGuard(k, v, vis, spec) if spec.kv_nonfinite and vis is not None else None
    kc, vc = (guard.k, guard.v) if guard is not None else (k.to(ct), v.to(ct))
    scores = torch.einsum("bgrld,bgsd->bgrls", q5, kc).reshape(B, H, L, S) * spec.scale
    if guard is not None:
        scores = guard.scores(scores, q5)
    scores = apply_score_mods(scores, spec, idx)

    lse = None
    if spec.normalizer == "softmax":
        weights = softmax(scores, -1, mask=vis)
        if spec.return_lse:
            lse = logsumexp(scores, -1, mask=vis)
    elif isinstance(spec.normalizer, str):
        weights = NORMALIZERS[spec.normalizer](scores, -1, mask=vis)
    else:
        weights = spec.normalizer(scores, dim=-1, mask=vis)

    probs = weights
    if spec.dropout_p > 0:
        keep = keep_mask(spec.seed, spec.dropout_p, idx, H)
        probs = weights * keep / (1.0 - spec.dropout_p)
    out = torch.einsum("bgrls,bgse->bgrle", probs.reshape(B, G, R, L, S), vc).reshape(B, H, L, spec.E)
    if guard is not None:
        out = out + guard.value_terms(probs)
    return AttentionOutput(
        out.to(q.dtype), lse, weights.to(q.dtype) if spec.return_weights else None
    )


class _HiddenGuard:
    """Keeps keys that are not visible from influencing anything when K/V hold NaN/±inf.

    A hidden key has weight exactly 0, but ``0·NaN = NaN`` in ``P·V`` (and in the backward's
    ``dS·K`` and ``dO·Vᵀ``), so a KV cache allocated with ``torch.empty`` would poison every row.
    The dense products run with every non-finite key row zeroed; the non-finite keys that some
    row does see (usually few) are added back per (query, key) pair with the hidden pairs' K/V
    replaced by 0 *before* the product, so autograd never multiplies a zero by NaN/inf there and
    the visible pairs follow plain IEEE arithmetic, forward and backward.
    """

    def __init__(self, k: Tensor, v: Tensor, vis: Tensor, spec: AttentionSpec):
        ct, R = spec.compute_dtype, spec.H // spec.G
        k, v = k.to(ct), v.to(ct)
        bad = ~torch.isfinite(k).all(-1) | ~torch.isfinite(v).all(-1)  # (B, G, S)
        self.k = k.masked_fill(bad.unsqueeze(-1), 0.0)
        self.v = v.masked_fill(bad.unsqueeze(-1), 0.0)
        self.vis = vis.expand(spec.B, spec.H, spec.L, spec.S)
        bad_h = bad.repeat_interleave(R, dim=1)  # (B, H, S): the kv head each query head reads
        seen = (self.vis & bad_h.unsqueeze(2)).any(2).any(1).any(0)  # (S,): bad and seen by some row
        self.cols = seen.nonzero().flatten()
        self.k_bad = k[:, :, self.cols].repeat_interleave(R, dim=1)  # (B, H, n, D)
        self.v_bad = v[:, :, self.cols].repeat_interleave(R, dim=1)  # (B, H, n, E)
        self.vis_bad = self.vis[..., self.cols].unsqueeze(-1)  # (B, H, L, n, 1)
        self.scale = spec.scale

    def scores(self, scores: Tensor, q5: Tensor) -> Tensor:
        if self.cols.numel() == 0:
            return scores
        q = q5.reshape(scores.shape[0], scores.shape[1], scores.shape[2], -1)  # (B, H, L, D)
        k_pairs = torch.where(self.vis_bad, self.k_bad.unsqueeze(2), 0.0)  # (B, H, L, n, D)
        extra = (q.unsqueeze(3) * k_pairs).sum(-1) * self.scale  # IEEE q·k for visible pairs, 0 otherwise
        return scores.index_add(-1, self.cols, extra)

    def value_terms(self, probs: Tensor) -> Tensor:
        """The seen non-finite keys' contribution ``Σ_j P_ij·v_j`` over visible pairs, ``(B, H, L, E)``."""
        if self.cols.numel() == 0:
            return torch.zeros((), dtype=probs.dtype, device=probs.device)
        v_pairs = torch.where(self.vis_bad, self.v_bad.unsqueeze(2), 0.0)  # (B, H, L, n, E)
        return (probs[..., self.cols].unsqueeze(-1) * v_pairs).sum(-2)
