"""Token vocabularies built from data, at character or word level.

>>> v = Vocab.build(["2026-11-22", "1999-01-05"])
>>> v.encode("2026", eos=True)
[6, 7, 6, 10, 2]
>>> v.decode([1, 6, 7, 6, 10, 2, 0, 0])
'2026'
>>> v.encode("2026年"), v.decode(v.encode("2026年"))
([6, 7, 6, 10, 3], '2026<unk>')

Ids ``0..3`` are always ``<pad> <sos> <eos> <unk>``. Ordinary tokens follow, most
frequent first (ties broken by the token text), so a build is deterministic.

**Levels.** ``"char"``: every Unicode code point is a token, spaces included, so CJK
text works unchanged. ``"word"``: whitespace separates tokens and is dropped; every
punctuation or symbol character is its own token; each character of a script written
without spaces (CJK ideographs, ``〇``, kana) is its own token; combining marks stay with
the character before them.

>>> w = Vocab.build(["Hello, world!"], level="word")
>>> w.tokens("Hello, world! 2026年11月")
['Hello', ',', 'world', '!', '2026', '年', '11', '月']
>>> w.token_spans("Hello, world!")
[(0, 5), (5, 6), (7, 12), (12, 13)]

``token_spans`` maps token ``k`` back to the characters ``text[start:end]`` it came from,
so a char-level alignment annotation (such as a date example's field spans) can be
checked for a model trained at either level.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from attnkit.errors import AttnkitError

__all__ = ["SPECIALS", "Vocab"]

Level = Literal["char", "word"]
SPECIALS: tuple[str, ...] = ("<pad>", "<sos>", "<eos>", "<unk>")
"""The special tokens, ids 0-3 of every vocabulary, in this order."""

# Scripts written without spaces: each character is one word-level token.
_NO_SPACE_RANGES = (
    (0x3005, 0x3007),    # 々 〆 〇
    (0x3040, 0x30FF),    # hiragana, katakana
    (0x3400, 0x4DBF),    # CJK extension A
    (0x4E00, 0x9FFF),    # CJK unified ideographs
    (0xF900, 0xFAFF),    # CJK compatibility ideographs
    (0x20000, 0x3134F),  # CJK extensions B..G
)


def _kind(ch: str) -> str:
    """Class of one character for the word-level scanner."""
    if ch.isspace():
        return "space"
    if any(lo <= ord(ch) <= hi for lo, hi in _NO_SPACE_RANGES):
        return "single"
    category = unicodedata.category(ch)
    if category[0] in "LN" or ch == "_":
        return "word"
    return "mark" if category[0] == "M" else "single"


def _word_spans(text: str) -> list[tuple[int, int]]:
    """Runs of letters/digits form one token; any other visible character is a token alone.

    A combining mark extends whatever token it touches.
    """
    spans: list[tuple[int, int]] = []
    last_kind = "space"  # kind of the character that started spans[-1]
    for i, ch in enumerate(text):
        kind = _kind(ch)
        touches = bool(spans) and spans[-1][1] == i
        if touches and (kind == "mark" or kind == last_kind == "word"):
            spans[-1] = (spans[-1][0], i + 1)
        elif kind != "space":
            spans.append((i, i + 1))
            last_kind = kind
    return spans


class Vocab:
    """A bijection between tokens and ids, with fixed special ids.

    Build one with [`build`][attnkit.seq2seq.vocab.Vocab.build]; save it with [`to_dict`][attnkit.seq2seq.vocab.Vocab.to_dict] (JSON-ready) and restore
    it with [`from_dict`][attnkit.seq2seq.vocab.Vocab.from_dict].
    """

    PAD, SOS, EOS, UNK = 0, 1, 2, 3

    def __init__(self, tokens: Sequence[str], level: Level = "char") -> None:
        """``tokens`` are the ordinary tokens in id order; specials are prepended."""
        if level not in ("char", "word"):
            raise AttnkitError.build('level "char" or "word"', repr(level), "pass one of the two")
        itos = (*SPECIALS, *tokens)
        bad = [t for t in tokens if not isinstance(t, str) or not t or t in SPECIALS]
        if bad or len(set(itos)) != len(itos):
            raise AttnkitError.build(
                "distinct non-empty ordinary tokens, none of them a special token",
                f"bad tokens {bad[:5]!r}" if bad else "duplicate tokens",
                "build the vocabulary with Vocab.build",
            )
        self.level: Level = level
        self.itos: tuple[str, ...] = itos
        self._stoi = {t: i for i, t in enumerate(itos)}

    @classmethod
    def build(
        cls, texts: Iterable[str], level: Level = "char", *, min_freq: int = 1,
        max_size: int | None = None,
    ) -> Vocab:
        """Collect the tokens of ``texts`` seen at least ``min_freq`` times.

        ``max_size`` caps the number of ordinary tokens (the most frequent are kept).
        """
        counts = Counter(tok for text in texts for tok in _tokens(text, level))
        kept = [t for t, c in counts.items() if c >= min_freq]
        ranked = sorted(kept, key=lambda t: (-counts[t], t))  # most frequent first, then by text
        return cls(ranked[:max_size], level)

    def tokens(self, text: str) -> list[str]:
        """Split ``text`` into tokens at this vocabulary's level."""
        return _tokens(text, self.level)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """``(start, end)`` in ``text`` of each token of [`tokens`][attnkit.seq2seq.vocab.Vocab.tokens] (and of [`encode`][attnkit.seq2seq.vocab.Vocab.encode]).

        >>> Vocab([], level="word").token_spans("二〇二六年 11月")
        [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (6, 8), (8, 9)]
        """
        if self.level == "char":
            return [(i, i + 1) for i in range(len(text))]
        return _word_spans(text)

    def encode(self, text: str, *, sos: bool = False, eos: bool = False) -> list[int]:
        """Token ids of ``text`` (unknown → ``UNK``), optionally framed by ``SOS``/``EOS``."""
        ids = [self._stoi.get(tok, self.UNK) for tok in self.tokens(text)]
        return [self.SOS] * sos + ids + [self.EOS] * eos

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` (any iterable of ints, e.g. a 1-D tensor).

        Stops at the first ``EOS``; skips ``PAD`` and ``SOS``; ``UNK`` reads ``<unk>``.
        Word-level tokens are joined by single spaces, so word-level decoding returns
        ``" ".join(tokens(text))``, not the original spacing.
        """
        out = []
        for raw in ids:
            i = int(raw)
            if not 0 <= i < len(self.itos):
                raise AttnkitError.build(
                    f"token ids in [0, {len(self.itos)})", str(i),
                    "decode with the vocabulary the ids were encoded with",
                )
            if i == self.EOS:
                break
            if i not in (self.PAD, self.SOS):
                out.append(self.itos[i])
        return ("" if self.level == "char" else " ").join(out)

    def index(self, token: str) -> int:
        """Id of ``token`` (``UNK`` if absent)."""
        return self._stoi.get(token, self.UNK)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state: ``{"level": ..., "tokens": [all tokens in id order]}``."""
        return {"level": self.level, "tokens": list(self.itos)}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Vocab:
        """Inverse of [`to_dict`][attnkit.seq2seq.vocab.Vocab.to_dict].

        >>> v = Vocab.build(["ab"]); Vocab.from_dict(v.to_dict()) == v
        True
        """
        tokens = list(state.get("tokens", []))
        if tuple(tokens[: len(SPECIALS)]) != SPECIALS:
            raise AttnkitError.build(
                f"a state whose tokens start with {list(SPECIALS)}", repr(tokens[:4]),
                "pass the dict that Vocab.to_dict returned",
            )
        return cls(tokens[len(SPECIALS):], state.get("level", "char"))

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: object) -> bool:
        return token in self._stoi

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Vocab):
            return NotImplemented
        return (self.level, self.itos) == (other.level, other.itos)

    def __hash__(self) -> int:
        return hash((self.level, self.itos))

    def __repr__(self) -> str:
        return f"Vocab(level={self.level!r}, size={len(self)})"


def _tokens(text: str, level: Level) -> list[str]:
    if level == "char":
        return list(text)
    return [text[s:e] for s, e in _word_spans(text)]
