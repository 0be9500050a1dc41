"""The safe softmax family and the mergeable softmax state.

Everything in attnkit rests on one fact: a row's softmax needs only its running
maximum ``m`` and running sum ``l = Σ exp(x - m)``, and two such states merge exactly::

    m = max(m_a, m_b)
    l = l_a·exp(m_a - m) + l_b·exp(m_b - m)

Conventions shared by every function here:

- ``mask`` is boolean and broadcastable to ``x``; True = keep. Masked entries get
  probability 0 (``-inf`` in log space) and gradient 0.
- A fully masked (or empty) row has softmax 0, log-softmax / logsumexp ``-inf`` and zero
  gradients — never NaN.
- float16 / bfloat16 are computed in float32 and returned in the input dtype.
- ``temperature`` T > 0 divides the logits first: ``softmax(x / T)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ._devices import check_data, check_device, check_on
from ._numerics import NEG_INF
from .errors import AttnkitError

__all__ = [
    "softmax",
    "log_softmax",
    "logsumexp",
    "SoftmaxState",
    "online_softmax",
    "merge_partials",
    "softmax_cross_entropy",
    "compute_dtype",
    "check_inputs",
]



def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype softmax/LSE/accumulation run in: float64 stays, everything else is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_dim(x: Tensor, dim: int, name: str = "x") -> int:
    """``dim`` as a non-negative index of ``x``, or an AttnkitError (no silent wrap-around)."""
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise AttnkitError.build("dim as an int", f"{type(dim).__name__} {dim!r}", "pass e.g. dim=-1")
    n = max(x.dim(), 1)
    if not -n <= dim < n:
        raise AttnkitError.build(f"dim in [{-n}, {n - 1}] for {name} of shape {tuple(x.shape)}", str(dim), "pass e.g. dim=-1")
    return dim % n


def _check_floating(x: object, name: str = "x") -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise AttnkitError.build(
            f"{name} to be a floating-point tensor",
            f"{type(x).__name__} of dtype {getattr(x, 'dtype', None)}",
            f"convert with {name}.float() (an integer tensor would be truncated)",
        )
    return x


def _check_temperature(temperature: float) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < float("inf"):
        raise AttnkitError.build("a finite temperature > 0", repr(temperature), "pass a positive temperature such as 1.0")
    return float(temperature)


def check_inputs(x: object, dim: int, mask: Tensor | None, temperature: float) -> tuple[int, float]:
    """The one input check of the softmax family (softmax, log_softmax, logsumexp, sparsemax,
    entmax15, sigmoid): ``x`` a floating tensor, ``dim`` an int naming one of its dims, ``mask``
    boolean and broadcastable to ``x`` without enlarging it, ``temperature`` a finite real > 0
    (``True`` is not a temperature). Returns ``(dim as a non-negative index, temperature as float)``.

    Example:
        >>> import torch
        >>> check_inputs(torch.zeros(2, 3), -1, None, 2)
        (1, 2.0)
    """
    _check_floating(x)
    if x.dim() == 0:  # type: ignore[union-attr]
        raise AttnkitError.build("x with at least one dimension", "a 0-d tensor", "pass x.reshape(1) or a row of scores")
    dim = _check_dim(x, dim)  # type: ignore[arg-type]
    temperature = _check_temperature(temperature)
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise AttnkitError.build("a boolean mask (True = keep)", f"{getattr(mask, 'dtype', type(mask).__name__)}", "pass mask.bool()")
        check_on(x.device, "x", mask=mask)  # type: ignore[union-attr]
        try:
            ok = torch.broadcast_shapes(mask.shape, x.shape) == x.shape  # type: ignore[union-attr]
        except RuntimeError:
            ok = False
        if not ok:  # a mask must not broadcast x to a bigger shape
            raise AttnkitError.build(
                f"mask broadcastable to x's shape {tuple(x.shape)}", f"{tuple(mask.shape)}", "reshape or unsqueeze the mask"  # type: ignore[union-attr]
            )
    return dim, temperature


def _prepare(x: Tensor, dim: int, mask: Tensor | None, temperature: float) -> Tensor:
    """Check, upcast and mask; returns logits in the compute dtype (the caller applies the temperature).

    The temperature divides ``x - max`` rather than ``x``: the softmax is unchanged (shift
    invariance), but ``x / T`` overflows for tiny T or huge x (``[1, 2] / 1e-40`` is ``inf``,
    and ``inf - inf`` is NaN) while ``(x - max) / T`` is ``<= 0`` and tends to the exact
    limit: one-hot on the maximum (uniform over ties). [`logsumexp`][attnkit.softmax.logsumexp] adds ``max / T`` back.
    """
    check_inputs(x, dim, mask, temperature)
    x = x.to(compute_dtype(x.dtype))
    if mask is not None:
        x = x.masked_fill(~mask, NEG_INF)
    return x


def _temper(z: Tensor, dim: int, temperature: float) -> tuple[Tensor, Tensor]:
    """``((z - m) / T, m)`` with ``m`` the safe row max (see `_safe_max`)."""
    m = _safe_max(z, dim)
    return (z - m) / temperature, m


def _safe_max(x: Tensor, dim: int) -> Tensor:
    """Row max, detached, with infinite maxima replaced by 0: subtracting it keeps exp() <= 1 (no
    overflow) without changing the result; a fully masked row gives exp(-inf - 0) = 0, not NaN,
    and a row holding +inf gives exp(inf) = inf (logsumexp = inf, as torch), not inf - inf = NaN."""
    if x.shape[dim] == 0:
        shape = list(x.shape)
        shape[dim] = 1
        return x.new_zeros(shape)
    m = x.detach().amax(dim=dim, keepdim=True)
    return m.masked_fill(m.isinf(), 0.0)


def _shifted_lse(y: Tensor, dim: int) -> Tensor:
    """``log Σ exp(y)`` (keepdim) of rows already shifted so their max is 0 (or empty / -inf).

    Kept separate from the shift so callers can form ``(x - m) - log Σ`` without ever
    holding ``m + log Σ``: at ``|m| = 1e4`` that sum's float32 spacing is 1e-3.
    Empty rows give ``-inf``; their backward stays finite (log of a masked 1, not of 0).
    """
    total = torch.exp(y).sum(dim=dim, keepdim=True)
    empty = total == 0
    return torch.log(total.masked_fill(empty, 1.0)).masked_fill(empty, NEG_INF)


def softmax(x: Tensor, dim: int = -1, *, mask: Tensor | None = None, temperature: float = 1.0) -> Tensor:
    """Numerically safe softmax ``exp(x_i / T) / Σ_j exp(x_j / T)`` along ``dim``.

    Args:
        x: logits of any shape.
        dim: the dimension that sums to 1.
        mask: optional boolean tensor broadcastable to ``x``; True = keep.
        temperature: T > 0; T < 1 sharpens, T > 1 flattens.

    Returns:
        Probabilities with the shape and dtype of ``x``. Fully masked or all ``-inf`` rows
        are all zeros (with zero gradients). A ``+inf`` or NaN logit makes its row NaN,
        as in `torch.softmax`; other rows are unaffected.

    Example:
        >>> import torch, attnkit
        >>> attnkit.softmax(torch.tensor([2.0, 1.0, 0.1])).round(decimals=3)
        tensor([0.6590, 0.2420, 0.0990])
        >>> attnkit.softmax(torch.tensor([1e4, 0.0]))  # the naive formula gives nan here
        tensor([1., 0.])
    """
    z = _prepare(x, dim, mask, temperature)
    if z.shape[dim] == 0:
        return z.to(x.dtype)
    z, _ = _temper(z, dim, temperature)
    # torch's fused softmax already subtracts the row max; only rows with nothing visible
    # (all -inf) need care: it would give 0/0 = NaN there, so compute them on zeros and
    # zero the result (masked_fill also zeroes their gradient).
    empty = (z == NEG_INF).all(dim=dim, keepdim=True)
    p = torch.softmax(z.masked_fill(empty, 0.0), dim=dim).masked_fill(empty, 0.0)
    return p.to(x.dtype)


def log_softmax(x: Tensor, dim: int = -1, *, mask: Tensor | None = None, temperature: float = 1.0) -> Tensor:
    """Numerically safe ``log(softmax(x / T))`` along ``dim``.

    Masked entries and every entry of a fully masked row are ``-inf``; gradients there are 0.

    Example:
        >>> import torch, attnkit
        >>> attnkit.log_softmax(torch.tensor([0.0, 0.0])).exp()
        tensor([0.5000, 0.5000])
    """
    z = _prepare(x, dim, mask, temperature)
    y, _ = _temper(z, dim, temperature)
    lse = _shifted_lse(y, dim)
    # (x - m) - log Σ: both terms small, so the result keeps full relative precision at any offset.
    out = (y - lse.masked_fill(lse == NEG_INF, 0.0)).masked_fill(lse == NEG_INF, NEG_INF)
    return out.to(x.dtype)


def logsumexp(
    x: Tensor, dim: int = -1, *, mask: Tensor | None = None, temperature: float = 1.0, keepdim: bool = False
) -> Tensor:
    """Numerically safe ``log Σ exp(x / T)`` along ``dim``; ``-inf`` for empty or fully masked rows.

    Example:
        >>> import torch, attnkit
        >>> attnkit.logsumexp(torch.tensor([1000.0, 1000.0], dtype=torch.float64))  # naive: log(inf) = inf
        tensor(1000.6931, dtype=torch.float64)
    """
    z = _prepare(x, dim, mask, temperature)
    lse = _lse_keepdim(z, dim, temperature)
    return (lse if keepdim else lse.squeeze(dim)).to(x.dtype)


def _lse_keepdim(z: Tensor, dim: int, temperature: float = 1.0) -> Tensor:
    """``m / T + log Σ exp((z - m) / T)`` (keepdim); ``-inf`` for empty or fully masked rows."""
    y, m = _temper(z, dim, temperature)
    lse = _shifted_lse(y, dim)
    return lse + m / temperature


# --------------------------------------------------------------------------- mergeable state


def _rescale(m_old: Tensor, m_new: Tensor) -> Tensor:
    """exp(m_old - m_new) with -inf states giving 0 instead of exp(-inf + inf) = NaN."""
    return torch.exp(m_old - m_new.masked_fill(m_new == NEG_INF, 0.0))


@dataclass
class SoftmaxState:
    """The running ``(m, l)`` of a softmax over rows seen in pieces.

    ``m`` is the running maximum and ``l = Σ exp(x - m)`` the running sum, both with the
    row shape (the reduced dimension removed). The empty state is ``m = -inf, l = 0``;
    merging with it is the identity, and merging two empty states stays empty (no NaN).

    Example:
        >>> import torch
        >>> from attnkit import SoftmaxState
        >>> x = torch.randn(4, 10)
        >>> a, b = SoftmaxState.empty((4,)), SoftmaxState.empty((4,))
        >>> _ = a.update(x[:, :3]); _ = b.update(x[:, 3:])
        >>> torch.allclose(a.merge(b).lse, torch.logsumexp(x, -1))
        True
    """

    m: Tensor
    l: Tensor  # noqa: E741 — the paper's name

    @classmethod
    def empty(
        cls, shape: tuple[int, ...], *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> "SoftmaxState":
        """The state of a row with nothing seen yet."""
        check_device(device)
        return cls(torch.full(shape, NEG_INF, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))

    def update(self, chunk: Tensor, dim: int = -1, *, inplace: bool = False) -> tuple[Tensor, Tensor]:
        """Fold a chunk of logits (row shape with ``dim`` inserted) into the state.

        Returns ``(p, alpha)``: ``p = exp(chunk - m_new)``, the chunk's unnormalized
        probabilities under the new max, and ``alpha = exp(m_old - m_new)`` (row shape),
        the factor by which anything accumulated under the old max must be rescaled —
        exactly what an attention accumulator ``acc = acc·alpha + p @ V`` needs.
        With ``inplace=True`` the chunk's memory is reused for ``p`` (the flash engine's
        inner loop); the state's own tensors are always updated in place.
        """
        _check_floating(chunk, "chunk")
        check_on(self.m.device, "the state", chunk=chunk)
        dim = _check_dim(chunk, dim, "chunk")
        row_shape = chunk.shape[:dim] + chunk.shape[dim + 1 :]
        if chunk.dim() != self.m.dim() + 1 or row_shape != self.m.shape:
            raise AttnkitError.build(
                f"a chunk whose shape without dim {dim} is the state's row shape {tuple(self.m.shape)}",
                f"{tuple(chunk.shape)}",
                "pass the same rows every time (no broadcasting), the reduced dimension at `dim`",
            )
        if chunk.shape[dim] == 0:
            return chunk.to(self.m.dtype), torch.ones_like(self.m)
        m_new = torch.maximum(self.m, chunk.amax(dim=dim))
        alpha = _rescale(self.m, m_new)
        # Shift by the new max so every exponent is <= 0; -inf rows shift by 0 (exp(-inf) = 0, not NaN).
        shift = m_new.masked_fill(m_new == NEG_INF, 0.0).unsqueeze(dim)
        p = chunk.sub_(shift).exp_() if inplace else torch.exp(chunk - shift)
        self.l.mul_(alpha).add_(p.sum(dim=dim))
        self.m.copy_(m_new)
        return p, alpha

    def merge(self, other: "SoftmaxState") -> "SoftmaxState":
        """The state of the union of both rows' elements (exact, order independent up to rounding)."""
        if not isinstance(other, SoftmaxState) or other.m.shape != self.m.shape:
            got = tuple(other.m.shape) if isinstance(other, SoftmaxState) else type(other).__name__
            raise AttnkitError.build(
                f"a SoftmaxState of row shape {tuple(self.m.shape)}", f"{got}", "merge states of the same rows"
            )
        m = torch.maximum(self.m, other.m)
        return SoftmaxState(m, self.l * _rescale(self.m, m) + other.l * _rescale(other.m, m))

    def share(self, merged: "SoftmaxState") -> Tensor:
        """This part's share of a merged state's normalizer: ``l·exp(m - merged.m) / merged.l``.

        The weight of this part's normalized output in the merged one (row shape; 0 where the
        merged state is empty). Exact at any offset, where weights ``exp(lse - merged.lse)`` carry
        ``lse``'s rounding.

        Example:
            >>> import torch
            >>> from attnkit import SoftmaxState
            >>> x = torch.randn(4, 10)
            >>> a, b = SoftmaxState.empty((4,)), SoftmaxState.empty((4,))
            >>> _ = a.update(x[:, :3]); _ = b.update(x[:, 3:])
            >>> ab = a.merge(b)
            >>> torch.allclose(a.share(ab) + b.share(ab), torch.ones(4))
            True
        """
        return (self.l * _rescale(self.m, merged.m)) * merged.l.reciprocal().masked_fill(merged.l == 0, 0.0)

    @property
    def lse(self) -> Tensor:
        """The log normalizer ``m + log l``; ``-inf`` for an empty state."""
        empty = self.l == 0
        return (self.m.masked_fill(empty, 0.0) + torch.log(self.l.masked_fill(empty, 1.0))).masked_fill(empty, NEG_INF)

    def normalize(self, chunk: Tensor, dim: int = -1) -> Tensor:
        """Final probabilities of a chunk of this row: ``exp(chunk - lse)``; 0 for empty rows.

        Computed as ``exp((chunk - m) - log l)``: ``chunk - lse`` would carry the rounding of
        ``lse`` itself (1e-3 at an offset of 1e4 in float32) into every probability.
        """
        dim = _check_dim(chunk, dim, "chunk")
        empty = self.l == 0
        m = self.m.masked_fill(empty, 0.0).unsqueeze(dim)
        log_l = torch.log(self.l.masked_fill(empty, 1.0)).unsqueeze(dim)
        # An empty row has chunk = -inf and m = 0: exp(-inf) = 0, not NaN.
        return torch.exp((chunk - m) - log_l)


def online_softmax(x: Tensor, dim: int = -1, block: int = 128) -> Tensor:
    """Softmax computed by walking ``dim`` in blocks of ``block`` elements.

    One pass accumulates the normalizer with [`SoftmaxState`][attnkit.softmax.SoftmaxState] (never holding the
    whole row's exponentials), a second pass writes ``exp(x - lse)``. Equals
    [`softmax`][attnkit.softmax.softmax] within rounding; a teaching and testing tool for the flash engine.

    Example:
        >>> import torch, attnkit
        >>> x = torch.randn(3, 1000)
        >>> torch.allclose(attnkit.online_softmax(x, block=64), torch.softmax(x, -1), atol=1e-6)
        True
    """
    if isinstance(block, bool) or not isinstance(block, int) or block < 1:
        raise AttnkitError.build("block as an int >= 1", repr(block), "pass a positive block size such as 128")
    _check_floating(x)
    dim = _check_dim(x, dim)
    z = x.to(compute_dtype(x.dtype)).movedim(dim, -1)
    state = SoftmaxState.empty(z.shape[:-1], dtype=z.dtype, device=z.device)
    for start in range(0, z.shape[-1], block):
        state.update(z[..., start : start + block])
    out = torch.cat([state.normalize(z[..., s : s + block]) for s in range(0, z.shape[-1], block)] or [z], dim=-1)
    return out.movedim(-1, dim).to(x.dtype)


class Partial(NamedTuple):
    """An attention result over a subset of keys: ``out`` normalized over that subset, and its ``lse``."""

    out: Tensor
    lse: Tensor


def merge_partials(o_a: Tensor, lse_a: Tensor, o_b: Tensor, lse_b: Tensor) -> Partial:
    """Merge two attention results computed over disjoint key sets, exactly.

    ``o_*`` are ``(..., L, E)``, each normalized over its own keys; ``lse_*`` are ``(..., L)``
    log-normalizers (``-inf`` where a part saw no visible key). Returns ``(out, lse)`` with::

        lse = logaddexp(lse_a, lse_b)
        out = o_a·exp(lse_a - lse) + o_b·exp(lse_b - lse)

    computed in float32 (float64 for float64) and returned in ``o_a``'s dtype. Rows empty
    in both parts give ``out = 0, lse = -inf`` — no NaN. The weights use the stable form
    ``sigmoid(lse_a - lse_b)``; a float32 ``lse`` near ``±1e4`` carries ``|lse|·2⁻²⁴ ≈ 6e-4`` of
    rounding, which becomes relative error of the weights (keep partials' lse in float32 or
    better, never in half). This is the one merge used by the
    flash, decode and ring engines.

    Example:
        >>> import torch, attnkit
        >>> q, k, v = torch.randn(1, 1, 4, 8), torch.randn(1, 1, 6, 8), torch.randn(1, 1, 6, 8)
        >>> a = attnkit.attention(q, k[..., :2, :], v[..., :2, :], return_lse=True)
        >>> b = attnkit.attention(q, k[..., 2:, :], v[..., 2:, :], return_lse=True)
        >>> out, lse = attnkit.merge_partials(a.out, a.lse, b.out, b.lse)
        >>> torch.allclose(out, attnkit.attention(q, k, v), atol=1e-6)
        True
    """
    for name, t in (("o_a", o_a), ("lse_a", lse_a), ("o_b", o_b), ("lse_b", lse_b)):
        _check_floating(t, name)
    check_on(o_a.device, "o_a", lse_a=lse_a, o_b=o_b, lse_b=lse_b)
    if o_b.shape != o_a.shape or o_a.dim() < 1 or lse_a.shape != o_a.shape[:-1] or lse_b.shape != o_a.shape[:-1]:
        raise AttnkitError.build(
            "o_a and o_b of one shape (..., L, E) and lse_a, lse_b of shape (..., L)",
            f"o_a {tuple(o_a.shape)}, lse_a {tuple(lse_a.shape)}, o_b {tuple(o_b.shape)}, lse_b {tuple(lse_b.shape)}",
            "merge partial results of the same queries (no broadcasting)",
        )
    ct = compute_dtype(o_a.dtype)
    lse_a, lse_b = lse_a.to(ct), lse_b.to(ct)
    # The sigmoid form (ring-flash-attention#34): the weights depend only on the difference
    # d = lse_a - lse_b, which is exact for close values, not on lse_a - lse (rounded twice).
    both_empty = (lse_a == NEG_INF) & (lse_b == NEG_INF)
    d = (lse_a - lse_b).masked_fill(both_empty, 0.0)
    w_a = torch.sigmoid(d).masked_fill(both_empty, 0.0).unsqueeze(-1)
    w_b = torch.sigmoid(-d).masked_fill(both_empty, 0.0).unsqueeze(-1)
    lse = torch.logaddexp(lse_a, lse_b)
    out = o_a.to(ct) * w_a + o_b.to(ct) * w_b
    return Partial(out.to(o_a.dtype), lse)


# --------------------------------------------------------------------------- cross-entropy


def _ce_targets(logits2d: Tensor, target: Tensor, ignore_index: int, smoothing: float) -> tuple[Tensor, Tensor]:
    """Dense target distribution y (M, C) and the keep-row weights (M,)."""
    n_cls = logits2d.shape[-1]
    if target.is_floating_point():  # class probabilities
        y = target.to(logits2d.dtype)
        keep = torch.ones(y.shape[0], dtype=y.dtype, device=y.device)
    else:
        keep_b = target != ignore_index
        idx = target.masked_fill(~keep_b, 0).long()
        if idx.numel() and (idx.min() < 0 or idx.max() >= n_cls):
            bad = target[keep_b & ((target < 0) | (target >= n_cls))][0].item()
            raise AttnkitError.build(
                f"class indices in [0, {n_cls}) or ignore_index={ignore_index}", f"{bad}", "check the target labels"
            )
        y = torch.zeros_like(logits2d).scatter_(1, idx.unsqueeze(1), 1.0)
        keep = keep_b.to(logits2d.dtype)
    if smoothing > 0:
        y = y * (1 - smoothing) + smoothing / n_cls
    return y * keep.unsqueeze(1), keep


class SoftmaxCrossEntropyFunction(torch.autograd.Function):
    """Cross-entropy of softmax(z) with closed-form backward ``(softmax(z) - y)·scale``.

    Saves only the logits and their per-row log-normalizer; the probabilities are
    recomputed in backward.
    """

    @staticmethod
    def forward(ctx, logits2d: Tensor, y: Tensor, keep: Tensor, reduction: str, denom: float) -> Tensor:  # type: ignore[override]
        # Work with z - max throughout: lse - z at an offset of 1e4 would lose 1e-3 to rounding.
        shifted = logits2d - _safe_max(logits2d, 1)
        lse = _shifted_lse(shifted, 1)
        # y·(lse - z) with 0·inf avoided where y = 0 (a -inf logit of a class not targeted);
        # a NaN logit still propagates to its own row.
        per_row = torch.where(y == 0, 0.0, y * (lse - shifted)).sum(1)
        ctx.save_for_backward(shifted, lse, y, keep)
        ctx.reduction, ctx.denom = reduction, denom
        if reduction == "none":
            return per_row
        total = per_row.sum()
        return total / denom if reduction == "mean" else total

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        shifted, lse, y, keep = ctx.saved_tensors
        p = torch.exp(shifted - lse)
        # d loss_i / d z_i = keep_i·p_i - y_i (y is already zero on ignored rows); Σ_c y_ic = keep_i.
        g = p * keep.unsqueeze(1) - y
        if ctx.reduction == "none":
            g = g * grad.unsqueeze(1)
        else:
            g = g * (grad / ctx.denom if ctx.reduction == "mean" else grad)
        return g, None, None, None, None


def softmax_cross_entropy(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> Tensor:
    """Cross-entropy ``-Σ_c y_c log softmax(z)_c`` whose gradient is the closed form ``softmax(z) - y``.

    Same contract as `torch.nn.functional.cross_entropy` (without class weights):

    Args:
        logits: ``(N, C)`` or ``(N, C, d1, ...)`` unnormalized scores (class dim 1), or ``(C,)``.
        target: class indices ``(N,)`` / ``(N, d1, ...)`` (entries equal to ``ignore_index``
            are skipped), or class probabilities with the shape of ``logits``.
        label_smoothing: ε in [0, 1]; the target becomes ``(1-ε)·y + ε/C``.
        reduction: ``"mean"`` (over non-ignored targets; over all rows for probability
            targets), ``"sum"`` or ``"none"`` (per element, shape of target without C).

    Returns:
        The loss in the logits' dtype (computed in float32 for half inputs). If every target
        is ignored, ``"mean"`` gives NaN, as torch does.

    Example:
        >>> import torch, attnkit
        >>> z = torch.tensor([[2.0, 1.0, 0.1]], requires_grad=True)
        >>> loss = attnkit.softmax_cross_entropy(z, torch.tensor([0]))
        >>> loss.backward(); z.grad  # softmax(z) - onehot(0)
        tensor([[-0.3410,  0.2424,  0.0986]])
    """
    if reduction not in ("mean", "sum", "none"):
        raise AttnkitError.build('reduction in ("mean", "sum", "none")', repr(reduction), "pick one of those")
    if not 0.0 <= label_smoothing <= 1.0:
        raise AttnkitError.build("label_smoothing in [0, 1]", repr(label_smoothing), "pass e.g. 0.1")
    _check_floating(logits, "logits")
    if not isinstance(target, Tensor):
        raise AttnkitError.build("target as a tensor of class indices or probabilities", type(target).__name__,
                                 "pass torch.tensor([...])")
    check_on(logits.device, "logits", target=target)
    check_data("target", target)
    if logits.dim() == 1:
        logits, target = logits.unsqueeze(0), target.unsqueeze(0)
    soft = target.is_floating_point()
    expect = tuple(logits.shape) if soft else (logits.shape[0], *logits.shape[2:])
    if tuple(target.shape) != expect:
        raise AttnkitError.build(
            f"target of shape {expect} for logits {tuple(logits.shape)}",
            f"{tuple(target.shape)}",
            "class indices drop the class dim 1; probability targets match the logits",
        )
    n_cls = logits.shape[1]
    z = logits.to(compute_dtype(logits.dtype)).movedim(1, -1).reshape(-1, n_cls)
    t = target.movedim(1, -1).reshape(-1, n_cls) if soft else target.reshape(-1)
    y, keep = _ce_targets(z, t, ignore_index, label_smoothing)
    denom = float(keep.sum()) if not soft else float(z.shape[0])
    loss = SoftmaxCrossEntropyFunction.apply(z, y, keep, reduction, denom)
    if reduction == "none":
        loss = loss.reshape(target.shape[:1] + (target.shape[2:] if soft else target.shape[1:]))
    return loss.to(logits.dtype)
