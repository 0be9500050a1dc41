"""Which model call asked for attention weights: ``output_attentions`` recorded per forward.

The attention function learns that a call wants weights from its ``output_attentions`` argument, but
some architectures drop the flag on the way down (Falcon's attention module calls the interface
without it and its ``FalconModel`` then collects ``None``; GPT-2 collects through transformers'
output capturing instead). So every ``PreTrainedModel`` built with (or switched to) attnkit's
implementation gets a forward pre-hook that records what its call asked — the ``output_attentions``
keyword, else the outer model call's request, else ``config.output_attentions`` — on a context
variable stack, popped by a forward hook that runs even when the forward raises. Nested models
(``FalconForCausalLM`` around ``FalconModel``) push and pop in order; each thread and asyncio task
sees its own stack. Cost: two hook calls per model forward and one context-variable read per
attention call; weights are built only when asked for, as eager builds them.

Example:
    >>> from attnkit.integrations import _hf_outputs
    >>> _hf_outputs.wanted()   # no model call running
    False
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import torch

__all__ = ["wanted", "install"]

# One entry per running model forward (innermost last): whether that call asked for weights.
_requests: ContextVar[tuple[bool, ...]] = ContextVar("attnkit_output_attentions", default=())
_HOOKED = "_attnkit_output_attentions_hooked"


def wanted() -> bool:
    """Whether the innermost running model call asked for attention weights."""
    stack = _requests.get()
    return bool(stack) and stack[-1]


def _pre(module: Any, args: tuple, kwargs: dict) -> None:
    if torch.compiler.is_compiling():  # a ContextVar breaks the graph; compiled calls read the flag itself
        return
    asked = kwargs.get("output_attentions")
    if asked is None:
        stack = _requests.get()
        asked = stack[-1] if stack else getattr(getattr(module, "config", None), "output_attentions", False)
    _requests.set(_requests.get() + (bool(asked),))


def _post(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
    if torch.compiler.is_compiling():
        return
    _requests.set(_requests.get()[:-1])


def install(model: Any) -> None:
    """Record ``output_attentions`` around every forward of ``model`` (idempotent)."""
    if getattr(model, _HOOKED, False) or not hasattr(model, "register_forward_pre_hook"):
        return
    model.register_forward_pre_hook(_pre, with_kwargs=True)
    model.register_forward_hook(_post, with_kwargs=True, always_call=True)
    object.__setattr__(model, _HOOKED, True)
