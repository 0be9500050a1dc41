"""``run_benchmark``: time every case × mode × implementation and check the targets.

Rules (DESIGN.md "Benchmark rules"): one process and one run for all timings (same inputs,
after warm-up, medians); ratios computed in that run; the fp32 matmul peak measured in the same
run; peak memory as the RSS of a fresh subprocess per case and implementation.

Example:
    >>> from attnkit import bench
    >>> report = bench.run_benchmark(bench.QUICK_CASES[:1], repeats=1, memory=False, skip={"flex": "demo"})
    >>> print(bench.format_report(report))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Callable

from .cases import FORWARD_ONLY, MEMORY_IMPLS, Case
from .implementations import Unavailable, step
from .memory import baseline_mib, step_peak_mib
from .report import Check, Report, Row, metrics, verdict
from .timing import matmul_peak_gflops, median_seconds

__all__ = ["run_benchmark"]


def _time(c: Case, impl: str, mode: str, repeats: int, budget_s: float) -> tuple[float, str]:
    """``(median seconds, note)``; the inputs are freed on return, before the next implementation."""
    fn, note = step(c, impl, mode)
    return median_seconds(fn, repeats, budget_s), note


def run_benchmark(
    cases: list[Case], *, repeats: int = 5, budget_s: float = 20.0, memory: bool = True,
    progress: Callable[[str], None] | None = None, skip: dict[str, str] | None = None,
) -> Report:
    """Time every case × mode × implementation and check the targets.

    ``skip`` maps implementations not to run to the reason shown (e.g. ``{"flex": "--no-flex"}``).
    A peer that cannot run a case (:class:`Unavailable`, or a RuntimeError such as out of memory)
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
                    row.rss_mib = step_peak_mib(c, impl, mode)
            rows.extend(group.values())
            base = group.get("flash")
            found = metrics(group)
            checks.append(Check(c.name, mode, base.seconds if base else None, found, *verdict(c, mode, found)))
    return Report(peak, rows, checks, baseline_mib() if memory else None)
