"""The ``layout`` argument of [`attnkit.attention`][attnkit.functional.attention]: which axis order ``q, k, v`` and ``out`` use.

attnkit's own order is ``"bhld"`` — ``(B, H, L, D)``, like torch SDPA. FlashAttention's
``flash_attn_func`` and most model code before their ``.transpose(1, 2)`` hold ``"blhd"`` —
``(B, L, H, D)``. Both shapes are valid 4-D tensors, so passing one as the other computes attention
over the wrong axes without any error; ``layout`` says which one it is. The conversion is a
transpose *view* each way (no copy): strided inputs go to the engine as they are, and ``out``
comes back as a view of the engine's ``(B, H, L, E)`` result.

Example:
    >>> import torch
    >>> from attnkit._layout import to_bhld
    >>> q = torch.randn(2, 5, 8, 16)                     # (B, L, H, D)
    >>> qb, kb, vb = to_bhld("blhd", q, q, q)
    >>> qb.shape, qb.data_ptr() == q.data_ptr()           # (B, H, L, D), the same memory
    (torch.Size([2, 8, 5, 16]), True)
"""

from __future__ import annotations

from typing import TypeVar

from torch import Tensor

from .errors import AttnkitError

__all__ = ["LAYOUTS", "to_bhld", "from_bhld"]

LAYOUTS = ("bhld", "blhd")
_R = TypeVar("_R")


def to_bhld(layout: str, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``query, key, value`` as ``(B, H|G, L|S, D|E)`` views, from ``layout``."""
    if layout == "bhld":
        return query, key, value
    if layout != "blhd":
        raise AttnkitError.build(f"layout in {LAYOUTS}", repr(layout),
                                 'pass layout="blhd" for (B, L, H, D) tensors (FlashAttention\'s), "bhld" for (B, H, L, D)')
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            got = f"{t.dim()}-D {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
            raise AttnkitError.build(f'{name} of shape (B, L, H, D) for layout="blhd"', got,
                                     "pass 4-D tensors, e.g. q.view(B, L, H, D)")
    return query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)


def from_bhld(layout: str, result: _R) -> _R:
    """The output (a tensor, or the ``out`` of an ``AttentionOutput``) back in ``layout``; lse and
    weights keep their ``(B, H, L)`` / ``(B, H, L, S)`` shapes."""
    if layout == "bhld":
        return result
    if isinstance(result, Tensor):
        return result.transpose(1, 2)  # type: ignore[return-value]
    return result._replace(out=result.out.transpose(1, 2))  # type: ignore[attr-defined]
