"""Engines: each computes the same exact attention a different way.

- `dispatch`: the registry, the ``engine="auto"`` order and the choice
  with its reasons (what [`attnkit.explain`][attnkit.functional.explain] shows).
- ``reference`` (materialized scores, the oracle), ``sdpa`` (torch's fused kernel),
  ``flash`` (tiled FlashAttention-2), ``decode`` (split-KV for few queries): the dispatched engines.
- ``ring``: ring attention across processes (public in `attnkit.distributed`).
- ``kernel``: the one tiled online-softmax kernel, a package: the contract (forward and backward
  over a query range × key range, ``attend``, the path choice) in ``kernel/__init__``, the PyTorch
  tile path in ``kernel.tiles``, the fused C++ path in ``kernel.fused`` (op wrapper),
  ``kernel.build`` (compiler, cache) and ``kernel/csrc/``; shared by flash, decode and ring.

Every engine module has ``NAME``, ``unsupported(spec) -> str | None`` (why it cannot compute a
spec, or ``None``) and ``run(q, k, v, spec) -> AttentionOutput``. An engine never imports a
module above it (``functional``, ``nn``, ...).
"""

from __future__ import annotations

from .dispatch import ENGINE_ORDER, Dispatch, auto_order, choose, load

__all__ = ["ENGINE_ORDER", "Dispatch", "auto_order", "choose", "load"]
