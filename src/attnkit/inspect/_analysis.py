"""Analyses of captured attention: head aggregates, rollout, entropy, top keys, head search.

Every function reads only real (non-padding) positions. Results with a batch axis are padded
back to ``(B, ..., L, S)`` with zeros at padding, so they index like the captured weights.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..errors import AttnkitError
from ._maps import AttentionMaps
from ._tokens import display, locate

__all__ = ["HeadScore", "KeyWeight", "entropy", "find_heads", "head_max", "head_mean", "rollout", "rollout_sequence", "strongest_heads", "top_keys"]


class KeyWeight(NamedTuple):
    """One key a query attends to: its position among the real keys, token and weight."""

    position: int
    token: str
    weight: float


class HeadScore(NamedTuple):
    """One (layer, head), 0-based, with the score it was ranked by and its query's top keys."""

    layer: int
    head: int
    score: float
    key: str
    weight: float
    top: list[KeyWeight]

    def __str__(self) -> str:
        keys = ", ".join(f"{display(k.token)} {k.weight:.2f}" for k in self.top)
        return f"layer {self.layer} head {self.head}: {keys}"


def _padded(maps: AttentionMaps, per_seq: list[Tensor], shape_tail: tuple[int, ...]) -> Tensor:
    """Scatter per-sequence ``(..., l, s)`` results back to ``(B, ..., L, S)`` with zeros at padding."""
    B, L, S = maps.batch_size, maps.query_mask.shape[1], maps.key_mask.shape[1]
    out = torch.zeros((B, *shape_tail, L, S))
    for b, r in enumerate(per_seq):
        qi, ki = maps.query_mask[b].nonzero().flatten(), maps.key_mask[b].nonzero().flatten()
        out[b, ..., qi[:, None], ki[None, :]] = r
    return out


def head_mean(maps: AttentionMaps) -> Tensor:
    """Mean over heads: ``(N, B, L, S)`` (rows still sum to 1).

    Example:
        >>> import torch
        >>> w = torch.softmax(torch.randn(1, 4, 3, 3), -1)
        >>> mean = head_mean(AttentionMaps([w], [["a", "b", "c"]]))
        >>> mean.shape, torch.allclose(mean.sum(-1), torch.ones(1, 1, 3))
        (torch.Size([1, 1, 3, 3]), True)
    """
    return torch.stack([w.mean(1) for w in maps.weights])


def head_max(maps: AttentionMaps) -> Tensor:
    """Elementwise max over heads: ``(N, B, L, S)`` (not a distribution; shows any head's focus)."""
    return torch.stack([w.amax(1) for w in maps.weights])


def rollout(maps: AttentionMaps, *, residual: bool = True, head_fusion: Literal["mean", "max", "min"] = "mean",
            start_layer: int = 0) -> Tensor:
    """Attention rollout (Abnar & Zuidema, 2020): how much each input token flows into each position.

    Per layer, heads are fused (``head_fusion``), the residual connection is modelled as
    ``0.5·A + 0.5·I`` (``residual=True``), rows are renormalized, and the layers are multiplied
    from the first to the last: ``R = Â_{N-1} ⋯ Â_{start_layer}``. Padding is removed before the
    product, so padded tokens carry no flow.

    Returns:
        ``(B, L, S)`` float32, rows of real queries sum to 1; zeros at padding.

    Raises:
        AttnkitError: for cross-attention maps (rollout needs ``L == S`` self-attention).

    Example:
        >>> import torch
        >>> eye = torch.eye(3).expand(1, 2, 3, 3)       # every head attends to itself
        >>> rollout(AttentionMaps([eye, eye], [["a", "b", "c"]]))[0]
        tensor([[1., 0., 0.],
                [0., 1., 0.],
                [0., 0., 1.]])
    """
    if not maps.is_self_attention:
        raise AttnkitError.build("self-attention maps for rollout", "cross-attention (key_tokens set)", "roll out the encoder's self-attention")
    if head_fusion not in ("mean", "max", "min"):
        raise AttnkitError.build('head_fusion "mean", "max" or "min"', repr(head_fusion), "pick one")
    if not 0 <= start_layer < maps.num_layers:
        raise AttnkitError.build(f"start_layer in [0, {maps.num_layers})", str(start_layer), "count layers from 0")
    per_seq = [rollout_sequence(maps.sequence(b), residual, head_fusion, start_layer) for b in range(maps.batch_size)]
    return _padded(maps, per_seq, ())


def rollout_sequence(seq: np.ndarray | Tensor, residual: bool = True, head_fusion: str = "mean", start_layer: int = 0) -> Tensor:
    """Rollout of one unpadded sequence: weights ``(N, H, l, l)`` → ``(l, l)`` float32.

    The per-sequence core of [`rollout`][attnkit.inspect._analysis.rollout] (same arguments, no argument checks), for callers
    that already hold ``maps.sequence(b)``, such as the HTML viewer.

    Example:
        >>> import torch
        >>> rollout_sequence(torch.eye(2).expand(3, 1, 2, 2))
        tensor([[1., 0.],
                [0., 1.]])
    """
    w = torch.as_tensor(seq)
    fused = {"mean": w.mean(1), "max": w.amax(1), "min": w.amin(1)}[head_fusion].double()  # (N, l, l); float64 products
    if residual:
        fused = 0.5 * fused + 0.5 * torch.eye(fused.shape[-1], dtype=fused.dtype)
    fused = fused / fused.sum(-1, keepdim=True).clamp_min(torch.finfo(fused.dtype).tiny)
    r = torch.eye(fused.shape[-1], dtype=fused.dtype)
    for layer in range(start_layer, fused.shape[0]):
        r = fused[layer] @ r
    return r.float()


def entropy(maps: AttentionMaps, *, reduce: Literal["mean", "none"] = "mean") -> Tensor:
    """Entropy (nats) of each query's attention distribution over the real keys.

    ``0`` means the query looks at one key; ``log(s)`` means uniform over ``s`` keys. Divide by
    ``math.log(2)`` for bits. ``0·log 0`` counts as 0.

    Returns:
        ``reduce="mean"``: ``(N, B, H)``, the mean over each sequence's real queries;
        ``reduce="none"``: ``(N, B, H, L)``, 0 at padded queries.

    Example:
        >>> import torch
        >>> uniform = torch.full((1, 1, 2, 4), 0.25)
        >>> entropy(AttentionMaps([uniform], [["a", "b"]], key_tokens=[list("wxyz")]))
        tensor([[[1.3863]]])
    """
    if reduce not in ("mean", "none"):
        raise AttnkitError.build('reduce "mean" or "none"', repr(reduce), "pick one")
    N, H, L = maps.num_layers, maps.num_heads, maps.query_mask.shape[1]
    rows = torch.zeros(N, maps.batch_size, H, L)
    means = torch.zeros(N, maps.batch_size, H)
    for b in range(maps.batch_size):
        p = torch.from_numpy(maps.sequence(b)).double()  # (N, H, l, s)
        plogp = torch.where(p > 0, p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny)), torch.zeros_like(p))
        h = -plogp.sum(-1)  # (N, H, l)
        rows[:, b][..., maps.query_mask[b]] = h.float()
        means[:, b] = h.mean(-1).float() if h.shape[-1] else 0.0
    return means if reduce == "mean" else rows


def _query_row(maps: AttentionMaps, layer_head: np.ndarray, rows: list[int]) -> np.ndarray:
    """The distribution of a word over keys: the mean of its tokens' rows."""
    return layer_head[..., rows, :].mean(-2)


def top_keys(maps: AttentionMaps, layer: int, head: int, query: str | int, *, k: int = 5, sequence: int = 0,
             occurrence: int = 0) -> list[KeyWeight]:
    """The ``k`` keys the query word (or token position) attends to most in one head.

    A query word spanning several tokens uses the mean of their rows. Positions count real
    tokens (padding removed).

    Example:
        >>> import torch
        >>> w = torch.tensor([[[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]]]])
        >>> top_keys(AttentionMaps([w], [["a", "b", "c"]]), 0, 0, "b", k=2)
        [KeyWeight(position=2, token='c', weight=0.800000011920929), KeyWeight(position=0, token='a', weight=0.10000000149011612)]
    """
    seq = maps.sequence(sequence)
    _check_layer_head(maps, layer, head)
    row = _query_row(maps, seq[layer, head], locate(maps.tokens[sequence], query, occurrence=occurrence))
    return _top(row, maps.keys_of(sequence), k)


def _top(row: np.ndarray, keys: list[str], k: int) -> list[KeyWeight]:
    order = np.argsort(-row, kind="stable")[:k]
    return [KeyWeight(int(j), keys[j], float(row[j])) for j in order]


def _check_layer_head(maps: AttentionMaps, layer: int, head: int) -> None:
    if not (0 <= layer < maps.num_layers and 0 <= head < maps.num_heads):
        raise AttnkitError.build(f"layer in [0, {maps.num_layers}) and head in [0, {maps.num_heads})",
                                 f"layer {layer}, head {head}", "layers and heads count from 0")


def find_heads(maps: AttentionMaps, query_token: str | int, key_token: str | int, *, sequence: int = 0,
               versus: str | int | None = None, occurrence: int = 0, top: int = 4) -> list[HeadScore]:
    """Rank every (layer, head) by how much ``query_token`` attends to ``key_token``.

    The weight of a head is the attention the query word gives the key word: the mean over
    the query's tokens of the summed weight on the key's tokens (a word may span several
    subword tokens). With ``versus``, heads are ranked by ``weight(key) - weight(versus)``,
    e.g. ``find_heads(maps, "it", "animal", versus="street")`` for coreference heads.

    Returns:
        All ``N·H`` heads as [`HeadScore`][attnkit.inspect._analysis.HeadScore], best first (``layer``/``head`` 0-based;
        ``weight`` is the key word's weight, ``top`` the query's ``top`` strongest keys).

    Raises:
        AttnkitError: when a word is not among the sequence's tokens (the message lists them).

    Example:
        >>> import torch
        >>> w0 = torch.tensor([[[[0.5, 0.5], [0.9, 0.1]], [[0.5, 0.5], [0.2, 0.8]]]])
        >>> print(find_heads(AttentionMaps([w0], [["cat", "it"]]), "it", "cat")[0])
        layer 0 head 0: cat 0.90, it 0.10
    """
    seq = maps.sequence(sequence)  # (N, H, l, s)
    q_rows = locate(maps.tokens[sequence], query_token, occurrence=occurrence)
    keys = maps.keys_of(sequence)
    k_cols = locate(keys, key_token)
    rows = _query_row(maps, seq, q_rows)  # (N, H, s)
    weight = rows[..., k_cols].sum(-1)
    score = weight - (rows[..., locate(keys, versus)].sum(-1) if versus is not None else 0.0)
    key_name = " ".join(display(keys[j]) for j in k_cols)
    ranked = sorted(np.ndindex(*weight.shape), key=lambda lh: (-score[lh], lh))
    return [HeadScore(l, h, float(score[l, h]), key_name, float(weight[l, h]), _top(rows[l, h], keys, top)) for l, h in ranked]


def strongest_heads(maps: AttentionMaps, query_token: str | int, *, sequence: int = 0, skip_special: bool = True,
                    skip_self: bool = True, skip_neighbors: int = 0, occurrence: int = 0, top: int = 4) -> list[HeadScore]:
    """Rank every (layer, head) by the largest weight ``query_token`` gives any one other key.

    This is "where does this word look?" without naming a key: a head scores high when the
    query puts much of its weight on a single token. Special tokens (``[CLS]``, ``[SEP]``,
    which many heads use as a no-op sink) and the query's own tokens are skipped by default;
    ``skip_neighbors=d`` also skips keys within ``d`` positions of the query (previous/next-token
    heads are positional, not about meaning).

    Returns:
        All ``N·H`` heads as [`HeadScore`][attnkit.inspect._analysis.HeadScore], best first; ``key`` is the winning key token.

    Example:
        >>> import torch
        >>> w = torch.tensor([[[[1.0, 0.0], [0.3, 0.7]], [[1.0, 0.0], [0.6, 0.4]]]])
        >>> print(strongest_heads(AttentionMaps([w], [["cat", "it"]]), "it")[0])
        layer 0 head 1: cat 0.60, it 0.40
    """
    seq = maps.sequence(sequence)
    q_rows = locate(maps.tokens[sequence], query_token, occurrence=occurrence)
    keys = maps.keys_of(sequence)
    rows = _query_row(maps, seq, q_rows)  # (N, H, s)
    allowed = np.ones(len(keys), dtype=bool)
    if skip_special:
        allowed &= ~np.array(maps.specials_of(sequence), dtype=bool)
    if skip_self and maps.is_self_attention:
        allowed[q_rows] = False
    if skip_neighbors > 0 and maps.is_self_attention:
        allowed[max(0, q_rows[0] - skip_neighbors): q_rows[-1] + skip_neighbors + 1] = False
    if not allowed.any():
        raise AttnkitError.build("at least one key left after skipping special tokens, the query and its neighbours",
                                 f"keys {keys}", "pass skip_special=False, skip_self=False or skip_neighbors=0")
    masked = np.where(allowed, rows, -1.0)
    best = masked.argmax(-1)  # (N, H)
    score = np.take_along_axis(masked, best[..., None], -1)[..., 0]
    ranked = sorted(np.ndindex(*score.shape), key=lambda lh: (-score[lh], lh))
    return [HeadScore(l, h, float(score[l, h]), display(keys[best[l, h]]), float(score[l, h]), _top(rows[l, h], keys, top))
            for l, h in ranked]
