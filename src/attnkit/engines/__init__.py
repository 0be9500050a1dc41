"""Engines: each computes the same exact attention a different way.

- `dispatch`: the registry, the ``engine="auto"`` order and the choice
  with its reasons (what [`attnkit.explain`][attnkit.functional.explain] shows).
- ``reference`` (materialized scores, the oracle), ``sdpa`` (torch's fused kernel),
  ``flash`` (tiled FlashAttention-2), ``decode`` (split-KV for few queries): the dispatched engines.
- ``ring``: ring attention across processes (public in `attnkit.distributed`).
- ``_kernel``: the one tiled online-softmax kernel (forward and backward over a query range ×
  key range, its tile geometry, and the choice between the fused C++ path ``_fused`` and the
  PyTorch tile path), shared by flash, decode and ring.

Every engine module has ``NAME``, ``unsupported(spec) -> str | None`` (why it cannot compute a
spec, or ``None``) and ``run(q, k, v, spec) -> AttentionOutput``. An engine never imports a
module above it (``functional``, ``nn``, ...).
"""

from __future__ import annotations

from .dispatch import ENGINE_ORDER, Dispatch, auto_order, choose, load

__all__ = ["ENGINE_ORDER", "Dispatch", "auto_order", "choose", "load"]
