"""``attnkit bench``: the attention benchmark (the machinery is the :mod:`attnkit.bench` package).

The report's sections come from :data:`attnkit.bench.sections.SECTIONS`: the default one runs
without flags, each other one has its ``--<name>`` flag, ``--all`` runs them all.
"""

from __future__ import annotations

import argparse
import sys

from ..bench.sections import SECTIONS, Options, select_cases
from . import _checks

def _run(args: argparse.Namespace) -> int:
    # Everything is checked before the first timed run: a bad --output would otherwise fail at the very end.
    _checks.positive("--threads", args.threads, zero="torch's choice")
    _checks.positive("--repeats", args.repeats)
    _checks.finite("--budget", args.budget, low=0.0, example=20.0)
    if args.output:
        _checks.output_file("--output", args.output)
    import torch

    from ..bench import machine

    options = Options(
        quick=args.quick, case_filter=tuple(args.cases or ()), repeats=args.repeats, budget_s=args.budget,
        memory=not args.no_memory, skip=_skipped(args), compile=args.compile,
        progress=(lambda m: print(m, file=sys.stderr, flush=True)) if not args.silent else None,
    )
    select_cases(options)  # a --cases matching nothing fails now, not after the first section
    if args.threads:
        torch.set_num_threads(args.threads)
    asked = [s for s in SECTIONS if args.all or getattr(args, s.name.replace("-", "_"), False)]
    chosen = asked or [s for s in SECTIONS if s.default]
    table = "\n\n".join([machine.header(torch.get_num_threads()), *(s.run(options) for s in chosen)])
    print(table)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(table + "\n")
    return 0


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
    flagged = [s for s in SECTIONS if not s.default]
    for section in flagged:
        p.add_argument(f"--{section.name}", action="store_true", help=section.help)
    p.add_argument("--all", action="store_true", help="every section: the case table, " + ", ".join(f"--{s.name}" for s in flagged))
    p.add_argument("--no-flex", action="store_true", help="skip the torch.compile(flex_attention) column")
    p.add_argument("--flex", action="store_true", help="with --quick: run the flex column too (slow to compile)")
    p.add_argument("--compile", action="store_true",
                   help="with --models: also torch.compile(model) for sdpa and attnkit, and count graph breaks")
    p.set_defaults(run=_run)
