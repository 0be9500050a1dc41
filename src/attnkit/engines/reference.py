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
    """Attention for ``q (B, H, L, D)``, ``k (B, G, S, D)``, ``v (B, G, S, E)``; see :func:`attnkit.attention`."""
    B, H, G, L, S, ct = spec.B, spec.H, spec.G, spec.L, spec.S, spec.compute_dtype
    R = H // G  # query heads per key/value head; query head h reads kv head h // R
    q5 = q.to(ct).reshape(B, G, R, L, spec.D)
    scores = torch.einsum("bgrld,bgsd->bgrls", q5, k.to(ct)).reshape(B, H, L, S) * spec.scale
    idx = BlockIndex.ranges(range(B), range(H), range(L), range(S), device=q.device)
    scores = apply_score_mods(scores, spec, idx)
    vis = visible(spec, idx)

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
    out = torch.einsum("bgrls,bgse->bgrle", probs.reshape(B, G, R, L, S), v.to(ct)).reshape(B, H, L, spec.E)
    return AttentionOutput(
        out.to(q.dtype), lse, weights.to(q.dtype) if spec.return_weights else None
    )
