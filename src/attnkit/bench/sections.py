"""The sections of an ``attnkit bench`` report, as a registry: one :class:`Section` per workload family.

A section has a name (its ``--<name>`` flag on ``attnkit bench``, unless it is the default), a
one-line help and ``run(options) -> markdown``. ``cli/bench.py`` builds its flags and runs from
:data:`SECTIONS`, so a new family (say, whole Hugging Face models) is one module defining its
cases and a ``Section``, plus one line here; the CLI needs no edit.

Example:
    >>> from attnkit.bench.sections import SECTIONS
    >>> [(s.name, s.default) for s in SECTIONS]
    [('cases', True), ('under-load', False), ('compile-time', False), ('models', False)]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..errors import AttnkitError
from . import load, machine
from .cases import CASES, QUICK_CASES, Case
from .report import format_report
from .runner import run_benchmark

__all__ = ["Options", "Section", "SECTIONS", "select_cases"]


@dataclass
class Options:
    """What the command line chose, shared by every section."""

    quick: bool = False
    case_filter: tuple[str, ...] = ()  # substrings of case names (``--cases``); () = every case
    repeats: int = 5
    budget_s: float = 20.0
    memory: bool = True
    skip: dict[str, str] = field(default_factory=dict)  # implementations not to run → the reason shown
    compile: bool = False  # --models: also the torch.compile(model) columns
    progress: Callable[[str], None] | None = None


@dataclass(frozen=True)
class Section:
    """One workload family of the report."""

    name: str
    help: str
    run: Callable[[Options], str]
    default: bool = False  # runs when no section is asked for by name


def select_cases(options: Options, cases: list[Case] | None = None) -> list[Case]:
    """The attention cases (quick or full) whose names contain one of ``case_filter``; raises if none."""
    cases = cases if cases is not None else (QUICK_CASES if options.quick else CASES)
    if not options.case_filter:
        return cases
    chosen = [c for c in cases if any(s in c.name for s in options.case_filter)]
    if not chosen:
        raise AttnkitError.build("--cases matching at least one case name", str(list(options.case_filter)),
                                 "run without --cases to list them")
    return chosen


def _cases(options: Options) -> str:
    report = run_benchmark(select_cases(options), repeats=options.repeats, budget_s=options.budget_s,
                           memory=options.memory, progress=options.progress, skip=options.skip)
    return format_report(report)


def _under_load(options: Options) -> str:
    chosen = select_cases(options)
    chosen = chosen if options.case_filter else chosen[:1]  # default: the first (full forward) case
    return load.format_under_load(load.run_under_load(chosen, repeats=options.repeats, budget_s=options.budget_s,
                                                      progress=options.progress))


def _compile_time(options: Options) -> str:
    if options.progress:
        options.progress("building the fused kernel in a fresh cache ...")
    return machine.format_compile_time(machine.compile_time())


def _models(options: Options) -> str:
    from . import models  # needs the hf extra; imported only when asked

    return models.run(options)


SECTIONS: list[Section] = [
    Section("cases", "attnkit against torch SDPA, a naive implementation and compiled flex_attention", _cases, default=True),
    Section("under-load", "time attnkit and SDPA quiet and beside one busy process (the first case, or those of --cases)",
            _under_load),
    Section("compile-time", "time building the fused kernel in a fresh cache", _compile_time),
    Section("models", "what a model feels: one attention call at model shapes, and whole Hugging Face models "
            "(MiniLM encode/train, tiny Llama prefill/generate) with eager, sdpa and attnkit", _models),
]
"""Every section, in report order."""
