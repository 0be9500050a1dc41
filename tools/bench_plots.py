"""Performance plots for the docs, from the raw results ``attnkit bench --output FILE`` writes.

Usage: python tools/bench_plots.py [RESULT.md | DIR ...] [--out docs/img]

Input: Markdown files as ``attnkit bench --output`` writes them (by default every ``*.md`` under
``benchmarks/``, e.g. ``benchmarks/bench_2026-11-26.md``; a directory means every ``*.md`` in it). Of those, the newest run (the date on its first
line) is plotted. What is read is the per-implementation table: the one whose header has the
columns ``case``, ``mode``, ``impl``, ``median s`` and a ``peak RSS`` column; rows whose time is
``—`` (n/a, skipped) are left out. Columns are found by name, so added or reordered columns are fine.

Output (PNG, committed under docs/img/ and shown on the Performance page):
- ``perf-ratios.png``: per case and mode, time of SDPA / naive / flex divided by attnkit's time
  (the ``flash`` rows: what ``attnkit.attention`` ran), on a log axis; > 1 means attnkit is faster;
- ``perf-memory.png``: peak RSS of one fresh process per row, cases sorted by key length ``S``
  (a missing bar: that implementation was n/a or skipped for the case);
- ``docs/snippets/bench-status.md`` (Markdown, included by docs/performance.md): which run was
  plotted, its machine lines, and its table of targets (met / missed), copied as written.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OURS = "flash"  # the bench's name for attnkit.attention (engine="auto"; the note says which engine ran)
OTHERS = ("sdpa", "naive", "flex")
COLORS = {"flash": "#1f77b4", "sdpa": "#ff7f0e", "naive": "#7f7f7f", "flex": "#2ca02c"}


@dataclass(frozen=True)
class Row:
    case: str
    mode: str
    impl: str
    seconds: float
    rss_mib: float | None


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _number(text: str) -> float | None:
    m = re.match(r"^[\d.]+", text.replace(",", ""))
    return float(m.group(0)) if m else None


def parse(text: str) -> list[Row]:
    """Rows of every per-implementation table in one bench result (Markdown)."""
    rows: list[Row] = []
    lines = text.splitlines()
    for n, line in enumerate(lines):
        if not line.startswith("|"):
            continue
        head = [h.lower() for h in _cells(line)]
        if not {"case", "mode", "impl", "median s"} <= set(head) or n + 1 >= len(lines):
            continue
        col = {name: head.index(name) for name in ("case", "mode", "impl", "median s")}
        rss = next((i for i, h in enumerate(head) if "rss" in h), None)
        for body in lines[n + 2:]:
            if not body.startswith("|"):
                break
            c = _cells(body)
            if len(c) != len(head):
                continue
            seconds = _number(c[col["median s"]])
            if seconds is None:
                continue  # n/a or skipped
            rows.append(Row(c[col["case"]], c[col["mode"]], c[col["impl"]], seconds,
                            _number(c[rss]) if rss is not None else None))
    return rows


def run_date(text: str) -> str:
    m = re.search(r"\d{4}-\d{2}-\d{2}(?: \d{2}:\d{2})?", text.split("\n", 1)[0])
    return m.group(0) if m else ""


def newest(paths: list[Path]) -> tuple[Path, list[Row]]:
    files = [f for p in paths for f in (sorted(p.glob("*.md")) if p.is_dir() else [p])]
    runs = [(run_date(f.read_text(encoding="utf-8")), f) for f in files]
    runs = [(d, f) for d, f in runs if d and parse(f.read_text(encoding="utf-8"))]
    if not runs:
        sys.exit(f"no bench result with a per-implementation table in {[str(p) for p in paths]}")
    _, path = max(runs)
    return path, parse(path.read_text(encoding="utf-8"))


def status(text: str, source: str) -> str:
    """The run's machine lines and its targets table (header has ``target`` and ``status``), as Markdown."""
    lines = text.splitlines()
    machine = [line for line in lines[1:12] if line.startswith("- ")]
    table: list[str] = []
    for n, line in enumerate(lines):
        head = [h.lower() for h in _cells(line)] if line.startswith("|") else []
        if {"case", "target", "status"} <= set(head):
            end = next((i for i, b in enumerate(lines[n + 1:]) if not b.startswith("|")), len(lines))
            table = lines[n:n + 1 + end]
            break
    out = [f"Run of {run_date(text)} (`{source}`):", "", *machine, ""]
    return "\n".join(out + (table or ["(this run has no table of targets)"])) + "\n"


def key_length(case: str) -> int | None:
    m = re.search(r"\bS=(\d+)", case) or re.search(r"\bL=(\d+)", case)
    return int(m.group(1)) if m else None


def plot_ratios(rows: list[Row], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ours = {(r.case, r.mode): r.seconds for r in rows if r.impl == OURS}
    labels = list(ours)
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(labels) + 1.6))
    width = 0.8 / len(OTHERS)
    for k, impl in enumerate(OTHERS):
        times = {(r.case, r.mode): r.seconds for r in rows if r.impl == impl}
        ys = [i + (k - 1) * width for i, key in enumerate(labels) if key in times]
        xs = [times[key] / ours[key] for key in labels if key in times]
        ax.barh(ys, xs, height=width, color=COLORS[impl], label=f"{impl} time / attnkit time")
        for y, x in zip(ys, xs):
            ax.text(x * 1.03, y, f"{x:.2f}×", va="center", fontsize=7)
    ax.axvline(1, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_yticks(range(len(labels)), [f"{c} ({m})" for c, m in labels], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("speed-up of attnkit.attention (> 1: attnkit faster; log scale)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_memory(rows: list[Row], title: str, path: Path, idle_mib: float | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    impls = (OURS, "sdpa", "naive")
    rss = {(r.case, r.mode, r.impl): r.rss_mib for r in rows if r.rss_mib is not None}
    labels = sorted({(c, m) for c, m, i in rss if i == OURS}, key=lambda cm: (key_length(cm[0]) or 0, cm))
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(labels) + 1.6))
    width = 0.8 / len(impls)
    for k, impl in enumerate(impls):
        keys = [(i, (c, m, impl)) for i, (c, m) in enumerate(labels) if (c, m, impl) in rss]
        ys, xs = [i + (k - 1) * width for i, _ in keys], [rss[key] for _, key in keys]
        ax.barh(ys, xs, height=width, color=COLORS[impl], label="attnkit" if impl == OURS else impl)
        for y, x in zip(ys, xs):
            ax.text(x + 15, y, f"{x:.0f}", va="center", fontsize=7)
    ax.set_yticks(range(len(labels)), [f"{c} ({m})" for c, m in labels], fontsize=8)
    ax.invert_yaxis()
    idle = f" (the same process without work: {idle_mib:.0f})" if idle_mib else ""
    ax.set_xlabel(f"peak RSS of a fresh process per row, MiB{idle}")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str]) -> int:
    out = ROOT / "docs" / "img"
    if "--out" in argv:
        i = argv.index("--out")
        out, argv = Path(argv[i + 1]), argv[:i] + argv[i + 2:]
    # Default: every Markdown file under benchmarks/ (today's benchmarks/bench_*.md, or a runs/
    # folder); files without a dated first line and a per-implementation table are skipped.
    paths = [Path(a) for a in argv] or sorted((ROOT / "benchmarks").rglob("*.md"))
    path, rows = newest(paths)
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    out.mkdir(parents=True, exist_ok=True)
    text = path.read_text(encoding="utf-8")
    idle = re.search(r"without work[^:]*: (\d+) MiB", text)
    plot_ratios(rows, f"Speed-up per case (attnkit bench, {run_date(text)})", out / "perf-ratios.png")
    plot_memory(rows, f"Peak memory per case, by key length (attnkit bench, {run_date(text)})", out / "perf-memory.png",
                float(idle.group(1)) if idle else None)
    snippets = out.parent / "snippets"
    snippets.mkdir(exist_ok=True)
    (snippets / "bench-status.md").write_text(status(text, str(name)), encoding="utf-8")
    print(f"bench_plots: {len(rows)} rows from {name} -> {out / 'perf-ratios.png'}, {out / 'perf-memory.png'}, "
          f"{snippets / 'bench-status.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
