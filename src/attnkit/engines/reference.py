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
    ``dS·K``), so a KV cache allocated with ``torch.empty`` would poison every row. The products
    run on copies with the non-finite entries zeroed; the visible ones are then put back with
    plain IEEE arithmetic, without gradient (their rows are NaN/inf anyway):

    - scores: ``q·k`` of a visible key holding NaN/inf is the raw product (NaN or ±inf);
    - values: a visible NaN entry makes its column NaN; ``±inf`` gives ``±inf`` where the weight
      is positive, NaN where it is 0 (``0·inf``) or where both signs meet.
    """

    def __init__(self, k: Tensor, v: Tensor, vis: Tensor, spec: AttentionSpec):
        ct, R = spec.compute_dtype, spec.H // spec.G
        self.spec, self.vis = spec, vis
        k, v = k.to(ct), v.to(ct)
        self.k_raw, self.v_raw = k, v
        self.bad_k = ~torch.isfinite(k)  # (B, G, S, D)
        self.k = k.masked_fill(self.bad_k, 0.0)
        self.v = v.masked_fill(~torch.isfinite(v), 0.0)
        self.R = R

    def _heads(self, t: Tensor) -> Tensor:
        """(B, G, S, X) → (B, H, S, X): the key/value head each query head reads."""
        return t.repeat_interleave(self.R, dim=1)

    def scores(self, scores: Tensor, q5: Tensor) -> Tensor:
        spec = self.spec
        key_bad = self._heads(self.bad_k.any(-1))[:, :, None, :]  # (B, H, 1, S)
        sees_bad = self.vis & key_bad
        if not bool(sees_bad.any()):
            return scores
        with torch.no_grad():
            raw = torch.einsum("bgrld,bgsd->bgrls", q5, self.k_raw).reshape(scores.shape) * spec.scale
        return torch.where(sees_bad, raw, scores)

    def value_terms(self, probs: Tensor) -> Tensor:
        """IEEE contributions of the visible non-finite value entries, ``(B, H, L, E)``."""
        v = self._heads(self.v_raw)  # (B, H, S, E)
        with torch.no_grad():
            vis = self.vis.expand_as(probs).to(v.dtype)
            pos = (probs > 0).to(v.dtype)
            zero_vis = vis * (probs == 0).to(v.dtype)
            nan = vis @ v.isnan().to(v.dtype) + zero_vis @ v.isinf().to(v.dtype)
            plus = pos @ (v == float("inf")).to(v.dtype)
            minus = pos @ (v == float("-inf")).to(v.dtype)
            terms = torch.zeros_like(nan)
            terms = terms.masked_fill(plus > 0, float("inf")).masked_fill(minus > 0, float("-inf"))
            return terms.masked_fill((nan > 0) | ((plus > 0) & (minus > 0)), float("nan"))
