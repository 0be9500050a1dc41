"""Deprecated import path: the KV cache lives in `attnkit.nn.kv_cache`.

``attnkit.KVCache`` (unchanged) and ``attnkit.nn.kv_cache.KVCache`` are the same class;
this module only keeps ``from attnkit.kv_cache import KVCache`` working, with a warning.
"""

from __future__ import annotations

import warnings

from .nn.kv_cache import KVCache

__all__ = ["KVCache"]

warnings.warn("attnkit.kv_cache is deprecated; import attnkit.KVCache (defined in attnkit.nn.kv_cache)",
              DeprecationWarning, stacklevel=2)
