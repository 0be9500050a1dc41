"""Argument and path checks shared by every ``attnkit`` command, run before any model loads or trains.

A bad output path found after an hour of training loses the hour; a NaN learning rate found by
Adam's constructor prints a traceback. Each command therefore validates its whole command line
first, with these functions, and only then does the work. Each raises [`AttnkitError`][attnkit.errors.AttnkitError] naming
the option (``--lr``), what it got and the fix, which `attnkit.cli.main` prints as one line.

Only structure and permissions are checked here (no files are created): the library loaders
still check contents ([`attnkit.seq2seq.train.load_checkpoint`][attnkit.seq2seq.train.load_checkpoint], `AttentionMaps.load`).

Example:
    >>> positive("--beam", 4), finite("--lr", 3e-3, low=0.0)
    (4, 0.003)
    >>> finite("--lr", float("nan"), low=0.0)
    Traceback (most recent call last):
    ...
    attnkit.errors.AttnkitError: expected --lr a finite number > 0.0, got nan; fix: e.g. --lr 0.003
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

from ..errors import AttnkitError

__all__ = ["utf8_args", "positive", "finite", "input_file", "output_file", "output_dir"]


def utf8_args(argv: Sequence[str]) -> None:
    """Refuse arguments that are not valid UTF-8 (Python keeps such bytes as lone surrogates,
    which tokenizers and fonts reject deep inside the work)."""
    for n, arg in enumerate(argv, 1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            shown = arg.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
            raise AttnkitError.build("arguments in UTF-8", f"undecodable bytes in argument {n} ({shown[:40]})",
                                     "re-type it, or set a UTF-8 locale (e.g. LANG=C.UTF-8)") from None


def positive(option: str, value: int, *, zero: str | None = None) -> int:
    """``value >= 1`` (or ``>= 0`` when ``zero`` says what 0 means); returns it."""
    low = 0 if zero is not None else 1
    if value < low:
        meaning = f" (0 = {zero})" if zero is not None else ""
        raise AttnkitError.build(f"{option} >= {low}{meaning}", str(value), f"e.g. {option} {max(low, 1)}")
    return value


def finite(option: str, value: float, *, low: float | None = None, high: float | None = None,
           low_inclusive: bool = False, high_inclusive: bool = False, example: float | None = None) -> float:
    """A finite number inside ``(low, high)`` (bounds exclusive unless told); returns it."""
    ok = math.isfinite(value)
    if low is not None:
        ok = ok and (value >= low if low_inclusive else value > low)
    if high is not None:
        ok = ok and (value <= high if high_inclusive else value < high)
    if not ok:
        bounds = []
        if low is not None:
            bounds.append(f"{'>=' if low_inclusive else '>'} {low}")
        if high is not None:
            bounds.append(f"{'<=' if high_inclusive else '<'} {high}")
        e = example if example is not None else _example(low, high)
        raise AttnkitError.build(f"{option} a finite number{' ' + ' and '.join(bounds) if bounds else ''}", repr(value),
                                 f"e.g. {option} {e:g}")
    return value


def _example(low: float | None, high: float | None) -> float:
    if low is not None and high is not None:
        return (low + high) / 2
    return (low or 0.0) + 0.003 if high is None else (high - 1.0)


def input_file(option: str, path: str | Path) -> Path:
    """An existing, readable regular file; returns it as a `Path`."""
    p = Path(path).expanduser()
    if not p.exists():
        raise AttnkitError.build(f"{option} an existing file", f"no such file: {p}", "check the path (relative paths start "
                                 f"in the current directory, {Path.cwd()})")
    if not p.is_file():
        raise AttnkitError.build(f"{option} a file", f"a directory: {p}" if p.is_dir() else f"not a regular file: {p}",
                                 "pass the path of the file itself")
    if not os.access(p, os.R_OK):
        raise AttnkitError.build(f"{option} a readable file", f"no read permission on {p}", "fix its permissions")
    return p


def _writable_dir_for(option: str, target: Path) -> None:
    """The nearest existing ancestor of ``target`` must be a writable directory (``mkdir -p`` can create the rest)."""
    parent = target
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise AttnkitError.build(f"{option} inside a directory", f"{parent} is a file, not a directory",
                                 "choose a path whose parent folders are directories")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise AttnkitError.build(f"{option} in a writable directory", f"no write permission in {parent}",
                                 "choose another location")


def output_file(option: str, path: str | Path, suffixes: Sequence[str] | None = None) -> Path:
    """A file the command can (over)write: not a directory, the right suffix, its folder present
    and writable. Nothing is created. Returns the `Path`."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise AttnkitError.build(f"{option} a file path", f"a directory: {p}", f"name a file inside it, e.g. {p / ('out' + (suffixes or ['.txt'])[0])}")
    if suffixes is not None and p.suffix.lower() not in suffixes:
        raise AttnkitError.build(f"{option} ending in {' or '.join(suffixes)}", str(p), f"rename it, e.g. {p.with_suffix(suffixes[0]).name}")
    if p.exists():
        if not os.access(p, os.W_OK):
            raise AttnkitError.build(f"{option} a writable file", f"no write permission on {p}", "choose another path")
        return p
    if not p.parent.is_dir():
        what = "is a file" if p.parent.exists() else "does not exist"
        raise AttnkitError.build(f"{option} in an existing directory", f"{p.parent} {what}",
                                 "create the directory first, or choose another path")
    _writable_dir_for(option, p.parent)
    return p


def output_dir(option: str, path: str | Path) -> Path:
    """A directory the command can write into (existing, or creatable); nothing is created."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise AttnkitError.build(f"{option} a directory", f"a file: {p}", "choose a directory path")
    _writable_dir_for(option, p)
    return p
