"""The hot path: [`attnkit.attention`][attnkit.functional.attention]'s common call as one compiled op.

A model calls attention thousands of times with small shapes, where the time between the call
and the kernel (argument checks, the spec, dispatch, scans of K/V) costs more than the kernel.
The common call — float32/bfloat16/float16 CPU tensors, no gradient needed, softmax, any of
``mask`` (bool or float), ``causal``, ``window``, ``kv_lengths``, ``q_lengths``, ``scale``,
``alibi_slopes``, ``softcap``, ``return_lse`` and GQA — goes straight to
``torch.ops.attnkit_fused.attention``, which checks its arguments in C++ and runs the fused
forward kernel over the whole problem (the flash engine's kernel: small problems are packed into
work items over (batch, kv head, query block), and a key a row cannot see is never read into that
row's sum, so no pass over K/V looks for NaN first).

`plan` is the one decision: the op's arguments, or the reason the call takes the general
path (``attnkit.explain`` prints it). A check the op fails in C++ also sends the call to the
general path, which computes it or raises the [`AttnkitError`][attnkit.errors.AttnkitError] with expected/got/fix:
both paths raise the same errors for the same bad inputs.

Example:
    >>> import torch
    >>> from attnkit.engines import hot
    >>> q = torch.randn(1, 2, 4, 8)
    >>> isinstance(hot.plan(q, q, q, causal=True), tuple) or hot.plan(q, q, q, causal=True)  # doctest: +SKIP
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from . import kernel
from .decode import MIN_SEGMENT
from .kernel.fused import CAUSAL, DTYPES, half_products

__all__ = ["plan", "run", "status", "DETAIL"]

DETAIL = "hot path: one compiled op, torch.ops.attnkit_fused.attention (checks in C++, fused forward kernel)"

# Below the decode engine's split size its threads gain nothing over one kernel call.
_SPLIT_KV_MIN_KEYS = 2 * MIN_SEGMENT

_op: Any = None  # the loaded op (OpOverload), or None before the first call
_direct: Any = None  # the same function without the dispatcher (pybind), used outside torch.compile
_op_status: str | None = None  # None before the first call, "" when loaded, else why not
_half_modes: dict = {}  # dtype -> build.half_gemm's mode (read once with the build, see fused.half_products)


def status() -> str | None:
    """``None`` when the hot path's op is loaded (building the kernel on first call), else why not."""
    global _op, _op_status, _half_modes, _direct
    if _op_status is None or _op_status:
        from .kernel import build, fused  # loads (or builds) the kernel once the first call needs it

        why = fused.status()
        if why is None:
            _op, _op_status = torch.ops.attnkit_fused.attention.default, ""
            _half_modes = {dt: build.half_gemm(dt) for dt in (torch.bfloat16, torch.float16)}
            _direct = build.direct_attention() or _op
        else:
            _op_status = why
            return f"fused kernel unavailable: {why}"
    return None


def plan(query: Any, key: Any, value: Any, mask: Any = None, causal: Any = False, window: Any = None,
         kv_lengths: Any = None, q_lengths: Any = None, scale: Any = None, score_mod: Any = None, bias: Any = None,
         alibi_slopes: Any = None, softcap: Any = None, normalizer: Any = "softmax", dropout_p: Any = 0.0,
         seed: Any = None, return_lse: Any = False, return_weights: Any = False, engine: Any = "auto") -> tuple | str:
    """The op's argument tuple for this call of [`attnkit.attention`][attnkit.functional.attention], or why it takes the general path.

    Only cheap Python checks run here (types and flags); shapes, devices of the masks, length ranges
    and the finiteness of ``scale``/``softcap`` are checked by the op itself.
    """
    # Every tensor attribute costs ~0.1 µs from Python (a shape ~0.2 µs): each is read once, and
    # the loops over optional arguments run only when one is given (a decode step passes none).
    if engine != "auto":
        return f"engine={engine!r} is forced"
    if not (isinstance(query, Tensor) and isinstance(key, Tensor) and isinstance(value, Tensor)):
        return "query, key and value are not all tensors"
    dtype = query.dtype
    if dtype not in DTYPES:
        return f"{dtype} inputs (the fused kernel covers float32/bfloat16/float16)"
    if not (query.is_cpu and key.is_cpu and value.is_cpu):
        return f"{query.device.type} tensors (the fused kernel is CPU-only)"
    if normalizer != "softmax" or score_mod is not None:
        return "a normalizer other than softmax or a score_mod callable"
    if bias is not None or return_weights is not False or seed is not None:
        return "bias, return_weights or seed (the general path computes them)"
    if not (type(dropout_p) in (float, int) and dropout_p == 0):
        return "dropout (counter-based masks run on the general path)"
    if return_lse is not True and return_lse is not False:
        return "return_lse is not a bool"
    if mask is not None and type(mask) is not Tensor:
        return "mask is not a plain tensor"
    if kv_lengths is not None or q_lengths is not None or alibi_slopes is not None:
        for name, t in (("kv_lengths", kv_lengths), ("q_lengths", q_lengths), ("alibi_slopes", alibi_slopes)):
            if t is not None and type(t) is not Tensor:
                return f"{name} is not a tensor"
    if torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad or (
            mask is not None and mask.requires_grad) or (alibi_slopes is not None and alibi_slopes.requires_grad)):
        return "autograd needs the result's graph (training runs the engines' autograd function)"
    if causal is False or causal is None:
        c = 0
    elif causal is True:
        c = CAUSAL["bottom_right"]
    elif type(causal) is str and causal in CAUSAL:
        c = CAUSAL[causal]
    else:
        return "causal is not one of False, True, 'bottom_right', 'top_left'"
    wl = wr = -1
    if window is not None:
        if type(window) not in (tuple, list) or len(window) != 2:
            return "window is not a (left, right) pair"
        for side in window:
            if side is not None and (type(side) is not int or side < 0):
                return "window sides are not non-negative ints or None"
        wl = -1 if window[0] is None else window[0]
        wr = -1 if window[1] is None else window[1]
    # Every tensor argument on the CPU: the dispatcher would send a call holding a meta tensor to
    # the op's shape-only kernel, which computes nothing.
    if mask is not None or kv_lengths is not None or q_lengths is not None or alibi_slopes is not None:
        for t in (mask, kv_lengths, q_lengths, alibi_slopes):
            if t is not None and not t.is_cpu:
                return f"a {t.device.type} tensor among the masks, lengths or slopes"
    if scale is not None and type(scale) not in (float, int):
        return "scale is not a Python number"
    if softcap is None:
        cap = 0.0
    elif type(softcap) in (float, int) and softcap > 0:
        cap = float(softcap)
    else:
        return "softcap is not a positive Python number"
    q_shape = query.shape
    if len(q_shape) == 4 and q_shape[2] <= 16:
        k_shape = key.shape
        if len(k_shape) == 4 and k_shape[2] >= _SPLIT_KV_MIN_KEYS and not torch.compiler.is_compiling():
            if k_shape[0] * k_shape[1] < torch.get_num_threads():  # (not traced: compiled code keeps one op)
                return "a decode step over a long cache with fewer (batch, kv head) groups than threads: split-KV"
    if kernel._forced == "torch":
        return "the torch tile path is forced (force_path('torch'))"
    if _op_status != "":
        why = status()
        if why is not None:
            return why
    # Half inputs: half-precision products or widened (fused.half_products; other ranks: the op refuses).
    half = 0
    if dtype is not torch.float32:
        v_shape = value.shape
        half = int(len(q_shape) == len(v_shape) == 4 and half_products(_half_modes[dtype], q_shape, v_shape))
    return (query, key, value, mask, kv_lengths, q_lengths, alibi_slopes, c, wl, wr,
            None if scale is None else float(scale), cap, half)


def run(args: tuple) -> tuple[Tensor, Tensor] | None:
    """Run the op on `plan`'s arguments: ``(out in q's dtype, lse float32)``, or ``None`` when
    its own checks decline the call (the caller then takes the general path)."""
    try:
        if torch.compiler.is_compiling():  # the registered op: traceable, with its fake kernel
            return _op(*args)
        return _direct(*args)
    except RuntimeError:
        return None
