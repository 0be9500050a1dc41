"""The attention benchmark behind ``attnkit bench``: attnkit vs SDPA, naive and compiled flex.

Rules (DESIGN.md "Benchmark rules"): one process and one run for all timings (same inputs,
after warm-up, medians); ratios computed in that run; GFLOP/s counted on visible (query, key)
pairs (``4·B·H·D`` per pair forward, 3.5× that for forward+backward) with the fraction of this
machine's fp32 matmul peak measured in the same run; peak memory as the RSS (VmHWM) of a fresh
subprocess per case and implementation.

`CASES` are the rows of issue 12's target table, each with its `Target` s; the
report has one summary row per case and mode with the ratio columns those targets read
(``× SDPA`` = SDPA time / attnkit time, > 1 means attnkit is faster; ``flash/plain`` = attnkit
time / attnkit without ALiBi/softcap), the target and met/MISSED; then a detail row per
implementation. `QUICK_CASES` are tiny versions (seconds) for smoke tests.

Example:
    >>> from attnkit.cli import benchmark as bench
    >>> report = bench.run_benchmark(bench.QUICK_CASES[:1], repeats=1, memory=False, skip={"flex": "demo"})
    >>> print(bench.format_report(report))  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import pickle
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ._bench_impls import MAKERS, Unavailable
from ._bench_machine import cpu_info

__all__ = ["Case", "Target", "CASES", "QUICK_CASES", "Row", "Check", "Report", "run_benchmark",
           "format_report", "matmul_peak_gflops"]

IMPLS = tuple(MAKERS)
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
    """A `Case` whose name says what it is, e.g. ``"causal fp32 B=1 H=8 L=4096 D=64"``."""
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
    case("full", 1, 8, 4096, 64, dtype="bfloat16", modes=_FWD,
         targets=(_t("fwd", "sdpa", ">=", 0.9, needs=("amx_bf16", "avx512_bf16")),)),
    case("alibi", 1, 8, 4096, 64, alibi=True, modes=_FWD, targets=(_t("fwd", "sdpa", ">=", 1.5), _t("fwd", "plain", "<=", 1.3))),
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
"""Tiny versions of `CASES` (seconds)."""


def _inputs(c: Case, requires_grad: bool) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = [(c.B, c.H, c.L, c.D), (c.B, c.G, c.S, c.D), (c.B, c.G, c.S, c.D)]
    dtype = getattr(torch, c.dtype)
    return [torch.randn(s, generator=g).to(dtype).requires_grad_(requires_grad) for s in shapes]


def _step(c: Case, impl: str, mode: str) -> tuple[Callable[[], None], str]:
    """``(one timed step, note)`` of ``impl`` on ``c``; raises `Unavailable`."""
    if impl == "naive" and c.B * c.H * c.L * c.S * 4 > NAIVE_LIMIT_BYTES:
        raise Unavailable(f"one fp32 score matrix is {c.B * c.H * c.L * c.S * 4 / 2**30:.0f} GiB")
    q, k, v = _inputs(c, requires_grad=mode != "fwd")
    run, note = MAKERS[impl](c, q, k, v)
    if mode == "fwd":

        def fwd() -> None:
            with torch.no_grad():
                run()

        return fwd, note
    do = torch.randn(c.B, c.H, c.L, c.D, generator=torch.Generator().manual_seed(1)).to(q.dtype)

    def fwd_bwd() -> None:
        torch.autograd.grad(run(), (q, k, v), do)

    return fwd_bwd, note


def median_seconds(fn: Callable[[], None], repeats: int, budget_s: float) -> float:
    """Median wall time of ``fn`` after one warm-up run (a warm-up longer than the budget is the measurement)."""
    t0 = time.perf_counter()
    fn()  # warm-up (allocations, kernel selection)
    first = time.perf_counter() - t0
    samples: list[float] = []
    if first > budget_s:
        return first
    while len(samples) < repeats and sum(samples) < budget_s:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Measured fp32 matmul GFLOP/s of this machine (median of ``repeats`` n×n products)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / median_seconds(lambda: torch.mm(a, b), repeats, 30.0) / 1e9


def _memory_mib(c: Case | None, impl: str = "", mode: str = "") -> float | None:
    """Peak RSS (MiB) of a fresh subprocess running one step of the case (``None`` if it failed);
    ``c=None``: of the probe process alone (python, torch and attnkit imported, no work)."""
    payload = base64.b64encode(pickle.dumps((c, impl, mode))).decode("ascii")
    cmd = [sys.executable, "-m", "attnkit.cli.benchmark", "--memory-probe", payload]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        return None
    return float(proc.stdout.strip().splitlines()[-1])


@dataclass
class Row:
    """One implementation on one case and mode (``seconds`` is ``None`` when it did not run: see ``note``)."""

    case: str
    mode: str
    impl: str
    seconds: float | None = None
    gflops: float | None = None
    peak_frac: float | None = None
    rss_mib: float | None = None
    note: str = ""


@dataclass
class Check:
    """Summary of one case and mode: the metrics the targets read, the targets and the verdict."""

    case: str
    mode: str
    flash_s: float | None
    metrics: dict[str, float] = field(default_factory=dict)
    target: str = "—"
    status: str = "—"


@dataclass
class Report:
    peak_gflops: float
    rows: list[Row]
    checks: list[Check]
    baseline_rss_mib: float | None = None  # the probe process without work: part of every RSS figure


def _metrics(group: dict[str, Row]) -> dict[str, float]:
    base = group.get("flash")
    out: dict[str, float] = {}
    if base is None or not base.seconds:
        return out
    for peer in PEERS:
        if peer in group and group[peer].seconds:
            out[peer] = group[peer].seconds / base.seconds
    if "plain" in group and group["plain"].seconds:
        out["plain"] = base.seconds / group["plain"].seconds
    if base.rss_mib is not None:
        out["rss"] = base.rss_mib
    return out


def _verdict(c: Case, mode: str, metrics: dict[str, float]) -> tuple[str, str]:
    """``(target text, status)``: ``met``, ``MISSED (...)`` with the values got, or ``n/a (...)``."""
    targets = [t for t in c.targets if t.mode == mode]
    if not targets:
        return "—", "—"
    flags = set(cpu_info()[1])
    missed, na = [], []
    for t in targets:
        if t.needs and not flags & set(t.needs):
            na.append(f"needs {' or '.join(t.needs)}")
        elif t.metric not in metrics:
            na.append(f"{t.metric} not measured")
        elif not t.met(metrics[t.metric]):
            unit = " MiB" if t.metric == "rss" else "×"
            missed.append(f"{t.metric} {metrics[t.metric]:.2f}{unit}")
    status = "met" if not missed and not na else "; ".join(
        ([f"MISSED ({', '.join(missed)})"] if missed else []) + ([f"n/a ({', '.join(na)})"] if na else [])
    )
    return "; ".join(t.label() for t in targets), status


def _time(c: Case, impl: str, mode: str, repeats: int, budget_s: float) -> tuple[float, str]:
    """``(median seconds, note)``; the inputs are freed on return, before the next implementation."""
    fn, note = _step(c, impl, mode)
    return median_seconds(fn, repeats, budget_s), note


def run_benchmark(
    cases: list[Case], *, repeats: int = 5, budget_s: float = 20.0, memory: bool = True,
    progress: Callable[[str], None] | None = None, skip: dict[str, str] | None = None,
) -> Report:
    """Time every case × mode × implementation and check the targets.

    ``skip`` maps implementations not to run to the reason shown (e.g. ``{"flex": "--no-flex"}``).
    A peer that cannot run a case (`Unavailable`, or a RuntimeError such as out of memory)
    gets a note instead of a time; attnkit's own errors propagate.
    """
    say = progress or (lambda _msg: None)
    skip = skip or {}
    peak = matmul_peak_gflops()
    say(f"fp32 matmul peak: {peak:.1f} GFLOP/s")
    rows: list[Row] = []
    checks: list[Check] = []
    for c in cases:
        for mode in c.modes:
            group: dict[str, Row] = {}
            for impl in c.impls:
                if impl in FORWARD_ONLY and mode != "fwd":
                    continue
                row = group[impl] = Row(c.name, mode, impl)
                if impl in skip:
                    row.note = f"not run: {skip[impl]}"
                    continue
                say(f"{c.name} {mode} {impl} ...")
                try:
                    row.seconds, row.note = _time(c, impl, mode, repeats, budget_s)
                except Unavailable as err:
                    row.note = f"n/a: {err}"
                    continue
                except RuntimeError as err:  # e.g. a peer out of memory; attnkit's own failures are bugs
                    if impl in ("flash", "plain"):
                        raise
                    row.note = f"failed: {(str(err).strip().splitlines() or [type(err).__name__])[0][:160]}"
                    continue
                row.gflops = c.flops(mode) / row.seconds / 1e9
                row.peak_frac = row.gflops / peak
                if memory and impl in MEMORY_IMPLS:
                    row.rss_mib = _memory_mib(c, impl, mode)
            rows.extend(group.values())
            base = group.get("flash")
            metrics = _metrics(group)
            checks.append(Check(c.name, mode, base.seconds if base else None, metrics, *_verdict(c, mode, metrics)))
    return Report(peak, rows, checks, _memory_mib(None) if memory else None)


def _num(x: float | None, fmt: str, suffix: str = "") -> str:
    return "—" if x is None else format(x, fmt) + suffix


SUMMARY_COLUMNS = ("case", "mode", "flash s", "× SDPA", "× naive", "× flex", "flash/plain", "flash RSS MiB", "target", "status")
DETAIL_COLUMNS = ("case", "mode", "impl", "median s", "GFLOP/s", "% peak", "peak RSS MiB", "note")


def format_report(report: Report) -> str:
    """Markdown: the target summary (one row per case and mode), then one row per implementation.

    Ratio cells read the targets directly: ``× SDPA`` = SDPA time / attnkit time (> 1: attnkit
    faster), ``flash/plain`` = attnkit time / attnkit without ALiBi/softcap; ``n/a`` cells have
    their reason in the detail table's note.
    """
    ran = {(r.case, r.mode, r.impl): r for r in report.rows}

    def ratio(ch: Check, metric: str) -> str:
        if metric in ch.metrics:
            return f"{ch.metrics[metric]:.2f}×"
        return "n/a" if (ch.case, ch.mode, metric) in ran else "—"

    lines = [
        "## Targets (ratios from medians in this run)",
        "",
        "| " + " | ".join(SUMMARY_COLUMNS) + " |",
        "|---|---|" + "---:|" * 6 + "---|---|",
    ]
    for ch in report.checks:
        cells = [ch.case, ch.mode, _num(ch.flash_s, ".4f"), *(ratio(ch, m) for m in (*PEERS, "plain")),
                 _num(ch.metrics.get("rss"), ".0f"), ch.target, ch.status]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"## Every implementation (fp32 matmul peak measured in this run: {report.peak_gflops:.1f} GFLOP/s)",
        "",
        *([f"Peak RSS is the VmHWM of a fresh process per row; the same process without work (python, torch, "
           f"attnkit): {report.baseline_rss_mib:.0f} MiB.", ""] if report.baseline_rss_mib is not None else []),
        "| " + " | ".join(DETAIL_COLUMNS) + " |",
        "|---|---|---|" + "---:|" * 4 + "---|",
    ]
    for r in report.rows:
        pct = None if r.peak_frac is None else 100 * r.peak_frac
        cells = [r.case, r.mode, r.impl, _num(r.seconds, ".4f"), _num(r.gflops, ".1f"), _num(pct, ".0f"),
                 _num(r.rss_mib, ".0f"), r.note]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _memory_probe(payload: str) -> None:
    c, impl, mode = pickle.loads(base64.b64decode(payload))  # our own payload, from the parent process
    if c is not None:
        _step(c, impl, mode)[0]()
    print(_peak_rss_mib())


def _peak_rss_mib() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over execve from
    the parent, so a child would report the benchmark process's own peak."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-probe":
        _memory_probe(sys.argv[2])
