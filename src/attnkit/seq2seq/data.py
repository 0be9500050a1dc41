"""Parallel data for the seq2seq translator: a date-normalisation task and a TSV loader.

The built-in task translates dates written the many ways people write them, in English
and Chinese, into ISO ``YYYY-MM-DD``. Each [`Example`][attnkit.seq2seq.data.Example] records where the year,
month and day (and weekday, if any) sit in the source, and which field every target
character belongs to, so a trained model's attention can be checked for alignment:
the source position with the largest weight for an output digit of the month should
lie inside ``spans["month"]``.

>>> from datetime import date
>>> ex = make_example(date(2026, 11, 22), "en_weekday_long")
>>> ex.source, ex.target
('Sunday, 22 November 2026', '2026-11-22')
>>> ex.spans
{'weekday': (0, 6), 'day': (8, 10), 'month': (11, 19), 'year': (20, 24)}
>>> ex.target_field_of(5), ex.source[slice(*ex.aligned_span(5))]
('month', 'November')

Every format, shown for 2026-11-22 (the keys of `FORMATS`):

>>> for name in FORMATS:
...     print(f"{name:26} {make_example(date(2026, 11, 22), name).source}")
en_weekday_long            Sunday, 22 November 2026
en_dmy_long                22 November 2026
en_mdy_long                November 22, 2026
en_mdy_abbr_ordinal        Nov 22nd 2026
en_dmy_abbr                22 Nov 2026
en_ordinal_of              the 22nd of November, 2026
num_dmy_slash_yy           22/11/26
num_dmy_slash              22/11/2026
num_mdy_slash_us           11/22/2026 (US)
num_ymd_dot                2026.11.22
num_dmy_dot                22.11.2026
en_weekday_long_upper      SUNDAY, 22 NOVEMBER 2026
en_dmy_long_lower          22 november 2026
en_mdy_long_upper          NOVEMBER 22, 2026
en_mdy_abbr_ordinal_lower  nov 22nd 2026
zh_digits                  2026年11月22日
zh_digits_weekday          2026年11月22日 星期日
zh_digits_yy               26年11月22日
zh_numerals                二〇二六年十一月二十二日

Ambiguity rules, so that every source string has exactly one correct target:

* Numeric dates without a marker are day-first (``22/11/2026``, ``22.11.2026``,
  ``22/11/26``) or year-first (``2026.11.22``). Month-first numeric dates appear only
  with an explicit ``(US)`` tag: ``11/22/2026 (US)``.
* Two-digit years pivot at 50: ``50``–``99`` mean 1950–1999, ``00``–``49`` mean
  2000–2049. Dates are drawn uniformly from `DATE_MIN` to `DATE_MAX`,
  the same window, so ``22/11/26`` and ``26年11月22日`` are well defined.

Span conventions: a span covers the characters that write the field's value, including
an ordinal suffix (``22nd``) but not unit words or separators (``年``, ``月``, ``日``,
``of``, ``/``); ``weekday`` covers the whole name (``Sunday``, ``星期日``).
"""

from __future__ import annotations

import functools
import random
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Literal

from attnkit.errors import AttnkitError

__all__ = [
    "DATE_MAX",
    "DATE_MIN",
    "FORMATS",
    "ISO_FIELDS",
    "DateFormat",
    "Example",
    "BUILTIN_TASKS",
    "LIST_SEPARATOR",
    "date_lists_dataset",
    "dates_dataset",
    "generate_date_lists",
    "generate_dates",
    "load_tsv",
    "make_example",
]

Span = tuple[int, int]

DATE_MIN = date(1950, 1, 1)
"""The earliest date the generated tasks draw."""
DATE_MAX = date(2049, 12, 31)
"""The latest date the generated tasks draw."""

ISO_FIELDS: tuple[str, ...] = ("year",) * 4 + ("sep",) + ("month",) * 2 + ("sep",) + ("day",) * 2
"""Field of each character of an ISO target ``YYYY-MM-DD``."""


@dataclass(frozen=True)
class Example:
    """One source/target pair.

    ``spans`` maps a field name to the ``(start, end)`` slice of ``source`` that writes
    it (empty for corpora without annotations); ``target_fields[i]`` names the field of
    ``target[i]`` (``"year"``, ``"month"``, ``"day"`` or ``"sep"``; empty when unknown).
    ``line`` is the 1-based line of a TSV file the pair came from (0 for generated pairs; not
    compared). Treat ``spans`` as read-only.
    """

    source: str
    target: str
    spans: dict[str, Span] = field(default_factory=dict, hash=False)
    fmt: str = ""
    target_fields: tuple[str, ...] = ()
    line: int = field(default=0, compare=False)  # 1-based line of the file it was read from (0: generated)

    def __post_init__(self) -> None:
        for name, (start, end) in self.spans.items():
            if not 0 <= start < end <= len(self.source):
                raise AttnkitError.build(
                    f"span of {name!r} inside source of length {len(self.source)}",
                    f"({start}, {end})",
                    "record spans as (start, end) with 0 <= start < end <= len(source)",
                )
        if self.target_fields and len(self.target_fields) != len(self.target):
            raise AttnkitError.build(
                f"one target field per target character ({len(self.target)})",
                f"{len(self.target_fields)} fields",
                "pass target_fields=() when fields are unknown",
            )

    def target_field_of(self, position: int) -> str:
        """The field (``"year"``, ``"month"``, ``"day"`` or ``"sep"``) of ``target[position]``."""
        if not self.target_fields:
            raise AttnkitError.build(
                "an example with recorded target fields", f"fmt={self.fmt!r} without them",
                "use generated date examples for alignment checks",
            )
        return self.target_fields[position]

    def aligned_span(self, position: int) -> Span | None:
        """Source span of the field that ``target[position]`` expresses; ``None`` for separators."""
        return self.spans.get(self.target_field_of(position))


# ---- rendering one date ------------------------------------------------------------

_MONTHS = ("January", "February", "March", "April", "May", "June", "July",
           "August", "September", "October", "November", "December")
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_ZH_DIGITS = "〇一二三四五六七八九"
_ZH_WEEKDAYS = "一二三四五六日"  # Monday .. Sunday, as in 星期一 .. 星期日


def _ordinal(n: int) -> str:
    """``1st 2nd 3rd 4th .. 11th 12th 13th .. 21st 22nd 23rd .. 31st``."""
    suffix = "th" if 11 <= n % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _zh_year(year: int) -> str:
    """Years are read digit by digit: 2010 → 二〇一〇."""
    return "".join(_ZH_DIGITS[int(c)] for c in str(year))


def _zh_number(n: int) -> str:
    """1..99 as counted: 10 → 十, 11 → 十一, 20 → 二十, 31 → 三十一."""
    tens, ones = divmod(n, 10)
    head = "" if tens == 0 else ("十" if tens == 1 else _ZH_DIGITS[tens] + "十")
    return head + (_ZH_DIGITS[ones] if ones or not tens else "")


# placeholder -> (field it writes, renderer)
_FIELDS: dict[str, tuple[str, Callable[[date], str]]] = {
    "yyyy": ("year", lambda d: f"{d.year:04d}"),
    "yy": ("year", lambda d: f"{d.year % 100:02d}"),
    "month": ("month", lambda d: _MONTHS[d.month - 1]),
    "mon": ("month", lambda d: _MONTHS[d.month - 1][:3]),
    "mm": ("month", lambda d: f"{d.month:02d}"),
    "m": ("month", lambda d: str(d.month)),
    "dd": ("day", lambda d: f"{d.day:02d}"),
    "d": ("day", lambda d: str(d.day)),
    "dth": ("day", lambda d: _ordinal(d.day)),
    "weekday": ("weekday", lambda d: _WEEKDAYS[d.weekday()]),
    "zh_year": ("year", lambda d: _zh_year(d.year)),
    "zh_month": ("month", lambda d: _zh_number(d.month)),
    "zh_day": ("day", lambda d: _zh_number(d.day)),
    "zh_weekday": ("weekday", lambda d: "星期" + _ZH_WEEKDAYS[d.weekday()]),
}


@dataclass(frozen=True)
class DateFormat:
    """A way of writing a date: a template such as ``"{d} {month} {yyyy}"`` plus a case.

    Placeholders: ``yyyy yy month mon mm m dd d dth weekday zh_year zh_month zh_day
    zh_weekday``. Calling it renders a date and the span of each placeholder's field.

    >>> DateFormat("{mon} {dth} {yyyy}", case="upper")(date(2001, 3, 3))
    ('MAR 3RD 2001', {'month': (0, 3), 'day': (4, 7), 'year': (8, 12)})
    """

    template: str
    case: Literal["upper", "lower"] | None = None

    def __call__(self, d: date) -> tuple[str, dict[str, Span]]:
        text, spans = "", {}
        for literal, name in _parse(self.template):
            text += self._cased(literal)
            if name is not None:
                field_name, render = _FIELDS[name]
                piece = self._cased(render(d))
                spans[field_name] = (len(text), len(text) + len(piece))
                text += piece
        return text, spans

    def _cased(self, s: str) -> str:
        return s.upper() if self.case == "upper" else s.lower() if self.case == "lower" else s


@functools.cache
def _parse(template: str) -> tuple[tuple[str, str | None], ...]:
    """``"{d} {month}"`` → ``(("", "d"), (" ", "month"))``: literal text, then a placeholder."""
    return tuple((literal, name) for literal, name, _, _ in string.Formatter().parse(template))


FORMATS: Mapping[str, DateFormat] = {
    "en_weekday_long": DateFormat("{weekday}, {d} {month} {yyyy}"),
    "en_dmy_long": DateFormat("{d} {month} {yyyy}"),
    "en_mdy_long": DateFormat("{month} {d}, {yyyy}"),
    "en_mdy_abbr_ordinal": DateFormat("{mon} {dth} {yyyy}"),
    "en_dmy_abbr": DateFormat("{d} {mon} {yyyy}"),
    "en_ordinal_of": DateFormat("the {dth} of {month}, {yyyy}"),
    "num_dmy_slash_yy": DateFormat("{dd}/{mm}/{yy}"),
    "num_dmy_slash": DateFormat("{dd}/{mm}/{yyyy}"),
    "num_mdy_slash_us": DateFormat("{mm}/{dd}/{yyyy} (US)"),
    "num_ymd_dot": DateFormat("{yyyy}.{mm}.{dd}"),
    "num_dmy_dot": DateFormat("{dd}.{mm}.{yyyy}"),
    "en_weekday_long_upper": DateFormat("{weekday}, {d} {month} {yyyy}", case="upper"),
    "en_dmy_long_lower": DateFormat("{d} {month} {yyyy}", case="lower"),
    "en_mdy_long_upper": DateFormat("{month} {d}, {yyyy}", case="upper"),
    "en_mdy_abbr_ordinal_lower": DateFormat("{mon} {dth} {yyyy}", case="lower"),
    "zh_digits": DateFormat("{yyyy}年{m}月{d}日"),
    "zh_digits_weekday": DateFormat("{yyyy}年{m}月{d}日 {zh_weekday}"),
    "zh_digits_yy": DateFormat("{yy}年{m}月{d}日"),
    "zh_numerals": DateFormat("{zh_year}年{zh_month}月{zh_day}日"),
}
"""Format name -> [`DateFormat`][attnkit.seq2seq.data.DateFormat]. ``en_`` English words, ``num_`` numeric, ``zh_`` Chinese."""


def make_example(d: date, fmt: str) -> Example:
    """Write ``d`` in format ``fmt`` (a key of `FORMATS`) and pair it with its ISO form.

    >>> make_example(date(2010, 10, 31), "zh_numerals").source
    '二〇一〇年十月三十一日'
    """
    if not DATE_MIN <= d <= DATE_MAX:
        raise AttnkitError.build(
            f"a date from {DATE_MIN} to {DATE_MAX}", str(d),
            "two-digit years are only well defined inside this window",
        )
    source, spans = _format(fmt)(d)
    return Example(source, d.isoformat(), spans, fmt, ISO_FIELDS)


def _format(name: str) -> DateFormat:
    if name not in FORMATS:
        raise AttnkitError.build(
            f"a format name from attnkit.seq2seq.data.FORMATS ({', '.join(FORMATS)})",
            repr(name), "pick one of the listed names",
        )
    return FORMATS[name]


def generate_dates(
    n: int, *, seed: int, formats: Sequence[str] | None = None, unique: bool = False
) -> list[Example]:
    """Draw ``n`` examples: a uniform date in the window, then a uniform format.

    The same ``seed`` (and ``formats``) gives the same list. With ``unique=True`` no
    source string repeats (draws that repeat one are skipped).

    >>> [ex.source for ex in generate_dates(2, seed=3, formats=["zh_digits", "num_ymd_dot"])]
    ['1992年9月12日', '2016.05.19']
    """
    names = list(FORMATS) if formats is None else list(formats)
    for name in names:
        _format(name)  # fail early on an unknown name
    n_days = (DATE_MAX - DATE_MIN).days + 1
    if n < 0 or (unique and n > n_days * len(names)) or not names:
        raise AttnkitError.build(
            f"0 <= n <= {n_days * len(names)} distinct sources and at least one format",
            f"n={n} with {len(names)} formats", "ask for fewer examples or allow more formats",
        )
    rng = random.Random(seed)
    out: list[Example] = []
    seen: set[str] = set()
    for _ in range(50 * n + 10_000):  # bounded: near capacity, unique draws get rare
        if len(out) == n:
            return out
        d = DATE_MIN + timedelta(days=rng.randrange(n_days))
        ex = make_example(d, names[rng.randrange(len(names))])
        if not (unique and ex.source in seen):
            seen.add(ex.source)
            out.append(ex)
    if len(out) == n:
        return out
    raise AttnkitError.build(
        f"{n} distinct sources", f"only {len(out)} after {50 * n + 10_000} draws",
        "ask for fewer examples or allow more formats",
    )


def dates_dataset(
    n_train: int, n_valid: int, *, seed: int, formats: Sequence[str] | None = None
) -> tuple[list[Example], list[Example]]:
    """Train and held-out validation sets that share no source string.

    All ``n_train + n_valid`` sources are distinct, so no (date, format) rendering seen
    in training is ever scored. The same date may appear in both sets in different formats.

    >>> train, valid = dates_dataset(100, 20, seed=1)
    >>> len(train), len(valid), {e.source for e in train} & {e.source for e in valid}
    (100, 20, set())
    """
    examples = generate_dates(n_train + n_valid, seed=seed, formats=formats, unique=True)
    return examples[:n_train], examples[n_train:]


# ---- the long task: several dates per line -----------------------------------------

LIST_SEPARATOR = "; "
"""What joins the dates of one [`generate_date_lists`][attnkit.seq2seq.data.generate_date_lists] source."""


def generate_date_lists(
    n: int, *, seed: int, min_dates: int = 1, max_dates: int = 8, formats: Sequence[str] | None = None,
) -> list[Example]:
    """``n`` lines of ``k`` dates each (``k`` uniform in ``[min_dates, max_dates]``), all to ISO.

    The source joins ``k`` dates written in random formats with ``"; "``; the target joins their ISO
    forms with one space, in the same order. With the default 1–8 dates, sources run from about 7
    to 170 characters (a quarter are 100 or more): long enough that a decoder fed one fixed
    vector (``score="none"``) must squeeze up to 8 dates into it, while attention can look each one up.
    No spans or target fields are recorded (a field name would be ambiguous across dates).
    The same ``seed`` gives the same list; sources are distinct.

    >>> ex = generate_date_lists(1, seed=3, min_dates=3, max_dates=3)[0]
    >>> ex.source.count("; "), len(ex.target.split())
    (2, 3)
    """
    if not 1 <= min_dates <= max_dates:
        raise AttnkitError.build("1 <= min_dates <= max_dates", f"min_dates={min_dates}, max_dates={max_dates}",
                                 "e.g. min_dates=1, max_dates=8")
    if n < 0:
        raise AttnkitError.build("n >= 0", str(n), "ask for a non-negative number of lines")
    rng = random.Random(seed)
    counts = [rng.randint(min_dates, max_dates) for _ in range(n)]
    # One pool of distinct dates, dealt out in order: every line differs from every other.
    pool = iter(generate_dates(sum(counts), seed=seed, formats=formats, unique=True))
    out = []
    for k in counts:
        parts = [next(pool) for _ in range(k)]
        out.append(Example(LIST_SEPARATOR.join(p.source for p in parts), " ".join(p.target for p in parts),
                           fmt=f"date_list_{k}"))
    return out


def date_lists_dataset(
    n_train: int, n_valid: int, *, seed: int, min_dates: int = 1, max_dates: int = 8,
) -> tuple[list[Example], list[Example]]:
    """Train and held-out splits of [`generate_date_lists`][attnkit.seq2seq.data.generate_date_lists] (no date rendering is shared between them).

    >>> train, valid = date_lists_dataset(50, 10, seed=1)
    >>> len(train), len(valid), {e.source for e in train} & {e.source for e in valid}
    (50, 10, set())
    """
    examples = generate_date_lists(n_train + n_valid, seed=seed, min_dates=min_dates, max_dates=max_dates)
    return examples[:n_train], examples[n_train:]


BUILTIN_TASKS: Mapping[str, Callable[..., tuple[list[Example], list[Example]]]] = {
    "dates": dates_dataset,
    "date-lists": date_lists_dataset,
}
"""The generated tasks, by the name ``attnkit seq2seq train --data NAME`` accepts: ``name -> (n_train, n_valid, seed) -> (train, valid)``."""


# ---- the user's own corpus ---------------------------------------------------------

def load_tsv(path: str | Path) -> list[Example]:
    """Read a UTF-8 parallel corpus of ``source<TAB>target`` lines.

    * Blank lines and lines starting with ``#`` are skipped; a UTF-8 BOM is allowed.
    * Columns after the second are ignored, so the Tatoeba exports from manythings.org
      (``English<TAB>French<TAB>CC-BY 2.0 (France) Attribution: ...``) load as they are.
    * Whitespace around each field is stripped. An empty source or target, a line without
      a tab, or bytes that are not UTF-8 raise [`AttnkitError`][attnkit.errors.AttnkitError] naming the file and
      the 1-based line number (never the line's contents); so do a file without any pair
      and a path that cannot be read.

    Examples have ``fmt="tsv"``, their ``line`` number and no spans or target fields.
    """
    path = Path(path)
    examples = []
    try:
        data = path.read_bytes()
    except OSError as err:
        what = "a directory" if path.is_dir() else "no such file" if not path.exists() else err.strerror or "unreadable"
        raise AttnkitError.build("a readable source<TAB>target file", f"{what}: {path}",
                                 "check the path (relative paths start in the current directory)") from None
    lines = data.removeprefix(b"\xef\xbb\xbf").splitlines()
    for lineno, raw in enumerate(lines, start=1):
        where = f"{path}:{lineno}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise AttnkitError.build(
                "UTF-8 text", f"undecodable bytes at {where} ({err.reason})",
                "re-save the file as UTF-8",
            ) from err
        if not line.strip() or line.startswith("#"):
            continue
        cols = line.split("\t")
        if len(cols) < 2:
            raise AttnkitError.build(
                "source<TAB>target", f"a line without a tab at {where}",
                "separate source and target with one tab character",
            )
        source, target = cols[0].strip(), cols[1].strip()
        if not source or not target:
            side = "source" if not source else "target"
            raise AttnkitError.build(
                "a non-empty source and target", f"an empty {side} at {where}",
                "fill in or delete that line",
            )
        examples.append(Example(source, target, fmt="tsv", line=lineno))
    if not examples:
        raise AttnkitError.build(
            "at least one source<TAB>target line", f"none in {path}", "check the path and contents",
        )
    return examples
