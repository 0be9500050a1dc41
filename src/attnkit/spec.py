"""The checked, normalized description of one attention call that every engine receives.

:func:`attnkit.attention` validates its arguments once and builds an :class:`AttentionSpec`;
engines read it and never re-validate. Index tensors follow the FlexAttention convention:
``b``, ``h``, ``i``, ``j`` broadcast against a ``(B, H, L, S)`` block of scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Union

import torch
from torch import Tensor

__all__ = ["AttentionSpec", "AttentionOutput", "BlockIndex", "ScoreMod", "Normalizer"]

ScoreMod = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]
"""``score_mod(score, b, h, i, j) -> score``, elementwise on the scaled score."""

Normalizer = Union[str, Callable[..., Tensor]]


class AttentionOutput(NamedTuple):
    """What :func:`attnkit.attention` returns when ``return_lse`` or ``return_weights`` is set.

    ``out`` is ``(B, H, L, E)`` in the input dtype; ``lse`` is ``(B, H, L)`` float32 (float64
    for float64 input), ``-inf`` for rows with no visible key; ``weights`` is ``(B, H, L, S)``,
    the normalized attention probabilities (before dropout). Unrequested fields are ``None``.
    """

    out: Tensor
    lse: Tensor | None = None
    weights: Tensor | None = None


class BlockIndex(NamedTuple):
    """Broadcast index tensors of a block of scores: ``b (Bb,1,1,1)``, ``h (1,Hh,1,1)``,
    ``i (1,1,Li,1)``, ``j (1,1,1,Sj)`` (int64, absolute positions)."""

    b: Tensor
    h: Tensor
    i: Tensor
    j: Tensor

    @classmethod
    def ranges(
        cls, b: range | Tensor, h: range | Tensor, i: range, j: range, device: torch.device | str | None = None
    ) -> "BlockIndex":
        """Index tensors for the given ranges (or index tensors) of each axis."""

        def as_tensor(r: range | Tensor) -> Tensor:
            if isinstance(r, Tensor):
                return r.to(device=device, dtype=torch.int64).reshape(-1)
            return torch.arange(r.start, r.stop, dtype=torch.int64, device=device)

        return cls(
            as_tensor(b).view(-1, 1, 1, 1),
            as_tensor(h).view(1, -1, 1, 1),
            as_tensor(i).view(1, 1, -1, 1),
            as_tensor(j).view(1, 1, 1, -1),
        )

    def gather(self, t: Tensor) -> Tensor:
        """This block of a ``(B|1, H|1, L|1, S|1)`` tensor (size-1 dims broadcast)."""
        picks = [ix if size != 1 else torch.zeros_like(ix) for ix, size in zip(self, t.shape)]
        return t[picks[0], picks[1], picks[2], picks[3]]


@dataclass(frozen=True)
class AttentionSpec:
    """One attention call, validated. Shapes use the legend of DESIGN.md.

    Attributes:
        B, H, G, L, S, D, E: batch, query heads, key/value heads, query length, key length,
            query/key head dim, value head dim.
        scale: multiplier of ``q·k`` (default ``1/√D``).
        causal: ``None``, ``"bottom_right"`` or ``"top_left"``.
        window: ``(left, right)`` with ``None`` for an unbounded side, or ``None``.
        kv_lengths, q_lengths: ``(B,)`` int64 tensors or ``None``.
        mask: boolean ``(B|1, H|1, L, S)`` tensor (True = may attend) or ``None``.
        float_mask, bias: float ``(B|1, H|1, L|1, S|1)`` tensors added to the scores, or ``None``.
        score_mod: ``score_mod(score, b, h, i, j)`` or ``None``.
        alibi_slopes: float ``(B, H)`` tensor or ``None``.
        softcap: ``c`` in ``c·tanh(s/c)`` or ``None``.
        normalizer: ``"softmax"``, ``"sparsemax"``, ``"entmax15"``, ``"sigmoid"`` or a callable
            ``f(scores, dim=-1, mask=...)``.
        dropout_p, seed: dropout probability and the counter-based generator's seed.
        return_lse, return_weights: what the caller asked for.
        offset_bounds, kv_bounds, q_bounds: Python-int (min, max) over the batch of the
            query alignment offset and of the lengths, for block skipping without syncs.
        q_nonfinite, kv_nonfinite: whether the query / key-value tensors may hold NaN or ±inf
            (``True`` when unknown: the check is skipped where it would cost as much as the
            attention itself, e.g. for decoding shapes). Engines use it to keep hidden keys
            from influencing anything (DESIGN.md) and to decline specs they would get wrong.
        needs_grad: autograd will differentiate the result (some engines then decline).
    """

    B: int
    H: int
    G: int
    L: int
    S: int
    D: int
    E: int
    dtype: torch.dtype
    device: torch.device
    scale: float
    causal: str | None = None
    window: tuple[int | None, int | None] | None = None
    kv_lengths: Tensor | None = None
    q_lengths: Tensor | None = None
    mask: Tensor | None = None
    float_mask: Tensor | None = None
    bias: Tensor | None = None
    score_mod: ScoreMod | None = None
    alibi_slopes: Tensor | None = None
    softcap: float | None = None
    normalizer: Normalizer = "softmax"
    dropout_p: float = 0.0
    seed: int = 0
    return_lse: bool = False
    return_weights: bool = False
    offset_bounds: tuple[int, int] = (0, 0)
    kv_bounds: tuple[int, int] = (0, 0)
    q_bounds: tuple[int, int] = (0, 0)
    q_nonfinite: bool = True
    kv_nonfinite: bool = True
    needs_grad: bool = False

    @property
    def compute_dtype(self) -> torch.dtype:
        """float64 for float64 inputs, float32 otherwise (softmax, LSE and accumulation)."""
        return torch.float64 if self.dtype == torch.float64 else torch.float32

    @property
    def has_structured_mask(self) -> bool:
        return (
            self.causal is not None or self.window is not None or self.kv_lengths is not None or self.q_lengths is not None
        )

    @property
    def has_score_mods(self) -> bool:
        return any(
            x is not None for x in (self.float_mask, self.bias, self.score_mod, self.alibi_slopes, self.softcap)
        )

    def align_offset(self) -> Tensor | int:
        """Where query ``i`` sits among the keys: aligned position ``p = i + offset``.

        ``0`` for top-left alignment; otherwise bottom-right, ``S - L``, or per batch
        ``kv_lengths[b] - q_lengths[b]`` (shape ``(B, 1, 1, 1)``) when lengths are given.
        """
        if self.causal == "top_left":
            return 0
        if self.kv_lengths is None and self.q_lengths is None:
            return self.S - self.L
        kv = self.kv_lengths if self.kv_lengths is not None else torch.full((self.B,), self.S, device=self.device)
        ql = self.q_lengths if self.q_lengths is not None else torch.full((self.B,), self.L, device=self.device)
        return (kv - ql).view(-1, 1, 1, 1)
