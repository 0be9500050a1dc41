"""Score modifications applied between ``q·k·scale`` and the normalizer.

Order (every engine applies the same): ``s = scale·q·k`` → softcap ``c·tanh(s/c)`` →
``+ alibi`` → ``+ float_mask + bias`` → ``score_mod(s, b, h, i, j)``; boolean/structured
masks come last (hidden entries become ``-inf``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .errors import AttnkitError
from .spec import AttentionSpec, BlockIndex

__all__ = ["apply_score_mods", "alibi_slopes", "alibi_bias"]


def alibi_slopes(num_heads: int) -> Tensor:
    """The geometric ALiBi slopes of Press et al. (2022): ``2^(-8h/H)`` for ``h = 1..H``
    (with the paper's interleaving when ``H`` is not a power of two).

    Example:
        >>> import attnkit
        >>> attnkit.alibi_slopes(4)
        tensor([0.2500, 0.0625, 0.0156, 0.0039])
    """

    def power_of_two(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**k for k in range(n)]

    if num_heads & (num_heads - 1) == 0:
        return torch.tensor(power_of_two(num_heads))
    closest = 2 ** math.floor(math.log2(num_heads))
    extra = power_of_two(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(power_of_two(closest) + extra)


def alibi_bias(spec: AttentionSpec, idx: BlockIndex) -> Tensor:
    """``-slope[b, h] · |p - j|`` for the block, with ``p`` the aligned query position."""
    assert spec.alibi_slopes is not None
    off = spec.align_offset()
    p = idx.i + (off[idx.b.view(-1)] if isinstance(off, Tensor) else off)
    slopes = spec.alibi_slopes[idx.b.view(-1)][:, idx.h.view(-1)].view(idx.b.shape[0], idx.h.shape[1], 1, 1)
    return -slopes * (p - idx.j).abs()



def apply_score_mods(s: Tensor, spec: AttentionSpec, idx: BlockIndex) -> Tensor:
    """Apply softcap, ALiBi, float masks / bias and ``score_mod`` to a block of scaled scores.

    ``s`` is ``(Bb, Hh, Li, Sj)`` in the compute dtype; ``idx`` gives the block's absolute
    indices. Out of place (so autograd can differentiate through it).
    """
    if spec.softcap is not None:
        s = torch.tanh(s / spec.softcap) * spec.softcap
    if spec.alibi_slopes is not None:
        s = s + alibi_bias(spec, idx).to(s.dtype)
    for extra in (spec.float_mask, spec.bias):
        if extra is not None:
            s = s + idx.gather(extra).to(s.dtype)
    if spec.score_mod is not None:
        out = spec.score_mod(s, idx.b, idx.h, idx.i, idx.j)
        if not isinstance(out, Tensor) or not out.is_floating_point() or out.shape != s.shape:
            got = f"{type(out).__name__} {tuple(out.shape)} {out.dtype}" if isinstance(out, Tensor) else type(out).__name__
            raise AttnkitError.build(
                f"score_mod(score, b, h, i, j) to return a float tensor of the score block's shape {tuple(s.shape)}",
                got,
                "compute elementwise on `score` (e.g. `score + bias[h]`, `torch.where(i >= j, score, -inf)`), "
                "keeping its shape",
            )
        s = out
    return s
