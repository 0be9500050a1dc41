"""``attnkit seq2seq train | translate | evaluate``: a thin layer over [`attnkit.seq2seq`][attnkit.seq2seq].

    attnkit seq2seq train --data dates --out runs/dates           # ~1-2 min on 2 cores
    attnkit seq2seq translate --model runs/dates "Nov 22nd 2026" --plot nov22.png
    attnkit seq2seq evaluate --model runs/dates
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ..errors import AttnkitError
from ._help import examples
from . import _checks

__all__ = ["register"]


def _common(args: argparse.Namespace) -> None:
    """Checks shared by the three commands; then the thread count is set."""
    _checks.positive("--threads", args.threads)
    if hasattr(args, "beam"):
        _checks.positive("--beam", args.beam)
        _checks.finite("--length-penalty", args.length_penalty, low=0.0, low_inclusive=True, example=0.6)


def _check_train(args: argparse.Namespace) -> None:
    """Every option of ``train``, before any data is read or any step runs."""
    _common(args)
    for option in ("epochs", "hidden", "embed", "batch_size", "train_size", "valid_size", "max_length"):
        value = getattr(args, option)
        if value is not None:
            _checks.positive("--" + option.replace("_", "-"), value)
    if args.max_minutes is not None:
        _checks.finite("--max-minutes", args.max_minutes, low=0.0, example=10)
    _checks.finite("--lr", args.lr, low=0.0, example=3e-3)
    _checks.finite("--dropout", args.dropout, low=0.0, high=1.0, low_inclusive=True, example=0.1)
    if not _builtin(args.data):
        _checks.input_file("--data", args.data)
    _checks.output_dir("--out", args.out)


def _builtin(data: str | None) -> bool:
    """Whether ``--data`` names a generated built-in task (or is left out: the dates task)."""
    from ..seq2seq.data import BUILTIN_TASKS

    return data is None or data in BUILTIN_TASKS


def _say_skipped(lines: list[int], what: str) -> None:
    """One line listing the TSV lines left out as too long (the first 20 of them)."""
    if lines:
        shown = ", ".join(map(str, lines[:20])) + (", ..." if len(lines) > 20 else "")
        print(f"skipped {len(lines)} pair(s) {what}, at line(s) {shown}")


def _cmd_train(args: argparse.Namespace) -> int:
    from ..seq2seq.train import CHECKPOINT, Trainer, TrainConfig

    _check_train(args)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if args.resume:
        trainer = Trainer.resume(out, data=None if _builtin(args.data) else args.data)
        target = args.epochs or trainer.config.epochs
        if trainer.epoch == target and trainer.batch == 0:
            # The same command again (a scheduler re-running a job that had finished): nothing to do.
            print(f"{out} has completed its {target} epochs; nothing to train (pass --epochs {target + 1} or more "
                  f"to continue it)")
            return 0
        if trainer.epoch > target:
            raise AttnkitError.build(f"--epochs of at least the {trainer.epoch} epochs {out} has trained", str(target),
                                     f"pass --epochs {trainer.epoch} (complete) or more to train further")
        print(f"resuming {out} at epoch {trainer.epoch + 1}, batch {trainer.batch}/{trainer.batches_per_epoch} "
              f"(options other than --epochs/--max-minutes come from the checkpoint)")
    else:
        if (out / CHECKPOINT).exists():
            raise AttnkitError.build(f"an --out directory without {CHECKPOINT}", f"{out} already holds one",
                                     "pass --resume to continue it, or choose another --out")
        config = TrainConfig(
            data=args.data or "dates", level=args.level, score=args.score, embed=args.embed, hidden=args.hidden,
            dropout=args.dropout, epochs=args.epochs or TrainConfig.epochs, batch_size=args.batch_size, lr=args.lr,
            train_size=args.train_size, valid_size=args.valid_size, seed=args.seed, max_length=args.max_length,
        )
        trainer = Trainer(config, out)
        n_params = sum(p.numel() for p in trainer.model.parameters())
        print(f"training on {len(trainer.train_set)} examples ({config.data}, {config.level} level), held out "
              f"{len(trainer.valid_set)}; score={config.score}, {n_params:,} parameters, {torch.get_num_threads()} threads")
    _say_skipped(trainer.skipped, f"longer than {trainer.config.max_length} tokens (--max-length)")
    start = time.perf_counter()
    try:
        result = trainer.run(epochs=args.epochs, max_minutes=args.max_minutes, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"\ninterrupted; {out / CHECKPOINT} holds the last finished epoch, continue with --resume")
        return 130
    print(f"held-out exact match {100 * result.valid_exact:.2f}% after {result.epoch} epochs ({result.step} steps), "
          f"{time.perf_counter() - start:.0f}s wall; model in {out}")
    return 0


def _cmd_translate(args: argparse.Namespace) -> int:
    import importlib.util

    from ..seq2seq.train import load_translator

    _common(args)
    if args.plot:
        if len(args.text) != 1:
            raise AttnkitError.build("exactly one text with --plot", f"{len(args.text)} texts", "plot one text at a time")
        _checks.output_file("--plot", args.plot, (".png", ".svg"))
        if importlib.util.find_spec("matplotlib") is None:
            raise AttnkitError.build("matplotlib for --plot", "it is not installed", "pip install 'attnkit[viz]'")
    torch.set_num_threads(args.threads)
    translator = load_translator(args.model)
    for text in args.text:
        t = translator.translate(text, beam=args.beam, length_penalty=args.length_penalty)
        print(f"{t.output}\t(log p = {t.log_prob:.4f})" if args.verbose else t.output)
        if args.plot:
            if t.weights is None:
                raise AttnkitError.build("a model with attention for --plot", "score=none (a fixed context, no weights)",
                                         "train with --score general, dot or additive")
            from ..seq2seq.plot import plot_alignment

            plot_alignment(t.weights, t.source_tokens, t.output_tokens, path=args.plot, title=f"{text} → {t.output}")
            print(f"alignment heatmap written to {args.plot}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ..seq2seq.data import load_tsv
    from ..seq2seq.evaluate import evaluate, format_report
    from ..seq2seq.train import config_of, load_checkpoint, load_translator, run_data

    _common(args)
    _checks.positive("--bucket-width", args.bucket_width)
    if args.limit is not None:
        _checks.positive("--limit", args.limit)
    if args.data:
        _checks.input_file("--data", args.data)
    torch.set_num_threads(args.threads)
    state = load_checkpoint(args.model)
    translator, config = load_translator(args.model, state), config_of(state)
    if args.data:
        # the training cap applies here too: one huge line would pad a whole batch of 512 to its length
        examples, title, skipped = [], args.data, []
        for e in load_tsv(args.data):
            if len(translator.src_vocab.tokens(e.source)) > config.max_length:
                skipped.append(e.line)
            else:
                examples.append(e)
        _say_skipped(skipped, f"with sources longer than the run's {config.max_length} tokens")
    else:  # the run's own held-out split: regenerated dates or its copy data.tsv, never a path stored in the checkpoint
        examples = run_data(args.model, state).valid
        title = f"held-out split of {config.data}"
    examples = examples[: args.limit] if args.limit is not None else examples
    report = evaluate(translator, examples, beam=args.beam, length_penalty=args.length_penalty,
                      bucket_width=args.bucket_width)
    print(format_report(report, title=title))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``attnkit seq2seq {train,translate,evaluate}`` to the top-level parser."""
    from ..seq2seq.model import SCORES

    p = sub.add_parser("seq2seq", help="encoder-decoder translator with attention (train, translate, evaluate)",
                       description="A bidirectional-GRU encoder and a GRU decoder with attention, trained on CPU.")
    cmds = p.add_subparsers(dest="seq2seq_command", required=True, parser_class=type(p))

    def common(q: argparse.ArgumentParser) -> None:
        # The GRU's matmuls are small: a second intra-op thread buys nothing and stalls when cores are shared.
        q.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1, fastest here)")

    t = cmds.add_parser("train", help="train a model", description="Teacher-forced training with Adam; a checkpoint "
                        "is written atomically after every epoch.",
                        epilog=examples("attnkit seq2seq train --data dates --score general --out runs/dates",
                                        "attnkit seq2seq train --out runs/dates --resume --epochs 8"))
    t.add_argument("--data", default=None, help='"dates" (the default) or "date-lists" (generated, no download; '
                   'date-lists: 1-8 dates per line, up to ~170 characters) or a source<TAB>target file (copied into '
                   '--out); with --resume: checked against the run\'s data')
    t.add_argument("--score", default="general", choices=SCORES, help="attention score, or none for a fixed context")
    t.add_argument("--epochs", type=int, default=None, help="total epochs (default 4; on --resume: extend to N)")
    t.add_argument("--out", default="attnkit-seq2seq", help="training directory (default ./attnkit-seq2seq)")
    t.add_argument("--resume", action="store_true", help="continue the run saved in --out exactly where it stopped")
    t.add_argument("--max-minutes", type=float, default=None, help="stop (and save) after this much wall time")
    t.add_argument("--level", default="char", choices=("char", "word"), help="tokens: characters or words")
    t.add_argument("--hidden", type=int, default=128, help="decoder width; each encoder direction gets half")
    t.add_argument("--embed", type=int, default=64, help="embedding size")
    t.add_argument("--dropout", type=float, default=0.0, help="dropout on the embeddings and before the output layer")
    t.add_argument("--batch-size", type=int, default=64, help="examples per step")
    t.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    t.add_argument("--train-size", type=int, default=20_000, help="generated training examples (built-in tasks)")
    t.add_argument("--valid-size", type=int, default=2_000, help="generated held-out examples (built-in tasks)")
    t.add_argument("--seed", type=int, default=0, help="seed of the data, the initial weights and the batches")
    t.add_argument("--max-length", type=int, default=256, metavar="N",
                   help="skip (and list) pairs whose source or target has more than N tokens (default 256)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    common(t)
    t.set_defaults(run=_cmd_train)

    r = cmds.add_parser("translate", help="translate text with a trained model",
                        epilog=examples('attnkit seq2seq translate --model runs/dates "Nov 22nd 2026" --plot nov22.png'))
    r.add_argument("text", nargs="+", help="text(s) to translate")
    r.add_argument("--model", required=True, help="training directory")
    r.add_argument("--beam", type=int, default=1, help="beam size (1 = greedy)")
    r.add_argument("--length-penalty", type=float, default=0.0, help="rank beams by log p / T^a (default a = 0)")
    r.add_argument("--plot", default=None, help="write the alignment heatmap (source × output) to this .png/.svg")
    r.add_argument("--verbose", "-v", action="store_true", help="also print the log-probability")
    common(r)
    r.set_defaults(run=_cmd_translate)

    e = cmds.add_parser("evaluate", help="exact-match accuracy by input length, and the alignment score",
                        epilog=examples("attnkit seq2seq evaluate --model runs/dates"))
    e.add_argument("--model", required=True, help="training directory")
    e.add_argument("--data", default=None, help="a source<TAB>target file (default: the run's held-out split)")
    e.add_argument("--beam", type=int, default=1, help="beam size (1 = greedy, batched)")
    e.add_argument("--length-penalty", type=float, default=0.0, help="rank beams by log p / T^a")
    e.add_argument("--bucket-width", type=int, default=5, help="input-length bucket width in tokens")
    e.add_argument("--limit", type=int, default=None, help="evaluate the first N examples only")
    common(e)
    e.set_defaults(run=_cmd_evaluate)
