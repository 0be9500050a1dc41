"""attnkit — softmax attention done right.

Exact, numerically safe, memory-efficient attention on PyTorch. The core needs only
``torch`` and ``numpy``; ``attnkit.nn``, ``attnkit.inspect``, ``attnkit.viz``,
``attnkit.seq2seq``, ``attnkit.integrations`` and ``attnkit.distributed`` (ring attention,
also as ``attnkit.ring_attention``) are imported on first access.

Example:
    >>> import torch, attnkit
    >>> q = k = v = torch.randn(1, 2, 4, 8)
    >>> attnkit.attention(q, k, v, causal=True).shape
    torch.Size([1, 2, 4, 8])
"""

from __future__ import annotations

import importlib
from typing import Any

from . import masks
from .errors import AttnkitError
from .functional import Dispatch, attention, explain
from .nn.kv_cache import KVCache
from .normalizers import entmax15, sigmoid, sparsemax
from .scores import alibi_slopes
from .softmax import (
    SoftmaxState,
    log_softmax,
    logsumexp,
    merge_partials,
    online_softmax,
    softmax,
    softmax_cross_entropy,
)
from .spec import AttentionOutput, AttentionSpec

__version__ = "0.1.0"

__all__ = [
    "AttnkitError",
    "AttentionOutput",
    "AttentionSpec",
    "Dispatch",
    "KVCache",
    "SoftmaxState",
    "alibi_slopes",
    "attention",
    "entmax15",
    "explain",
    "log_softmax",
    "logsumexp",
    "masks",
    "merge_partials",
    "online_softmax",
    "sigmoid",
    "softmax",
    "softmax_cross_entropy",
    "sparsemax",
    # loaded on first access (attnkit.distributed)
    "gather_sequence",
    "ring_attention",
    "shard_sequence",
]

# Submodules with optional or heavier dependencies load on first attribute access.
_LAZY = {"nn", "inspect", "viz", "seq2seq", "integrations", "engines", "cli", "distributed"}
_LAZY_NAMES = {"ring_attention": "distributed", "shard_sequence": "distributed", "gather_sequence": "distributed"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY_NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY_NAMES[name]}"), name)
    raise AttributeError(f"module 'attnkit' has no attribute {name!r}")
