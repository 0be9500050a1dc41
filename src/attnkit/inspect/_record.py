"""Record attention weights of ``nn`` attention modules through explicit forward hooks.

Modules never keep the last map in hidden state (no ``self.attn``). Instead [`record`][attnkit.inspect._record.record]
hooks every attention module inside a model for the duration of a ``with`` block: a
forward pre-hook asks the module for per-head weights (``need_weights=True``, no head
averaging) and a forward hook takes them from the output, handing the caller back exactly
what it asked for. Leaving the block removes the hooks.
"""

from __future__ import annotations

import contextlib
import inspect as _inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from torch import Tensor, nn

from ..errors import AttnkitError
from ._maps import AttentionMaps

__all__ = ["Recorder", "record"]


# Both classes share torch's calling convention: ``need_weights`` asks for weights,
# ``average_attn_weights`` averages them over heads, and forward returns ``(out, weights)``.
_ASK = {"need_weights": True, "average_attn_weights": False}


def _hooked_classes() -> tuple[type, ...]:
    from ..nn.multihead import MultiHeadAttention

    return (MultiHeadAttention, nn.MultiheadAttention)


def _caller_wants(module: nn.Module, bound: _inspect.BoundArguments) -> tuple[bool, bool]:
    """(need_weights, average_attn_weights) as the caller asked, defaults from the signature."""
    params = _inspect.signature(module.forward).parameters
    return tuple(bool(bound.arguments.get(name, params[name].default)) for name in _ASK)  # type: ignore[return-value]


@dataclass
class Recorder:
    """What [`record`][attnkit.inspect._record.record] yields: the weights of every hooked call, in call order.

    Attributes:
        calls: ``(module_name, weights)`` per forward call; weights are ``(B, H, L, S)`` float32 CPU.
    """

    calls: list[tuple[str, Tensor]] = field(default_factory=list)

    def maps(self, tokens: list[list[str]] | list[str], *, select: Callable[[str], bool] | None = None,
             query_mask: Tensor | None = None, key_mask: Tensor | None = None,
             key_tokens: list[list[str]] | list[str] | None = None) -> AttentionMaps:
        """Build [`AttentionMaps`][attnkit.inspect._maps.AttentionMaps] from the recorded calls (one layer per call).

        Args:
            tokens: the real query tokens per sequence (a flat list for batch size 1).
            select: keep calls whose module name passes, e.g. ``lambda n: "self_attn" in n``
                to drop cross-attention from an encoder-decoder.
            query_mask: ``(B, L)`` True = real query token (default: no padding).
            key_mask: ``(B, S)`` True = real key token (default: no padding).
            key_tokens: for cross-attention, the real key tokens per sequence.
        """
        chosen = [w for name, w in self.calls if select is None or select(name)]
        if not chosen:
            names = sorted({n for n, _ in self.calls})
            raise AttnkitError.build("at least one recorded attention call", f"none (recorded modules: {names})",
                                     "run the model inside the with-block, and check select=")
        nest = lambda t: None if t is None else ([list(t)] if t and isinstance(t[0], str) else [list(x) for x in t])
        return AttentionMaps(chosen, nest(tokens), query_mask, key_mask, key_tokens=nest(key_tokens))


@contextlib.contextmanager
def record(model: nn.Module) -> Iterator[Recorder]:
    """Record per-head attention weights of every attention module in ``model``.

    Hooks ``attnkit.nn.MultiHeadAttention`` and ``torch.nn.MultiheadAttention`` modules (the
    model itself may be one). Inside the block each such module computes its weights
    (``need_weights=True``, per head); its return value is unchanged for the caller (weights
    are dropped again, or averaged over heads, as the caller asked).

    Yields:
        a [`Recorder`][attnkit.inspect._record.Recorder]; ``recorder.calls`` holds ``(name, (B, H, L, S) weights)`` per
        call, ``recorder.maps(tokens)`` builds [`AttentionMaps`][attnkit.inspect._maps.AttentionMaps].

    Raises:
        AttnkitError: if the model contains no attention module this knows how to hook.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> mha = nn.MultiheadAttention(8, 2, batch_first=True)
        >>> x = torch.randn(1, 3, 8)
        >>> with record(mha) as rec:
        ...     out, w = mha(x, x, x, need_weights=False)
        >>> w is None, rec.maps(["a", "b", "c"]).weights[0].shape
        (True, torch.Size([1, 2, 3, 3]))
    """
    classes = _hooked_classes()
    recorder = Recorder()
    handles = []
    pending: list[tuple[bool, bool]] = []  # what each call in flight asked for (calls may nest)

    def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        bound = _inspect.signature(module.forward).bind(*args, **kwargs)
        pending.append(_caller_wants(module, bound))
        bound.arguments.update(_ASK)
        return bound.args, bound.kwargs

    def post_hook(name: str, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        wanted, average = pending.pop()
        out, weights = output[0], output[1]
        if weights is None:
            raise AttnkitError.build(f"weights from {type(module).__name__} {name!r}", "None", "report this module to attnkit")
        w = weights.detach().float().cpu()
        recorder.calls.append((name, w if w.dim() == 4 else w.unsqueeze(0)))  # unbatched (H, L, S) → (1, H, L, S)
        if not wanted:
            return (out, None, *output[2:])
        return (out, weights.mean(dim=-3), *output[2:]) if average else output  # heads are dim -3 of (B, H, L, S)

    for name, module in model.named_modules():
        if isinstance(module, classes):
            handles.append(module.register_forward_pre_hook(pre_hook, with_kwargs=True))
            handles.append(module.register_forward_hook(lambda m, a, k, o, n=name: post_hook(n, m, a, k, o), with_kwargs=True))
    if not handles:
        raise AttnkitError.build("a model containing attnkit.nn.MultiHeadAttention or torch.nn.MultiheadAttention",
                                 type(model).__name__, "for Hugging Face models use attnkit.inspect.capture")
    try:
        yield recorder
    finally:
        for h in handles:
            h.remove()
