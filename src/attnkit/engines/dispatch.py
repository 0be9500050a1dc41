"""Dispatch: which engine computes a spec, and why the others do not.

The one place that knows the engines as a set: the registry (`ENGINE_ORDER`, fastest
first, and `load`), the ``engine="auto"`` order (`auto_order`) and the choice with
its reasons (`choose`, returning a [`Dispatch`][attnkit.engines.dispatch.Dispatch], which [`attnkit.explain`][attnkit.functional.explain]
shows). Every engine module has ``NAME``, ``unsupported(spec) -> str | None`` (why it cannot
compute a spec exactly, or ``None``) and ``run(q, k, v, spec) -> AttentionOutput``; a forced
engine that cannot compute the spec raises, it never silently computes something else.

Example:
    >>> import torch, attnkit
    >>> q = torch.randn(1, 2, 4, 8)
    >>> print(attnkit.explain(q, q, q, normalizer="sparsemax"))
    engine: reference
      not the hot path: a normalizer other than softmax or a score_mod callable
      not sdpa: SDPA only computes softmax attention
      not decode: normalizer 'sparsemax' is not a softmax (partials merge only for softmax)
      not flash: normalizer='sparsemax' is reference-only (it needs the whole score row, not an online normalizer)
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import ModuleType

from ..errors import AttnkitError
from ..spec import AttentionSpec
from .kernel import path, single_block

__all__ = ["ENGINE_ORDER", "Dispatch", "load", "auto_order", "choose"]

ENGINE_ORDER: tuple[str, ...] = ("decode", "sdpa", "flash", "reference")
"""Engine names, fastest first where flash tiles in PyTorch; ``engine="auto"`` takes the first that
computes the spec exactly (`auto_order`)."""

# Where the fused C++ kernel runs the spec, flash ranks before SDPA: its forward+backward is as fast
# or faster in every training shape measured (RESULTS.md, "Training calls on the fused kernel":
# causal L=512 1.70x, L=2048 1.07-1.28x; short plain calls at parity within the noise).
_FUSED_ORDER: tuple[str, ...] = ("decode", "flash", "sdpa", "reference")

# Engines that tile or split the keys: no gain when the whole problem is one block.
_TILED = ("decode", "flash")


@dataclass
class Dispatch:
    """Which engine runs a spec and why the others do not (``reasons[name]``)."""

    engine: str
    reasons: dict[str, str] = field(default_factory=dict)
    detail: str | None = None  # how the chosen engine runs, e.g. "tile path: fused (built for avx512)"
    hot: bool = False  # the call runs on the hot path (attnkit.engines.hot): one compiled op
    not_hot: str | None = None  # why the call takes the general path instead (None: hot, or not asked)

    def __str__(self) -> str:
        lines = [f"engine: {self.engine}" + (f" ({self.detail})" if self.detail else "")]
        if self.not_hot:
            lines.append(f"  not the hot path: {self.not_hot}")
        lines += [f"  not {name}: {why}" for name, why in self.reasons.items()]
        return "\n".join(lines)


def load(name: str) -> ModuleType:
    """Import ``attnkit.engines.<name>`` (engines are imported on first use)."""
    return importlib.import_module(f"{__package__}.{name}")


def auto_order(spec: AttentionSpec) -> tuple[tuple[str, ...], dict[str, str]]:
    """Engines to try for ``engine="auto"``, fastest first, with reasons for demotions.

    Where the fused C++ kernel runs the spec, flash comes before SDPA (faster forward and backward,
    measured) and runs single-block shapes too (it packs a small problem into one call). Where the
    tiles would run in PyTorch (no compiler, float64, a ``score_mod`` callable, ...), SDPA comes
    first, and a problem whose whole score matrix is a single block gains nothing from tiling: the
    reference engine then computes that block in one step, with less overhead.
    """
    if path(spec)[0] == "fused":
        return _FUSED_ORDER, {}
    if not single_block(spec):
        return ENGINE_ORDER, {}
    order = [e for e in ENGINE_ORDER if e not in _TILED and e != "reference"] + ["reference"]
    order += [e for e in ENGINE_ORDER if e in _TILED]
    why = "the whole score matrix is one block and the tiles would run in PyTorch; the reference engine computes it in one step"
    return tuple(order), {e: why for e in _TILED}


def choose(spec: AttentionSpec, engine: str = "auto") -> Dispatch:
    """The engine that computes ``spec``: ``engine`` if forced (raises if it cannot), else the
    first of `auto_order` that can, with every other engine's reason."""
    if engine != "auto":
        if engine not in ENGINE_ORDER:
            raise AttnkitError.build(f"engine in {('auto',) + ENGINE_ORDER}", repr(engine), "check the spelling")
        why = load(engine).unsupported(spec)
        if why is not None:
            raise AttnkitError.build(f"a spec the {engine} engine computes exactly", why, "use engine='auto'")
        return Dispatch(engine, detail=_detail(engine, spec))
    order, notes = auto_order(spec)
    chosen: str | None = None
    reasons: dict[str, str] = {}
    for name in order:  # every engine is asked, so explain() can say why each one was not used
        why = load(name).unsupported(spec)
        if why is not None:
            reasons[name] = why
        elif chosen is None:
            chosen = name
        else:
            reasons[name] = notes.get(name, f"{chosen} is faster for this spec")
    assert chosen is not None, "the reference engine computes every spec"
    return Dispatch(chosen, reasons, _detail(chosen, spec))


def _detail(engine: str, spec: AttentionSpec) -> str | None:
    """The engine's own account of how it runs ``spec`` (tiled engines name their tile path)."""
    describe = getattr(load(engine), "describe", None)
    return describe(spec) if describe is not None else None
