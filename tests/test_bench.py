"""`attnkit bench` machinery runs end to end on a tiny case (timings are never asserted)."""

from __future__ import annotations

from attnkit.cli import benchmark as bench
from attnkit.cli import main


def test_tiny_benchmark_table(capsys):
    cases = [bench.Case("tiny causal", 1, 2, 64, 16, causal=True), bench.Case("tiny window", 1, 2, 64, 16, window=(8, 0))]
    peak, rows = bench.run_benchmark(cases, repeats=1, budget_s=1.0, memory=False)
    assert peak > 0 and len(rows) == 2 * 2 * 3
    assert all(r.seconds and r.seconds > 0 and r.gflops > 0 for r in rows)
    assert all(r.ratios["flash_speedup"] > 0 for r in rows)
    table = bench.format_table(peak, rows)
    assert table.count("| tiny causal |") == 6 and "dense mask" in table


def test_visible_pair_counts():
    assert bench.Case("c", 1, 1, 10, 8, causal=True).visible_pairs() == 55
    assert bench.Case("w", 1, 1, 10, 8, window=(2, 0)).visible_pairs() == 1 + 2 + 3 * 8
    assert bench.Case("f", 1, 1, 10, 8).flops("fwd+bwd") == 3.5 * 4 * 8 * 100


def test_memory_probe_reports_rss():
    rss = bench._memory_mib(bench.Case("m", 1, 1, 128, 16), "flash", "fwd+bwd")
    assert rss is not None and rss > 10


def test_cli_quick_subset(capsys):
    assert main(["bench", "--quick", "--cases", "causal L=512", "--repeats", "1", "--budget", "0.5", "--no-memory", "--silent"]) == 0
    out = capsys.readouterr().out
    assert "fp32 matmul peak" in out and "| causal L=512 D=64 | fwd | flash |" in out
