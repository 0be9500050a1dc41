"""The flash engine: exact tiled attention with the online softmax (FlashAttention-2 on CPU).

One call of the tiled kernel (`attnkit.engines.kernel`) over all queries and keys: it
walks query tiles × key tiles with the running ``(m, l)`` state and never holds more than one
tile of scores, so memory is O(L + S), not O(L·S). The autograd function saves only ``q, k, v,
out, lse`` (and the float mask / bias when they need a gradient); backward recomputes each tile
from ``lse`` with ``Δ = rowsum(dO ∘ O)`` (Dao, 2023, Algorithm 2).

Block skipping: [`attnkit.masks.block_class`][attnkit.masks.block_class] classifies each tile from the structured
masks; hidden tiles are never computed and fully visible ones skip the mask work, so causal
costs about half and a window of ``w`` costs O(L·w). Which tile path runs (fused C++ or
PyTorch) and why: `describe`.
"""

from __future__ import annotations

from torch import Tensor

from ..spec import AttentionOutput, AttentionSpec
from . import kernel

NAME = "flash"


def unsupported(spec: AttentionSpec) -> str | None:
    """Why the flash engine cannot compute ``spec`` (``None`` if it can)."""
    if spec.normalizer != "softmax":
        name = spec.normalizer if isinstance(spec.normalizer, str) else getattr(spec.normalizer, "__name__", "callable")
        return f"normalizer={name!r} is reference-only (it needs the whole score row, not an online normalizer)"
    return None


def describe(spec: AttentionSpec) -> str:
    """Which tile path the engine runs for ``spec`` and why, e.g. ``"tile path: torch (fused: not built)"``."""
    return kernel.describe(spec)


def run(q: Tensor, k: Tensor, v: Tensor, spec: AttentionSpec) -> AttentionOutput:
    """Flash attention for ``q (B, H, L, D)``, ``k (B, G, S, D)``, ``v (B, G, S, E)``."""
    out, lse = kernel.attend(q, k, v, spec)  # one kernel call over all keys, differentiable
    weights = None
    if spec.return_weights:  # exact: exp(s - m) / l rebuilt tile by tile in a second pass
        weights = kernel.weights(q, k, spec).to(q.dtype)
    return AttentionOutput(out, lse if spec.return_lse else None, weights)
