"""Facts about this machine and process, each read in one place: the CPU (model name and flags)
and resident memory (current, peak, and a reset of the peak).

Used by the benchmark package (:mod:`attnkit.bench`), the ``benchmarks/*.py`` scripts and the
examples. Linux first (``lscpu``, ``/proc``), with portable fallbacks. Imports nothing from
attnkit, so any layer may use it.

Example:
    >>> from attnkit import _machine
    >>> model, flags = _machine.cpu_info()
    >>> isinstance(model, str) and isinstance(flags, tuple) and _machine.peak_rss_mib() > 0
    True
"""

from __future__ import annotations

import os
import platform
import resource
import subprocess
from functools import lru_cache

__all__ = ["cpu_info", "cpu_vendor", "rss_mib", "peak_rss_mib", "reset_peak_rss"]


def _cpu_fields() -> dict[str, str]:
    """``lscpu``'s fields (lower-case keys), completed from ``/proc/cpuinfo`` (first CPU)."""
    fields: dict[str, str] = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10, env={**os.environ, "LC_ALL": "C"}).stdout
        fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}
    except (OSError, subprocess.SubprocessError):
        pass
    if "model name" not in fields or "flags" not in fields:  # no lscpu: the kernel's own table
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    key, _, value = line.partition(":")
                    fields.setdefault(key.strip().lower(), value.strip())
        except OSError:
            pass
    return fields


@lru_cache(maxsize=1)
def cpu_info() -> tuple[str, tuple[str, ...]]:
    """``(model name, every CPU flag)``: ``lscpu`` (as the kernel reports it), else ``/proc/cpuinfo``
    (first CPU; ``Features`` on ARM), else ``platform``; flags are ``()`` when nothing reports them."""
    fields = _cpu_fields()
    model = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    return model, tuple((fields.get("flags") or fields.get("features", "")).split())


@lru_cache(maxsize=1)
def cpu_vendor() -> str:
    """The CPU vendor (``GenuineIntel``, ``AuthenticAMD``, ...): ``lscpu``'s ``Vendor ID`` or
    ``/proc/cpuinfo``'s ``vendor_id``, else ``platform.processor()``."""
    fields = _cpu_fields()
    return fields.get("vendor id") or fields.get("vendor_id") or platform.processor()


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_mib() -> float:
    """This process's resident memory now (``VmRSS``); 0 where ``/proc`` is missing."""
    kib = _status_kib("VmRSS")
    return 0.0 if kib is None else kib / 1024


def peak_rss_mib() -> float:
    """This process's peak resident memory since start or :func:`reset_peak_rss` (``VmHWM``).

    Not ``ru_maxrss`` where ``/proc`` exists: Linux carries ``ru_maxrss`` over ``execve`` from the
    parent, so a fresh child would report its parent's peak; ``ru_maxrss`` is the fallback.
    """
    kib = _status_kib("VmHWM")
    if kib is None:
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / 1024


def reset_peak_rss() -> bool:
    """Restart the peak count here (Linux ≥ 4.0: writing 5 to ``clear_refs`` resets VmHWM);
    ``False`` if this system cannot."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False
