"""The attention benchmark behind ``attnkit bench``: flash vs SDPA vs a naive materialized version.

Rules (DESIGN.md): one process and one run for all timings (same inputs, after warm-up,
medians), ratios rather than absolute times, GFLOP/s counted on visible (query, key) pairs
(``4·B·H·D`` per pair forward, 3.5× that for forward+backward), the fraction of this
machine's fp32 matmul peak measured in the same run, and peak memory as the RSS of a fresh
subprocess per case and implementation.
"""

from __future__ import annotations

import json
import math
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..functional import attention
from ..scores import alibi_slopes

__all__ = ["Case", "CASES", "QUICK_CASES", "run_benchmark", "matmul_peak_gflops"]

IMPLS = ("flash", "sdpa", "naive")
# The naive version materializes (B, H, L, S) scores several times over in backward; skip it
# (and say so) once one fp32 score matrix would exceed this.
NAIVE_LIMIT_BYTES = 2 << 30


@dataclass(frozen=True)
class Case:
    """One benchmark configuration (shapes use the DESIGN.md legend; L = S)."""

    name: str
    B: int
    H: int
    L: int
    D: int
    causal: bool = False
    window: tuple[int, int] | None = None
    alibi: bool = False
    dropout: float = 0.0
    modes: tuple[str, ...] = ("fwd", "fwd+bwd")
    impls: tuple[str, ...] = IMPLS

    def visible_pairs(self) -> int:
        """Number of (query, key) pairs the masks leave visible, per (batch, head)."""
        L = self.L
        if self.window is not None:
            left = self.window[0]
            return sum(min(i, left) + 1 for i in range(L))
        return L * (L + 1) // 2 if self.causal else L * L

    def flops(self, mode: str) -> float:
        fwd = 4.0 * self.B * self.H * self.D * self.visible_pairs()
        return fwd if mode == "fwd" else 3.5 * fwd


def _cases() -> list[Case]:
    out = []
    for D in (64, 128):
        for L in (1024, 4096, 16384):
            for causal in (False, True):
                out.append(Case(f"{'causal' if causal else 'full'} L={L} D={D}", 1, 8, L, D, causal=causal))
    out.append(Case("window(256,0) L=16384 D=64", 1, 8, 16384, 64, window=(256, 0)))
    out.append(Case("alibi L=4096 D=64", 1, 8, 4096, 64, alibi=True))
    out.append(Case("dropout0.1 L=4096 D=64", 1, 8, 4096, 64, dropout=0.1))
    out.append(Case("memory L=32768 H=1 D=64", 1, 1, 32768, 64, modes=("fwd+bwd",), impls=("flash", "sdpa")))
    return out


CASES: list[Case] = _cases()
QUICK_CASES: list[Case] = [
    Case("full L=512 D=64", 1, 4, 512, 64),
    Case("causal L=512 D=64", 1, 4, 512, 64, causal=True),
    Case("window(64,0) L=1024 D=64", 1, 4, 1024, 64, window=(64, 0)),
    Case("alibi L=512 D=64", 1, 4, 512, 64, alibi=True),
    Case("dropout0.1 L=512 D=64", 1, 4, 512, 64, dropout=0.1),
]


def _inputs(case: Case, requires_grad: bool):
    g = torch.Generator().manual_seed(0)
    shape = (case.B, case.H, case.L, case.D)
    return [torch.randn(shape, generator=g).requires_grad_(requires_grad) for _ in range(3)]


def _dense_mask(case: Case) -> torch.Tensor | None:
    """The boolean (True = attend) or additive mask SDPA/naive need for features SDPA lacks."""
    L = case.L
    i = torch.arange(L).view(-1, 1)
    j = torch.arange(L).view(1, -1)
    if case.window is not None:
        return (j <= i) & (j >= i - case.window[0])
    if case.alibi:
        slopes = alibi_slopes(case.H).view(1, -1, 1, 1)
        bias = -slopes * (i - j).abs()
        return bias.masked_fill(j > i, float("-inf")) if case.causal else bias
    return None


def _runner(case: Case, impl: str, q, k, v) -> Callable[[], torch.Tensor]:
    scale = 1.0 / math.sqrt(case.D)
    if impl == "flash":
        kw = dict(causal=case.causal, window=case.window, dropout_p=case.dropout, seed=1 if case.dropout else None)
        if case.alibi:
            kw["alibi_slopes"] = alibi_slopes(case.H)
        return lambda: attention(q, k, v, engine="flash", **kw)
    mask = _dense_mask(case)
    causal = case.causal and mask is None
    if impl == "sdpa":
        return lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=case.dropout)

    def naive() -> torch.Tensor:
        s = (q @ k.transpose(-1, -2)) * scale
        if mask is not None:
            s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
        elif causal:
            s = s.masked_fill(torch.ones(case.L, case.L, dtype=torch.bool).triu(1), float("-inf"))
        p = torch.softmax(s, -1)
        if case.dropout:
            p = F.dropout(p, case.dropout)
        return p @ v

    return naive


def _step(case: Case, impl: str, mode: str) -> Callable[[], None]:
    q, k, v = _inputs(case, requires_grad=mode != "fwd")
    run = _runner(case, impl, q, k, v)
    if mode == "fwd":

        def fwd() -> None:
            with torch.no_grad():
                run()

        return fwd
    do = torch.randn(case.B, case.H, case.L, case.D, generator=torch.Generator().manual_seed(1))

    def fwd_bwd() -> None:
        torch.autograd.grad(run(), (q, k, v), do)

    return fwd_bwd


def _median_seconds(fn: Callable[[], None], repeats: int, budget_s: float) -> float:
    t0 = time.perf_counter()
    fn()  # warm-up (allocations, kernel selection)
    first = time.perf_counter() - t0
    samples: list[float] = []
    if first > budget_s:  # one long run is its own measurement
        return first
    while len(samples) < repeats and sum(samples) < budget_s:
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def matmul_peak_gflops(n: int = 2048, repeats: int = 5) -> float:
    """Measured fp32 matmul GFLOP/s of this machine (median of ``repeats`` n×n products)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / _median_seconds(lambda: torch.mm(a, b), repeats, 30.0) / 1e9


def _naive_too_big(case: Case) -> bool:
    return case.B * case.H * case.L * case.L * 4 > NAIVE_LIMIT_BYTES


def _memory_mib(case: Case, impl: str, mode: str) -> float | None:
    """Peak RSS (MiB) of a fresh subprocess running one step of the case."""
    payload = json.dumps({"case": asdict(case), "impl": impl, "mode": mode})
    proc = subprocess.run(
        [sys.executable, "-m", "attnkit.cli.benchmark", "--memory-probe", payload], capture_output=True, text=True, timeout=3600
    )
    if proc.returncode != 0:
        return None
    return float(proc.stdout.strip().splitlines()[-1])


@dataclass
class Row:
    case: str
    mode: str
    impl: str
    seconds: float | None
    gflops: float | None
    peak_frac: float | None
    rss_mib: float | None
    note: str = ""
    ratios: dict[str, float] = field(default_factory=dict)


def run_benchmark(
    cases: list[Case], *, repeats: int = 5, budget_s: float = 20.0, memory: bool = True,
    progress: Callable[[str], None] | None = None,
) -> tuple[float, list[Row]]:
    """Time every case × implementation × mode; returns (matmul peak GFLOP/s, rows)."""
    say = progress or (lambda _msg: None)
    peak = matmul_peak_gflops()
    say(f"fp32 matmul peak: {peak:.1f} GFLOP/s")
    rows: list[Row] = []
    for case in cases:
        for mode in case.modes:
            group: dict[str, Row] = {}
            for impl in case.impls:
                if impl == "naive" and _naive_too_big(case):
                    gib = case.B * case.H * case.L**2 * 4 / 2**30
                    group[impl] = Row(case.name, mode, impl, None, None, None, None, f"skipped: {gib:.0f} GiB score matrix")
                    continue
                say(f"{case.name} {mode} {impl} ...")
                secs = _median_seconds(_step(case, impl, mode), repeats, budget_s)
                gf = case.flops(mode) / secs / 1e9
                rss = _memory_mib(case, impl, mode) if memory else None
                note = "dense mask" if impl != "flash" and (case.window or case.alibi) else ""
                group[impl] = Row(case.name, mode, impl, secs, gf, gf / peak, rss, note)
            base = group.get("flash")
            for row in group.values():
                if base and base.seconds and row.seconds:
                    row.ratios["flash_speedup"] = row.seconds / base.seconds
                rows.append(row)
    return peak, rows


def format_table(peak: float, rows: list[Row]) -> str:
    """Markdown table of the rows; ``speedup`` is this impl's time / flash's time (>1: flash faster)."""
    lines = [
        f"fp32 matmul peak measured in this run: {peak:.1f} GFLOP/s",
        "",
        "| case | mode | impl | median s | GFLOP/s | % peak | flash speedup | peak RSS MiB | note |",
        "|---|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        def f(x: float | None, fmt: str) -> str:
            return "—" if x is None else format(x, fmt)

        lines.append(
            f"| {r.case} | {r.mode} | {r.impl} | {f(r.seconds, '.4f')} | {f(r.gflops, '.1f')} | "
            f"{f(None if r.peak_frac is None else 100 * r.peak_frac, '.0f')} | "
            f"{f(r.ratios.get('flash_speedup'), '.2f')} | {f(r.rss_mib, '.0f')} | {r.note} |"
        )
    return "\n".join(lines)


def _memory_probe(payload: str) -> None:
    spec = json.loads(payload)
    c = spec["case"]
    c["modes"], c["impls"] = tuple(c["modes"]), tuple(c["impls"])
    c["window"] = tuple(c["window"]) if c["window"] else None
    torch.set_num_threads(torch.get_num_threads())
    _step(Case(**c), spec["impl"], spec["mode"])()
    print(_peak_rss_mib())


def _peak_rss_mib() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over execve from
    the parent, so a child would report the benchmark process's own peak."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-probe":
        _memory_probe(sys.argv[2])
