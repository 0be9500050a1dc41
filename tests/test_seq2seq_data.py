"""Tests for attnkit.seq2seq.data (date task, TSV loader) and attnkit.seq2seq.vocab.

Targets and spans are checked against independent parsers written here (``datetime.strptime``
and a small Chinese-numeral reader), not against the generator's own tables.
"""

from __future__ import annotations

import doctest
import json
import re
from datetime import date, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attnkit.errors import AttnkitError
from attnkit.seq2seq import data, vocab
from attnkit.seq2seq.data import (
    DATE_MAX,
    DATE_MIN,
    FORMATS,
    BUILTIN_TASKS,
    ISO_FIELDS,
    LIST_SEPARATOR,
    Example,
    date_lists_dataset,
    dates_dataset,
    generate_date_lists,
    generate_dates,
    load_tsv,
    make_example,
)
from attnkit.seq2seq.vocab import SPECIALS, Vocab

NOV22 = date(2026, 11, 22)  # a Sunday

# ---- independent readers -------------------------------------------------------------

_ZH = {c: i for i, c in enumerate("〇一二三四五六七八九")}
_MONTH_NAMES = [datetime(2000, m, 1).strftime("%B").lower() for m in range(1, 13)]
_STRPTIME = {
    "en_weekday_long": "%A, %d %B %Y",
    "en_dmy_long": "%d %B %Y",
    "en_mdy_long": "%B %d, %Y",
    "en_mdy_abbr_ordinal": "%b %d %Y",
    "en_dmy_abbr": "%d %b %Y",
    "en_ordinal_of": "the %d of %B, %Y",
    "num_dmy_slash": "%d/%m/%Y",
    "num_mdy_slash_us": "%m/%d/%Y (US)",
    "num_ymd_dot": "%Y.%m.%d",
    "num_dmy_dot": "%d.%m.%Y",
    "en_weekday_long_upper": "%A, %d %B %Y",
    "en_dmy_long_lower": "%d %B %Y",
    "en_mdy_long_upper": "%B %d, %Y",
    "en_mdy_abbr_ordinal_lower": "%b %d %Y",
    "zh_digits": "%Y年%m月%d日",
}


def _zh_value(s: str) -> int:
    """二〇一〇 → 2010 (digit by digit); 十 → 10, 二十二 → 22, 三十一 → 31 (counted)."""
    if "十" not in s:
        return int("".join(str(_ZH[c]) for c in s))
    tens, ones = s.split("十")
    return 10 * (_ZH[tens] if tens else 1) + (_ZH[ones] if ones else 0)


def _yy(yy: int) -> int:
    return 1900 + yy if yy >= 50 else 2000 + yy


def _read(ex: Example) -> date:
    """Parse a generated source string back to a date without using the generator."""
    src = re.sub(r"(\d+)(st|nd|rd|th)\b", r"\1", ex.source, flags=re.IGNORECASE)
    if ex.fmt in _STRPTIME:
        return datetime.strptime(src, _STRPTIME[ex.fmt]).date()
    if ex.fmt == "num_dmy_slash_yy":
        d, m, y = map(int, src.split("/"))
        return date(_yy(y), m, d)
    zh = re.fullmatch(r"(\w+?)年(\w+?)月(\w+?)日( 星期.)?", src)
    assert zh is not None, src
    y, m, d = zh.group(1, 2, 3)
    if ex.fmt == "zh_numerals":
        return date(_zh_value(y), _zh_value(m), _zh_value(d))
    year = _yy(int(y)) if ex.fmt == "zh_digits_yy" else int(y)
    return date(year, int(m), int(d))


def _field_value(text: str) -> int:
    """Value written in one span: 22, 22nd, Nov, NOVEMBER, 二十二, 二〇二六 ..."""
    text = re.sub(r"(st|nd|rd|th)$", "", text, flags=re.IGNORECASE)
    if text.isascii() and text.isdigit():
        return int(text)
    if text.isascii():
        return next(i + 1 for i, name in enumerate(_MONTH_NAMES) if name.startswith(text.lower()))
    return _zh_value(text)


@pytest.fixture(scope="module")
def sample() -> list[Example]:
    return generate_dates(3000, seed=1234)


# ---- the date generator --------------------------------------------------------------

def test_seed_determinism() -> None:
    assert generate_dates(200, seed=7) == generate_dates(200, seed=7)
    assert generate_dates(200, seed=7) != generate_dates(200, seed=8)
    assert dates_dataset(50, 10, seed=3) == dates_dataset(50, 10, seed=3)


def test_every_format_appears_and_renders_as_documented(sample: list[Example]) -> None:
    assert {ex.fmt for ex in sample} == set(FORMATS)
    expected = {
        "en_weekday_long": "Sunday, 22 November 2026",
        "en_dmy_long": "22 November 2026",
        "en_mdy_long": "November 22, 2026",
        "en_mdy_abbr_ordinal": "Nov 22nd 2026",
        "en_dmy_abbr": "22 Nov 2026",
        "en_ordinal_of": "the 22nd of November, 2026",
        "num_dmy_slash_yy": "22/11/26",
        "num_dmy_slash": "22/11/2026",
        "num_mdy_slash_us": "11/22/2026 (US)",
        "num_ymd_dot": "2026.11.22",
        "num_dmy_dot": "22.11.2026",
        "en_weekday_long_upper": "SUNDAY, 22 NOVEMBER 2026",
        "en_dmy_long_lower": "22 november 2026",
        "en_mdy_long_upper": "NOVEMBER 22, 2026",
        "en_mdy_abbr_ordinal_lower": "nov 22nd 2026",
        "zh_digits": "2026年11月22日",
        "zh_digits_weekday": "2026年11月22日 星期日",
        "zh_digits_yy": "26年11月22日",
        "zh_numerals": "二〇二六年十一月二十二日",
    }
    assert {name: make_example(NOV22, name).source for name in FORMATS} == expected


def test_targets_parse_back(sample: list[Example]) -> None:
    for ex in sample:
        d = date.fromisoformat(ex.target)
        assert DATE_MIN <= d <= DATE_MAX
        assert _read(ex) == d, (ex.fmt, ex.source, ex.target)
        assert ex.target_fields == ISO_FIELDS


def test_weekdays_are_correct(sample: list[Example]) -> None:
    zh_week = ["星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日"]
    with_weekday = [ex for ex in sample if "weekday" in ex.spans]
    assert {ex.fmt for ex in with_weekday} == {
        "en_weekday_long", "en_weekday_long_upper", "zh_digits_weekday"}
    for ex in with_weekday:
        d = date.fromisoformat(ex.target)
        text = ex.source[slice(*ex.spans["weekday"])]
        assert text.lower() in (d.strftime("%A").lower(), zh_week[d.weekday()])
    assert make_example(date(2000, 1, 1), "zh_digits_weekday").source.endswith("星期六")
    assert make_example(date(1969, 7, 20), "en_weekday_long").source.startswith("Sunday, ")


def test_spans_cover_the_field_text(sample: list[Example]) -> None:
    numerals = set("0123456789") | set(_ZH) | {"十"}
    for ex in sample:
        d = date.fromisoformat(ex.target)
        assert {"year", "month", "day"} <= set(ex.spans)
        year = _field_value(ex.source[slice(*ex.spans["year"])])
        assert year in (d.year, d.year % 100) and (year == d.year) == ("yy" not in ex.fmt)
        assert _field_value(ex.source[slice(*ex.spans["month"])]) == d.month
        assert _field_value(ex.source[slice(*ex.spans["day"])]) == d.day
        # spans are disjoint, and no numeral of the source lies outside them
        covered = [i for s, e in ex.spans.values() for i in range(s, e)]
        assert len(covered) == len(set(covered))
        assert all(i in covered for i, c in enumerate(ex.source) if c in numerals), ex.source


def test_month_span_examples() -> None:
    def month_text(fmt: str) -> str:
        ex = make_example(NOV22, fmt)
        return ex.source[slice(*ex.spans["month"])]

    assert month_text("en_mdy_long") == "November"
    assert month_text("en_dmy_abbr") == "Nov"
    assert month_text("en_mdy_long_upper") == "NOVEMBER"
    assert month_text("num_mdy_slash_us") == "11"
    assert month_text("zh_numerals") == "十一"
    ex = make_example(NOV22, "en_ordinal_of")
    assert ex.source[slice(*ex.spans["day"])] == "22nd"


def test_target_fields_align_with_source_spans() -> None:
    ex = make_example(NOV22, "zh_numerals")
    assert [ex.target_field_of(i) for i in range(len(ex.target))] == list(ISO_FIELDS)
    aligned = [ex.aligned_span(i) for i in range(len(ex.target))]
    assert [ex.source[slice(*s)] if s else None for s in aligned] == (
        ["二〇二六"] * 4 + [None] + ["十一"] * 2 + [None] + ["二十二"] * 2)


@pytest.mark.parametrize(
    ("d", "expected"),
    [
        (date(2000, 1, 10), "二〇〇〇年一月十日"),
        (date(2010, 10, 20), "二〇一〇年十月二十日"),
        (date(1999, 12, 30), "一九九九年十二月三十日"),
        (date(1950, 1, 31), "一九五〇年一月三十一日"),
        (date(2049, 11, 1), "二〇四九年十一月一日"),
        (date(2021, 2, 19), "二〇二一年二月十九日"),
    ],
)
def test_chinese_numerals(d: date, expected: str) -> None:
    assert make_example(d, "zh_numerals").source == expected


@pytest.mark.parametrize(("day", "suffix"), [(1, "st"), (2, "nd"), (3, "rd"), (4, "th"),
                                             (11, "th"), (12, "th"), (13, "th"), (21, "st"),
                                             (22, "nd"), (23, "rd"), (30, "th"), (31, "st")])
def test_english_ordinals(day: int, suffix: str) -> None:
    assert make_example(date(2001, 1, day), "en_mdy_abbr_ordinal").source == f"Jan {day}{suffix} 2001"


def test_sources_are_unambiguous() -> None:
    # Exhaustive over the window for every numeric-style format: one source, one target.
    numeric = [f for f in FORMATS if f.startswith("num_")] + ["zh_digits_yy"]
    seen: dict[str, str] = {}
    d = DATE_MIN
    while d <= DATE_MAX:
        iso = d.isoformat()
        for fmt in numeric:
            source = FORMATS[fmt](d)[0]
            assert seen.setdefault(source, iso) == iso, source
        d += timedelta(days=1)
    for ex in generate_dates(5000, seed=5):  # and all formats on a sample
        assert seen.setdefault(ex.source, ex.target) == ex.target, ex.source


def test_train_valid_split_shares_no_source() -> None:
    train, valid = dates_dataset(3000, 600, seed=11)
    assert (len(train), len(valid)) == (3000, 600)
    sources = [ex.source for ex in train + valid]
    assert len(set(sources)) == len(sources)


def test_generator_arguments_are_checked() -> None:
    assert generate_dates(0, seed=0) == []
    assert {ex.fmt for ex in generate_dates(50, seed=0, formats=["zh_numerals"])} == {"zh_numerals"}
    with pytest.raises(AttnkitError, match="en_weekday_long"):
        generate_dates(5, seed=0, formats=["iso"])
    with pytest.raises(AttnkitError, match="n=-1"):
        generate_dates(-1, seed=0)
    with pytest.raises(AttnkitError, match="distinct sources"):
        dates_dataset(36525, 1, seed=0, formats=["num_ymd_dot"])
    with pytest.raises(AttnkitError, match="1949-12-31"):
        make_example(date(1949, 12, 31), "zh_digits")


def test_example_validation() -> None:
    with pytest.raises(AttnkitError, match="span of 'day'"):
        Example("abc", "x", {"day": (2, 5)})
    with pytest.raises(AttnkitError, match="one target field per target character"):
        Example("abc", "xy", target_fields=("year",))
    with pytest.raises(AttnkitError, match="recorded target fields"):
        Example("abc", "xy", fmt="tsv").target_field_of(0)


# ---- the long task: several dates per line ---------------------------------------------

def _read_any(text: str) -> date:
    """One date written in any format, read by trying every independent reader: all that parse must agree."""
    found = set()
    for fmt in list(_STRPTIME) + ["num_dmy_slash_yy", "zh_digits_yy", "zh_numerals", "zh_digits_weekday"]:
        try:
            d = _read(Example(text, "x", fmt=fmt))
        except (ValueError, AssertionError, KeyError, StopIteration):
            continue
        if DATE_MIN <= d <= DATE_MAX:  # a 4-digit year read as a 2-digit one lands outside the window
            found.add(d)
    assert len(found) == 1, (text, found)
    return found.pop()


def test_date_lists_targets_parse_back_and_lengths() -> None:
    lines = generate_date_lists(600, seed=2)
    assert lines == generate_date_lists(600, seed=2) and lines != generate_date_lists(600, seed=3)
    counts = []
    for ex in lines:
        parts = ex.source.split(LIST_SEPARATOR)
        isos = ex.target.split(" ")
        assert len(parts) == len(isos) == int(ex.fmt.removeprefix("date_list_"))
        assert [_read_any(p) for p in parts] == [date.fromisoformat(t) for t in isos], ex.source
        counts.append(len(parts))
    assert set(counts) == set(range(1, 9))
    lengths = [len(ex.source) for ex in lines]
    assert max(lengths) >= 150 and sum(n >= 100 for n in lengths) > len(lines) // 6  # the point: long inputs


def test_date_lists_splits_and_builtin_registry() -> None:
    train, valid = date_lists_dataset(400, 100, seed=4, min_dates=2, max_dates=3)
    assert (len(train), len(valid)) == (400, 100)
    assert {ex.source for ex in train}.isdisjoint(ex.source for ex in valid)
    assert {len(ex.target.split()) for ex in train + valid} == {2, 3}
    assert set(BUILTIN_TASKS) == {"dates", "date-lists"}
    assert BUILTIN_TASKS["date-lists"](5, 2, seed=0) == date_lists_dataset(5, 2, seed=0)
    with pytest.raises(AttnkitError, match="min_dates=3, max_dates=2"):
        generate_date_lists(5, seed=0, min_dates=3, max_dates=2)
    with pytest.raises(AttnkitError, match="n >= 0"):
        generate_date_lists(-1, seed=0)


def test_trainer_takes_the_builtin_name(tmp_path) -> None:
    from attnkit.seq2seq.train import Trainer, TrainConfig

    trainer = Trainer(TrainConfig(data="date-lists", train_size=8, valid_size=4, hidden=8, embed=4, epochs=1), tmp_path)
    assert [e.source for e in trainer.valid_set] == [e.source for e in date_lists_dataset(8, 4, seed=0)[1]]


# ---- TSV loader ----------------------------------------------------------------------

def test_load_tsv_happy_path(tmp_path) -> None:
    path = tmp_path / "pairs.tsv"
    text = (
        "\ufeff# exported from Tatoeba\r\n"
        "Go.\tVa !\tCC-BY 2.0 (France) Attribution: tatoeba.org #2877272 (CM) & #1158250 (Wittydev)\r\n"
        "\r\n"
        "I see.\t我明白了。\n"
        "   \n"
        "  Hi!  \t Salut ! \n"
    )
    path.write_bytes(text.encode("utf-8"))
    examples = load_tsv(path)
    assert [(e.source, e.target) for e in examples] == [
        ("Go.", "Va !"), ("I see.", "我明白了。"), ("Hi!", "Salut !")]
    assert all(e.fmt == "tsv" and e.spans == {} and e.target_fields == () for e in examples)
    assert load_tsv(str(path)) == examples


@pytest.mark.parametrize(
    ("body", "line", "what"),
    [
        ("a\tb\nno tab here\n", 2, "without a tab"),
        ("# c\n\na\tb\n\t target\n", 4, "empty source"),
        ("a\tb\nsource\t  \n", 2, "empty target"),
    ],
)
def test_load_tsv_malformed(tmp_path, body: str, line: int, what: str) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(AttnkitError) as info:
        load_tsv(path)
    msg = str(info.value)
    assert f"{path}:{line}" in msg and what in msg and "fix:" in msg


def test_load_tsv_rejects_non_utf8_and_empty(tmp_path) -> None:
    path = tmp_path / "latin1.tsv"
    path.write_bytes("ok\tfine\ncafé\tcoffee\n".encode("latin-1"))
    with pytest.raises(AttnkitError, match=re.escape(f"{path}:2")):
        load_tsv(path)
    path.write_text("# only a comment\n\n", encoding="utf-8")
    with pytest.raises(AttnkitError, match="at least one"):
        load_tsv(path)


# ---- vocabulary ----------------------------------------------------------------------

def test_vocab_char_round_trip_with_cjk_and_unknowns() -> None:
    texts = ["2026年11月22日 星期日", "Sunday, 22 November 2026"]
    v = Vocab.build(texts)
    assert v.itos[:4] == SPECIALS and (v.PAD, v.SOS, v.EOS, v.UNK) == (0, 1, 2, 3)
    assert len(v) == 4 + len(set("".join(texts)))
    for t in texts:
        ids = v.encode(t, sos=True, eos=True)
        assert ids[0] == v.SOS and ids[-1] == v.EOS and len(ids) == len(t) + 2
        assert v.decode(ids + [v.PAD] * 3) == t
    assert v.encode("2026年Z")[-1] == v.UNK
    assert v.decode(v.encode("Z22")) == "<unk>22"
    assert v.decode([v.SOS, v.index("2"), v.EOS, v.index("6")]) == "2"
    with pytest.raises(AttnkitError, match="token ids"):
        v.decode([len(v)])


def test_vocab_word_level() -> None:
    v = Vocab.build(["Hello, world!", "I see. 我明白了。"], level="word")
    assert v.tokens("Hello, world!") == ["Hello", ",", "world", "!"]
    assert v.tokens("我明白了。") == ["我", "明", "白", "了", "。"]
    assert v.tokens("café naïve don't") == ["café", "naïve", "don", "'", "t"]
    assert v.tokens("cafe\u0301!") == ["cafe\u0301", "!"]  # combining accent stays in the word
    assert v.decode(v.encode("Hello,   world!", eos=True)) == "Hello , world !"
    assert v.decode(v.encode("Hello moon")) == "Hello <unk>"
    # word-level alignment: field of each ISO target token via its character span
    ex = make_example(NOV22, "zh_digits_weekday")
    assert [ex.target_fields[s] for s, _ in v.token_spans(ex.target)] == [
        "year", "sep", "month", "sep", "day"]
    assert [ex.source[s:e] for s, e in v.token_spans(ex.source)] == [
        "2026", "年", "11", "月", "22", "日", "星", "期", "日"]


@settings(max_examples=100, derandomize=True, deadline=None)
@given(st.text(max_size=40))
def test_token_spans_partition_non_space_text(text: str) -> None:
    for level in ("char", "word"):
        v = Vocab([], level=level)
        spans = v.token_spans(text)
        assert [text[s:e] for s, e in spans] == v.tokens(text)
        assert all(s < e for s, e in spans)
        assert all(e1 <= s2 for (_, e1), (s2, _) in zip(spans, spans[1:]))
        covered = {i for s, e in spans for i in range(s, e)}
        assert all(i in covered or (level == "word" and c.isspace()) for i, c in enumerate(text))
        assert len(v.encode(text)) == len(spans)


def test_vocab_build_order_limits_and_checkpoint() -> None:
    v = Vocab.build(["aab", "abc", "a"], min_freq=2)
    assert v.itos[4:] == ("a", "b")
    assert Vocab.build(["aab", "abc"], max_size=1).itos[4:] == ("a",)
    w = Vocab.build(["二〇二六年 hello"], level="word")
    restored = Vocab.from_dict(json.loads(json.dumps(w.to_dict(), ensure_ascii=False)))
    assert restored == w and restored.level == "word" and len(restored) == len(w)
    assert "hello" in restored and restored.index("nope") == Vocab.UNK
    with pytest.raises(AttnkitError, match='"char" or "word"'):
        Vocab.build(["x"], level="bpe")  # type: ignore[arg-type]
    with pytest.raises(AttnkitError, match="start with"):
        Vocab.from_dict({"level": "char", "tokens": ["a", "b"]})
    with pytest.raises(AttnkitError, match="duplicate"):
        Vocab(["a", "a"])


def test_docstring_examples_run() -> None:
    for module in (data, vocab):
        assert doctest.testmod(module).failed == 0
