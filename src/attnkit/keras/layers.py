"""Keras 3 attention layers whose call runs attnkit (torch backend) or a safe ``keras.ops`` softmax.

Shapes follow Keras (batch first, features last): ``query (B, L, dim)``, ``value``/``key``
``(B, S, dim)``; inside, heads are ``H`` query heads and ``G`` key/value heads (DESIGN.md legend).
Masks follow Keras: boolean, True (or 1) = may attend / is a real token.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from ..engines import ENGINE_ORDER
from ..errors import AttnkitError

__all__ = ["Attention", "MultiHeadAttention", "safe_attention"]

_ENGINES = ("auto", "keras", *ENGINE_ORDER)


def _runs_attnkit(engine: str) -> bool:
    """attnkit's engines serve the torch backend; ``engine="keras"`` forces the keras.ops path."""
    return engine != "keras" and keras.backend.backend() == "torch"


def _check_engine(engine: str) -> str:
    if engine not in _ENGINES:
        raise AttnkitError.build(f"engine in {_ENGINES}", repr(engine), "check the spelling")
    if engine not in ("auto", "keras") and keras.backend.backend() != "torch":
        raise AttnkitError.build("engine='auto' or 'keras' off the torch backend", f"engine={engine!r} on "
                                 f"{keras.backend.backend()!r}", "set KERAS_BACKEND=torch before importing keras")
    return engine


def _visible(query_mask: Any, value_mask: Any, key_mask: Any, attention_mask: Any) -> Any:
    """AND of the Keras masks as one boolean ``(B, 1, L|1, S|1)`` tensor (True = may attend), or None."""
    parts = []
    if query_mask is not None:
        parts.append(ops.expand_dims(ops.cast(query_mask, "bool"), -1))  # (B, L, 1)
    for m in (value_mask, key_mask):
        if m is not None:
            parts.append(ops.expand_dims(ops.cast(m, "bool"), -2))  # (B, 1, S)
    if attention_mask is not None:
        parts.append(ops.cast(attention_mask, "bool"))  # (B, L, S)
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out = ops.logical_and(out, p)
    return ops.expand_dims(out, 1)  # a head axis


def safe_attention(q: Any, k: Any, v: Any, mask: Any = None, *, causal: bool = False, scale: float = 1.0,
                   dropout: float = 0.0, seed: Any = None, training: bool = False) -> tuple[Any, Any]:
    """Exact attention in ``keras.ops`` (any backend): ``(out (B, L, H, E), weights (B, H, L, S))``.

    ``q (B, L, H, D)``, ``k (B, S, G, D)``, ``v (B, S, G, E)`` with ``H % G == 0``; ``mask``
    boolean broadcastable to ``(B, H, L, S)`` (True = may attend); ``causal`` is Keras's
    ``use_causal_mask`` (top-left: query ``i`` sees keys ``j <= i``). The softmax subtracts each
    row's max (``e^x`` cannot overflow) in float32 for half inputs, and a row with no visible key
    gets weights 0 and output 0 (Keras's own layers give such a row uniform weights).

    Example:
        >>> import numpy as np
        >>> from attnkit.keras.layers import safe_attention
        >>> q = k = v = np.ones((1, 2, 1, 4), "float32")
        >>> out, w = safe_attention(q, k, v, mask=np.array([[[[True, True], [False, False]]]]))
        >>> [float(x) for x in np.asarray(w).ravel()]  # the second query sees no key: weights 0
        [0.5, 0.5, 0.0, 0.0]
    """
    H, G = q.shape[2], k.shape[2]
    if H != G:  # GQA: query head h reads key/value head h // (H // G)
        k, v = ops.repeat(k, H // G, axis=2), ops.repeat(v, H // G, axis=2)
    dtype = q.dtype
    half = keras.backend.standardize_dtype(dtype) in ("float16", "bfloat16")
    s = ops.einsum("blhd,bshd->bhls", q, k)  # (B, H, L, S)
    s = ops.cast(s, "float32") if half else s
    s = s * scale
    if causal:
        L, S = ops.shape(s)[2], ops.shape(s)[3]
        tril = ops.expand_dims(ops.arange(L)[:, None] >= ops.arange(S)[None, :], 0)
        mask = tril[None] if mask is None else ops.logical_and(mask, tril[None])
    if mask is not None:
        s = ops.where(mask, s, float("-inf"))
    # Subtract the row max so exp cannot overflow; a row with every key hidden has max -inf: use 0.
    m = ops.max(s, axis=-1, keepdims=True)
    m = ops.stop_gradient(ops.where(ops.isfinite(m), m, ops.zeros_like(m)))
    e = ops.exp(s - m)
    total = ops.sum(e, axis=-1, keepdims=True)
    w = e / ops.where(total > 0, total, ops.ones_like(total))  # empty rows: 0 / 1 = 0, never NaN
    p = keras.random.dropout(w, dropout, seed=seed) if (training and dropout > 0) else w
    out = ops.einsum("bhls,bshe->blhe", ops.cast(p, v.dtype), v)
    return out, ops.cast(w, dtype)


def _attnkit(q: Any, k: Any, v: Any, mask: Any, *, causal: bool, scale: float, dropout: float, seed: Any,
             training: bool, need_weights: bool, engine: str) -> tuple[Any, Any]:
    """The same contract as [`safe_attention`][attnkit.keras.layers.safe_attention], on torch tensors through [`attnkit.attention`][attnkit.functional.attention]."""
    from ..functional import attention  # the public functional API, never an engine directly

    p = dropout if (training and dropout > 0) else 0.0
    # Dropout draws its counter-based seed from the layer's Keras SeedGenerator (keras.utils.set_random_seed).
    drop_seed = int(keras.random.randint((), 0, 2**31 - 1, seed=seed)) if p > 0 else None
    res = attention(q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3),  # (B, H|G, L|S, ·)
                    mask=mask, causal="top_left" if causal else False, scale=scale, dropout_p=p, seed=drop_seed,
                    return_weights=need_weights, engine=engine)
    out = res.out if need_weights else res
    return out.permute(0, 2, 1, 3), (res.weights if need_weights else None)  # (B, L, H, E)


def _attend(layer: Any, q: Any, k: Any, v: Any, mask: Any, *, causal: bool, scale: float, training: bool,
            need_weights: bool) -> tuple[Any, Any]:
    if _runs_attnkit(layer.engine):
        return _attnkit(q, k, v, mask, causal=causal, scale=scale, dropout=layer.dropout, seed=layer.seed_generator,
                        training=bool(training), need_weights=need_weights, engine=layer.engine)
    return safe_attention(q, k, v, mask, causal=causal, scale=scale, dropout=layer.dropout, seed=layer.seed_generator,
                          training=bool(training))


@keras.saving.register_keras_serializable(package="attnkit")
class Attention(keras.layers.Layer):
    """Scaled dot-product attention in ``keras.layers.Attention``'s calling convention.

    ``softmax(scale · Q·Kᵀ + masks) · V`` for ``query (B, L, dim)``, ``value (B, S, dim_v)``,
    ``key (B, S, dim)`` (default ``value``); the output is ``(B, L, dim_v)``.

    Args:
        use_scale: learn a scalar multiplier of the scores (initialized to 1), like Keras.
        scale: fixed multiplier of ``Q·Kᵀ``; ``None`` = ``1/√dim`` (scaled dot-product).
            ``scale=1.0`` with ``use_scale`` as given is exactly ``keras.layers.Attention(score_mode="dot")``.
        dropout: dropout on the attention weights in training.
        seed: seed of the dropout's Keras ``SeedGenerator``.
        engine: ``"auto"`` (attnkit on torch, keras.ops elsewhere), ``"keras"`` (keras.ops path
            everywhere) or an attnkit engine name (torch backend only).

    Call arguments:
        inputs: ``[query, value]`` or ``[query, value, key]``.
        mask: ``[query_mask (B, L), value_mask (B, S)]`` (True = real token); Keras fills them from
            masked inputs. Query rows that are masked or see no key give output 0.
        return_attention_scores: also return the weights ``(B, L, S)`` (after masking and softmax,
            before dropout).
        use_causal_mask: query ``i`` attends keys ``j <= i`` (Keras's top-left convention).

    Example:
        >>> import numpy as np
        >>> from attnkit.keras import Attention
        >>> q, v = np.random.rand(2, 3, 8).astype("float32"), np.random.rand(2, 5, 8).astype("float32")
        >>> out, w = Attention()([q, v], return_attention_scores=True)
        >>> tuple(out.shape), tuple(w.shape)
        ((2, 3, 8), (2, 3, 5))
    """

    def __init__(self, use_scale: bool = False, scale: float | None = None, dropout: float = 0.0,
                 seed: int | None = None, engine: str = "auto", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 <= dropout < 1.0:
            raise AttnkitError.build("dropout in [0, 1)", repr(dropout), "e.g. dropout=0.1")
        self.use_scale, self.fixed_scale, self.dropout, self.seed = use_scale, scale, float(dropout), seed
        self.engine = _check_engine(engine)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    def build(self, input_shape: Any) -> None:
        self.scale = self.add_weight(name="scale", shape=(), initializer="ones", trainable=True) if self.use_scale else None

    def call(self, inputs: Any, mask: Any = None, training: bool | None = None, return_attention_scores: bool = False,
             use_causal_mask: bool = False) -> Any:
        query, value = inputs[0], inputs[1]
        key = inputs[2] if len(inputs) > 2 else value
        if query.shape[-1] != key.shape[-1]:
            raise AttnkitError.build("query and key with the same last dim", f"{query.shape[-1]} and {key.shape[-1]}",
                                     "project them to one size (or use MultiHeadAttention)")
        q_mask, v_mask = (mask[0], mask[1]) if mask else (None, None)
        scale = 1.0 / math.sqrt(query.shape[-1]) if self.fixed_scale is None else float(self.fixed_scale)
        if self.scale is not None:  # a learned scalar: folded into q so the engines see a float scale
            query = query * ops.cast(self.scale, query.dtype)
        q, k, v = (ops.expand_dims(t, 2) for t in (query, key, value))  # one head: (B, ·, 1, ·)
        out, w = _attend(self, q, k, v, _visible(q_mask, v_mask, None, None), causal=use_causal_mask, scale=scale,
                         training=training, need_weights=return_attention_scores)
        out = ops.squeeze(out, 2)
        return (out, ops.squeeze(w, 1)) if return_attention_scores else out

    def compute_mask(self, inputs: Any, mask: Any = None) -> Any:
        return None if mask is None or mask[0] is None else ops.convert_to_tensor(mask[0])

    def compute_output_spec(self, inputs: Any, mask: Any = None, training: bool | None = None,
                            return_attention_scores: bool = False, use_causal_mask: bool = False) -> Any:
        query, value = inputs[0], inputs[1]
        out = keras.KerasTensor((*query.shape[:-1], value.shape[-1]), dtype=self.compute_dtype)
        if return_attention_scores:
            return out, keras.KerasTensor((query.shape[0], query.shape[1], value.shape[1]), dtype=self.compute_dtype)
        return out

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "use_scale": self.use_scale, "scale": self.fixed_scale,
                "dropout": self.dropout, "seed": self.seed, "engine": self.engine}


@keras.saving.register_keras_serializable(package="attnkit")
class MultiHeadAttention(keras.layers.Layer):
    """``keras.layers.MultiHeadAttention`` on attnkit, with grouped-query attention.

    The weights are Keras's (``EinsumDense`` sublayers ``query``/``key``/``value``/``attention_output``,
    kernels ``(dim, H, key_dim)``, ``(dim, G, key_dim)``, ``(dim, G, value_dim)``,
    ``(H, value_dim, out)``, created in that order), so ``set_weights(keras_layer.get_weights())``
    copies a ``keras.layers.MultiHeadAttention`` (``G = H``) or a
    ``keras.layers.GroupQueryAttention`` (``key_dim == value_dim``).

    Args:
        num_heads: query heads ``H``.
        key_dim: per-head size of queries and keys ``D``; scores are scaled by ``1/√D``.
        value_dim: per-head size of values ``E`` (default ``key_dim``).
        num_key_value_heads: key/value heads ``G`` with ``H % G == 0`` (default ``H``; ``1`` = MQA).
        dropout: dropout on the attention weights in training.
        use_bias: biases in the four projections.
        output_shape: last dim of the output (default: the query's).
        kernel_initializer: of the projections' kernels (a Keras name or object).
        bias_initializer: of the projections' biases (a Keras name or object).
        seed: seed of the dropout's Keras ``SeedGenerator``.
        engine: ``"auto"`` (attnkit on torch, keras.ops elsewhere), ``"keras"`` or an attnkit engine name.

    Call arguments (Keras's): ``query (B, L, dim)``, ``value (B, S, dim_v)``, ``key`` (default
    ``value``); ``query_mask``/``value_mask``/``key_mask`` ``(B, L|S)`` (filled by Keras from masked
    inputs), ``attention_mask (B, L, S)`` (True = may attend), ``use_causal_mask`` (top-left),
    ``return_attention_scores`` (weights ``(B, H, L, S)``, before dropout), ``training``.
    Query rows that are masked or see no key give attention output 0 (before the output
    projection's bias); Keras's layer gives such rows uniform weights instead.

    Example:
        >>> import numpy as np
        >>> from attnkit.keras import MultiHeadAttention
        >>> mha = MultiHeadAttention(num_heads=4, key_dim=8, num_key_value_heads=2)
        >>> x = np.random.rand(2, 6, 16).astype("float32")
        >>> out, w = mha(x, x, use_causal_mask=True, return_attention_scores=True)
        >>> tuple(out.shape), tuple(w.shape)
        ((2, 6, 16), (2, 4, 6, 6))
    """

    def __init__(self, num_heads: int, key_dim: int, value_dim: int | None = None, num_key_value_heads: int | None = None,
                 dropout: float = 0.0, use_bias: bool = True, output_shape: int | None = None,
                 kernel_initializer: Any = "glorot_uniform", bias_initializer: Any = "zeros", seed: int | None = None,
                 engine: str = "auto", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        G = num_heads if num_key_value_heads is None else num_key_value_heads
        if num_heads < 1 or G < 1 or num_heads % G:
            raise AttnkitError.build("num_key_value_heads dividing num_heads >= 1", f"num_heads={num_heads}, "
                                     f"num_key_value_heads={num_key_value_heads}", "use num_heads (MHA), a divisor (GQA) or 1 (MQA)")
        if not 0.0 <= dropout < 1.0:
            raise AttnkitError.build("dropout in [0, 1)", repr(dropout), "e.g. dropout=0.1")
        if isinstance(output_shape, (tuple, list)):
            if len(output_shape) != 1:
                raise AttnkitError.build("output_shape as an int or a 1-tuple", repr(output_shape), "e.g. output_shape=64")
            output_shape = output_shape[0]
        self.num_heads, self.num_key_value_heads, self.key_dim = num_heads, G, key_dim
        self.value_dim = key_dim if value_dim is None else value_dim
        self.dropout, self.use_bias, self.output_dim, self.seed = float(dropout), use_bias, output_shape, seed
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.engine = _check_engine(engine)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    def _dense(self, equation: str, shape: tuple, bias_axes: str, name: str) -> keras.layers.EinsumDense:
        init = lambda i: i.__class__.from_config(i.get_config())  # noqa: E731 — a fresh initializer per sublayer
        dense = keras.layers.EinsumDense(equation, output_shape=shape, bias_axes=bias_axes if self.use_bias else None,
                                         kernel_initializer=init(self.kernel_initializer),
                                         bias_initializer=init(self.bias_initializer), name=name, dtype=self.dtype_policy)
        dense.supports_masking = True  # masked inputs are handled by this layer's call (no "destroys the mask" warning)
        return dense

    def build(self, query_shape: Any, value_shape: Any, key_shape: Any = None) -> None:
        key_shape = value_shape if key_shape is None else key_shape
        H, G, D, E = self.num_heads, self.num_key_value_heads, self.key_dim, self.value_dim
        out = query_shape[-1] if self.output_dim is None else self.output_dim
        self._query_dense = self._dense("abc,cde->abde", (None, H, D), "de", "query")
        self._query_dense.build(query_shape)
        self._key_dense = self._dense("abc,cde->abde", (None, G, D), "de", "key")
        self._key_dense.build(key_shape)
        self._value_dense = self._dense("abc,cde->abde", (None, G, E), "de", "value")
        self._value_dense.build(value_shape)
        self._output_dense = self._dense("abcd,cde->abe", (None, out), "e", "attention_output")
        self._output_dense.build((None, None, H, E))

    def call(self, query: Any, value: Any, key: Any = None, query_mask: Any = None, value_mask: Any = None,
             key_mask: Any = None, attention_mask: Any = None, return_attention_scores: bool = False,
             training: bool | None = None, use_causal_mask: bool = False) -> Any:
        if key is None:
            key, key_mask = value, None  # Keras ignores key_mask when key is value
        q = self._query_dense(query)  # (B, L, H, D)
        k = self._key_dense(key)  # (B, S, G, D)
        v = self._value_dense(value)  # (B, S, G, E)
        mask = _visible(query_mask, value_mask, key_mask, attention_mask)
        out, w = _attend(self, q, k, v, mask, causal=use_causal_mask, scale=1.0 / math.sqrt(self.key_dim),
                         training=training, need_weights=return_attention_scores)
        out = self._output_dense(out)  # (B, L, out)
        return (out, w) if return_attention_scores else out

    def compute_output_spec(self, query: Any, value: Any, key: Any = None, query_mask: Any = None, value_mask: Any = None,
                            key_mask: Any = None, attention_mask: Any = None, return_attention_scores: bool = False,
                            training: bool | None = None, use_causal_mask: bool = False) -> Any:
        out_dim = query.shape[-1] if self.output_dim is None else self.output_dim
        out = keras.KerasTensor((*query.shape[:-1], out_dim), dtype=self.compute_dtype)
        if return_attention_scores:
            S = (value if key is None else key).shape[1]
            return out, keras.KerasTensor((query.shape[0], self.num_heads, query.shape[1], S), dtype=self.compute_dtype)
        return out

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_heads": self.num_heads, "key_dim": self.key_dim, "value_dim": self.value_dim,
                "num_key_value_heads": self.num_key_value_heads, "dropout": self.dropout, "use_bias": self.use_bias,
                "output_shape": self.output_dim, "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer), "seed": self.seed,
                "engine": self.engine}
