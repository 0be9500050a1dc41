"""`attnkit bench` machinery on tiny cases: peers compute the same attention, the report has every
column and verdict, flex degrades to a note, the competing process is always stopped, the header
names the CPU, the compile-time probe works. Timings are never asserted."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from attnkit import _machine, bench
from attnkit.bench import implementations as impls
from attnkit.bench import load, machine, sections
from attnkit.bench import report as reports
from attnkit.cli import main

TINY = dict(repeats=1, budget_s=0.2, memory=False)


def _outputs(case: bench.Case, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    q, k, v = impls.inputs(case, requires_grad=False)
    out = {}
    with torch.no_grad():
        for name in names:
            out[name] = impls.MAKERS[name](case, q, k, v)[0]().float()
    return out


@pytest.mark.parametrize("case", [c for c in bench.QUICK_CASES if not c.dropout], ids=lambda c: c.name)
def test_peers_compute_the_same_attention(case):
    # The dense masks/biases given to SDPA and the naive version must be the case's exact
    # equivalent, or the ratios compare different problems.
    names = tuple(n for n in ("sdpa", "naive") if not (n == "sdpa" and case.softcap is not None))
    out = _outputs(case, ("flash", *names))
    tol = 3e-2 if case.dtype == "bfloat16" else 2e-5
    for name in names:
        assert (out[name] - out["flash"]).abs().max() <= tol, name


def test_cases_cover_the_issue_targets():
    names = [c.name for c in bench.CASES]
    for feature in ("full fp32", "causal fp32", "full bf16", "alibi", "softcap", "window(256,0) fp32 B=1 H=8 L=16384",
                    "dropout0.1", "full fp32 B=1 H=1 L=32768", "decode fp32 B=1 H=32 G=8 L=1 S=131072 D=128"):
        assert any(feature in n for n in names), feature
    assert all(c.targets for c in bench.CASES) and not any(c.targets for c in bench.QUICK_CASES)
    assert {(t.mode, t.metric) for c in bench.CASES for t in c.targets} >= {("fwd", "flex"), ("fwd", "plain"), ("fwd+bwd", "rss")}


def test_visible_pair_counts():
    assert bench.Case("c", 1, 1, 10, 8, causal=True).visible_pairs() == 55
    assert bench.Case("w", 1, 1, 10, 8, window=(2, 0)).visible_pairs() == 1 + 2 + 3 * 8
    assert bench.Case("f", 1, 1, 10, 8).flops("fwd+bwd") == 3.5 * 4 * 8 * 100
    # L != S: bottom-right alignment, query i sits at key position i + S - L
    assert bench.Case("d", 1, 1, 2, 8, S=5, causal=True).visible_pairs() == 4 + 5
    assert bench.Case("g", 1, 4, 1, 8, S=7, G=2).flops("fwd") == 4 * 4 * 8 * 7


def test_targets_and_verdicts(monkeypatch):
    t = bench.Target("fwd", "sdpa", ">=", 1.5)
    assert t.label() == "≥ 1.5× SDPA" and t.met(1.5) and not t.met(1.49)
    assert bench.Target("fwd", "plain", "<=", 1.3).label() == "≤ 1.3× plain fwd"
    assert bench.Target("fwd+bwd", "rss", "<=", 300).label() == "RSS <= 300 MiB"
    monkeypatch.setattr(machine, "cpu_info", lambda: ("CPU", ("avx2",)))
    c = bench.Case("c", 1, 1, 8, 8, targets=(t, bench.Target("fwd", "plain", "<=", 1.3)))
    assert reports.verdict(c, "fwd", {"sdpa": 2.0, "plain": 1.1}) == ("≥ 1.5× SDPA; ≤ 1.3× plain fwd", "met")
    assert reports.verdict(c, "fwd", {"sdpa": 0.75, "plain": 1.1})[1] == "MISSED (sdpa 0.75×)"
    assert reports.verdict(c, "fwd", {"plain": 1.1})[1] == "n/a (sdpa not measured)"
    assert reports.verdict(c, "fwd+bwd", {}) == ("—", "—")
    amx = bench.Case("b", 1, 1, 8, 8, targets=(bench.Target("fwd", "sdpa", ">=", 0.9, needs=("amx_bf16", "avx512_bf16")),))
    assert reports.verdict(amx, "fwd", {"sdpa": 0.5})[1] == "n/a (needs amx_bf16 or avx512_bf16)"


def _tiny_cases():
    return [
        bench.case("causal", 1, 2, 64, 16, causal=True, targets=(bench.Target("fwd", "sdpa", ">=", 1e-9),
                                                                   bench.Target("fwd+bwd", "rss", "<=", 300))),
        bench.case("softcap=5", 1, 2, 64, 16, softcap=5.0, modes=("fwd",), targets=(bench.Target("fwd", "plain", "<=", 1e9),)),
        bench.case("window(8,0)", 1, 2, 64, 16, window=(8, 0), modes=("fwd",)),
    ]


def test_report_has_every_column_and_verdict():
    report = bench.run_benchmark(_tiny_cases(), skip={"flex": "not in this test"}, **TINY)
    table = bench.format_report(report)
    lines = table.splitlines()
    assert "| " + " | ".join(reports.SUMMARY_COLUMNS) + " |" in lines
    assert "| " + " | ".join(reports.DETAIL_COLUMNS) + " |" in lines
    assert report.peak_gflops > 0 and len(report.checks) == 4
    assert len([r for r in report.rows if r.case.startswith("causal")]) == 3 + 4  # fwd: +flex row; fwd+bwd: no flex
    assert all(r.seconds > 0 and r.gflops > 0 for r in report.rows if r.impl not in ("flex",) and not r.note.startswith("n/a"))
    causal_fwd, causal_bwd, softcap, window = report.checks
    assert causal_fwd.status == "met" and set(causal_fwd.metrics) == {"sdpa", "naive"}
    assert causal_bwd.status == "n/a (rss not measured)"  # memory=False
    assert softcap.status == "met" and "plain" in softcap.metrics and "sdpa" not in softcap.metrics
    assert window.target == "—" and window.status == "—"
    row = next(line for line in lines if line.startswith(f"| {softcap.case} | fwd | "))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "n/a" and cells[5] == "n/a" and cells[6].endswith("×")  # SDPA, flex, flash/plain
    assert "n/a: softcap is not expressible in SDPA" in table and "not run: not in this test" in table
    assert "dense bool mask" in table


def test_flex_column_degrades_to_a_note(monkeypatch):
    def no_compiler():
        raise RuntimeError("InductorError: CppCompileError: C++ compiler not found\nmore lines")

    monkeypatch.setattr(impls, "_flex_compile", no_compiler)
    cases = [bench.case("full", 1, 2, 64, 16), bench.case("dropout0.1", 1, 2, 64, 16, dropout=0.1, modes=("fwd",))]
    report = bench.run_benchmark(cases, **TINY)
    flex = {(r.case, r.mode): r for r in report.rows if r.impl == "flex"}
    assert set(flex) == {(cases[0].name, "fwd"), (cases[1].name, "fwd")}  # forward only
    assert flex[cases[0].name, "fwd"].note == "n/a: compile failed: RuntimeError: InductorError: CppCompileError: C++ compiler not found"
    assert flex[cases[1].name, "fwd"].note == "n/a: flex_attention has no dropout"
    assert all(r.seconds is None for r in flex.values()) and "× flex" in bench.format_report(report)


@pytest.mark.slow
def test_compiled_flex_matches_flash():
    # One compile covers the block mask (window) and the score_mod (softcap, then ALiBi).
    case = bench.case("window alibi softcap", 1, 2, 128, 16, window=(16, 0), alibi=True, softcap=5.0)
    out = _outputs(case, ("flash", "flex", "naive"))
    assert (out["flex"] - out["flash"]).abs().max() <= 2e-5
    assert (out["naive"] - out["flash"]).abs().max() <= 2e-5


def _gone(pid: int) -> bool:
    """The process has exited (reaped, or a zombie waiting for its new parent to reap it)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_under_load_spawns_and_stops_its_competitor():
    results = load.run_under_load([bench.case("full", 1, 2, 64, 16)], repeats=1, budget_s=0.2)
    (r,) = results
    assert r.note == "" and set(r.quiet) == set(r.loaded) == {"flash", "sdpa"}
    assert r.slowdown("flash") > 0 and r.slowdown("sdpa") > 0 and r.status().split()[0] in ("met", "MISSED")
    assert r.competitor_pid != os.getpid() and _gone(r.competitor_pid)
    table = load.format_under_load(results)
    assert "flash slowdown | SDPA quiet s" in table and "flash slowdown ≤ SDPA slowdown" in table


def test_competitor_is_stopped_on_ctrl_c():
    with pytest.raises(KeyboardInterrupt):
        with load.competing_process() as proc:
            pid = proc.pid
            assert proc.poll() is None  # running (spinning) inside the block
            raise KeyboardInterrupt
    assert _gone(pid)


def test_competitor_exits_when_its_parent_dies():
    # A benchmark killed with SIGKILL runs no finally: the competitor notices it was re-parented.
    spawn = "import os, subprocess, sys; p = subprocess.Popen([sys.executable, '-c', sys.argv[1], str(os.getpid())]); print(p.pid, flush=True); os._exit(0)"
    pid = int(subprocess.run([sys.executable, "-c", spawn, load._BUSY], capture_output=True, text=True, timeout=60).stdout)
    deadline = time.monotonic() + 30
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(pid)


def test_header_names_the_cpu_and_its_flags():
    model, flags = machine.cpu_info()
    text = machine.header(3, fused=False)
    assert f"- CPU: {model} (lscpu model name)" in text and "3 torch threads" in text
    assert f"torch {torch.__version__}" in text and " UTC" in text.splitlines()[0]
    assert all(f == "avx2" or f.startswith(("avx512", "amx")) for f in flags)
    with open("/proc/cpuinfo", encoding="utf-8") as fh:  # lscpu reports the kernel's model name
        names = [line.split(":", 1)[1].strip() for line in fh if line.lower().startswith("model name")]
    if names:
        assert model == names[0]


def test_cpu_info_without_lscpu(monkeypatch):
    def missing(*args, **kwargs):
        raise FileNotFoundError("lscpu")

    _machine.cpu_info.cache_clear()
    monkeypatch.setattr(_machine.subprocess, "run", missing)
    try:
        model, flags = machine.cpu_info()
        assert model and model != "unknown CPU"
        assert flags == machine.cpu_info()[1] and all(f in _machine.cpu_info()[1] for f in flags)
    finally:
        _machine.cpu_info.cache_clear()


_FAKE_FUSED = '''
import os, pathlib
def build():
    root = pathlib.Path(os.environ["ATTNKIT_CACHE"])
    if os.environ.get("FAKE_FAIL"):
        raise RuntimeError("no C++ compiler ('c++' not found)")
    marker = root / "built"
    if marker.exists():
        return
    assert not any(root.iterdir()), "the cache must start empty"
    marker.write_text("x")
'''


def test_compile_time_in_a_fresh_cache(tmp_path, monkeypatch):
    (tmp_path / "fake_fused_kernel.py").write_text(_FAKE_FUSED)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    result = machine.compile_time("fake_fused_kernel", timeout=120)
    assert result.note == "" and result.first_s >= 0 and result.cached_s >= 0
    assert "| first use | from the cache | target | status |" in machine.format_compile_time(result)
    monkeypatch.setenv("FAKE_FAIL", "1")
    failed = machine.compile_time("fake_fused_kernel", timeout=120)
    assert failed.first_s is None and failed.note == "build failed: RuntimeError: no C++ compiler ('c++' not found)"


def test_compile_time_without_the_kernel():
    result = machine.compile_time("attnkit.engines._no_such_kernel")
    assert result.first_s is None and result.note == "fused kernel not available"
    assert machine.format_compile_time(result).endswith("n/a: fused kernel not available")


def test_cli_quick_subset_writes_the_report(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(machine, "fused_status", lambda: "fused kernel: test stand-in")
    out_file = tmp_path / "bench.md"
    argv = ["bench", "--quick", "--cases", "causal", "--repeats", "1", "--budget", "0.2", "--no-memory", "--silent",
            "--output", str(out_file)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("# attnkit bench — ") and "(lscpu model name)" in out and "## Targets" in out
    assert "| causal fp32 B=1 H=2 L=256 D=32 | fwd | flash |" in out and "not run: --quick" in out
    assert out_file.read_text() == out


def test_cli_sections(capsys, monkeypatch):
    monkeypatch.setattr(machine, "fused_status", lambda: "fused kernel: test stand-in")
    monkeypatch.setattr(machine, "compile_time", lambda: machine.CompileTime(75.0, 0.4))
    monkeypatch.setattr(load, "run_under_load", lambda cases, **kw: [load.LoadResult(cases[0].name, {"flash": 1.0, "sdpa": 1.0},
                                                                                      {"flash": 1.5, "sdpa": 2.0}, 1)])
    assert main(["bench", "--quick", "--under-load", "--compile-time", "--silent"]) == 0
    out = capsys.readouterr().out
    assert "## Targets" not in out  # the case table runs only by default or with --all
    assert "| full fp32 B=1 H=2 L=256 D=32 | 1.0000 | 1.5000 | 1.50× | 1.0000 | 2.0000 | 2.00× |" in out
    assert "| met |" in out and "| 75.0 s | 0.40 s | ≤ 60 s, once per machine | MISSED by 15.0 s |" in out


def test_memory_column_and_baseline():
    # a decode case: the probe subprocess rebuilds S, G and the engine from the pickled case
    c = bench.case("decode", 1, 4, 1, 16, G=2, S=256, engine="decode", modes=("fwd",))
    report = bench.run_benchmark([c], repeats=1, budget_s=0.2,
                                 skip={"flex": "not in this test"})
    rss = {r.impl: r.rss_mib for r in report.rows}
    assert rss["flash"] > 10 and rss["sdpa"] > 10 and rss["naive"] > 10 and rss["flex"] is None
    assert 10 < report.baseline_rss_mib and "the same process without work" in bench.format_report(report)


def test_sections_and_implementations_are_one_registry_each(capsys):
    assert tuple(impls.MAKERS) == bench.cases.IMPLS  # table order
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = capsys.readouterr().out
    assert all(f"--{s.name}" in text for s in sections.SECTIONS if not s.default)
    assert [s.name for s in sections.SECTIONS if s.default] == ["cases"]
