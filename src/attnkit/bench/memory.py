"""Peak memory of one benchmark step: the RSS high-water mark (VmHWM) of a fresh subprocess.

A fresh process per case and implementation, so one step's peak is not hidden by an earlier,
bigger one; the same process without work (python, torch and attnkit imported) is measured too
(:func:`baseline_mib`), since it is part of every figure.

Example:
    >>> from attnkit.bench.cases import case
    >>> from attnkit.bench.memory import step_peak_mib
    >>> step_peak_mib(case("full", 1, 1, 16, 8), "flash", "fwd") > 10  # doctest: +SKIP
    True
"""

from __future__ import annotations

import base64
import pickle
import subprocess
import sys

from .. import _machine
from .cases import Case
from .implementations import step

__all__ = ["step_peak_mib", "baseline_mib"]


def _probe(c: Case | None, impl: str = "", mode: str = "") -> float | None:
    payload = base64.b64encode(pickle.dumps((c, impl, mode))).decode("ascii")
    cmd = [sys.executable, "-m", "attnkit.bench.memory", "--memory-probe", payload]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        return None
    return float(proc.stdout.strip().splitlines()[-1])


def step_peak_mib(c: Case, impl: str, mode: str) -> float | None:
    """Peak RSS (MiB) of a fresh subprocess running one step of ``impl`` on ``c`` (``None`` if it failed)."""
    return _probe(c, impl, mode)


def baseline_mib() -> float | None:
    """Peak RSS (MiB) of the probe process alone: python, torch and attnkit imported, no work."""
    return _probe(None)


def _memory_probe(payload: str) -> None:
    c, impl, mode = pickle.loads(base64.b64decode(payload))  # our own payload, from the parent process
    if c is not None:
        step(c, impl, mode)[0]()
    print(_machine.peak_rss_mib())


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-probe":
        _memory_probe(sys.argv[2])
