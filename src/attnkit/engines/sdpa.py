"""The SDPA engine: ``torch.nn.functional.scaled_dot_product_attention`` for the specs it computes exactly.

PyTorch's fused CPU kernel is the fastest exact option for plain attention (full,
top-left causal, a single boolean or additive mask, GQA). Everything it cannot express
without a dense L×S mask or without changing the result is declined with a reason, so
dispatch falls through to the flash engine.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..spec import AttentionOutput, AttentionSpec

NAME = "sdpa"


def unsupported(spec: AttentionSpec) -> str | None:
    """Why SDPA cannot compute ``spec`` exactly (``None`` if it can)."""
    if spec.normalizer != "softmax":
        return "SDPA only computes softmax attention"
    if spec.return_lse or spec.return_weights:
        return "SDPA returns neither lse nor weights"
    if spec.dropout_p > 0:
        return "SDPA's dropout draws from torch's RNG, not attnkit's counter-based (seed, b, h, i, j) mask"
    if spec.score_mod is not None or spec.alibi_slopes is not None or spec.softcap is not None:
        return "SDPA has no score_mod, ALiBi or softcap"
    if spec.window is not None or spec.kv_lengths is not None or spec.q_lengths is not None:
        return "SDPA has no window or lengths (only as a dense L×S mask, which cannot skip blocks)"
    if spec.causal == "bottom_right" and spec.L != spec.S:
        return "SDPA's is_causal is top-left; bottom-right with L != S would need a dense mask"
    n_masks = sum(t is not None for t in (spec.mask, spec.float_mask, spec.bias))
    if n_masks > 1 or (n_masks and spec.causal is not None):
        return "SDPA takes one attn_mask and not together with is_causal"
    if spec.L == 0 or spec.S == 0:
        return "empty sequence"
    if spec.q_nonfinite or spec.kv_nonfinite:
        # Its CPU kernel turns all-NaN score rows into zeros and lets hidden NaN keys leak (0·NaN).
        return "inputs may hold NaN/inf (or were not checked, for decoding shapes); SDPA's CPU kernel zeroes NaN rows"
    if spec.needs_grad and spec.dtype in (torch.float16, torch.bfloat16):
        # torch's CPU flash backward adds each block's dQ/dK/dV straight into half buffers.
        return "half-precision backward: SDPA accumulates gradients in fp16/bf16; attnkit promises float32"
    return None


def run(q: Tensor, k: Tensor, v: Tensor, spec: AttentionSpec) -> AttentionOutput:
    """Attention via SDPA for ``q (B, H, L, D)``, ``k (B, G, S, D)``, ``v (B, G, S, E)``."""
    attn_mask = next((t for t in (spec.mask, spec.float_mask, spec.bias) if t is not None), None)
    if attn_mask is not None and attn_mask.is_floating_point():
        # float32 for half inputs (SDPA's CPU kernel accepts it and adds in float32): a cast to
        # half would round 2049 to 2048 and 7e4 to inf.
        attn_mask = attn_mask.to(spec.compute_dtype)
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=attn_mask, is_causal=spec.causal is not None, scale=spec.scale, enable_gqa=spec.G != spec.H
    )
    return AttentionOutput(out)
