"""``attnkit.attention``: argument checking and dispatch to an engine."""

from __future__ import annotations

import logging
import math
import numbers
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from . import engines
from .dropout import draw_seed
from .errors import AttnkitError
from .masks import normalize_causal, normalize_window
from .spec import AttentionOutput, AttentionSpec, Normalizer, ScoreMod

__all__ = ["attention", "explain", "Dispatch"]

log = logging.getLogger("attnkit")

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_NORMALIZERS = ("softmax", "sparsemax", "entmax15", "sigmoid")


@dataclass
class Dispatch:
    """Which engine runs a spec and why the others do not (``reasons[name]``)."""

    engine: str
    reasons: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        lines = [f"engine: {self.engine}"]
        lines += [f"  not {name}: {why}" for name, why in self.reasons.items()]
        return "\n".join(lines)


def _shape(t: Tensor) -> str:
    return str(tuple(t.shape))


def _check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    for name, t in (("query", q), ("key", k), ("value", v)):
        if not isinstance(t, Tensor):
            raise AttnkitError.build(f"{name} to be a torch.Tensor", type(t).__name__, "convert with torch.as_tensor")
        if t.dim() != 4:
            raise AttnkitError.build(
                f"{name} of shape (B, {'H' if name == 'query' else 'G'}, {'L' if name == 'query' else 'S'}, "
                f"{'E' if name == 'value' else 'D'})",
                f"{t.dim()}-D {_shape(t)}",
                "add a head dim with .unsqueeze(1), or split heads with .view(B, L, H, D).transpose(1, 2)",
            )
        if t.dtype not in _FLOATS:
            raise AttnkitError.build(f"{name} of a floating dtype {_FLOATS}", str(t.dtype), f"use {name}.float()")
        if t.dtype != q.dtype:
            raise AttnkitError.build(f"{name} of dtype {q.dtype} like query", str(t.dtype), f"cast with .to({q.dtype})")
        if t.device != q.device:
            raise AttnkitError.build(f"{name} on {q.device} like query", str(t.device), f"move it with .to('{q.device}')")
        if t.device.type == "meta":
            raise AttnkitError.build(f"{name} with data (a cpu or cuda tensor)", "a meta tensor (shape only)",
                                     "materialize it, e.g. torch.empty_like(t, device='cpu'), or trace with torch.compile")
    B, H, L, D = q.shape
    if k.shape[0] != B or k.shape[3] != D:
        raise AttnkitError.build(f"key of shape (B, G, S, D) with B={B}, D={D} like query", _shape(k), "match the batch and head dim")
    G, S = k.shape[1], k.shape[2]
    if G == 0 or H % G != 0:
        raise AttnkitError.build(
            f"key heads G dividing query heads H={H} (MHA G=H, GQA, MQA G=1)", f"G={G}", "repeat or regroup key/value heads"
        )
    if tuple(v.shape[:3]) != (B, G, S):
        raise AttnkitError.build(f"value of shape (B, G, S, E) = ({B}, {G}, {S}, E) like key", _shape(v), "match key's first three dims")


def _check_lengths(name: str, lengths: Tensor | None, B: int, n: int, device: torch.device) -> Tensor | None:
    if lengths is None:
        return None
    lengths = torch.as_tensor(lengths, device=device)
    if lengths.shape != (B,) or lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise AttnkitError.build(f"{name} as an integer tensor of shape ({B},)", f"{lengths.dtype} {_shape(lengths)}", "one length per batch row")
    if B and (int(lengths.min()) < 0 or int(lengths.max()) > n):
        raise AttnkitError.build(f"{name} in [0, {n}]", str(lengths.tolist()), "lengths count real (non-padding) positions")
    return lengths.to(torch.int64)


def _check_4d(name: str, t: Tensor | None, q: Tensor, dims: tuple[int, int, int, int]) -> Tensor | None:
    """A mask/bias broadcastable to (B, H, L, S), returned as a 4-D view."""
    if t is None:
        return None
    if not isinstance(t, Tensor):
        raise AttnkitError.build(f"{name} to be a tensor", type(t).__name__, "pass a torch.Tensor")
    if t.device != q.device:
        raise AttnkitError.build(f"{name} on {q.device}", str(t.device), f"move it with .to('{q.device}')")
    try:
        if torch.broadcast_shapes(t.shape, dims) != torch.Size(dims):
            raise RuntimeError
    except RuntimeError:
        raise AttnkitError.build(
            f"{name} broadcastable to (B, H, L, S) = {dims}", _shape(t), "use shape (B|1, H|1, L|1, S|1)"
        ) from None
    while t.dim() < 4:
        t = t.unsqueeze(0)
    return t


def _real(name: str, value: object, *, fix: str) -> float:
    """A finite real number (int, float, numpy scalar, 0-d tensor), or an AttnkitError."""
    if isinstance(value, Tensor) and value.numel() == 1 and not value.dtype == torch.bool:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise AttnkitError.build(f"{name} as a finite number", repr(value), fix)
    return float(value)


def _may_be_nonfinite(t: Tensor) -> bool:
    """Whether ``t`` holds NaN or ±inf: one pass (aminmax propagates NaN), no full-size mask."""
    if t.numel() == 0:
        return False
    lo, hi = torch.aminmax(t)
    return not bool(torch.isfinite(lo) & torch.isfinite(hi))


# Up to this many queries, a pass over K and V to look for NaN/inf would cost about as much as
# the attention itself (decoding); the spec then says "unknown" and engines take care anyway.
_KV_CHECK_MIN_QUERIES = 17


def _build_spec(q, k, v, *, mask, causal, window, kv_lengths, q_lengths, scale, score_mod, bias, alibi_slopes,
                softcap, normalizer, dropout_p, seed, return_lse, return_weights) -> AttentionSpec:
    _check_qkv(q, k, v)
    B, H, L, D = q.shape
    G, S, E = k.shape[1], k.shape[2], v.shape[3]
    dims = (B, H, L, S)
    mask = _check_4d("mask", mask, q, dims)
    float_mask = None
    if mask is not None and mask.dtype != torch.bool:
        if not mask.is_floating_point():
            raise AttnkitError.build("a boolean (True = attend) or float (additive) mask", str(mask.dtype), "use mask.bool()")
        float_mask, mask = mask, None
    bias = _check_4d("bias", bias, q, dims)
    if bias is not None and not bias.is_floating_point():
        raise AttnkitError.build("a floating bias", str(bias.dtype), "use bias.float()")
    kv = _check_lengths("kv_lengths", kv_lengths, B, S, q.device)
    ql = _check_lengths("q_lengths", q_lengths, B, L, q.device)
    causal_n = normalize_causal(causal)
    if alibi_slopes is not None:
        alibi_slopes = torch.as_tensor(alibi_slopes, device=q.device)
        if alibi_slopes.shape not in ((H,), (B, H)) or not alibi_slopes.is_floating_point():
            raise AttnkitError.build(f"float alibi_slopes of shape ({H},) or ({B}, {H})", _shape(alibi_slopes), "use attnkit.alibi_slopes(H)")
        alibi_slopes = alibi_slopes.to(torch.float64 if q.dtype == torch.float64 else torch.float32).expand(B, H)
    if softcap is not None:
        softcap = _real("softcap", softcap, fix="pass a finite cap > 0 such as softcap=50.0 (Gemma 2), or None")
        if not softcap > 0:
            raise AttnkitError.build("softcap > 0 or None", repr(softcap), "e.g. softcap=50.0 (Gemma 2)")
    if isinstance(normalizer, str):
        if normalizer not in _NORMALIZERS:
            raise AttnkitError.build(f"normalizer in {_NORMALIZERS} or a callable", repr(normalizer), "check the spelling")
    elif not callable(normalizer):
        raise AttnkitError.build("normalizer name or callable", type(normalizer).__name__, f"use one of {_NORMALIZERS}")
    else:
        normalizer = _normalizer_name(normalizer)
    if return_lse and normalizer != "softmax":
        raise AttnkitError.build("return_lse only with normalizer='softmax'", f"normalizer={normalizer!r}",
                                 "the log-normalizer is a softmax notion; drop return_lse")
    dropout_p = _real("dropout_p", dropout_p, fix="pass a probability such as 0.1")
    if not 0.0 <= dropout_p < 1.0:
        raise AttnkitError.build("dropout_p in [0, 1)", repr(dropout_p), "pass e.g. 0.1")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise AttnkitError.build("seed as an int or None", repr(seed), "pass e.g. seed=0, or None to draw one")
    if dropout_p > 0 and seed is None:
        seed = draw_seed()
    if scale is None:
        scale = 1.0 / math.sqrt(D) if D > 0 else 1.0
    scale = _real("scale", scale, fix="pass a finite multiplier such as 1/sqrt(D), or None for that default")
    for name, flag in (("return_lse", return_lse), ("return_weights", return_weights)):
        if not isinstance(flag, bool):
            raise AttnkitError.build(f"{name} as a bool", repr(flag), f"pass {name}=True or False")
    extras = [t for t in (float_mask, bias) if t is not None]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, *extras))
    q_nonfinite = _may_be_nonfinite(q)
    kv_nonfinite = L < _KV_CHECK_MIN_QUERIES or _may_be_nonfinite(k) or _may_be_nonfinite(v)

    def bounds(t: Tensor | None, default: int) -> tuple[int, int]:
        if t is None or B == 0:
            return (default, default)
        return int(t.min()), int(t.max())

    kvb, qb = bounds(kv, S), bounds(ql, L)
    if causal_n == "top_left":
        offsets = (0, 0)
    elif kv is None and ql is None:
        offsets = (S - L, S - L)
    else:
        diff = (kv if kv is not None else torch.full((B,), S, device=q.device)) - (ql if ql is not None else L)
        offsets = bounds(diff, S - L)
    return AttentionSpec(
        B=B, H=H, G=G, L=L, S=S, D=D, E=E, dtype=q.dtype, device=q.device, scale=float(scale), causal=causal_n,
        window=normalize_window(window), kv_lengths=kv, q_lengths=ql, mask=mask, float_mask=float_mask, bias=bias,
        score_mod=score_mod, alibi_slopes=alibi_slopes, softcap=softcap, normalizer=normalizer,
        dropout_p=float(dropout_p), seed=int(seed or 0), return_lse=return_lse, return_weights=return_weights,
        offset_bounds=offsets, kv_bounds=kvb, q_bounds=qb,
        q_nonfinite=q_nonfinite, kv_nonfinite=kv_nonfinite, needs_grad=needs_grad,
    )


def _normalizer_name(fn: Callable[..., Tensor]) -> Normalizer:
    """Map attnkit's own normalizer functions to their names, so engines can recognize them."""
    from .normalizers import NORMALIZERS
    from .softmax import softmax

    known = {softmax: "softmax", **{f: n for n, f in NORMALIZERS.items()}}
    return known.get(fn, fn)


def _choose(spec: AttentionSpec, engine: str) -> Dispatch:
    if engine != "auto":
        if engine not in engines.ENGINE_ORDER:
            raise AttnkitError.build(f"engine in {('auto',) + engines.ENGINE_ORDER}", repr(engine), "check the spelling")
        why = engines.load(engine).unsupported(spec)
        if why is not None:
            raise AttnkitError.build(f"a spec the {engine} engine computes exactly", why, "use engine='auto'")
        return Dispatch(engine)
    order, notes = engines.auto_order(spec)
    chosen: str | None = None
    reasons: dict[str, str] = {}
    for name in order:  # every engine is asked, so explain() can say why each one was not used
        why = engines.load(name).unsupported(spec)
        if why is not None:
            reasons[name] = why
        elif chosen is None:
            chosen = name
        else:
            reasons[name] = notes.get(name, f"{chosen} is faster for this spec")
    assert chosen is not None, "the reference engine computes every spec"
    return Dispatch(chosen, reasons)


def attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    mask: Tensor | None = None,
    causal: bool | str = False,
    window: tuple[int | None, int | None] | None = None,
    kv_lengths: Tensor | None = None,
    q_lengths: Tensor | None = None,
    scale: float | None = None,
    score_mod: ScoreMod | None = None,
    bias: Tensor | None = None,
    alibi_slopes: Tensor | None = None,
    softcap: float | None = None,
    normalizer: Normalizer = "softmax",
    dropout_p: float = 0.0,
    seed: int | None = None,
    return_lse: bool = False,
    return_weights: bool = False,
    engine: str = "auto",
) -> Tensor | AttentionOutput:
    """Exact attention ``normalizer(score_mods(Q·Kᵀ·scale) + masks) · V``.

    Args:
        query: ``(B, H, L, D)``.
        key: ``(B, G, S, D)`` with ``H % G == 0`` (G = H: multi-head; 1 < G < H: grouped-query;
            G = 1: multi-query). Query head ``h`` reads key/value head ``h // (H // G)``.
        value: ``(B, G, S, E)``.
        mask: boolean, True = may attend, or float, added to the scores; broadcastable to
            ``(B, H, L, S)``.
        causal: ``False``; ``True`` / ``"bottom_right"`` (query ``i`` sits at key position
            ``i + S - L``: the last query sees every key, as in KV-cache decoding); or
            ``"top_left"`` (torch SDPA's ``is_causal``). For ``L == S`` they agree. L=2, S=4::

                bottom_right   top_left
                  x x x .      x . . .
                  x x x x      x x . .

        window: ``(left, right)``: key ``j`` visible from aligned position ``p`` iff
            ``p - left <= j <= p + right`` (``None`` = unbounded side).
        kv_lengths, q_lengths: ``(B,)`` ints; positions at or past the length are padding.
            With lengths, bottom-right alignment is per sequence (``kv_len - q_len``).
        scale: defaults to ``1/√D``.
        score_mod: ``score_mod(score, b, h, i, j) -> score``, elementwise on the scaled score
            with broadcast int64 index tensors (FlexAttention's convention).
        bias: float tensor broadcastable to ``(B, H, L, S)``, added to the scores (may require grad).
        alibi_slopes: ``(H,)`` or ``(B, H)``; adds ``-slope·|p - j|``.
        softcap: ``c`` in ``c·tanh(s/c)`` (applied first, before ALiBi and biases).
        normalizer: ``"softmax"``, ``"sparsemax"``, ``"entmax15"``, ``"sigmoid"`` (or those
            functions), or any callable ``f(scores, dim=-1, mask=bool_mask)`` (reference engine).
        dropout_p: dropout on the attention probabilities (applied whenever > 0, like SDPA).
        seed: seed of the counter-based dropout; ``None`` draws one from torch's RNG.
        return_lse, return_weights: return an :class:`AttentionOutput` ``(out, lse, weights)``.
        engine: ``"auto"`` (fastest exact engine; see :func:`explain`) or an engine name.

    Returns:
        ``out`` ``(B, H, L, E)`` in the input dtype, or ``AttentionOutput`` if asked for lse or
        weights. Rows with no visible key give ``out = 0``, ``lse = -inf``, weights 0 and zero
        gradients. Empty ``L`` or ``S`` are allowed. float16/bfloat16 inputs are normalized
        and accumulated in float32; float masks and biases keep float32 precision.
        NaN/inf: a NaN in a query row makes that row NaN; a NaN/inf in a *visible* key or value
        reaches the rows that see it (as in plain arithmetic); keys that are not visible
        (masked, past ``kv_lengths``, outside the window or causal band) never influence
        anything, whatever they hold. Scores that overflow the compute dtype
        (``|q·k·scale| > 3.4e38`` in float32, e.g. entries near 1e19) give NaN rows as in
        torch; pass float64 inputs or rescale ``q``/``k`` (``scale``) if your values are that large.

    Raises:
        AttnkitError: for mismatched shapes, dtypes or devices, invalid options, or a forced
            engine that cannot compute the spec.

    Example:
        >>> import torch, attnkit
        >>> q, k, v = torch.randn(2, 8, 5, 16), torch.randn(2, 2, 7, 16), torch.randn(2, 2, 7, 16)
        >>> attnkit.attention(q, k, v, causal=True).shape  # GQA: 8 query heads share 2 kv heads
        torch.Size([2, 8, 5, 16])
    """
    spec = _build_spec(
        query, key, value, mask=mask, causal=causal, window=window, kv_lengths=kv_lengths, q_lengths=q_lengths,
        scale=scale, score_mod=score_mod, bias=bias, alibi_slopes=alibi_slopes, softcap=softcap,
        normalizer=normalizer, dropout_p=dropout_p, seed=seed, return_lse=return_lse, return_weights=return_weights,
    )
    choice = _choose(spec, engine)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("attnkit.attention dispatch\n%s", choice)
    result = engines.load(choice.engine).run(query, key, value, spec)
    return result if (return_lse or return_weights) else result.out


def explain(query: Tensor, key: Tensor, value: Tensor, *, engine: str = "auto", **kwargs) -> Dispatch:
    """Which engine :func:`attention` would run for these arguments, and why the others would not.

    Takes the same arguments as :func:`attention`; computes nothing.

    Example:
        >>> import torch, attnkit
        >>> q = torch.randn(1, 1, 4, 8)
        >>> print(attnkit.explain(q, q, q, normalizer="sparsemax").engine)
        reference
    """
    defaults = dict(mask=None, causal=False, window=None, kv_lengths=None, q_lengths=None, scale=None,
                    score_mod=None, bias=None, alibi_slopes=None, softcap=None, normalizer="softmax",
                    dropout_p=0.0, seed=None, return_lse=False, return_weights=False)
    unknown = set(kwargs) - set(defaults)
    if unknown:
        raise AttnkitError.build("arguments of attnkit.attention", str(sorted(unknown)), "check the spelling")
    spec = _build_spec(query, key, value, **{**defaults, **kwargs})
    return _choose(spec, engine)
