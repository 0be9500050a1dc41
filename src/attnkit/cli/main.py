"""The ``attnkit`` command: a thin argparse layer over the library.

Each subcommand parses its arguments, validates them (`._checks`) before any model loads
or trains, calls library functions and prints. Every error is one line on stderr,
``attnkit CMD: error: expected ..., got ...; fix: ...``, with exit status 2 — never a traceback.
`main` is the one place that turns errors into that line: [`AttnkitError`][attnkit.errors.AttnkitError]
as it is, and the foreign errors that loading files and models can raise (`FOREIGN`) with the
file named and a generic fix. Anything else is a bug of attnkit and keeps its traceback. A reader
that closes the pipe early (``attnkit softmax 1 2 3 | head -1``) is not an error: exit 0, quietly.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import zipfile
from typing import Sequence

from .. import __version__
from ..errors import AttnkitError
from . import _checks, bench, build, explain, seq2seq, softmax
from ._help import HelpFormatter

__all__ = ["build_parser", "main", "FOREIGN"]

FOREIGN: tuple[type[BaseException], ...] = (OSError, UnicodeError, json.JSONDecodeError, EOFError,
                                            pickle.UnpicklingError, zipfile.BadZipFile)
"""Errors of reading files and models (OS, decoding, pickles refused by ``weights_only``, zips).
``safetensors``' own error class is added when that package is loaded."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (usage stays available through --help) and defaults in --help."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

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


def _foreign() -> tuple[type[BaseException], ...]:
    extra = []
    st = sys.modules.get("safetensors")
    if st is not None and hasattr(st, "SafetensorError"):
        extra.append(st.SafetensorError)
    return FOREIGN + tuple(extra)


def _one_line(err: BaseException) -> str:
    """A foreign error as ``expected ..., got ...; fix: ...`` (its first line, shortened)."""
    text = (str(err).strip().splitlines() or [""])[0]
    text = text if len(text) <= 200 else text[:197] + "..."
    return str(AttnkitError.build("readable, intact files", f"{type(err).__name__}: {text}",
                                  "check the path, its permissions and that the file is complete"))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``attnkit`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        _checks.utf8_args(argv)
        status = int(args.run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at exit where Python would complain
        return status
    except BrokenPipeError:
        # The reader stopped (``| head``): what it wanted was written. Point stdout at devnull so
        # the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except AttnkitError as err:
        message = str(err)
    except _foreign() as err:
        message = _one_line(err)
    print(f"attnkit {args.command}: error: {message}", file=sys.stderr)
    return 2
