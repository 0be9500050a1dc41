"""A growable key/value cache for incremental decoding.

Keys and values live in ``(B, G, capacity, D)`` / ``(B, G, capacity, E)`` buffers. Appending
writes into the spare capacity; only when it runs out are the buffers reallocated, to
``growth ×`` the needed length (geometric growth: ``n`` single-token appends cost
``O(log n)`` reallocations and ``O(n)`` copied rows in total, not ``O(n²)`` as with
``torch.cat`` every step). ``reallocations`` counts them.

Batch rows may hold different lengths (a ragged batch of caches): ``lengths`` is ``(B,)``
and ``append(..., counts=...)`` adds a different number of tokens per row. Attention reads
``keys``/``values`` (views, no copy) with ``kv_lengths`` and bottom-right causal alignment,
which puts each row's new queries at the end of that row's own cache.

How :class:`attnkit.nn.MultiHeadAttention` uses it in its decoding path::

    cache.append(k_new, v_new)                      # (B, G, T, D), (B, G, T, E)
    out = attnkit.attention(q_new, cache.keys, cache.values,
                            kv_lengths=cache.kv_lengths, causal=True)

With ``L ≤ 16`` new queries, ``engine="auto"`` picks the split-KV decode engine.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .errors import AttnkitError

__all__ = ["KVCache"]


class KVCache:
    """Keys ``(B, G, S, D)`` and values ``(B, G, S, E)`` that grow by appending.

    Args:
        capacity: initial number of positions per row (allocated on the first append).
        growth: factor > 1 by which capacity grows when an append does not fit.

    Shapes, dtype and device are fixed by the first :meth:`append`.

    Example:
        >>> import torch, attnkit
        >>> from attnkit.kv_cache import KVCache
        >>> cache = KVCache(capacity=4)
        >>> for t in range(10):
        ...     cache.append(torch.randn(2, 1, 1, 8), torch.randn(2, 1, 1, 8))  # one token per step
        >>> cache.keys.shape, cache.capacity, cache.reallocations
        (torch.Size([2, 1, 10, 8]), 16, 2)
        >>> q = torch.randn(2, 4, 1, 8)  # 4 query heads share the 1 cached head (MQA)
        >>> attnkit.attention(q, cache.keys, cache.values, kv_lengths=cache.kv_lengths, causal=True).shape
        torch.Size([2, 4, 1, 8])
    """

    def __init__(self, capacity: int = 256, growth: float = 2.0) -> None:
        if capacity < 1 or not growth > 1:
            raise AttnkitError.build(
                "capacity >= 1 and growth > 1", f"capacity={capacity}, growth={growth}", "e.g. KVCache(256, 2.0)"
            )
        self._initial = int(capacity)
        self.growth = float(growth)
        self._k: Tensor | None = None
        self._v: Tensor | None = None
        self._lengths: Tensor | None = None
        self._max = 0  # Python int copy of lengths.max(): views without a device sync
        self._ragged = False
        self.reallocations = 0

    # ------------------------------------------------------------------ state

    @property
    def capacity(self) -> int:
        """Positions per row the buffers hold before the next reallocation."""
        return 0 if self._k is None else self._k.shape[2]

    @property
    def lengths(self) -> Tensor:
        """``(B,)`` int64: how many positions each batch row holds."""
        if self._lengths is None:
            raise AttnkitError.build("a cache with at least one append", "an empty KVCache", "call append(k, v) first")
        return self._lengths

    @property
    def kv_lengths(self) -> Tensor | None:
        """``lengths`` if rows differ (pass as ``kv_lengths=``), ``None`` if all rows are full."""
        return self.lengths if self._ragged else None

    def __len__(self) -> int:
        """The longest row's length (the ``S`` of :attr:`keys`)."""
        return self._max

    @property
    def keys(self) -> Tensor:
        """``(B, G, S, D)`` view of the cached keys, ``S = len(self)``; rows past their length are padding."""
        if self._k is None:
            raise AttnkitError.build("a cache with at least one append", "an empty KVCache", "call append(k, v) first")
        return self._k[:, :, : self._max]

    @property
    def values(self) -> Tensor:
        """``(B, G, S, E)`` view of the cached values."""
        if self._v is None:
            raise AttnkitError.build("a cache with at least one append", "an empty KVCache", "call append(k, v) first")
        return self._v[:, :, : self._max]

    # ------------------------------------------------------------------ updates

    def _check(self, k: Tensor, v: Tensor) -> None:
        if k.dim() != 4 or v.dim() != 4 or k.shape[:3] != v.shape[:3]:
            raise AttnkitError.build(
                "k (B, G, T, D) and v (B, G, T, E) with equal B, G, T", f"{tuple(k.shape)} and {tuple(v.shape)}",
                "split heads with .view(B, T, G, D).transpose(1, 2)",
            )
        if k.dtype != v.dtype or k.device != v.device:
            raise AttnkitError.build(
                "k and v of one dtype and device", f"{k.dtype}/{k.device} and {v.dtype}/{v.device}", "cast one of them"
            )
        if self._k is not None and self._v is not None:
            want = (self._k.shape[0], self._k.shape[1], self._k.shape[3], self._v.shape[3])
            got = (k.shape[0], k.shape[1], k.shape[3], v.shape[3])
            if want != got or k.dtype != self._k.dtype or k.device != self._k.device:
                raise AttnkitError.build(
                    f"(B, G, D, E) = {want} in {self._k.dtype} on {self._k.device} like earlier appends",
                    f"{got} in {k.dtype} on {k.device}", "use one cache per layer and keep shapes fixed; reset() to start over",
                )

    def _reserve(self, needed: int, like_k: Tensor, like_v: Tensor) -> None:
        """Make room for ``needed`` positions per row, growing geometrically."""
        if self._k is not None and needed <= self.capacity:
            return
        new_cap = max(needed, self._initial)
        if self._k is not None:
            new_cap = max(needed, math.ceil(self.capacity * self.growth))
        B, G, _, D = like_k.shape
        k_buf = like_k.new_zeros(B, G, new_cap, D)
        v_buf = like_v.new_zeros(B, G, new_cap, like_v.shape[3])
        if self._k is not None and self._v is not None:
            k_buf[:, :, : self._max] = self._k[:, :, : self._max]
            v_buf[:, :, : self._max] = self._v[:, :, : self._max]
            self.reallocations += 1
        self._k, self._v = k_buf, v_buf

    def append(self, k: Tensor, v: Tensor, *, counts: Tensor | None = None) -> None:
        """Append ``T`` new positions to every row.

        Args:
            k: ``(B, G, T, D)`` new keys; v: ``(B, G, T, E)`` new values.
            counts: optional ``(B,)`` ints in ``[0, T]``: row ``b`` takes only its first
                ``counts[b]`` new positions (the rest of ``k[b]`` is padding), making the
                batch ragged. Each row writes at its own current length.
        """
        self._check(k, v)
        B, T = k.shape[0], k.shape[2]
        if self._lengths is None:
            self._lengths = torch.zeros(B, dtype=torch.int64, device=k.device)
        if counts is not None:
            counts = torch.as_tensor(counts, device=k.device)
            bad_range = B and (int(counts.min()) < 0 or int(counts.max()) > T)
            if counts.shape != (B,) or counts.is_floating_point() or bad_range:
                raise AttnkitError.build(
                    f"counts of shape ({B},) with ints in [0, {T}]", f"{counts.tolist()}", "count the real new tokens per row"
                )
            counts = counts.to(torch.int64)
            if B and bool((counts == T).all()):
                counts = None
        if not self._ragged and counts is None:
            self._reserve(self._max + T, k, v)
            assert self._k is not None and self._v is not None
            self._k[:, :, self._max : self._max + T] = k
            self._v[:, :, self._max : self._max + T] = v
            self._lengths += T
            self._max += T
            return
        # Ragged: row b writes its first counts[b] positions at lengths[b] + t.
        counts_ = counts if counts is not None else torch.full((B,), T, dtype=torch.int64, device=k.device)
        new_lengths = self._lengths + counts_
        new_max = int(new_lengths.max()) if B else 0
        self._reserve(max(new_max, self._max), k, v)
        assert self._k is not None and self._v is not None
        t = torch.arange(T, device=k.device)
        rows, steps = torch.nonzero(t[None, :] < counts_[:, None], as_tuple=True)  # (b, t) pairs to write
        pos = self._lengths[rows] + steps
        self._k[rows, :, pos] = k[rows, :, steps]
        self._v[rows, :, pos] = v[rows, :, steps]
        self._lengths = new_lengths
        self._max = max(new_max, self._max)
        self._ragged = bool((new_lengths != self._max).any())

    def reorder(self, index: Tensor) -> None:
        """Select batch rows (e.g. beams): ``index`` ``(B',)`` into the current batch."""
        if self._k is None or self._v is None or self._lengths is None:
            return
        self._k, self._v = self._k.index_select(0, index), self._v.index_select(0, index)
        self._lengths = self._lengths.index_select(0, index)
        self._max = int(self._lengths.max()) if self._lengths.numel() else 0
        self._ragged = bool((self._lengths != self._max).any())

    def reset(self) -> None:
        """Forget the contents and keep the buffers (shapes stay fixed for reuse)."""
        if self._lengths is not None:
            self._lengths.zero_()
        self._max, self._ragged = 0, False
