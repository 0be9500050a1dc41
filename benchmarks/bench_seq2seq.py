"""The bottleneck claim with numbers: fixed-context (``--score none``) vs attention on the date task.

Every model trains with the same budget (same data, epochs, batch size, optimizer, seed, width)
and is scored on the same held-out split: exact match per input-length bucket, after each
epoch, and the alignment score of its attention. Writes a markdown report.

    PYTHONPATH=src python benchmarks/bench_seq2seq.py --scores none,general,additive,dot --md out.md
    PYTHONPATH=src python benchmarks/bench_seq2seq.py --epochs 1 --scores none,general   # a tighter budget
    PYTHONPATH=src python benchmarks/bench_seq2seq.py --task pairs --scores none,general  # longer inputs

``--task pairs`` joins two dates per line (``"Nov 22nd 2026 and 03/05/1986 (US)"`` →
``"2026-11-22 1986-05-03"``), 17 to 60 characters, written to a TSV file and trained through
the ordinary ``--data file.tsv`` path; there are no spans, so no alignment score.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from attnkit import _machine
from attnkit.seq2seq.data import generate_dates
from attnkit.seq2seq.evaluate import FIELDS, evaluate
from attnkit.seq2seq.train import Trainer, TrainConfig


def pairs_tsv(path: Path, n: int, seed: int = 0) -> str:
    """``n`` lines ``"<date a> and <date b>\t<iso a> <iso b>"`` with distinct sources."""
    a, b = generate_dates(n, seed=seed, unique=True), generate_dates(n, seed=seed + 1, unique=True)
    path.write_text("".join(f"{x.source} and {y.source}\t{x.target} {y.target}\n" for x, y in zip(a, b)),
                    encoding="utf-8")
    return str(path)


def run(score: str, epochs: int, out: Path, data: str = "dates", width: int = 5) -> dict:
    config = TrainConfig(score=score, epochs=epochs, data=data)
    trainer = Trainer(config, out / score)
    start = time.perf_counter()
    result = trainer.run(progress=False, log=lambda s: print(f"  [{score}] {s}", flush=True))
    wall = time.perf_counter() - start
    report = evaluate(trainer.translator(), trainer.valid_set, bucket_width=width)
    return {"score": score, "params": sum(p.numel() for p in trainer.model.parameters()), "wall": wall,
            "result": result, "report": report}


def markdown(runs: list[dict], args: argparse.Namespace) -> str:
    cfg = TrainConfig(epochs=args.epochs)
    names = [r["score"] for r in runs]
    n_valid = runs[0]["report"].n
    task = ("Date task, " if args.task == "dates" else "Two-dates task (TSV path), ") + (
        f"{cfg.train_size} training / {n_valid} held-out examples" if args.task == "dates"
        else f"{args.pairs - n_valid} training / {n_valid} held-out lines")
    lines = [
        f"{task} (no source string shared), "
        f"char level, hidden {cfg.hidden}, embed {cfg.embed}, batch {cfg.batch_size}, Adam lr {cfg.lr}, "
        f"clip {cfg.clip}, {args.epochs} epochs, seed {cfg.seed}; {torch.get_num_threads()} torch thread(s); "
        f"CPU: {_machine.cpu_info()[0]}.",
        "",
        "| score | parameters | train wall time | held-out exact match | alignment score (year / month / day) |",
        "|---|---:|---:|---:|---|",
    ]
    for r in runs:
        a = r["report"].alignment
        align = ("n/a (no weights)" if r["score"] == "none" else "n/a (no spans)") if a is None else (
            f"{100 * a.score:.1f}% ({' / '.join(f'{100 * a.field_score(f):.0f}' for f in FIELDS)})")
        lines.append(f"| {r['score']} | {r['params']:,} | {r['wall']:.0f} s | {100 * r['report'].accuracy:.2f}% | {align} |")
    lines += ["", "Exact match by input length (source characters):", "",
              "| input length | examples | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    for i, b in enumerate(runs[0]["report"].buckets):
        if b.n:
            cells = [f"{100 * r['report'].buckets[i].accuracy:.1f}%" for r in runs]
            lines.append(f"| {b.lo}-{b.hi} | {b.n} | " + " | ".join(cells) + " |")
    lines += ["", "Held-out exact match after each epoch:", "",
              "| epoch | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for e in range(args.epochs):
        cells = [f"{100 * r['result'].history[e]['valid_exact']:.2f}%" for r in runs]
        lines.append(f"| {e + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scores", default="none,general,additive,dot")
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--task", default="dates", choices=("dates", "pairs"))
    p.add_argument("--pairs", type=int, default=22_000, help="lines of the pairs task (10%% held out)")
    p.add_argument("--md", default=None, help="write the markdown report here (default: print it)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data, width = ("dates", 5) if args.task == "dates" else (pairs_tsv(Path(tmp) / "pairs.tsv", args.pairs), 10)
        runs = [run(s, args.epochs, Path(tmp), data, width) for s in args.scores.split(",")]
    text = markdown(runs, args)
    if args.md:
        Path(args.md).write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
