"""The benchmark's results and their markdown: one :class:`Row` per implementation, case and mode;
one :class:`Check` per case and mode (the ratios the targets read, the targets, met/MISSED/n/a);
:func:`format_report` renders both tables.

Ratio cells read the targets directly: ``× SDPA`` = SDPA time / attnkit time (> 1: attnkit is
faster), ``flash/plain`` = attnkit time / attnkit without ALiBi/softcap.

Example:
    >>> from attnkit.bench.report import Report, format_report
    >>> print(format_report(Report(100.0, [], [])).splitlines()[0])
    ## Targets (ratios from medians in this run)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import machine
from .cases import PEERS, Case

__all__ = ["Row", "Check", "Report", "format_report", "SUMMARY_COLUMNS", "DETAIL_COLUMNS", "metrics", "verdict"]


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


def metrics(group: dict[str, Row]) -> dict[str, float]:
    """The ratios and figures the targets read, from one case and mode's rows (``impl -> Row``):
    each peer's time / attnkit's, attnkit's / its plain run's, and attnkit's peak RSS."""
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


def verdict(c: Case, mode: str, found: dict[str, float]) -> tuple[str, str]:
    """``(target text, status)``: ``met``, ``MISSED (...)`` with the values got, or ``n/a (...)``."""
    targets = [t for t in c.targets if t.mode == mode]
    if not targets:
        return "—", "—"
    flags = set(machine.kernel_flags())
    missed, na = [], []
    for t in targets:
        if t.needs and not flags & set(t.needs):
            na.append(f"needs {' or '.join(t.needs)}")
        elif t.metric not in found:
            na.append(f"{t.metric} not measured")
        elif not t.met(found[t.metric]):
            unit = " MiB" if t.metric == "rss" else "×"
            missed.append(f"{t.metric} {found[t.metric]:.2f}{unit}")
    status = "met" if not missed and not na else "; ".join(
        ([f"MISSED ({', '.join(missed)})"] if missed else []) + ([f"n/a ({', '.join(na)})"] if na else [])
    )
    return "; ".join(t.label() for t in targets), status


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
