"""Keras 3 layers on attnkit (extra ``keras``): :class:`Attention` and :class:`MultiHeadAttention`.

On the torch backend (``KERAS_BACKEND=torch``, set before ``keras`` is first imported) a layer's
call runs :func:`attnkit.attention` — attnkit's engines, fused kernel and autograd — on the
tensors Keras hands it. On the JAX and TensorFlow backends it runs a pure ``keras.ops`` safe
softmax (max-subtracted, masked rows → 0); ``engine="keras"`` forces that path on torch too.

- :class:`Attention`: scaled dot-product attention in ``keras.layers.Attention``'s calling
  convention (``[query, value(, key)]``, ``mask=[query_mask, value_mask]``).
- :class:`MultiHeadAttention`: ``keras.layers.MultiHeadAttention``'s projections and weights,
  plus grouped-query attention (``num_key_value_heads``, the weights of
  ``keras.layers.GroupQueryAttention``).

Both are registered Keras serializables (``get_config``, ``.keras`` files load without
``custom_objects``).
"""

from __future__ import annotations

from .layers import Attention, MultiHeadAttention

__all__ = ["Attention", "MultiHeadAttention"]
