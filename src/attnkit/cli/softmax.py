"""``attnkit softmax X [X ...]``: softmax of a few numbers, step by step (thin over `.walkthrough`)."""

from __future__ import annotations

import argparse
import math

from ..errors import AttnkitError
from ._help import examples

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


def _cmd_softmax_lessons(args: argparse.Namespace) -> int:
    """The walkthrough, then the lessons that apply (classic mistakes, --compare, --target, --dk)."""
    from . import lessons

    values = [_parse_number(t) for t in args.values]
    extra: list[str] = []
    if values:  # no numbers: the walkthrough's own error says what to pass
        claim = None if args.claim is None else [_parse_number(t) for t in args.claim]
        extra += lessons.corrections(values, temperature=args.temperature, explain=args.explain, claim=claim)
        if args.compare:
            extra += lessons.compare([v / args.temperature for v in values])
        if args.target is not None:
            extra += lessons.format_cross_entropy(lessons.cross_entropy_steps(values, args.target, temperature=args.temperature),
                                                  args.digits)
    if args.dk is not None:
        extra += lessons.format_saturation(lessons.saturation(args.dk))
        if not values:  # `attnkit softmax --dk 1024` alone: the lesson needs no numbers of its own
            print("\n".join(extra))
            return 0
    status = _cmd_softmax(args)  # computed first, printed after: a bad --target fails before any output
    if extra:
        print("\n".join(extra))
    return status


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "softmax",
        help="softmax of a few numbers, step by step",
        description="Turn scores into probabilities: e^x / sum(e^x), computed safely (max subtracted).",
        epilog=examples("attnkit softmax 2.0 1.0 0.1 --explain", "attnkit softmax 1000 1001 1002 --naive",
                        "attnkit softmax 2 1 -3 --compare", "attnkit softmax 2 1 0.1 --target 0",
                        "attnkit softmax --dk 1024"),
    )
    p.add_argument("values", nargs="*", metavar="X", help="the scores (logits)")
    p.add_argument("--explain", action="store_true", help="print each e^x, their sum and each quotient")
    p.add_argument("--naive", action="store_true", help="show the plain formula's overflow and the max-subtraction fix")
    p.add_argument("--temperature", "-t", type=float, default=1.0, help="divide the scores by T first (default 1)")
    p.add_argument("--digits", type=int, default=3, choices=range(1, 13), metavar="N", help="decimals shown (default 3)")
    p.add_argument("--compare", action="store_true",
                   help="why e^x: the same numbers through |x|, x^2, ReLU, sigmoid, sparsemax, entmax-1.5, with the deciding properties")
    p.add_argument("--claim", nargs="+", default=None, metavar="P",
                   help="weights a text gives for these scores (e.g. --claim 0.65 0.24 0.11): checked at their own decimals")
    p.add_argument("--target", type=int, default=None, metavar="K",
                   help="cross-entropy against class K (from 0): p, the loss, dL/dz = p - y step by step, checked by autograd")
    p.add_argument("--dk", type=int, default=None, metavar="D",
                   help="why divide by sqrt(d): mean top weight of random q.k rows up to head dim D, with and without the scale")
    p.set_defaults(run=_cmd_softmax_lessons)
