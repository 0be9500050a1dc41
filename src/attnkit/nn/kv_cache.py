"""A growable key/value cache for incremental decoding (the one ``KVCache`` of attnkit).

Keys and values live in preallocated ``(B, G, capacity, D)`` / ``(B, G, capacity, E)`` buffers;
[`KVCache.append`][attnkit.nn.kv_cache.KVCache.append] writes the new positions in place and returns views of everything cached
so far. Only when the spare capacity runs out are the buffers reallocated, to ``growth ×`` the
current capacity (or to what the append needs, if that is more): ``n`` single-token appends cost
``O(log n)`` reallocations and ``O(n)`` copied positions in total (amortized ``O(1)`` per step)
instead of the ``O(n²)`` copying of ``torch.cat`` at every step.

Batch rows may hold different lengths (a ragged batch of caches): [`KVCache.lengths`][attnkit.nn.kv_cache.KVCache.lengths] is
``(B,)`` and ``append(..., counts=...)`` adds a different number of tokens per row, each row
writing at its own length. Attention reads [`keys`][attnkit.nn.kv_cache.KVCache.keys] / [`values`][attnkit.nn.kv_cache.KVCache.values]
(views, no copy) with ``kv_lengths=cache.kv_lengths`` and bottom-right causal alignment, which
puts each row's new queries at the end of that row's own cache::

    k_all, v_all = cache.append(k_new, v_new)          # (B, G, T, D), (B, G, T, E)
    out = attnkit.attention(q_new, k_all, v_all, kv_lengths=cache.kv_lengths, causal=True)

[`attnkit.nn.MultiHeadAttention`][attnkit.nn.multihead.MultiHeadAttention] does exactly this when given ``cache=``. With ``L ≤ 16``
new queries and a long cache, ``engine="auto"`` picks the split-KV decode engine. The cache is
self-contained (no engine, no module): it only stores tensors, so the engines never import it.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from .._devices import check_data
from ..errors import AttnkitError

__all__ = ["KVCache"]


class KVCache:
    """Keys ``(B, G, S, D)`` and values ``(B, G, S, E)`` appended along ``S``, per batch row.

    Args:
        initial_capacity: positions per row allocated by the first [`append`][attnkit.nn.kv_cache.KVCache.append] (at least
            the length of that append).
        growth: factor > 1 by which the capacity grows when an append does not fit.
        capacity: deprecated spelling of ``initial_capacity`` (the old ``attnkit.KVCache``).

    Shapes, dtype and device are fixed by the first [`append`][attnkit.nn.kv_cache.KVCache.append].

    Attributes:
        reallocations: how many times the buffers were replaced by larger ones (the cached
            positions copied over). The first allocation is not a reallocation: ``n``
            single-token appends from empty give ``ceil(log_growth(n / initial_capacity))``.

    Example:
        >>> import torch, attnkit
        >>> from attnkit.nn.kv_cache import KVCache
        >>> cache = KVCache(initial_capacity=4)
        >>> for t in range(10):
        ...     k_all, v_all = cache.append(torch.randn(2, 1, 1, 8), torch.randn(2, 1, 1, 8))  # one token per step
        >>> k_all.shape, len(cache), cache.capacity, cache.reallocations
        (torch.Size([2, 1, 10, 8]), 10, 16, 2)
        >>> q = torch.randn(2, 4, 1, 8)  # 4 query heads share the 1 cached head (MQA)
        >>> attnkit.attention(q, cache.keys, cache.values, kv_lengths=cache.kv_lengths, causal=True).shape
        torch.Size([2, 4, 1, 8])
    """

    def __init__(self, initial_capacity: int = 16, growth: float = 2.0, *, capacity: int | None = None) -> None:
        if capacity is not None:
            warnings.warn("KVCache(capacity=...) is deprecated; use KVCache(initial_capacity=...)",
                          DeprecationWarning, stacklevel=2)
            initial_capacity = capacity
        bad_capacity = isinstance(initial_capacity, bool) or not isinstance(initial_capacity, int) or initial_capacity < 1
        if bad_capacity or not growth > 1:
            raise AttnkitError.build("initial_capacity as an int >= 1 and growth > 1",
                                     f"initial_capacity={initial_capacity!r}, growth={growth!r}", "e.g. KVCache(16, growth=2.0)")
        self.initial_capacity = initial_capacity
        self.growth = float(growth)
        self.reallocations = 0
        self._k: Tensor | None = None
        self._v: Tensor | None = None
        self._lengths: Tensor | None = None
        self._max = 0  # Python int copy of lengths.max(): views without a device sync
        self._ragged = False

    # ------------------------------------------------------------------ state

    def __len__(self) -> int:
        """The longest row's length (the ``S`` of [`keys`][attnkit.nn.kv_cache.KVCache.keys])."""
        return self._max

    @property
    def capacity(self) -> int:
        """Positions per row the current buffers hold before the next reallocation (0 when empty)."""
        return 0 if self._k is None else self._k.shape[2]

    def _need_append(self) -> None:
        if self._k is None:
            raise AttnkitError.build("a cache with at least one append", "an empty KVCache", "call append(k, v) first")

    @property
    def lengths(self) -> Tensor:
        """``(B,)`` int64: how many positions each batch row holds."""
        self._need_append()
        assert self._lengths is not None
        return self._lengths

    @property
    def kv_lengths(self) -> Tensor | None:
        """[`lengths`][attnkit.nn.kv_cache.KVCache.lengths] if rows differ (pass as ``kv_lengths=``), ``None`` if all rows are full."""
        return self.lengths if self._ragged else None

    @property
    def keys(self) -> Tensor:
        """``(B, G, S, D)`` view of the cached keys, ``S = len(self)``; rows past their length are padding."""
        self._need_append()
        assert self._k is not None
        return self._k[:, :, : self._max]

    @property
    def values(self) -> Tensor:
        """``(B, G, S, E)`` view of the cached values."""
        self._need_append()
        assert self._v is not None
        return self._v[:, :, : self._max]

    # ------------------------------------------------------------------ updates

    def _check(self, k: Tensor, v: Tensor) -> None:
        for name, t in (("key", k), ("value", v)):
            if not isinstance(t, Tensor) or t.dim() != 4:
                raise AttnkitError.build(
                    f"{name} of shape (B, G, T, {'E' if name == 'value' else 'D'})",
                    f"{type(t).__name__} {tuple(getattr(t, 'shape', ()))}",
                    "append per-head tensors, e.g. k.view(B, T, G, D).transpose(1, 2)",
                )
        if k.shape[:3] != v.shape[:3]:
            raise AttnkitError.build("key (B, G, T, D) and value (B, G, T, E) sharing (B, G, T)",
                                     f"{tuple(k.shape)} and {tuple(v.shape)}", "append matching keys and values")
        if k.dtype != v.dtype or k.device != v.device:
            raise AttnkitError.build("key and value of one dtype and device", f"{k.dtype}/{k.device} and {v.dtype}/{v.device}",
                                     "cast one of them with .to(...)")
        if self._k is not None and self._v is not None:
            want = (self._k.shape[0], self._k.shape[1], self._k.shape[3], self._v.shape[3])
            got = (k.shape[0], k.shape[1], k.shape[3], v.shape[3])
            if want != got or k.dtype != self._k.dtype or k.device != self._k.device:
                raise AttnkitError.build(
                    f"(B, G, D, E) = {want} in {self._k.dtype} on {self._k.device} like the cached ones",
                    f"{got} in {k.dtype} on {k.device}",
                    "use one cache per layer and keep shapes fixed; reorder() selects rows, reset() starts over",
                )

    def _reserve(self, needed: int, like_k: Tensor, like_v: Tensor) -> None:
        """Make room for ``needed`` positions per row, growing geometrically; copy what is cached."""
        if self._k is not None and needed <= self.capacity:
            return
        new_cap = max(needed, self.initial_capacity)
        if self._k is not None:
            new_cap = max(needed, math.ceil(self.capacity * self.growth))
        B, G, _, D = like_k.shape
        # Zeros, not empty: padding past a row's length is never read by attention, but zeros
        # keep the buffers free of garbage that a user slicing keys by hand might trip over.
        k_buf = like_k.new_zeros(B, G, new_cap, D)
        v_buf = like_v.new_zeros(B, G, new_cap, like_v.shape[3])
        if self._k is not None and self._v is not None:
            k_buf[:, :, : self._max] = self._k[:, :, : self._max]
            v_buf[:, :, : self._max] = self._v[:, :, : self._max]
            self.reallocations += 1
        self._k, self._v = k_buf, v_buf

    def _counts(self, counts: Tensor | None, B: int, T: int, device: torch.device) -> Tensor | None:
        """``counts`` checked as ``(B,)`` ints in ``[0, T]``; ``None`` when every row takes all ``T``."""
        if counts is None:
            return None
        check_data("counts", counts)
        counts = torch.as_tensor(counts, device=device)
        bad_range = B and not counts.is_floating_point() and (int(counts.min()) < 0 or int(counts.max()) > T)
        if counts.shape != (B,) or counts.is_floating_point() or bad_range:
            raise AttnkitError.build(f"counts of shape ({B},) with ints in [0, {T}]", f"{counts.tolist()}",
                                     "count the real new tokens per row")
        counts = counts.to(torch.int64)
        return None if B and bool((counts == T).all()) else counts

    @torch.no_grad()
    def append(self, k: Tensor, v: Tensor, *, counts: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Append ``k (B, G, T, D)`` and ``v (B, G, T, E)``; return all cached keys and values.

        Args:
            k: the new keys ``(B, G, T, D)``. ``T = 0`` is allowed.
            v: the new values ``(B, G, T, E)``.
            counts: optional ``(B,)`` ints in ``[0, T]``: row ``b`` takes only its first
                ``counts[b]`` new positions (the rest of ``k[b]`` is padding), making the
                batch ragged. Without it every row takes all ``T``, each at its own length.

        Returns:
            ``(keys, values)``, the views [`keys`][attnkit.nn.kv_cache.KVCache.keys] and [`values`][attnkit.nn.kv_cache.KVCache.values] of length
            ``S = len(self)``. They stay valid until the next ``append`` (which may write into
            or reallocate the buffers), so do not keep them across steps. The cache is for
            inference: it stores copies, so no gradient flows into the appended tensors.

        Raises:
            AttnkitError: if the shapes, dtype or device differ from the cached ones, or
                ``counts`` is out of range.
        """
        self._check(k, v)
        B, T = k.shape[0], k.shape[2]
        if self._lengths is None:
            self._lengths = torch.zeros(B, dtype=torch.int64, device=k.device)
        counts = self._counts(counts, B, T, k.device)
        if not self._ragged and counts is None:  # every row at the same length: one slice write
            self._reserve(self._max + T, k, v)
            assert self._k is not None and self._v is not None
            self._k[:, :, self._max : self._max + T] = k
            self._v[:, :, self._max : self._max + T] = v
            self._lengths += T
            self._max += T
            return self.keys, self.values
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
        return self.keys, self.values

    def reorder(self, index: Tensor) -> None:
        """Select batch rows (e.g. beams): ``index`` ``(B',)`` into the current batch."""
        if self._k is None or self._v is None or self._lengths is None:
            return
        check_data("index", index)
        index = torch.as_tensor(index, device=self._k.device)
        B = self._k.shape[0]
        if index.dim() != 1 or index.is_floating_point() or index.dtype == torch.bool:
            raise AttnkitError.build("index as a 1-D integer tensor of batch rows", f"{index.dtype} {tuple(index.shape)}",
                                     "pass e.g. torch.tensor([0, 0, 1]) (beam b keeps row index[b])")
        if index.numel() and (int(index.min()) < -B or int(index.max()) >= B):
            raise AttnkitError.build(f"row indices in [0, {B})", str(index.tolist()), "index rows of the current batch")
        self._k, self._v = self._k.index_select(0, index % B), self._v.index_select(0, index % B)
        self._lengths = self._lengths.index_select(0, index % B)
        self._max = int(self._lengths.max()) if self._lengths.numel() else 0
        self._ragged = bool((self._lengths != self._max).any())

    def reset(self) -> None:
        """Forget the cached positions; the buffers are kept for reuse (shapes stay fixed)."""
        if self._lengths is not None:
            self._lengths.zero_()
        self._max, self._ragged = 0, False
