"""Two steps of the "it" story: a row's raw scores, and heads tested on a contrasting pair of texts.

- [`row_scores`][attnkit.inspect._contrast.row_scores] — one head's ``q·k/√d`` scores of a query word before softmax, next to its
  weights (needs maps captured with ``scores=True``).
- [`contrast_heads`][attnkit.inspect._contrast.contrast_heads] — the classic claim "head X resolves *it*" made testable: run the model
  on two texts that differ in one word ("...too tired." / "...too wide."), and rank heads by how
  far their weight moves from one candidate to the other (animal → street). A head that follows
  the meaning should move; one that stays put, or points at something else, is evidence against.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from ..errors import AttnkitError
from ._maps import AttentionMaps
from ._tokens import display, locate

__all__ = ["HeadContrast", "ScoredKey", "contrast_heads", "default_candidates", "row_scores"]


class ScoredKey(NamedTuple):
    """One key of a query row: position among the real keys, token, pre-softmax score, weight."""

    position: int
    token: str
    score: float
    weight: float


class HeadContrast(NamedTuple):
    """How one (layer, head), 0-based, moves between text A and text B.

    ``change = (w_A(c1) − w_A(c2)) − (w_B(c1) − w_B(c2))`` for candidates ``c1, c2``: positive when
    the head moves from ``c1`` (in A) toward ``c2`` (in B). ``target_a``/``target_b`` are the keys
    the query gives the most weight in each text (special tokens, the query and its neighbours skipped).
    """

    layer: int
    head: int
    change: float
    weights_a: tuple[float, float]
    weights_b: tuple[float, float]
    target_a: str
    target_b: str


def row_scores(maps: AttentionMaps, layer: int, head: int, query: str | int, *, sequence: int = 0,
               occurrence: int = 0) -> list[ScoredKey]:
    """The scores (before softmax) and weights one head's query word gives every real key, in key order.

    A query word spanning several tokens gets the mean of its tokens' rows (of scores and of weights).
    For a one-token query ``softmax(score) == weight`` over the real keys (masked keys are not listed).

    Raises:
        AttnkitError: when ``maps`` hold no scores (``capture(..., scores=True)``), or for a bad layer/head.

    Example:
        >>> import torch
        >>> s = torch.tensor([[[[0.0, 1.0], [2.0, 0.0]]]])                      # (B=1, H=1, L=2, S=2)
        >>> maps = AttentionMaps([torch.softmax(s, -1)], [["cat", "it"]], scores=[s])
        >>> [(k.token, k.score, round(k.weight, 3)) for k in row_scores(maps, 0, 0, "it")]
        [('cat', 2.0, 0.881), ('it', 0.0, 0.119)]
    """
    if not (0 <= layer < maps.num_layers and 0 <= head < maps.num_heads):
        raise AttnkitError.build(f"layer in [0, {maps.num_layers}) and head in [0, {maps.num_heads})",
                                 f"layer {layer}, head {head}", "layers and heads count from 0")
    scores = maps.scores_of(sequence)[layer, head]
    weights = maps.sequence(sequence)[layer, head]
    rows = locate(maps.tokens[sequence], query, occurrence=occurrence)
    s, w = scores[rows].mean(0), weights[rows].mean(0)
    return [ScoredKey(j, tok, float(s[j]), float(w[j])) for j, tok in enumerate(maps.keys_of(sequence))]


def _rows(maps: AttentionMaps, query: str | int, occurrence: int) -> tuple[np.ndarray, list[int]]:
    q = locate(maps.tokens[0], query, occurrence=occurrence)
    return maps.sequence(0)[:, :, q, :].mean(-2), q  # (N, H, s)


def _allowed(maps: AttentionMaps, q: list[int], skip_neighbors: int) -> np.ndarray:
    keep = ~np.array(maps.specials_of(0), dtype=bool)
    keep[max(0, q[0] - skip_neighbors): q[-1] + skip_neighbors + 1] = False  # the query itself and its neighbours
    return keep


def default_candidates(maps_a: AttentionMaps, maps_b: AttentionMaps, query: str | int, *, occurrence: int = 0,
                       skip_neighbors: int = 1) -> tuple[str, str]:
    """Two candidate words when none are given: the word of text A the query attends to most (mean over
    all heads) among the words both texts share, then the same in text B excluding the first.

    Special tokens, the query and its neighbours are skipped. For the classic pair ("...too tired." /
    "...too wide.") with all-MiniLM-L6-v2 this gives ``("animal", "street")``.
    """
    picks: list[str] = []
    for maps, other in ((maps_a, maps_b), (maps_b, maps_a)):
        rows, q = _rows(maps, query, occurrence)
        mean = rows.mean((0, 1))
        keep = _allowed(maps, q, skip_neighbors)
        shared = {t for t in other.tokens[0]}
        order = [j for j in np.argsort(-mean, kind="stable") if keep[j] and maps.tokens[0][j] in shared
                 and maps.tokens[0][j] not in picks]
        if not order:
            raise AttnkitError.build("a word both texts share besides the query", f"tokens {maps.tokens[0]}",
                                     "pass two candidate words (--candidates WORD WORD)")
        picks.append(maps.tokens[0][order[0]])
    return picks[0], picks[1]


def contrast_heads(maps_a: AttentionMaps, maps_b: AttentionMaps, query: str | int, candidates: Sequence[str], *,
                   occurrence: int = 0, skip_neighbors: int = 1) -> list[HeadContrast]:
    """Rank every (layer, head) by how far the query's weight moves from ``candidates[0]`` toward ``candidates[1]``.

    ``maps_a`` and ``maps_b`` hold one sequence each, from the same model (same layers and heads).
    Weights on a word sum over its tokens; a multi-token query uses the mean of its rows.

    Returns:
        All heads as [`HeadContrast`][attnkit.inspect._contrast.HeadContrast], largest ``change`` first.

    Example:
        >>> import torch
        >>> a = torch.full((1, 2, 4, 4), 0.25)                               # (B, H=2, L, S), uniform
        >>> a[0, :, 3] = torch.tensor([.1, .6, .2, .1])                      # both heads: "it" -> cat
        >>> b = a.clone(); b[0, 0, 3] = torch.tensor([.1, .1, .7, .1])       # in text B head 0 moves to mat
        >>> toks = [["[CLS]", "cat", "mat", "it"]]
        >>> best = contrast_heads(AttentionMaps([a], toks), AttentionMaps([b], toks), "it", ["cat", "mat"],
        ...                       skip_neighbors=0)[0]
        >>> best.head, round(best.change, 2), best.target_a, best.target_b
        (0, 1.0, 'cat', 'mat')
    """
    if len(candidates) != 2:
        raise AttnkitError.build("two candidate words", str(list(candidates)), "e.g. candidates=('animal', 'street')")
    if (maps_a.num_layers, maps_a.num_heads) != (maps_b.num_layers, maps_b.num_heads):
        raise AttnkitError.build(f"maps of one model ({maps_a.num_layers} layers x {maps_a.num_heads} heads)",
                                 f"{maps_b.num_layers} x {maps_b.num_heads}", "capture both texts with the same model")
    sides = []
    for maps in (maps_a, maps_b):
        rows, q = _rows(maps, query, occurrence)
        w = np.stack([rows[..., locate(maps.tokens[0], c)].sum(-1) for c in candidates], -1)  # (N, H, 2)
        masked = np.where(_allowed(maps, q, skip_neighbors), rows, -1.0)
        targets = np.vectorize(lambda j, m=maps: display(m.tokens[0][j]))(masked.argmax(-1))
        sides.append((w, targets))
    (wa, ta), (wb, tb) = sides
    change = (wa[..., 0] - wa[..., 1]) - (wb[..., 0] - wb[..., 1])
    ranked = sorted(np.ndindex(*change.shape), key=lambda lh: (-change[lh], lh))
    return [HeadContrast(l, h, float(change[l, h]), (float(wa[l, h, 0]), float(wa[l, h, 1])),
                         (float(wb[l, h, 0]), float(wb[l, h, 1])), str(ta[l, h]), str(tb[l, h])) for l, h in ranked]
