"""Engines: each computes the same exact attention a different way.

Every engine module has ``NAME``, ``unsupported(spec) -> str | None`` (why it cannot compute a
spec, or ``None``) and ``run(q, k, v, spec) -> AttentionOutput``. ``ENGINE_ORDER`` lists them
fastest first; :mod:`attnkit.functional` walks it for ``engine="auto"``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

ENGINE_ORDER: tuple[str, ...] = ("decode", "reference")


def load(name: str) -> ModuleType:
    """Import ``attnkit.engines.<name>`` (engines are imported on first use)."""
    return importlib.import_module(f"{__name__}.{name}")
