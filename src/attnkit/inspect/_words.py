"""Word pieces joined into words, with the standard aggregation.

A tokenizer may cut one word into pieces (WordPiece ``北`` ``##京``, SentencePiece ``▁Pek`` ``ing``,
byte-level BPE ``Ġunbeliev`` ``able``). Attention between words is then, by the usual convention
(Clark et al., 2019, "What does BERT look at?"): attention **to** a word = the **sum** over its
pieces (weights stay a distribution), attention **from** a word = the **mean** over its pieces.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["AGGREGATION", "word_groups", "merge_word_pieces"]

AGGREGATION = "word pieces joined: attention to a word = sum over its pieces, from a word = mean over its pieces"
"""How word-level maps are made from word pieces (the note shown beside word-level views)."""

_WORD_STARTS = ("\u2581", "\u0120")  # SentencePiece, byte-level BPE: these mark a word's first piece


def word_groups(tokens: Sequence[str], special: Sequence[bool] | None = None) -> list[list[int]]:
    """Token positions grouped into words, in order.

    WordPiece: a ``##`` piece continues the previous word. SentencePiece / byte-level BPE (when
    some token starts with ``▁`` or ``Ġ``): a piece without that mark continues the previous
    word. Special tokens are words of their own.

    Example:
        >>> word_groups(["[CLS]", "北", "##京", "is", "big", "[SEP]"], [True, False, False, False, False, True])
        [[0], [1, 2], [3], [4], [5]]
        >>> word_groups(["<s>", "\u2581Pek", "ing", "\u2581is"], [True, False, False, False])
        [[0], [1, 2], [3]]
    """
    special = list(special) if special is not None else [False] * len(tokens)
    marked = any(t.startswith(_WORD_STARTS) for t in tokens)
    groups: list[list[int]] = []
    for i, t in enumerate(tokens):
        continues = t.startswith("##") and len(t) > 2 if not marked else not t.startswith(_WORD_STARTS)
        if groups and continues and not special[i] and not special[groups[-1][-1]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _join(tokens: Sequence[str], group: list[int]) -> str:
    from ._tokens import display

    text = display(tokens[group[0]]) + "".join(display(tokens[i]).removeprefix("##") for i in group[1:])
    return text.strip() or text


def merge_word_pieces(maps):  # type: ignore[no-untyped-def]  # AttentionMaps -> AttentionMaps
    """``maps`` with word pieces joined into words (`AGGREGATION`); rows still sum to 1.

    Query words take the mean of their pieces' rows, key words the sum of their pieces'
    columns. Tokens become the joined words (``北京``); special flags follow their token. Maps
    without any multi-piece word come back unchanged (same object).

    Example:
        >>> import torch
        >>> from attnkit.inspect import AttentionMaps
        >>> w = torch.tensor([[[[0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [0.0, 0.4, 0.6]]]])
        >>> words = AttentionMaps([w], [["北", "##京", "big"]]).words()
        >>> words.tokens, words.weights[0][0, 0]
        ([['北京', 'big']], tensor([[0.6000, 0.4000],
                [0.4000, 0.6000]]))
    """
    B = maps.batch_size
    q_groups = [word_groups(maps.tokens[b], maps.special[b] if maps.special else None) for b in range(B)]
    k_groups = q_groups if maps.is_self_attention else [word_groups(maps.key_tokens[b]) for b in range(B)]
    if all(len(g) == len(t) for g, t in zip(q_groups, maps.tokens)) and \
            all(len(g) == len(maps.keys_of(b)) for b, g in enumerate(k_groups)):
        return maps
    Lw, Sw = max(map(len, q_groups)), max(map(len, k_groups))
    H = maps.num_heads
    layers = [torch.zeros(B, H, Lw, Sw) for _ in maps.weights]
    qm, km = torch.zeros(B, Lw, dtype=torch.bool), torch.zeros(B, Sw, dtype=torch.bool)
    for b in range(B):
        seq = torch.from_numpy(maps.sequence(b)).double()  # (N, H, l, s)
        gq = torch.zeros(len(q_groups[b]), seq.shape[-2], dtype=torch.float64)  # mean over a word's query pieces
        for w, g in enumerate(q_groups[b]):
            gq[w, g] = 1.0 / len(g)
        gk = torch.zeros(len(k_groups[b]), seq.shape[-1], dtype=torch.float64)  # sum over a word's key pieces
        for w, g in enumerate(k_groups[b]):
            gk[w, g] = 1.0
        merged = gq @ seq @ gk.T  # (N, H, lw, sw)
        for n in range(len(layers)):
            layers[n][b, :, : len(q_groups[b]), : len(k_groups[b])] = merged[n].float()
        qm[b, : len(q_groups[b])] = True
        km[b, : len(k_groups[b])] = True
    tokens = [[_join(maps.tokens[b], g) for g in q_groups[b]] for b in range(B)]
    keys = None if maps.is_self_attention else [[_join(maps.key_tokens[b], g) for g in k_groups[b]] for b in range(B)]
    special = None if maps.special is None else [[maps.special[b][g[0]] for g in q_groups[b]] for b in range(B)]
    meta = dict(maps.meta, words=AGGREGATION)
    # type(maps), not an import of _maps: _maps imports this module (AttentionMaps.words)
    return type(maps)(layers, tokens, qm, km if not maps.is_self_attention else qm.clone(), key_tokens=keys,
                         special=special, meta=meta)
