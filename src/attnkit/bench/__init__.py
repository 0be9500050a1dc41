"""The attention benchmark behind ``attnkit bench`` and the ``benchmarks/*.py`` scripts.

- :mod:`.cases`: :class:`Case`, :class:`Target`, :data:`CASES` (issue 12's target table) and
  :data:`QUICK_CASES` (tiny, seconds);
- :mod:`.implementations`: what is timed (attnkit's engine, ``plain``, SDPA, naive, compiled flex)
  and :func:`~.implementations.step`, one timed step of one of them;
- :mod:`.timing`: medians after warm-up (one callable, or several interleaved), the matmul peak;
- :mod:`.memory`: peak RSS of one step in a fresh subprocess;
- :mod:`.machine`: the report header (CPU, flags, threads, load, versions) and the kernel's
  first-use compile time;
- :mod:`.load`: attnkit and SDPA quiet and beside one busy process;
- :mod:`.report`: rows, checks against the targets, the markdown tables;
- :mod:`.runner`: :func:`run_benchmark` (every case × mode × implementation);
- :mod:`.sections`: the report's sections as a registry (one per workload family), which
  ``attnkit bench`` turns into flags.

CPU flags and RSS come from :mod:`attnkit._machine`, shared with the scripts and examples.

Example:
    >>> from attnkit import bench
    >>> report = bench.run_benchmark(bench.QUICK_CASES[:1], repeats=1, memory=False, skip={"flex": "demo"})
    >>> "## Targets" in bench.format_report(report)  # doctest: +SKIP
    True
"""

from __future__ import annotations

from .cases import CASES, QUICK_CASES, Case, Target, case
from .report import Check, Report, Row, format_report
from .runner import run_benchmark
from .sections import SECTIONS, Options, Section

__all__ = ["CASES", "QUICK_CASES", "Case", "Target", "case", "Check", "Report", "Row", "format_report", "run_benchmark",
           "SECTIONS", "Options", "Section"]
