"""Attention layers: thin ``nn.Module``s over [`attnkit.attention`][attnkit.functional.attention].

- [`MultiHeadAttention`][attnkit.nn.multihead.MultiHeadAttention] (``attnkit/nn/multihead.py``): self/cross attention, GQA/MQA,
  KV cache for incremental decoding, ``from_torch``.
- [`KVCache`][attnkit.nn.kv_cache.KVCache] (``attnkit/nn/kv_cache.py``, also ``attnkit.KVCache``): the growable,
  optionally ragged key/value cache that ``MultiHeadAttention`` appends to.
- [`DotAttention`][attnkit.nn.score_attention.DotAttention], [`BilinearAttention`][attnkit.nn.score_attention.BilinearAttention], [`AdditiveAttention`][attnkit.nn.score_attention.AdditiveAttention]
  (``attnkit/nn/score_attention.py``): the classic encoder-decoder score functions.
- [`SegmentMemoryAttention`][attnkit.nn.segment_memory.SegmentMemoryAttention] (``attnkit/nn/segment_memory.py``): Transformer-XL segment
  recurrence (a gradient-stopped memory of earlier segments) with ALiBi relative positions.
- [`AdaptiveSpan`][attnkit.nn.adaptive_span.AdaptiveSpan], [`AdaptiveSpanAttention`][attnkit.nn.adaptive_span.AdaptiveSpanAttention] (``attnkit/nn/adaptive_span.py``):
  learnable per-head attention spans (Sukhbaatar et al., 2019) as a float bias plus a window.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["MultiHeadAttention", "KVCache", "DotAttention", "BilinearAttention", "AdditiveAttention",
           "SegmentMemoryAttention", "AdaptiveSpan", "AdaptiveSpanAttention"]

_WHERE = {
    "MultiHeadAttention": "multihead",
    "KVCache": "kv_cache",
    "DotAttention": "score_attention",
    "BilinearAttention": "score_attention",
    "AdditiveAttention": "score_attention",
    "SegmentMemoryAttention": "segment_memory",
    "AdaptiveSpan": "adaptive_span",
    "AdaptiveSpanAttention": "adaptive_span",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'attnkit.nn' has no attribute {name!r}")
