"""The ``attnkit`` command: a thin argparse layer over the library.

Each subcommand parses its arguments, calls library functions and prints. Errors are one
line on stderr with exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .. import __version__
from ..errors import AttnkitError
from . import bench, build, explain, seq2seq, softmax

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (usage stays available through --help)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``attnkit`` parser: one subcommand per module of this package."""
    parser = _Parser(prog="attnkit", description="attnkit: softmax attention done right.")
    parser.add_argument("--version", action="version", version=f"attnkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in (softmax, explain, seq2seq, bench, build):  # each module's heavy imports load only when it runs
        command.register(sub)
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
