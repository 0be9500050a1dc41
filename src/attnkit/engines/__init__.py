"""Engines: each computes the same exact attention a different way.

Every engine module has ``NAME``, ``unsupported(spec) -> str | None`` (why it cannot compute a
spec, or ``None``) and ``run(q, k, v, spec) -> AttentionOutput``. ``ENGINE_ORDER`` lists them
fastest first; :mod:`attnkit.functional` walks it for ``engine="auto"``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

ENGINE_ORDER: tuple[str, ...] = ("sdpa", "flash", "reference")


def auto_order(spec) -> tuple[tuple[str, ...], dict[str, str]]:
    """Engines to try for ``engine="auto"``, fastest first, with reasons for demotions.

    A problem whose whole score matrix is a single flash block gains nothing from tiling:
    the reference engine computes the same block in one step, with less overhead.
    """
    order, notes = list(ENGINE_ORDER), {}
    if "flash" in order and "reference" in order:
        from .flash import single_block

        if single_block(spec):
            order.remove("reference")
            order.insert(order.index("flash"), "reference")
            notes["flash"] = "the whole score matrix is one block; the reference engine computes it in one step"
    return tuple(order), notes


def load(name: str) -> ModuleType:
    """Import ``attnkit.engines.<name>`` (engines are imported on first use)."""
    return importlib.import_module(f"{__name__}.{name}")
