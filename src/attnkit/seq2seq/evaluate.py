"""Held-out evaluation: exact match by input length, and whether the attention is a real alignment.

**Exact match** counts outputs equal to the reference, overall and per bucket of input length
(source tokens), which is where a fixed-context model's bottleneck shows.

**Alignment score.** Generated date examples record the source span of each field
(`Example.spans`) and the field of each target character. For every emitted output token
``t`` that writes a digit of the year, month or day, take the source position with the largest
attention weight, ``argmax_i α_ti``; it *hits* if that token lies inside the span of the same
field (``Example.aligned_span``). The score is hits / digits: near 1 means the weights point at
what the output is translating, not somewhere arbitrary. Only steps that exist in both the
greedy output and the reference are counted, so a wrong or short output is scored for the
steps it has. Separators (``-``) have no field and are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from torch import Tensor

from attnkit.errors import AttnkitError

from .data import Example
from .decode import Translation, Translator
from .vocab import Vocab

__all__ = ["AlignmentScore", "Bucket", "Report", "alignment_hits", "evaluate", "format_report"]

FIELDS = ("year", "month", "day")


@dataclass
class Bucket:
    """Inputs with ``lo <= length <= hi`` source tokens: ``n`` of them, ``correct`` exact matches."""

    lo: int
    hi: int
    n: int = 0
    correct: int = 0

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")


@dataclass
class AlignmentScore:
    """Output digits whose argmax source position lies in their field's span, overall and per field."""

    hits: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FIELDS, 0))
    total: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FIELDS, 0))

    @property
    def score(self) -> float:
        n = sum(self.total.values())
        return sum(self.hits.values()) / n if n else float("nan")

    def field_score(self, name: str) -> float:
        return self.hits[name] / self.total[name] if self.total[name] else float("nan")


@dataclass
class Report:
    """Exact match overall and by input-length bucket, plus the alignment score when it applies."""

    n: int
    correct: int
    buckets: list[Bucket]
    alignment: AlignmentScore | None
    errors: list[tuple[str, str, str]] = field(default_factory=list)  # (source, reference, output), a few

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else float("nan")


def alignment_hits(example: Example, translation: Translation, src_vocab: Vocab, tgt_vocab: Vocab,
                   into: AlignmentScore) -> None:
    """Add one example's hits and totals to ``into`` (nothing if it has no spans or no weights)."""
    if translation.weights is None or not example.spans or not example.target_fields:
        return
    src_spans = src_vocab.token_spans(example.source)
    tgt_spans = tgt_vocab.token_spans(example.target)
    weights: Tensor = translation.weights  # (T, S)
    for t in range(min(len(tgt_spans), weights.shape[0])):
        char = tgt_spans[t][0]
        name = example.target_field_of(char)
        span = example.aligned_span(char)
        if name not in FIELDS or span is None:
            continue
        start, end = src_spans[int(weights[t].argmax())]
        into.total[name] += 1
        into.hits[name] += int(span[0] <= start and end <= span[1])


def _buckets(lengths: Sequence[int], width: int) -> list[Bucket]:
    lo = min(lengths) // width * width
    return [Bucket(b, b + width - 1) for b in range(lo, max(lengths) + 1, width)]


def evaluate(translator: Translator, examples: Sequence[Example], *, beam: int = 1, length_penalty: float = 0.0,
             bucket_width: int = 5, keep_errors: int = 5) -> Report:
    """Translate ``examples`` (greedy in batches, or beam search one by one) and score them.

    Example:
        >>> from attnkit.seq2seq.train import Trainer, TrainConfig
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     trainer = Trainer(TrainConfig(train_size=32, valid_size=8, hidden=8, embed=4, epochs=1), d)
        ...     report = evaluate(trainer.translator(), trainer.valid_set)
        >>> report.n, sum(b.n for b in report.buckets), 0 <= report.alignment.score <= 1
        (8, 8, True)
    """
    if not examples:
        raise AttnkitError.build("at least one example to evaluate", "none", "check the held-out split")
    if bucket_width < 1:
        raise AttnkitError.build("bucket_width >= 1", str(bucket_width), "e.g. 5")
    if beam == 1 and length_penalty == 0:
        outputs = translator.translate_batch([e.source for e in examples])
    else:
        outputs = [translator.translate(e.source, beam=beam, length_penalty=length_penalty) for e in examples]
    lengths = [len(translator.src_vocab.tokens(e.source)) for e in examples]
    buckets = _buckets(lengths, bucket_width)
    alignment = AlignmentScore() if translator.model.decoder.attention is not None else None
    report = Report(len(examples), 0, buckets, alignment)
    for ex, out, n in zip(examples, outputs, lengths):
        ok = out.output == translator.reference(ex.target)
        bucket = buckets[(n - buckets[0].lo) // bucket_width]
        bucket.n, bucket.correct, report.correct = bucket.n + 1, bucket.correct + ok, report.correct + ok
        if not ok and len(report.errors) < keep_errors:
            report.errors.append((ex.source, ex.target, out.output))
        if alignment is not None:
            alignment_hits(ex, out, translator.src_vocab, translator.tgt_vocab, alignment)
    if alignment is not None and not sum(alignment.total.values()):
        report.alignment = None  # no annotated examples (e.g. a TSV corpus)
    return report


def format_report(report: Report, *, title: str = "held-out") -> str:
    """A plain-text table: exact match overall and per input-length bucket, then the alignment score."""
    lines = [f"{title}: exact match {100 * report.accuracy:.2f}% ({report.correct}/{report.n})", "",
             "input length (tokens)  examples  exact match"]
    for b in report.buckets:
        if b.n:
            lines.append(f"{f'{b.lo}-{b.hi}':>21}  {b.n:>8}  {100 * b.accuracy:>10.2f}%")
    if report.alignment is not None:
        a = report.alignment
        per_field = ", ".join(f"{name} {100 * a.field_score(name):.1f}%" for name in FIELDS if a.total[name])
        lines += ["", f"alignment: {100 * a.score:.2f}% of output digits attend most to their field's source span "
                      f"({per_field})"]
    if report.errors:
        lines += ["", "some errors (source -> reference | output):"]
        lines += [f"  {s!r} -> {t!r} | {o!r}" for s, t, o in report.errors]
    return "\n".join(lines)

