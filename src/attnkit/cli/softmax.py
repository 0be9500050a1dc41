"""``attnkit softmax X [X ...]``: softmax of a few numbers, step by step (thin over :mod:`.walkthrough`)."""

from __future__ import annotations

import argparse
import math

from ..errors import AttnkitError

__all__ = ["register"]


def _parse_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise AttnkitError.build("numbers such as 2.0 or -1e3", repr(text), "pass only numbers") from None
    if math.isnan(value):
        raise AttnkitError.build("numbers, not NaN", repr(text), "remove the NaN")
    return value


def _cmd_softmax(args: argparse.Namespace) -> int:
    from .walkthrough import format_steps, softmax_steps

    values = [_parse_number(t) for t in args.values]
    steps = softmax_steps(values, temperature=args.temperature)
    print(format_steps(steps, digits=args.digits, explain=args.explain, naive=args.naive))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "softmax",
        help="softmax of a few numbers, step by step",
        description="Turn scores into probabilities: e^x / sum(e^x), computed safely (max subtracted).",
        epilog="example: attnkit softmax 2.0 1.0 0.1 --explain   |   attnkit softmax 1000 1001 1002 --naive",
    )
    p.add_argument("values", nargs="*", metavar="X", help="the scores (logits)")
    p.add_argument("--explain", action="store_true", help="print each e^x, their sum and each quotient")
    p.add_argument("--naive", action="store_true", help="show the plain formula's overflow and the max-subtraction fix")
    p.add_argument("--temperature", "-t", type=float, default=1.0, help="divide the scores by T first (default 1)")
    p.add_argument("--digits", type=int, default=3, choices=range(1, 13), metavar="N", help="decimals shown (default 3)")
    p.set_defaults(run=_cmd_softmax)
