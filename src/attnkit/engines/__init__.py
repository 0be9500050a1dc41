"""Engines: each computes the same exact attention a different way.

Every engine module has ``NAME``, ``unsupported(spec) -> str | None`` (why it cannot compute a
spec, or ``None``) and ``run(q, k, v, spec) -> AttentionOutput``. ``ENGINE_ORDER`` lists them
fastest first; :mod:`attnkit.functional` walks it for ``engine="auto"``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

ENGINE_ORDER: tuple[str, ...] = ("decode", "sdpa", "flash", "reference")

# Engines that tile or split the keys: no gain when the whole problem is one block.
_TILED = ("decode", "flash")


def auto_order(spec) -> tuple[tuple[str, ...], dict[str, str]]:
    """Engines to try for ``engine="auto"``, fastest first, with reasons for demotions.

    A problem whose whole score matrix is a single flash block gains nothing from tiling or
    splitting: the reference engine computes the same block in one step, with less overhead.
    """
    from .flash import single_block

    if not single_block(spec):
        return ENGINE_ORDER, {}
    order = [e for e in ENGINE_ORDER if e not in _TILED and e != "reference"] + ["reference"]
    order += [e for e in ENGINE_ORDER if e in _TILED]
    why = "the whole score matrix is one block; the reference engine computes it in one step"
    return tuple(order), {e: why for e in _TILED}


def load(name: str) -> ModuleType:
    """Import ``attnkit.engines.<name>`` (engines are imported on first use)."""
    return importlib.import_module(f"{__name__}.{name}")
