"""``attnkit bench``: the attention benchmark (thin wrapper over `attnkit.cli.benchmark`)."""

from __future__ import annotations

import argparse
import sys

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
    from . import _bench_machine as machine

    parts = [machine.header(torch.get_num_threads())]
    sections = _sections(args)
    if "cases" in sections:
        report = bench.run_benchmark(
            cases, repeats=args.repeats, budget_s=args.budget, memory=not args.no_memory, progress=say, skip=_skipped(args)
        )
        parts.append(bench.format_report(report))
    if "under-load" in sections:
        from . import _bench_load as load

        chosen = cases if args.cases else cases[:1]  # default: the first (full forward) case
        parts.append(load.format_under_load(load.run_under_load(chosen, repeats=args.repeats, budget_s=args.budget, progress=say)))
    if "compile-time" in sections:
        if say:
            say("building the fused kernel in a fresh cache ...")
        parts.append(machine.format_compile_time(machine.compile_time()))
    table = "\n\n".join(parts)
    print(table)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(table + "\n")
    return 0


def _sections(args: argparse.Namespace) -> tuple[str, ...]:
    """The report's sections: the case table by default; --under-load / --compile-time run just
    those; --all runs everything."""
    if args.all:
        return ("cases", "under-load", "compile-time")
    chosen = tuple(name for name, on in (("under-load", args.under_load), ("compile-time", args.compile_time)) if on)
    return chosen or ("cases",)


def _skipped(args: argparse.Namespace) -> dict[str, str]:
    """Implementations not to run, with the reason the table shows."""
    if args.no_flex:
        return {"flex": "--no-flex"}
    if args.quick:
        return {"flex": "--quick (compiling flex takes tens of seconds per case; add --flex)"} if not args.flex else {}
    return {}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="time attnkit against torch SDPA, a naive implementation and compiled flex_attention",
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
    p.add_argument("--under-load", action="store_true",
                   help="time attnkit and SDPA quiet and beside one busy process (the first case, or those of --cases)")
    p.add_argument("--compile-time", action="store_true", help="time building the fused kernel in a fresh cache")
    p.add_argument("--all", action="store_true", help="the case table, --under-load and --compile-time")
    p.add_argument("--no-flex", action="store_true", help="skip the torch.compile(flex_attention) column")
    p.add_argument("--flex", action="store_true", help="with --quick: run the flex column too (slow to compile)")
    p.set_defaults(run=_run)
