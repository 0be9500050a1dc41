"""The ``attnkit`` command: a thin argparse layer over the library.

Each subcommand parses its arguments, calls library functions and prints. Errors are one
line on stderr with exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from typing import Callable, Sequence

from .errors import AttnkitError

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (usage stays available through --help)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


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


def _add_softmax(sub: argparse._SubParsersAction) -> None:
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


# Subcommands register here; later ones live in their own modules to keep this file thin.
def _lazy(module: str) -> Callable[[argparse._SubParsersAction], None]:
    """A subcommand whose module (and its imports) loads only when the parser is built."""

    def register(sub: argparse._SubParsersAction) -> None:
        importlib.import_module(module).register(sub)

    return register


_REGISTRARS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_softmax,
    _lazy("attnkit.cli_explain"),
    _lazy("attnkit.seq2seq.cli"),
    _lazy("attnkit.cli_bench"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="attnkit", description="attnkit: softmax attention done right.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for register in _REGISTRARS:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attnkit`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except AttnkitError as err:
        print(f"attnkit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
