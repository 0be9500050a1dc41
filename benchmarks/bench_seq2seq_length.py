"""The fixed-vector bottleneck by input length: trained models scored per 20-character bucket, plus a plot.

Train the models first (same data, seed, width, batch, optimizer and epochs; only ``--score`` differs):

    attnkit seq2seq train --data date-lists --score none    --epochs 6 --out runs/lists-none    --no-progress
    attnkit seq2seq train --data date-lists --score general --epochs 6 --out runs/lists-general --no-progress

then score them on their (identical) held-out split:

    PYTHONPATH=src python benchmarks/bench_seq2seq_length.py none=runs/lists-none general=runs/lists-general \\
        --md length.md --plot benchmarks/seq2seq_length.png

Two numbers per bucket: **exact match** (the whole output right: every date of the line) and **dates
right** (the fraction of the line's ISO dates written correctly in their place), which does not
penalise a long line just for holding more dates.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from attnkit.seq2seq.train import config_of, load_checkpoint, load_data, load_translator


def score(directory: str, width: int) -> tuple[list, dict[int, list[tuple[bool, float]]]]:
    """Held-out examples and, per bucket start, (exact match, fraction of dates right) of each example."""
    translator = load_translator(directory)
    _, valid = load_data(config_of(load_checkpoint(directory)))
    outputs = translator.translate_batch([e.source for e in valid])
    buckets: dict[int, list[tuple[bool, float]]] = {}
    for example, out in zip(valid, outputs):
        gold, got = example.target.split(), out.output.split()
        right = sum(g == o for g, o in zip(gold, got)) / len(gold)
        buckets.setdefault(len(example.source) // width * width, []).append((out.output == translator.reference(example.target), right))
    return valid, buckets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", metavar="NAME=DIR", help="a label and a training directory, e.g. none=runs/lists-none")
    p.add_argument("--width", type=int, default=20, help="bucket width in source characters (default 20)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--md", default=None, help="also write the markdown table here")
    p.add_argument("--plot", default=None, help="write the accuracy-by-length plot (.png) here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    names, results, split = [], [], None
    for item in args.runs:
        name, _, directory = item.partition("=")
        valid, buckets = score(directory, args.width)
        sources = [e.source for e in valid]
        if split is not None and sources != split:
            raise SystemExit(f"{name}: a different held-out split; train every run with the same --data/--seed/sizes")
        split = sources
        names.append(name)
        results.append(buckets)
    starts = sorted(results[0])
    lines = ["| input length (chars) | examples | " + " | ".join(f"{n} exact" for n in names) + " | "
             + " | ".join(f"{n} dates right" for n in names) + " |",
             "|---|---:|" + "---:|" * (2 * len(names))]
    for s in starts:
        n = len(results[0][s])
        exact = [f"{100 * sum(e for e, _ in r[s]) / n:.1f}%" for r in results]
        dates = [f"{100 * sum(d for _, d in r[s]) / n:.1f}%" for r in results]
        lines.append(f"| {s}-{s + args.width - 1} | {n} | " + " | ".join(exact) + " | " + " | ".join(dates) + " |")
    total = [f"{100 * sum(e for b in r.values() for e, _ in b) / len(split):.2f}%" for r in results]
    lines.append(f"| all | {len(split)} | " + " | ".join(total) + " | " + " | ".join(
        f"{100 * sum(d for b in r.values() for _, d in b) / len(split):.2f}%" for r in results) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.md:
        Path(args.md).write_text(text, encoding="utf-8")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharex=True)
        mids = [s + args.width / 2 for s in starts]
        for name, r in zip(names, results):
            axes[0].plot(mids, [100 * sum(e for e, _ in r[s]) / len(r[s]) for s in starts], "o-", label=name)
            axes[1].plot(mids, [100 * sum(d for _, d in r[s]) / len(r[s]) for s in starts], "o-", label=name)
        for ax, title in zip(axes, ("exact match (whole line right)", "dates right (per date in its place)")):
            ax.set_title(title)
            ax.set_xlabel("input length (characters)")
            ax.set_ylim(0, 101)
            ax.grid(alpha=0.3)
        axes[0].set_ylabel("held-out accuracy (%)")
        axes[0].legend(title="--score")
        fig.suptitle("date-lists: 1-8 dates per line; a fixed context vector (none) vs attention (general)")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
