"""``attnkit bench``: the attention benchmark (thin wrapper over :mod:`attnkit.cli.benchmark`)."""

from __future__ import annotations

import argparse
import platform
import sys
from datetime import date

from ..errors import AttnkitError
from . import _checks


def _run(args: argparse.Namespace) -> int:
    # Everything is checked before the first timed run: a bad --output would otherwise fail at the very end.
    _checks.positive("--threads", args.threads, zero="torch's choice")
    _checks.positive("--repeats", args.repeats)
    _checks.finite("--budget", args.budget, low=0.0, example=20.0)
    if args.output:
        _checks.output_file("--output", args.output)
    import torch

    from . import benchmark as bench

    cases = bench.QUICK_CASES if args.quick else bench.CASES
    if args.cases:
        cases = [c for c in cases if any(s in c.name for s in args.cases)]
        if not cases:
            raise AttnkitError.build("--cases matching at least one case name", str(args.cases), "run without --cases to list them")
    if args.threads:
        torch.set_num_threads(args.threads)
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if not args.silent else None
    peak, rows = bench.run_benchmark(cases, repeats=args.repeats, budget_s=args.budget, memory=not args.no_memory, progress=say)
    header = (
        f"attnkit bench — {date.today().isoformat()} — {platform.processor() or platform.machine()}, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    table = header + "\n\n" + bench.format_table(peak, rows)
    print(table)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(table + "\n")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="time the flash engine against torch SDPA and a naive implementation",
        description="Medians after warm-up, in one process; peak memory from one subprocess per case.",
    )
    p.add_argument("--quick", action="store_true", help="small cases (seconds, for smoke tests)")
    p.add_argument("--cases", nargs="+", metavar="SUBSTR", help="only cases whose name contains one of these")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (default 5)")
    p.add_argument("--budget", type=float, default=20.0, help="max seconds of timed runs per measurement")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--no-memory", action="store_true", help="skip the per-case memory subprocesses")
    p.add_argument("--output", metavar="FILE", help="also write the table to FILE")
    p.add_argument("--silent", action="store_true", help="no progress lines on stderr")
    p.set_defaults(run=_run)
