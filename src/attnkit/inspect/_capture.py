"""Capture the attention of a Hugging Face model, computed by attnkit (no eager mode needed).

The model runs with ``attn_implementation="attnkit"`` (registered by
[`attnkit.integrations.hf.register`][attnkit.integrations.hf.register]), which returns exact weights when
``output_attentions=True``. The model's previous implementation is restored afterwards.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import warnings
from typing import Any, Iterator, Sequence

import torch

from ..errors import AttnkitError
from ._maps import AttentionMaps

__all__ = ["capture"]


# Pre-softmax scores of the calls in flight go here (None: nobody asked). A context variable, not
# module state, so concurrent captures in other threads or tasks never see each other's scores.
_SCORE_SINK: contextvars.ContextVar[list[torch.Tensor] | None] = contextvars.ContextVar("attnkit_score_sink", default=None)
_SCORING_IMPL = "attnkit_scores"


def logits(query: torch.Tensor, key: torch.Tensor, *, scaling: float | None = None, softcap: float | None = None,
           position_bias: torch.Tensor | None = None) -> torch.Tensor:
    """The scores an attention layer feeds its softmax, before the mask: ``(B, H, L, S)`` float32.

    ``s = scaling · q·k`` (default ``1/√D``), then ``softcap·tanh(s/softcap)``, then ``+ position_bias``,
    in the order [`attnkit.attention`][attnkit.functional.attention] applies them. ``query`` is ``(B, H, L, D)``, ``key``
    ``(B, G, S, D)``; each group of ``H/G`` query heads reads the same key head (GQA/MQA).

    Example:
        >>> import torch
        >>> q, k = torch.ones(1, 2, 1, 4), torch.ones(1, 1, 3, 4)
        >>> logits(q, k).shape, float(logits(q, k)[0, 1, 0, 2])      # 4 / sqrt(4)
        (torch.Size([1, 2, 1, 3]), 2.0)
    """
    H, G, D = query.shape[1], key.shape[1], query.shape[-1]
    k = key.float().repeat_interleave(H // G, dim=1)  # (B, H, S, D)
    s = torch.einsum("bhld,bhsd->bhls", query.float(), k) * (1.0 / math.sqrt(D) if scaling is None else scaling)
    if softcap:
        s = softcap * torch.tanh(s / softcap)
    return s if position_bias is None else s + position_bias.float()


def _scoring_forward(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: Any,
                     **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """attnkit's attention, also recording the pre-softmax scores into `_SCORE_SINK`."""
    from ..integrations import hf

    sink = _SCORE_SINK.get()
    if sink is not None:
        sink.append(logits(query, key, scaling=kwargs.get("scaling"), softcap=kwargs.get("softcap"),
                           position_bias=kwargs.get("position_bias")).cpu())
    return hf.attnkit_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _register_scoring() -> str:
    """Register `_scoring_forward` (and attnkit's mask function) with transformers; returns its name."""
    from ..integrations import hf

    hf.register()
    tf = hf._transformers()
    tf.AttentionInterface.register(_SCORING_IMPL, _scoring_forward)
    tf.AttentionMaskInterface.register(_SCORING_IMPL, hf.attnkit_mask)
    return _SCORING_IMPL


@contextlib.contextmanager
def _use_attnkit(model: Any, impl: str | None = None) -> Iterator[None]:
    """Run ``model`` with attnkit's attention (or the registered ``impl``) for the duration of the block."""
    from ..integrations import hf

    impl = impl or hf.register()
    before = model.config._attn_implementation
    if before != impl:
        model.set_attn_implementation(impl)
    try:
        yield
    finally:
        if before != impl:
            model.set_attn_implementation(before)


def _tokenize(tokenizer: Any, texts: Sequence[str], max_length: int | None, limit: int | None) -> list[dict[str, list[int]]]:
    if max_length is not None and limit is not None and max_length > limit:  # truncating to it would still overflow
        raise AttnkitError.build(f"max_length <= {limit} (the model's position limit)", str(max_length),
                                 f"pass max_length={limit}")
    encs = []
    for text in texts:
        enc = tokenizer(text, return_special_tokens_mask=True)
        n = len(enc["input_ids"])
        if max_length is not None and n > max_length:
            enc = tokenizer(text, truncation=True, max_length=max_length, return_special_tokens_mask=True)
            if len(enc["input_ids"]) > max_length:  # tokenizers keep their special tokens whatever max_length says
                raise AttnkitError.build("max_length above the number of special tokens", f"max_length={max_length}, "
                                         f"{len(enc['input_ids'])} tokens after truncation", "pass a larger max_length")
            warnings.warn(f"attnkit.inspect.capture: a text of {n} tokens was truncated to max_length={max_length}", stacklevel=3)
        elif limit is not None and n > limit:
            raise AttnkitError.build(f"texts of at most {limit} tokens (the model's position limit)", f"{n} tokens",
                                     f"pass max_length={limit} to truncate, or shorten the text")
        encs.append(enc)
    return encs


def capture(model: Any, tokenizer: Any, texts: str | Sequence[str], *, max_length: int | None = None,
            batch_size: int = 8, scores: bool = False) -> AttentionMaps:
    """Run a Hugging Face model on ``texts`` and return every layer's attention weights.

    Args:
        model: a ``transformers`` encoder (BERT-like) or decoder (GPT-like) model; it runs on
            attnkit's attention (not eager), in inference mode, in chunks of ``batch_size``.
        tokenizer: its tokenizer (special tokens such as ``[CLS]`` are added as usual).
        texts: one text or a list; sequences are right-padded to the longest.
        max_length: truncate longer texts to this many tokens; by default a text over the
            model's position limit raises instead of being silently cut.
        scores: also keep each layer's pre-softmax scores (``q·k/√d`` and any bias or softcap,
            recomputed from the layer's own ``q`` and ``k``) in ``maps.scores``; costs one more
            ``(B, H, L, S)`` tensor per layer.

    Returns:
        [`AttentionMaps`][attnkit.inspect._maps.AttentionMaps] with one ``(B, H, L, S)`` tensor per layer, ``L = S`` = the
        longest sequence, the tokens and special-token flags of each sequence, and padding
        marked in ``query_mask``/``key_mask``.

    Raises:
        AttnkitError: for encoder-decoder models, texts over the position limit, or a model
            that returns no attention weights.

    Example (needs ``pip install 'attnkit[hf]'``)::

        >>> from transformers import AutoModel, AutoTokenizer               # doctest: +SKIP
        >>> from attnkit.integrations.hf import minilm_path                  # doctest: +SKIP
        >>> tok, model = AutoTokenizer.from_pretrained(minilm_path()), AutoModel.from_pretrained(minilm_path())  # doctest: +SKIP
        >>> maps = capture(model, tok, ["The cat sat.", "It slept."])         # doctest: +SKIP
        >>> maps.num_layers, maps.num_heads, maps.tokens[1]                   # doctest: +SKIP
        (6, 12, ['[CLS]', 'it', 'slept', '.', '[SEP]'])
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise AttnkitError.build("at least one text", "an empty list", "pass a string or a list of strings")
    config = getattr(model, "config", None)
    if config is None or not hasattr(model, "set_attn_implementation"):
        raise AttnkitError.build("a Hugging Face transformers model", type(model).__name__,
                                 "for attnkit.nn modules use attnkit.inspect.record(model)")
    if getattr(config, "is_encoder_decoder", False):
        raise AttnkitError.build("an encoder or a decoder model", f"encoder-decoder {type(model).__name__}",
                                 "capture model.get_encoder() with its tokenizer, or record the decoder with attnkit.inspect.record")
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    encs = _tokenize(tokenizer, texts, max_length, limit)
    lengths = [len(e["input_ids"]) for e in encs]
    L = max(lengths)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(encs), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(encs), L, dtype=torch.bool)
    for b, e in enumerate(encs):  # right padding keeps absolute positions of real tokens unchanged
        ids[b, : lengths[b]] = torch.tensor(e["input_ids"])
        mask[b, : lengths[b]] = True
    device = next(model.parameters()).device
    chunks: list[tuple[torch.Tensor, ...]] = []
    recorded: list[torch.Tensor] = []
    token = _SCORE_SINK.set(recorded if scores else None)
    try:
        with _use_attnkit(model, _register_scoring() if scores else None), torch.inference_mode():
            for start in range(0, len(encs), max(1, batch_size)):
                sl = slice(start, start + max(1, batch_size))
                out = model(input_ids=ids[sl].to(device), attention_mask=mask[sl].long().to(device), output_attentions=True)
                attn = getattr(out, "attentions", None)
                if not attn or any(a is None for a in attn):
                    raise AttnkitError.build("attention weights from output_attentions=True", f"{type(attn).__name__} from {type(model).__name__}",
                                             "use a model whose attention goes through transformers' AttentionInterface")
                chunks.append(tuple(a.float().cpu() for a in attn))
    finally:
        _SCORE_SINK.reset(token)
    weights = [torch.cat(per_layer) for per_layer in zip(*chunks)]  # per layer (B, H, L, L)
    n_layers = len(weights)
    # calls come layer by layer within each chunk: chunk c, layer l is recorded[c * n_layers + l]
    if scores and len(recorded) != len(chunks) * n_layers:
        raise AttnkitError.build(f"one attention call per layer ({n_layers} x {len(chunks)} batches)", f"{len(recorded)} calls",
                                 "capture scores from an encoder or decoder whose layers each call attention once")
    layer_scores = [torch.cat(recorded[l::n_layers]) for l in range(n_layers)] if scores else None
    tokens = [tokenizer.convert_ids_to_tokens(e["input_ids"]) for e in encs]
    special = [[bool(s) for s in e["special_tokens_mask"]] for e in encs]
    meta = {"model": str(getattr(config, "name_or_path", "") or type(model).__name__), "texts": json.dumps(texts)}
    return AttentionMaps(weights, tokens, mask, mask.clone(), special=special, meta=meta, scores=layer_scores)
