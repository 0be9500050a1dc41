"""``attnkit bench --under-load``: attnkit and SDPA timed quiet, then beside one busy process.

A machine is rarely quiet. A kernel made of many small parallel ops waits at every OpenMP
barrier for the thread whose core is taken by someone else; a fused kernel waits once per call.
So the target is relative: attnkit's slowdown (loaded / quiet median) must not exceed SDPA's.

The competitor is a pure-Python busy loop in a subprocess (one core, starts in milliseconds, no
torch). It is stopped in a ``finally`` (normal end, error or Ctrl-C), and it also exits by itself
when its parent disappears (it polls ``os.getppid()``), so a killed benchmark leaves nothing behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from .cases import Case
from .implementations import Unavailable, step
from .timing import median_seconds

__all__ = ["competing_process", "LoadResult", "run_under_load", "format_under_load"]

# One core busy on integer arithmetic; exits when the parent process is gone (re-parented).
_BUSY = """
import os, sys
parent = int(sys.argv[1])
x = 0
while os.getppid() == parent:
    for _ in range(100_000):
        x = (x * 1103515245 + 12345) & 0xFFFFFFFF
"""
SETTLE_S = 0.3  # let the competitor start spinning before timing


@contextmanager
def competing_process() -> Iterator[subprocess.Popen]:
    """Run one busy competing process for the duration of the ``with`` block."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _BUSY, str(os.getpid())],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(SETTLE_S)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclass
class LoadResult:
    """Quiet and loaded medians of attnkit (``flash``) and SDPA on one case (forward)."""

    case: str
    quiet: dict[str, float]
    loaded: dict[str, float]
    competitor_pid: int
    note: str = ""

    def slowdown(self, impl: str) -> float | None:
        if impl in self.quiet and impl in self.loaded:
            return self.loaded[impl] / self.quiet[impl]
        return None

    def status(self) -> str:
        ours, sdpa = self.slowdown("flash"), self.slowdown("sdpa")
        if ours is None or sdpa is None:
            return f"n/a ({self.note or 'not measured'})"
        return "met" if ours <= sdpa else f"MISSED (flash {ours:.2f}× > SDPA {sdpa:.2f}×)"


IMPLS = ("flash", "sdpa")


def run_under_load(
    cases: list[Case], *, repeats: int = 5, budget_s: float = 20.0, progress: Callable[[str], None] | None = None
) -> list[LoadResult]:
    """Forward medians of attnkit and SDPA on each case, quiet, then with one busy competitor."""
    say = progress or (lambda _msg: None)
    results = []
    for c in cases:
        steps, notes = {}, []
        for impl in IMPLS:
            try:
                steps[impl] = step(c, impl, "fwd")[0]
            except Unavailable as err:
                notes.append(f"{impl}: {err}")
        quiet, loaded = {}, {}
        for impl, fn in steps.items():
            say(f"{c.name} fwd {impl} quiet ...")
            quiet[impl] = median_seconds(fn, repeats, budget_s)
        with competing_process() as proc:
            for impl, fn in steps.items():
                say(f"{c.name} fwd {impl} under load ...")
                loaded[impl] = median_seconds(fn, repeats, budget_s)
            if proc.poll() is not None:  # the load was not there the whole time: no verdict
                notes.append(f"the competitor exited early (code {proc.returncode})")
                loaded = {}
        results.append(LoadResult(c.name, quiet, loaded, proc.pid, "; ".join(notes)))
    return results


def format_under_load(results: list[LoadResult]) -> str:
    """Markdown: quiet/loaded medians and slowdowns, target flash slowdown ≤ SDPA slowdown."""
    lines = [
        "## Under load (one busy competing process: a pure-Python loop on one core)",
        "",
        "| case | flash quiet s | flash loaded s | flash slowdown | SDPA quiet s | SDPA loaded s | SDPA slowdown | target | status |",
        "|---|" + "---:|" * 6 + "---|---|",
    ]

    def num(x: float | None, suffix: str = "") -> str:
        return "—" if x is None else f"{x:.{2 if suffix else 4}f}{suffix}"

    for r in results:
        cells = [r.case]
        for impl in IMPLS:
            cells += [num(r.quiet.get(impl)), num(r.loaded.get(impl)), num(r.slowdown(impl), "×")]
        cells += ["flash slowdown ≤ SDPA slowdown", r.status()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
