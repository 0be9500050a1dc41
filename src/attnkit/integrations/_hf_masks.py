"""The mask half of the Hugging Face integration: [`attnkit_mask`][attnkit.integrations._hf_masks.attnkit_mask] and [`StructuredMask`][attnkit.integrations._hf_masks.StructuredMask].

``transformers`` builds every mask through the function registered in ``AttentionMaskInterface``
(``create_causal_mask``, ``create_sliding_window_causal_mask``, ``create_bidirectional_mask``,
...). attnkit's recognizes the standard patterns and returns a [`StructuredMask`][attnkit.integrations._hf_masks.StructuredMask]: a
``torch.Tensor`` that stores no ``L × S`` data, only attnkit's arguments (``causal``, ``window``,
``kv_lengths``, a ``(B, 1, 1, S)`` key mask). attnkit's attention function reads the structure;
any other torch operation on it (a model slicing it, adding a position bias to it, filling it)
sees the additive float mask ``eager`` would have received, materialized on first use.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import torch
from torch import Tensor
from torch.utils._pytree import tree_map

from ..functional import attention
from ..masks import lengths_from_padding_mask

__all__ = ["StructuredMask", "attnkit_mask"]

# Tensor queries that need no values: answered from the wrapper's metadata, never materializing.
_METADATA = {
    Tensor.shape.__get__, Tensor.dtype.__get__, Tensor.device.__get__, Tensor.ndim.__get__,
    Tensor.layout.__get__, Tensor.requires_grad.__get__, Tensor.is_sparse.__get__, Tensor.is_nested.__get__,
    Tensor.dim, Tensor.size, Tensor.numel, Tensor.__len__, Tensor.is_contiguous, Tensor.is_floating_point,
}
_IN_PLACE_DUNDERS = {"__setitem__", "__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__",
                     "__ipow__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__"}


def _in_place(func: Callable) -> bool:
    """Whether a torch operation modifies its first argument (``add_``, ``masked_fill_``, ``x[i] = v``, ``+=``)."""
    name = getattr(func, "__name__", "")
    return name in _IN_PLACE_DUNDERS or (name.endswith("_") and not name.endswith("__"))


class StructuredMask(Tensor):
    """An HF attention mask kept as attnkit's structured arguments, that still behaves as a tensor.

    What [`attnkit_mask`][attnkit.integrations._hf_masks.attnkit_mask] returns and [`attnkit.integrations.hf.attnkit_attention_forward`][attnkit.integrations.hf.attnkit_attention_forward]
    consumes: like ``torch``'s ``BlockMask`` for ``flex_attention`` it passes through the model
    untouched and attnkit's attention reads ``causal``/``window``/``kv_lengths``/``key_mask``.

    Models that handle the mask as a tensor themselves (DeepSeek-V3.2's sparse indexer slices and
    fills it; BEiT adds its relative position bias to it) get what ``eager`` would have given them:
    every torch operation other than the metadata queries (``shape``, ``dtype``, ``device``,
    ``dim()``, ...) sees the additive mask, ``0`` where a key is visible and ``finfo(dtype).min``
    where it is hidden, of shape ``(B, 1, L, S)`` and the model's ``dtype`` — built once, on first
    use, and kept. The result of such an operation is a plain tensor. An in-place operation
    (``masked_fill_``, ``mask[...] = v``, ``+=``) changes that additive mask, and from then on
    attnkit's attention uses it instead of the structure (`modified`), as ``eager`` would.

    Attributes:
        causal: ``False``, ``True`` (bottom-right) or ``"top_left"``.
        window: ``(left, right)`` or ``None``.
        kv_lengths: ``(B,)`` int64 or ``None``: keys at or past the length are hidden.
        key_mask: ``(B, 1, 1, S)`` bool (True = may attend) or ``None``.
        modified: whether the model changed the mask in place (then [`additive`][attnkit.integrations._hf_masks.StructuredMask.additive] is the mask).

    Example:
        >>> m = attnkit_mask(batch_size=1, q_length=3, kv_length=3)   # doctest: +SKIP
        >>> m.causal, tuple(m.shape), m.dtype                          # doctest: +SKIP
        (True, (1, 1, 3, 3), torch.float32)
        >>> (m[0, 0] == 0).tolist()     # slicing materializes eager's mask   # doctest: +SKIP
        [[True, False, False], [True, True, False], [True, True, True]]
    """

    causal: bool | str
    window: tuple[int | None, int | None] | None
    kv_lengths: Tensor | None
    key_mask: Tensor | None

    @staticmethod
    def __new__(cls, causal: bool | str, window: tuple[int | None, int | None] | None, kv_lengths: Tensor | None,
                key_mask: Tensor | None, shape: tuple[int, int, int, int], dtype: torch.dtype = torch.float32,
                device: torch.device | str | None = None) -> "StructuredMask":
        # A wrapper subclass: metadata (shape, dtype, device) without storage.
        self = Tensor._make_wrapper_subclass(cls, shape, dtype=dtype, device=device, requires_grad=False)
        self.causal, self.window, self.kv_lengths, self.key_mask = causal, window, kv_lengths, key_mask
        self._additive: Tensor | None = None
        self.modified = False
        return self

    def __repr__(self, *, tensor_contents: Any = None) -> str:
        return (f"StructuredMask(shape={tuple(self.shape)}, causal={self.causal!r}, window={self.window!r}, "
                f"kv_lengths={self.kv_lengths!r}, key_mask={None if self.key_mask is None else tuple(self.key_mask.shape)})")

    def __deepcopy__(self, memo: dict) -> "StructuredMask":
        # The structure is never changed (shared); the additive mask may be, in place (copied).
        copy = StructuredMask(self.causal, self.window, self.kv_lengths, self.key_mask, tuple(self.shape),
                              dtype=self.dtype, device=self.device)
        copy._additive = None if self._additive is None else self._additive.clone()
        copy.modified = self.modified
        return copy

    def attention_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of [`attnkit.attention`][attnkit.functional.attention] this mask stands for."""
        return dict(causal=self.causal, window=self.window, kv_lengths=self.kv_lengths, mask=self.key_mask)

    def visible(self) -> Tensor:
        """The equivalent boolean ``(B, 1, L, S)`` mask (True = may attend), as ``sdpa_mask`` gives it."""
        B, _, L, S = self.shape
        # attnkit's own semantics decide: with all scores equal, a weight is positive exactly
        # where the key is visible.
        q = torch.zeros(B, 1, L, 1, dtype=torch.float64, device=self.device)
        kv = torch.zeros(B, 1, S, 1, dtype=torch.float64, device=self.device)
        with torch.no_grad():
            return attention(q, kv, kv, return_weights=True, **self.attention_kwargs()).weights > 0

    def additive(self) -> Tensor:
        """The equivalent additive ``(B, 1, L, S)`` mask of ``eager_mask`` (built once, then cached)."""
        if self._additive is None:
            zero = torch.zeros((), dtype=self.dtype, device=self.device)
            self._additive = torch.where(self.visible(), zero, torch.finfo(self.dtype).min)
        return self._additive

    @classmethod
    def __torch_function__(cls, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func in _METADATA:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        if func is Tensor.contiguous and not kwargs:
            return args[0]  # generate() calls it on prepared masks; no data to lay out
        if args and isinstance(args[0], StructuredMask) and _in_place(func):
            args[0].modified = True  # the additive mask is about to change: the structure no longer describes it
        return func(*_materialized(args), **_materialized(kwargs))

    @classmethod
    def __torch_dispatch__(cls, func: Callable, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        # Reached only by calls made with __torch_function__ disabled (torch internals).
        return func(*_materialized(args), **_materialized(kwargs or {}))


def _materialized(tree: Any) -> Any:
    return tree_map(lambda a: a.additive() if isinstance(a, StructuredMask) else a, tree)


def _same_function(f: Any, g: Any) -> bool:
    """Whether two (possibly nested) closures compute the same thing: the same code object and
    equal captured values (functions compared recursively, numbers by value, the rest by identity)."""
    if f is g:
        return True
    if callable(f) and callable(g) and hasattr(f, "__code__") and hasattr(g, "__code__"):
        cells_f, cells_g = f.__closure__ or (), g.__closure__ or ()
        return (f.__code__ is g.__code__ and len(cells_f) == len(cells_g)
                and all(_same_function(a.cell_contents, b.cell_contents) for a, b in zip(cells_f, cells_g)))
    if isinstance(f, (tuple, list)) and isinstance(g, (tuple, list)):
        return len(f) == len(g) and all(_same_function(a, b) for a, b in zip(f, g))
    if isinstance(f, (bool, int, float, str)) and type(f) is type(g):
        return f == g
    return False


def _recognize(mask_function: Callable, local_size: int | None) -> tuple[bool, tuple[int, int] | None] | None:
    """``(causal, window)`` for HF's standard mask functions, or ``None`` for anything else."""
    mu = importlib.import_module("transformers.masking_utils")
    if mask_function is mu.causal_mask_function:
        return True, None
    if mask_function is mu.bidirectional_mask_function:
        return False, None
    if local_size is not None:
        w = int(local_size)
        # HF's sliding window: kv > q - w (so w - 1 keys to the left) under causality ...
        if _same_function(mask_function, mu.sliding_window_causal_mask_function(w)):
            return True, (w - 1, 0)
        # ... and |q - kv| <= w without it.
        if _same_function(mask_function, mu.sliding_window_bidirectional_mask_function(w)):
            return False, (w, w)
    return None


def _structured(causal: bool, window: tuple[int, int] | None, delta: int, B: int, L: int, S: int,
                keys: Tensor | None, device: torch.device | str, dtype: torch.dtype) -> StructuredMask | None:
    """Query ``i`` at key position ``i + delta``, ``keys (B, S)`` True = real token (``None``: no padding).
    ``None`` when attnkit's alignments cannot express ``delta``."""
    kv_lengths = None
    if causal:
        if delta == S - L:
            align: bool | str = True
        elif delta == 0:
            align = "top_left"
        elif 0 <= delta + L <= S:
            # Bottom-right alignment against a shorter key length puts query i at i + delta; the
            # keys past it are hidden by causality anyway (static caches).
            align = True
            kv_lengths = torch.full((B,), delta + L, dtype=torch.int64, device=device)
        else:
            return None
    elif window is not None and delta != S - L:
        return None  # without causality a window is aligned bottom-right
    else:
        align = False
    key_mask = None
    if keys is not None:
        # Right padding becomes lengths where lengths cannot shift an alignment (no causal, no
        # window); any other padding a (B, 1, 1, S) key mask.
        lengths = lengths_from_padding_mask(keys) if not causal and window is None else None
        if lengths is not None:
            kv_lengths = lengths
        else:
            key_mask = keys[:, None, None, :]
    return StructuredMask(align, window, kv_lengths, key_mask, (B, 1, L, S), dtype=dtype, device=device)


def attnkit_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int | Tensor = 0,
    kv_offset: int | Tensor = 0,
    mask_function: Callable | None = None,
    attention_mask: Tensor | None = None,
    local_size: int | None = None,
    allow_is_bidirectional_skip: bool = False,
    use_vmap: bool = False,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    **kwargs: Any,
) -> StructuredMask | Tensor | None:
    """The ``AttentionMaskInterface`` function of attnkit (same signature as HF's ``sdpa_mask``).

    Query ``i`` sits at absolute position ``q_offset + i`` and key ``j`` at ``kv_offset + j``;
    ``attention_mask`` is the 2-D padding mask ``(B, ≥ kv_offset + S)`` (True = real token);
    ``dtype`` is the model's (``create_*_mask`` pass it): the dtype of the additive mask a model
    sees if it operates on a [`StructuredMask`][attnkit.integrations._hf_masks.StructuredMask] itself.

    Returns:
        ``None`` when ``allow_is_bidirectional_skip`` is set and the mask is plain bidirectional
        with no padding (no mask at all, as ``sdpa_mask`` returns: models test for it, e.g. BEiT
        adds its position bias to the mask only when there is one); a [`StructuredMask`][attnkit.integrations._hf_masks.StructuredMask] for
        HF's causal, bidirectional and sliding-window patterns; the exact boolean ``(B, 1, L, S)``
        mask of ``sdpa_mask`` for any other pattern.
    """
    B, L, S = batch_size, q_length, kv_length
    from transformers import masking_utils as mu  # (an import statement: torch.compile traces it, importlib not)

    mask_function = mu.causal_mask_function if mask_function is None else mask_function

    def dense(bidirectional_skip: bool) -> Tensor | None:
        """The exact dense boolean mask HF's sdpa would use."""
        return mu.sdpa_mask(
            batch_size=B, q_length=L, kv_length=S, q_offset=q_offset, kv_offset=kv_offset, mask_function=mask_function,
            attention_mask=attention_mask, local_size=local_size, allow_is_causal_skip=False,
            allow_is_bidirectional_skip=bidirectional_skip, use_vmap=use_vmap, device=device,
        )

    if torch.compiler.is_compiling():
        # Under torch.compile: the dense mask, built by traceable tensor ops (reading the padding to
        # recognize a pattern is data-dependent and a tensor subclass breaks the graph).
        return dense(allow_is_bidirectional_skip)
    kv_offset, delta = int(kv_offset), int(q_offset) - int(kv_offset)  # aligned query position p = i + delta
    pattern = _recognize(mask_function, local_size)
    if pattern is not None:
        keys = mu.prepare_padding_mask(attention_mask, S, kv_offset)
        keys = None if keys is None else keys[:, kv_offset : kv_offset + S].to(device=device, dtype=torch.bool)
        keys = None if keys is None or bool(keys.all()) else keys
        if allow_is_bidirectional_skip and pattern == (False, None) and keys is None:
            return None
        struct = _structured(*pattern, delta, B, L, S, keys, device, dtype)
        if struct is not None:
            return struct
    # Anything else (packed sequences, chunked or block-wise attention, custom mask functions).
    return dense(False)
