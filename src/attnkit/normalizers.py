"""Alternatives to softmax: sparsemax, 1.5-entmax and elementwise sigmoid.

sparsemax (Martins & Astudillo, 2016) and 1.5-entmax (Peters et al., 2019) map a row of
scores to a probability vector with exact zeros; both are computed exactly by sorting.
Tiers: ``_*_threshold`` helpers → ``SparsemaxFunction`` / ``Entmax15Function`` (closed-form
backward from the saved output alone) → the documented functions.

Conventions shared by every function here (as in `attnkit.softmax`):

- ``mask`` is boolean and broadcastable to ``x``; True = keep. Masked entries get weight
  exactly 0 and gradient exactly 0. A ``-inf`` score counts as masked.
- A row with nothing visible is all zeros with zero gradients — never NaN.
- ``temperature`` T > 0 divides the scores first; T < 1 sharpens, T > 1 flattens.
- float16 / bfloat16 are computed in float32 and returned in the input dtype.
- NaN never leaves its row: in sparsemax / entmax15 a NaN or ``+inf`` score makes its row NaN
  (as in softmax); sigmoid is elementwise.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from ._numerics import NEG_INF
from .softmax import check_inputs, compute_dtype

__all__ = ["NORMALIZERS", "Entmax15Function", "SparsemaxFunction", "entmax15", "sigmoid", "sparsemax"]

# Both maps have p_max <= 1, hence threshold tau >= max - 1 (on entmax's halved scores).
# Scores at or below max - 2 are provably outside the support: clamping them there is exact,
# turns -inf (masked) into a finite value, and bounds the cumsums below.
_FLOOR = -2.0


def _shift_and_floor(z: Tensor, dim: int) -> Tensor:
    """Subtract the row max and clamp at ``_FLOOR``; returns z with ``dim`` moved last."""
    m = z.amax(dim=dim, keepdim=True)
    m = m.masked_fill(m == NEG_INF, 0.0)  # all -inf row: avoid -inf - (-inf) = NaN
    # Both maps are shift-invariant; subtracting the max keeps large logits (1e4) from
    # swamping the cumsums (and their squares) in the threshold search.
    return (z - m).clamp_min(_FLOOR).movedim(dim, -1)


def _sorted_with_ranks(z: Tensor) -> tuple[Tensor, Tensor]:
    """Scores sorted descending along the last dim, and ranks 1..n in z's dtype."""
    rho = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    return z.sort(dim=-1, descending=True).values, rho


def _sparsemax_threshold(z: Tensor) -> Tensor:
    """tau with Σ max(z - tau, 0) = 1 along the last dim, shape (..., 1) (Martins & Astudillo, Alg. 1)."""
    zs, rho = _sorted_with_ranks(z)
    csum = zs.cumsum(-1) - 1
    # support size k = max{k : 1 + k·z_(k) > Σ_{j<=k} z_(j)}; >= 1 so a NaN row cannot index -1
    k = (rho * zs > csum).sum(-1, keepdim=True).clamp_min(1)
    return csum.gather(-1, k - 1) / k.to(z.dtype)


def _entmax15_threshold(z: Tensor) -> Tensor:
    """tau with Σ max(z - tau, 0)² = 1 along the last dim, shape (..., 1) (Peters et al., Alg. 2)."""
    zs, rho = _sorted_with_ranks(z)
    mean = zs.cumsum(-1) / rho
    sq_dev = rho * ((zs * zs).cumsum(-1) / rho - mean * mean)  # Σ_{j<=k} (z_(j) - mean_k)²
    tau = mean - ((1 - sq_dev) / rho).clamp_min(0).sqrt()
    k = (tau <= zs).sum(-1, keepdim=True).clamp_min(1)
    return tau.gather(-1, k - 1)


class SparsemaxFunction(torch.autograd.Function):
    """sparsemax along ``dim`` with a closed-form backward; use [`sparsemax`][attnkit.normalizers.sparsemax] instead."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, dim: int) -> Tensor:
        ctx.dim = dim
        if z.numel() == 0:
            y = z.clone()
        else:
            zl = _shift_and_floor(z, dim)
            y = (zl - _sparsemax_threshold(zl)).clamp_min(0).movedim(-1, dim)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        (y,) = ctx.saved_tensors
        s = (y > 0).to(g.dtype)  # support indicator
        # support is never empty on a finite row; clamp only keeps NaN rows from dividing by 0
        mean = (g * s).sum(ctx.dim, keepdim=True) / s.sum(ctx.dim, keepdim=True).clamp_min(1)
        return s * (g - mean), None


class Entmax15Function(torch.autograd.Function):
    """1.5-entmax along ``dim`` with a closed-form backward; use [`entmax15`][attnkit.normalizers.entmax15] instead."""

    @staticmethod
    def forward(ctx: Any, z: Tensor, dim: int) -> Tensor:
        ctx.dim = dim
        if z.numel() == 0:
            y = z.clone()
        else:
            zl = _shift_and_floor(z / 2, dim)  # 1.5-entmax(z) = max(z/2 - tau, 0)²
            y = (zl - _entmax15_threshold(zl)).clamp_min(0).square().movedim(-1, dim)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        (y,) = ctx.saved_tensors
        gppr = y.sqrt()  # 1 / (Tsallis-1.5 entropy)''(y); Σ gppr >= Σ y = 1, no zero division
        gz = gppr * g
        return gz - gppr * gz.sum(ctx.dim, keepdim=True) / gppr.sum(ctx.dim, keepdim=True), None


def _sparse_normalize(fn: type[torch.autograd.Function], x: Tensor, dim: int, mask: Tensor | None,
                      temperature: float) -> Tensor:
    """Shared body of sparsemax / entmax15: upcast, temperature, mask, apply, cast back."""
    check_inputs(x, dim, mask, temperature)
    z = x.to(compute_dtype(x.dtype))
    if temperature != 1:
        z = z / temperature
    keep = z != NEG_INF
    if mask is not None:
        keep = keep & mask
    # -inf lands at the floor inside fn (outside the support); where() gives it zero gradient.
    y = fn.apply(torch.where(keep, z, NEG_INF), dim)
    # where(), not y * keep: a NaN row must not turn its masked slots into NaN * 0 = NaN
    return torch.where(keep, y, 0.0).to(x.dtype)


def sparsemax(x: Tensor, dim: int = -1, *, mask: Tensor | None = None, temperature: float = 1.0) -> Tensor:
    """sparsemax: the Euclidean projection of ``x / T`` onto the probability simplex along ``dim``.

    ``p = argmin_{p >= 0, Σp = 1} ||p - x/T||² = max(x/T - tau, 0)``; unlike softmax, low
    scores get exactly 0 (Martins & Astudillo, 2016). Exact and sort-based: O(n log n) per row.

    Args:
        x: scores of any shape, e.g. ``(B, H, L, S)`` with ``dim=-1``.
        dim: the dimension that sums to 1.
        mask: optional boolean tensor broadcastable to ``x``; True = keep. Masked and ``-inf``
            entries get weight 0 and gradient 0.
        temperature: T > 0; T -> 0 approaches one-hot argmax, large T approaches uniform.

    Returns:
        Weights with the shape and dtype of ``x``; each row is >= 0 and sums to 1, or is all
        zeros (zero gradients) if nothing in it is visible. Size-1 rows give 1; empty tensors
        give empty tensors. A NaN or ``+inf`` score makes its row NaN, other rows unaffected.

    Example:
        >>> import torch
        >>> from attnkit.normalizers import sparsemax
        >>> sparsemax(torch.tensor([2.0, 1.5, 0.0]))
        tensor([0.7500, 0.2500, 0.0000])
        >>> sparsemax(torch.tensor([9.0, 2.0, 1.5]), mask=torch.tensor([False, True, True]))
        tensor([0.0000, 0.7500, 0.2500])
        >>> sparsemax(torch.tensor([1e4, 1e4 - 0.5, -1e4]))  # no overflow at extreme logits
        tensor([0.7500, 0.2500, 0.0000])
    """
    return _sparse_normalize(SparsemaxFunction, x, dim, mask, temperature)


def entmax15(x: Tensor, dim: int = -1, *, mask: Tensor | None = None, temperature: float = 1.0) -> Tensor:
    """1.5-entmax of ``x / T`` along ``dim`` (Peters, Niculae & Martins, 2019).

    ``p = argmax_{p >= 0, Σp = 1} <p, x/T> + H_1.5(p) = max(x/(2T) - tau, 0)²`` with
    ``H_1.5`` the Tsallis 1.5-entropy: between softmax (dense) and sparsemax (sparser). Same
    definition as ``entmax.entmax15``; exact and sort-based.

    Args:
        x: scores of any shape, e.g. ``(B, H, L, S)`` with ``dim=-1``.
        dim: the dimension that sums to 1.
        mask: optional boolean tensor broadcastable to ``x``; True = keep. Masked and ``-inf``
            entries get weight 0 and gradient 0.
        temperature: T > 0; T -> 0 approaches one-hot argmax, large T approaches uniform.

    Returns:
        Weights with the shape and dtype of ``x``; each row is >= 0 and sums to 1, or is all
        zeros (zero gradients) if nothing in it is visible. Size-1 rows give 1; empty tensors
        give empty tensors. A NaN or ``+inf`` score makes its row NaN, other rows unaffected.

    Example:
        >>> import torch
        >>> from attnkit.normalizers import entmax15
        >>> entmax15(torch.tensor([2.0, 1.0, -2.0]))  # sparsemax would give [1, 0, 0]
        tensor([0.8307, 0.1693, 0.0000])
        >>> entmax15(torch.tensor([[1.0, 1.0], [3.0, 0.0]]), mask=torch.tensor([[True, True], [False, False]]))
        tensor([[0.5000, 0.5000],
                [0.0000, 0.0000]])
    """
    return _sparse_normalize(Entmax15Function, x, dim, mask, temperature)


def sigmoid(x: Tensor, dim: int = -1, *, mask: Tensor | None = None, temperature: float = 1.0) -> Tensor:
    """Elementwise ``sigmoid(x / T)``: independent gates in (0, 1) that need not sum to 1.

    Args:
        x: scores of any shape, e.g. ``(B, H, L, S)``.
        dim: unused (no normalization across entries); accepted and checked so all
            normalizers share one signature.
        mask: optional boolean tensor broadcastable to ``x``; True = keep. Masked entries are
            exactly 0 with gradient 0, so a fully masked row is all zeros.
        temperature: T > 0.

    Returns:
        Weights with the shape and dtype of ``x``; ``±inf`` give 1 / 0, NaN stays NaN in place.

    Example:
        >>> import torch
        >>> from attnkit.normalizers import sigmoid
        >>> sigmoid(torch.tensor([0.0, 1e4, -1e4]), mask=torch.tensor([True, True, False]))
        tensor([0.5000, 1.0000, 0.0000])
    """
    check_inputs(x, dim, mask, temperature)
    z = x.to(compute_dtype(x.dtype))
    if temperature != 1:
        z = z / temperature
    y = torch.sigmoid(z)  # torch's kernel is already stable for large |z|
    if mask is not None:
        y = torch.where(mask, y, 0.0)
    return y.to(x.dtype)


NORMALIZERS: dict[str, Callable[..., Tensor]] = {"sparsemax": sparsemax, "entmax15": entmax15, "sigmoid": sigmoid}
