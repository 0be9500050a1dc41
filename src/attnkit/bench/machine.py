"""What ``attnkit bench`` records about the machine, and the first-use compile time of the kernel.

- :func:`cpu_info`: the CPU model name and the flags that decide the kernels torch and attnkit
  can use (``avx2``, ``avx512*``, ``amx*``), from :mod:`attnkit._machine` (``lscpu``, else
  ``/proc/cpuinfo``).
- :func:`header`: the markdown header of a benchmark report (date, CPU, threads, load, versions).
- :func:`compile_time`: build the fused kernel in a fresh cache directory in a subprocess, then
  load it again from that cache, timing both (target: first use ≤ 60 s, once per machine).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone

from .. import _machine

__all__ = ["cpu_info", "kernel_flags", "header", "CompileTime", "compile_time", "format_compile_time"]

FUSED_MODULE = "attnkit.engines.kernel.build"
COMPILE_TARGET_S = 60.0


def _relevant(flag: str) -> bool:
    return flag == "avx2" or flag.startswith(("avx512", "amx"))


def cpu_info() -> tuple[str, tuple[str, ...]]:
    """``(model name, relevant flags)`` of this CPU, e.g. ``("AMD EPYC", ("avx2", "avx512f", ...))``:
    the flags that decide the kernels torch and attnkit can use (read by :mod:`attnkit._machine`)."""
    model, flags = _machine.cpu_info()
    return model, tuple(f for f in flags if _relevant(f))


def kernel_flags() -> tuple[str, ...]:
    """The relevant CPU flags alone (targets that need e.g. ``amx_bf16`` read them)."""
    return cpu_info()[1]


def fused_status() -> str:
    """One phrase on the fused kernel: loaded, why not, or not part of this install."""
    if importlib.util.find_spec(FUSED_MODULE) is None:
        return "fused kernel not available (no attnkit.engines.kernel.build in this install)"
    from ..engines.kernel import build  # type: ignore[attr-defined]

    why = build.build_status()
    return "fused kernel loaded" if why is None else f"fused kernel not used: {why}"


def header(torch_threads: int, *, fused: bool = True) -> str:
    """Markdown header: date (UTC), CPU model and flags, threads, load, versions.

    ``fused=False`` skips asking the fused kernel for its status (which may build it).
    """
    import torch

    from .. import __version__

    model, flags = cpu_info()
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"
    lines = [
        f"# attnkit bench — {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        f"- CPU: {model} (lscpu model name); flags: {' '.join(flags) or 'none of avx2/avx512*/amx*'}",
        f"- threads: {torch_threads} torch threads, {os.cpu_count()} logical CPUs; load average at start: {load}",
        f"- torch {torch.__version__}, attnkit {__version__}, Python {platform.python_version()}",
    ]
    if fused:
        lines.append(f"- {fused_status()}")
    return "\n".join(lines)


@dataclass
class CompileTime:
    """First-use build time (fresh cache) and the load time from that cache, in seconds."""

    first_s: float | None
    cached_s: float | None
    note: str = ""


# Runs in the child: import, build (timed), and print the seconds as JSON.
_CHILD = """
import importlib, json, sys, time
mod = importlib.import_module(sys.argv[1])
start = time.perf_counter()
mod.build()
print(json.dumps({"build_s": time.perf_counter() - start}))
"""


def _build_in_child(module: str, cache: str, timeout: float) -> tuple[float | None, str]:
    env = {**os.environ, "ATTNKIT_CACHE": cache, "TORCH_EXTENSIONS_DIR": os.path.join(cache, "torch_extensions")}
    env.pop("ATTNKIT_NO_FUSED", None)
    try:
        proc = subprocess.run([sys.executable, "-c", _CHILD, module], capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"no result after {timeout:.0f} s"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return None, f"build failed: {last[:200]}"
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["build_s"]), ""


def compile_time(module: str = FUSED_MODULE, timeout: float = 1800.0) -> CompileTime:
    """Time building ``module`` (its ``build()``) in a fresh ``ATTNKIT_CACHE`` in a subprocess,
    then its ``build()`` again from that cache (what every later process pays).

    Never raises for a missing or failing kernel: the reason is in ``note``.
    """
    try:
        found = importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing
        found = False
    if not found:
        return CompileTime(None, None, "fused kernel not available")
    with tempfile.TemporaryDirectory(prefix="attnkit-cache-") as cache:
        first, why = _build_in_child(module, cache, timeout)
        if first is None:
            return CompileTime(None, None, why)
        cached, why = _build_in_child(module, cache, timeout)
    return CompileTime(first, cached, why)


def format_compile_time(result: CompileTime) -> str:
    """Markdown section with the target (first use ≤ 60 s) and whether it is met."""
    lines = ["## First-use compile of the fused kernel (fresh ATTNKIT_CACHE, subprocess)", ""]
    if result.first_s is None:
        return "\n".join(lines + [f"n/a: {result.note}"])
    status = "met" if result.first_s <= COMPILE_TARGET_S else f"MISSED by {result.first_s - COMPILE_TARGET_S:.1f} s"
    cached = "—" if result.cached_s is None else f"{result.cached_s:.2f} s"
    lines += [
        "| first use | from the cache | target | status |",
        "|---:|---:|---|---|",
        f"| {result.first_s:.1f} s | {cached} | ≤ {COMPILE_TARGET_S:.0f} s, once per machine | {status} |",
    ]
    if result.note:
        lines += ["", f"note: {result.note}"]
    return "\n".join(lines)
