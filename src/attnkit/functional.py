"""``attnkit.attention`` and ``attnkit.explain``: check the arguments, build the spec, call dispatch."""

from __future__ import annotations

import inspect
import logging

from torch import Tensor

from ._layout import from_bhld, to_bhld
from .engines import dispatch, hot
from .engines.dispatch import Dispatch
from .errors import AttnkitError
from .spec import AttentionOutput, AttentionSpec, Normalizer, ScoreMod

__all__ = ["attention", "explain", "prepare", "Dispatch"]

log = logging.getLogger("attnkit")


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
    layout: str = "bhld",
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
        kv_lengths: ``(B,)`` ints; key positions at or past the length are padding. With
            lengths, bottom-right alignment is per sequence (``kv_len - q_len``).
        q_lengths: ``(B,)`` ints; query positions at or past the length are padding (their
            output rows are 0).
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
        return_lse: return an [`AttentionOutput`][attnkit.spec.AttentionOutput] ``(out, lse, weights)``
            with the log-sum-exp ``lse`` ``(B, H, L)``.
        return_weights: return an [`AttentionOutput`][attnkit.spec.AttentionOutput] with the
            weights ``(B, H, L, S)`` (exact; materializes the ``L×S`` matrix).
        engine: ``"auto"`` (fastest exact engine; see [`explain`][attnkit.functional.explain]) or an engine name.
        layout: the axis order of ``query``, ``key``, ``value`` and ``out``: ``"bhld"``
            ``(B, H, L, D)`` (the default, torch SDPA's) or ``"blhd"`` ``(B, L, H, D)``
            (FlashAttention's ``flash_attn_func``, model code before ``.transpose(1, 2)``). Both are
            valid 4-D shapes, so a wrong layout silently attends over the wrong axes: say which.
            ``"blhd"`` converts by transpose views (no copy); masks, bias, lse and weights keep
            their ``(B, H, L, S)`` / ``(B, H, L)`` shapes, and ``out`` is a ``(B, L, H, E)`` view.

    Returns:
        ``out`` ``(B, H, L, E)`` in the input dtype, or ``AttentionOutput`` if asked for lse or
        weights. Like SDPA on CPU, the fused kernel returns ``out`` in ``(B, L, H, E)`` storage (a
        model's ``out.transpose(1, 2)`` is then contiguous for free): call ``.contiguous()`` where
        an API needs a contiguous ``(B, H, L, E)`` tensor. Rows with no visible key give
        ``out = 0``, ``lse = -inf``, weights 0 and zero gradients. Empty ``L`` or ``S`` are
        allowed. float16/bfloat16 inputs are normalized and accumulated in float32; float masks
        and biases keep float32 precision.
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
    if layout != "bhld":
        query, key, value = to_bhld(layout, query, key, value)  # views: (B, L, H, D) -> (B, H, L, D)
    args = hot.plan(query, key, value, mask, causal, window, kv_lengths, q_lengths, scale, score_mod, bias,
                    alibi_slopes, softcap, normalizer, dropout_p, seed, return_lse, return_weights, engine)
    if type(args) is tuple:
        res = hot.run(args)
        if res is not None:
            return from_bhld(layout, AttentionOutput(res[0], res[1]) if return_lse else res[0])
        # The op's own checks declined the call: the general path computes it or raises the AttnkitError.
    spec = AttentionSpec.build(
        query, key, value, mask=mask, causal=causal, window=window, kv_lengths=kv_lengths, q_lengths=q_lengths,
        scale=scale, score_mod=score_mod, bias=bias, alibi_slopes=alibi_slopes, softcap=softcap,
        normalizer=normalizer, dropout_p=dropout_p, seed=seed, return_lse=return_lse, return_weights=return_weights,
    )
    choice = dispatch.choose(spec, engine)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("attnkit.attention dispatch\n%s", choice)
    result = dispatch.load(choice.engine).run(query, key, value, spec)
    return from_bhld(layout, result if (return_lse or return_weights) else result.out)


def explain(query: Tensor, key: Tensor, value: Tensor, *, engine: str = "auto", **kwargs) -> Dispatch:
    """Which engine [`attention`][attnkit.functional.attention] would run for these arguments, and why the others would not.

    Takes the same arguments as [`attention`][attnkit.functional.attention]; computes nothing. The
    common call runs on the hot path (one compiled op, see `attnkit.engines.hot`): then `engine` is
    `"flash"`, `hot` is True and `detail` says so; otherwise `not_hot` says why the call takes the
    general path and `reasons` why each other engine was not chosen.

    Example:
        >>> import torch, attnkit
        >>> q = torch.randn(1, 1, 4, 8)
        >>> print(attnkit.explain(q, q, q, normalizer="sparsemax").engine)
        reference
    """
    unknown = set(kwargs) - _OPTIONS
    if unknown:
        raise AttnkitError.build("arguments of attnkit.attention", str(sorted(unknown)), "check the spelling")
    query, key, value = to_bhld(kwargs.pop("layout", "bhld"), query, key, value)
    spec = AttentionSpec.build(query, key, value, **kwargs)  # raises what attention() would raise
    plan = hot.plan(query, key, value, engine=engine, **kwargs)
    if type(plan) is tuple:
        return Dispatch("flash", detail=hot.DETAIL, hot=True)
    choice = dispatch.choose(spec, engine)
    choice.not_hot = plan
    return choice


def prepare() -> str | None:
    """Build (once per machine, cached) and load the fused kernel now, so that the first call of
    [`attention`][attnkit.functional.attention] does not compile it — e.g. before ``torch.compile`` traces a model.

    Returns:
        ``None`` when the hot path is ready, else the reason it is not (then every call takes the
        general path, whose PyTorch tile path needs no compiler).

    Example:
        >>> import attnkit
        >>> attnkit.functional.prepare() is None or isinstance(attnkit.functional.prepare(), str)
        True
    """
    return hot.status()


# What explain() accepts besides the tensors and engine: exactly attention()'s options.
_OPTIONS = frozenset(inspect.signature(attention).parameters) - {"query", "key", "value", "engine"}
