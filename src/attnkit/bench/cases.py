"""The workloads ``attnkit bench`` times: :class:`Case` (one attention shape and feature set),
its :class:`Target` s, :data:`CASES` (the rows of issue 12's target table) and :data:`QUICK_CASES`
(the same features at tiny sizes, seconds, for smoke tests).

GFLOP/s count visible (query, key) pairs only (``4·B·H·D`` per pair forward, 3.5× that for
forward+backward), as DESIGN.md's benchmark rules say.

Example:
    >>> from attnkit.bench.cases import case
    >>> c = case("causal", 1, 2, 8, 4, causal=True)
    >>> c.name, c.visible_pairs()
    ('causal fp32 B=1 H=2 L=8 D=4', 36)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Case", "Target", "case", "CASES", "QUICK_CASES", "IMPLS", "PEERS"]

IMPLS = ("flash", "plain", "sdpa", "naive", "flex")
"""The implementations a case is timed with, in table order (:mod:`.implementations` makes them)."""
FORWARD_ONLY = ("flex",)  # compiled flex is timed forward only (compiling its backward doubles the wait)
MEMORY_IMPLS = ("flash", "sdpa", "naive")  # peak RSS is measured for these
PEERS = {"sdpa": "SDPA", "naive": "naive", "flex": "flex"}  # ratio columns: peer time / attnkit time
NAIVE_LIMIT_BYTES = 2 << 30  # the naive version is skipped once one score matrix exceeds this


@dataclass(frozen=True)
class Target:
    """One target of issue 12: ``metric op value`` in ``mode``.

    ``metric``: a peer (``"sdpa"``, ``"naive"``, ``"flex"``: peer time / attnkit time), ``"plain"``
    (attnkit time / attnkit without ALiBi/softcap) or ``"rss"`` (attnkit's peak RSS in MiB).
    ``needs``: CPU flags of which one must be present for the target to apply.
    """

    mode: str
    metric: str
    op: str  # ">=" or "<="
    value: float
    needs: tuple[str, ...] = ()

    def label(self) -> str:
        if self.metric == "rss":
            return f"RSS {self.op} {self.value:g} MiB"
        what = "plain fwd" if self.metric == "plain" else PEERS[self.metric]
        return f"{'≥' if self.op == '>=' else '≤'} {self.value:g}× {what}"

    def met(self, got: float) -> bool:
        return got >= self.value if self.op == ">=" else got <= self.value


@dataclass(frozen=True)
class Case:
    """One benchmark configuration: ``q (B, H, L, D)``, ``k, v (B, G, S, D)`` (``S``, ``G``
    default to ``L``, ``H``), the attnkit engine to time, the modes and the targets."""

    name: str
    B: int
    H: int
    L: int
    D: int
    S: int | None = None
    G: int | None = None
    dtype: str = "float32"
    causal: bool = False
    window: tuple[int | None, int | None] | None = None
    alibi: bool = False
    softcap: float | None = None
    dropout: float = 0.0
    engine: str = "flash"
    modes: tuple[str, ...] = ("fwd", "fwd+bwd")
    impls: tuple[str, ...] = ()  # () → every implementation that applies
    targets: tuple[Target, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "S", self.L if self.S is None else self.S)
        object.__setattr__(self, "G", self.H if self.G is None else self.G)
        if not self.impls:
            skip = () if (self.alibi or self.softcap is not None) else ("plain",)
            object.__setattr__(self, "impls", tuple(i for i in IMPLS if i not in skip))

    def visible_pairs(self) -> int:
        """(query, key) pairs the causal/window masks leave visible, per (batch, head)."""
        if not self.causal and self.window is None:
            return self.L * self.S
        left, right = self.window or (None, None)
        total = 0
        for i in range(self.L):
            p = i + self.S - self.L  # aligned position (bottom-right)
            lo = 0 if left is None else max(0, p - left)
            hi = self.S - 1 if right is None else min(self.S - 1, p + right)
            if self.causal:
                hi = min(hi, p)
            total += max(0, hi - lo + 1)
        return total

    def flops(self, mode: str) -> float:
        fwd = 4.0 * self.B * self.H * self.D * self.visible_pairs()
        return fwd if mode == "fwd" else 3.5 * fwd


def case(feature: str, B: int, H: int, L: int, D: int, **kw) -> Case:
    """A :class:`Case` whose name says what it is, e.g. ``"causal fp32 B=1 H=8 L=4096 D=64"``."""
    dtype = kw.get("dtype", "float32")
    G, S = kw.get("G"), kw.get("S")
    shape = f"B={B} H={H}" + (f" G={G}" if G else "") + f" L={L}" + (f" S={S}" if S else "") + f" D={D}"
    short = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(dtype, dtype)
    return Case(f"{feature} {short} {shape}", B, H, L, D, **kw)


_FWD, _BWD = ("fwd",), ("fwd+bwd",)


def _t(mode: str, metric: str, op: str, value: float, needs: tuple[str, ...] = ()) -> Target:
    return Target(mode, metric, op, value, needs)


CASES: list[Case] = [  # issue 12, "Targets"
    case("full", 1, 8, 4096, 64, targets=(_t("fwd", "sdpa", ">=", 1.0), _t("fwd+bwd", "sdpa", ">=", 1.0))),
    case("causal", 1, 8, 4096, 64, causal=True, targets=(_t("fwd", "sdpa", ">=", 1.0), _t("fwd+bwd", "sdpa", ">=", 1.2))),
    case("full", 1, 8, 4096, 64, dtype="bfloat16",  # issue 18: bf16 at least as fast as SDPA where AMX runs it
         targets=(_t("fwd", "sdpa", ">=", 0.9, needs=("amx_bf16", "avx512_bf16")),
                  _t("fwd", "sdpa", ">=", 1.0, needs=("amx_bf16",)), _t("fwd+bwd", "sdpa", ">=", 1.0, needs=("amx_bf16",)))),
    case("alibi", 1, 8, 4096, 64, alibi=True, modes=_FWD, targets=(_t("fwd", "sdpa", ">=", 1.5), _t("fwd", "plain", "<=", 1.2))),
    case("softcap=30", 1, 8, 4096, 64, softcap=30.0, modes=_FWD, targets=(_t("fwd", "plain", "<=", 1.3),)),
    case("window(256,0)", 1, 8, 16384, 64, window=(256, 0), modes=_FWD,
         targets=(_t("fwd", "flex", ">=", 2.0), _t("fwd", "sdpa", ">=", 20.0))),
    case("dropout0.1", 1, 8, 4096, 64, dropout=0.1, modes=_BWD, targets=(_t("fwd+bwd", "sdpa", ">=", 3.0),)),
    case("full", 1, 1, 32768, 64, modes=_BWD, targets=(_t("fwd+bwd", "sdpa", ">=", 1.5), _t("fwd+bwd", "rss", "<=", 300))),
    case("decode", 1, 32, 1, 128, G=8, S=131072, engine="decode", modes=_FWD, targets=(_t("fwd", "sdpa", ">=", 2.0),)),
]
"""The rows of issue 12's target table (tens of minutes on 2 cores)."""

QUICK_CASES: list[Case] = [  # the same features at tiny sizes; no targets (they say nothing at this size)
    case("full", 1, 2, 256, 32),
    case("causal", 1, 2, 256, 32, causal=True),
    case("full", 1, 2, 256, 32, dtype="bfloat16", modes=_FWD),
    case("alibi", 1, 2, 256, 32, alibi=True, modes=_FWD),
    case("softcap=30", 1, 2, 256, 32, softcap=30.0, modes=_FWD),
    case("window(32,0)", 1, 2, 512, 32, window=(32, 0), modes=_FWD),
    case("dropout0.1", 1, 2, 256, 32, dropout=0.1, modes=_BWD),
    case("decode", 1, 4, 1, 32, G=2, S=2048, engine="decode", modes=_FWD),
]
"""Tiny versions of :data:`CASES` (seconds)."""
