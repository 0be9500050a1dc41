"""Tokens as people read them: strip subword markers and find a word's token span.

Tokenizers mark word pieces differently: WordPiece continues a word with ``##``,
SentencePiece starts one with ``▁``, byte-level BPE (GPT-2) with ``Ġ``. To find the word
``it`` the user typed, we compare tokens with those markers removed, case-insensitively,
and allow a word to span several consecutive tokens (``didn't`` → ``didn ' t``).
"""

from __future__ import annotations

from typing import Sequence

from ..errors import AttnkitError

__all__ = ["display", "locate"]

_PREFIXES = ("##", "\u2581", "\u0120")  # WordPiece, SentencePiece, byte-level BPE
_BYTE_LEVEL = {"\u0120": " ", "\u010a": "\n", "\u0109": "\t"}  # Ġ, Ċ, ĉ


def display(token: str) -> str:
    """A token as shown to people: ``##ing`` → ``ing``, ``▁the`` / ``Ġthe`` → ``the``.

    Example:
        >>> [display(t) for t in ["##ing", "\u2581the", "\u0120it", "[CLS]"]]
        ['ing', 'the', 'it', '[CLS]']
    """
    for prefix in _PREFIXES:
        if token.startswith(prefix) and len(token) > len(prefix):
            token = token[len(prefix):]
            break
    text = "".join(_BYTE_LEVEL.get(c, c) for c in token)
    return text if text.strip() else token


def _norm(token: str) -> str:
    return display(token).strip().casefold()


def locate(tokens: Sequence[str], word: str | int, *, occurrence: int = 0) -> list[int]:
    """Positions of ``word`` in ``tokens``: its token span, or ``[word]`` for an int position.

    A word matches one token, or several consecutive tokens whose displayed texts join to it
    (case-insensitive, subword markers ignored). ``occurrence`` picks among repeated matches
    (0 = first). Single-token matches are preferred over spans starting at the same place.

    Raises:
        AttnkitError: if the word is not in the tokens, naming the tokens that are.

    Example:
        >>> toks = ["[CLS]", "the", "animal", "didn", "'", "t", "cross", "[SEP]"]
        >>> locate(toks, "animal"), locate(toks, "didn't"), locate(toks, 6)
        ([2], [3, 4, 5], [6])
    """
    n = len(tokens)
    if isinstance(word, int) and not isinstance(word, bool):
        if not -n <= word < n:
            raise AttnkitError.build(f"a token position in [0, {n})", str(word), "count tokens from 0")
        return [word % n]
    target = str(word).strip().casefold()
    norms = [_norm(t) for t in tokens]
    matches: list[list[int]] = []
    for start in range(n):
        text = ""
        for end in range(start, n):
            text += norms[end]
            if text == target:
                matches.append(list(range(start, end + 1)))
                break
            if not target.startswith(text) or not text:
                break
    if len(matches) <= occurrence:
        shown = " ".join(display(t).replace("\n", "\\n") for t in tokens[:40]) + (" …" if n > 40 else "")
        nth = occurrence + 1  # occurrence counts from 0: occurrence=2 asks for the 3rd
        suffix = "th" if 11 <= nth % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(nth % 10, "th")
        got = repr(word) if not matches else f"{len(matches)} occurrence(s) of {word!r}, asked for the {nth}{suffix}"
        raise AttnkitError.build(f"a word of the text, whose tokens are: {shown}", got, "pick one of those tokens (or a position)")
    return matches[occurrence]
