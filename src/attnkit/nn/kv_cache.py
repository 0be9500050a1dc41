"""A growable key/value cache for incremental decoding.

Keys and values live in preallocated ``(B, G, capacity, D)`` / ``(B, G, capacity, E)`` buffers;
:meth:`KVCache.append` writes the new positions in place and returns views of everything cached
so far. When the buffer is full its capacity doubles, so ``n`` single-token appends cost
``O(log n)`` reallocations and ``O(n)`` copied positions in total (amortized ``O(1)`` per step)
instead of the ``O(n²)`` copying of ``torch.cat`` at every step.

The cache is self-contained (no engine, no module) so that a richer storage object can replace
it without touching :class:`attnkit.nn.MultiHeadAttention`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import AttnkitError

__all__ = ["KVCache"]


class KVCache:
    """Keys ``(B, G, S, D)`` and values ``(B, G, S, E)`` appended along ``S``.

    Args:
        initial_capacity: positions allocated by the first :meth:`append` (at least the
            length of that append); later growth doubles the capacity.

    Attributes:
        reallocations: how many times a buffer was (re)allocated, the first allocation
            included. ``n`` single-token appends from empty give ``1 + ceil(log2(n / c0))``.

    Example:
        >>> import torch
        >>> from attnkit.nn.kv_cache import KVCache
        >>> cache = KVCache(initial_capacity=2)
        >>> for _ in range(5):
        ...     k_all, v_all = cache.append(torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 4))
        >>> k_all.shape, v_all.shape, len(cache), cache.capacity, cache.reallocations
        (torch.Size([1, 2, 5, 8]), torch.Size([1, 2, 5, 4]), 5, 8, 3)
    """

    def __init__(self, initial_capacity: int = 16) -> None:
        if isinstance(initial_capacity, bool) or not isinstance(initial_capacity, int) or initial_capacity < 1:
            raise AttnkitError.build("initial_capacity as a positive int", repr(initial_capacity), "e.g. 16")
        self.initial_capacity = initial_capacity
        self.reallocations = 0
        self._k: Tensor | None = None
        self._v: Tensor | None = None
        self._len = 0

    def __len__(self) -> int:
        return self._len

    @property
    def capacity(self) -> int:
        """Positions the current buffers hold before the next reallocation (0 when empty)."""
        return 0 if self._k is None else self._k.shape[2]

    @property
    def keys(self) -> Tensor | None:
        """Cached keys ``(B, G, S, D)`` (a view into the buffer), or ``None`` before the first append."""
        return None if self._k is None else self._k[:, :, : self._len]

    @property
    def values(self) -> Tensor | None:
        """Cached values ``(B, G, S, E)`` (a view into the buffer), or ``None`` before the first append."""
        return None if self._v is None else self._v[:, :, : self._len]

    def reset(self) -> None:
        """Forget the cached positions; the buffers are kept for reuse."""
        self._len = 0

    def _check(self, k: Tensor, v: Tensor) -> None:
        for name, t in (("key", k), ("value", v)):
            if not isinstance(t, Tensor) or t.dim() != 4:
                raise AttnkitError.build(
                    f"{name} of shape (B, G, S_new, {'E' if name == 'value' else 'D'})",
                    f"{type(t).__name__} {tuple(getattr(t, 'shape', ()))}",
                    "append per-head tensors, e.g. k.view(B, S, G, D).transpose(1, 2)",
                )
        if k.shape[:3] != v.shape[:3]:
            raise AttnkitError.build("key and value sharing (B, G, S_new)", f"{tuple(k.shape)} and {tuple(v.shape)}",
                                     "append matching keys and values")
        if self._k is not None:
            assert self._v is not None
            want_k = (self._k.shape[0], self._k.shape[1], self._k.shape[3])
            want_v = (self._v.shape[0], self._v.shape[1], self._v.shape[3])
            got_k, got_v = (k.shape[0], k.shape[1], k.shape[3]), (v.shape[0], v.shape[1], v.shape[3])
            if got_k != want_k or got_v != want_v:
                raise AttnkitError.build(
                    f"key (B, G, ·, D) = {want_k} and value (B, G, ·, E) = {want_v} like the cached ones",
                    f"{got_k} and {got_v}",
                    "use one cache per layer and batch; call reset() only for the same shapes",
                )
            if k.dtype != self._k.dtype or k.device != self._k.device or v.dtype != self._v.dtype:
                raise AttnkitError.build(f"{self._k.dtype} tensors on {self._k.device} like the cache",
                                         f"{k.dtype}/{v.dtype} on {k.device}", "cast with .to(...) before appending")

    def _grow(self, needed: int, k: Tensor, v: Tensor) -> None:
        """Make room for ``needed`` positions: double the capacity until it fits, copy the prefix."""
        capacity = max(self.capacity, self.initial_capacity)
        while capacity < needed:
            capacity *= 2
        B, G = k.shape[:2]
        new_k = k.new_empty(B, G, capacity, k.shape[3])
        new_v = v.new_empty(B, G, capacity, v.shape[3])
        if self._k is not None and self._len:
            assert self._v is not None
            new_k[:, :, : self._len] = self._k[:, :, : self._len]
            new_v[:, :, : self._len] = self._v[:, :, : self._len]
        self._k, self._v = new_k, new_v
        self.reallocations += 1

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append ``k (B, G, S_new, D)`` and ``v (B, G, S_new, E)``; return all cached keys and values.

        The returned tensors are views of length ``S = len(self)`` into the buffers: they stay
        valid until the next ``append`` (which may write into or reallocate the buffers), so do
        not keep them across steps. ``S_new = 0`` is allowed. The cache is for inference: it
        stores detached copies, so no gradient flows into the appended tensors.

        Raises:
            AttnkitError: if the shapes, dtype or device differ from the cached ones.
        """
        self._check(k, v)
        end = self._len + k.shape[2]
        if self._k is None or end > self.capacity:
            self._grow(end, k, v)
        assert self._k is not None and self._v is not None
        with torch.no_grad():
            self._k[:, :, self._len : end] = k
            self._v[:, :, self._len : end] = v
        self._len = end
        return self._k[:, :, :end], self._v[:, :, :end]
