"""Keras 3 layers on attnkit (extra ``keras``): [`Attention`][attnkit.keras.layers.Attention] and [`MultiHeadAttention`][attnkit.keras.layers.MultiHeadAttention].

On the torch backend (``KERAS_BACKEND=torch``, set before ``keras`` is first imported) a layer's
call runs [`attnkit.attention`][attnkit.functional.attention] — attnkit's engines, fused kernel and autograd — on the
tensors Keras hands it. On the JAX and TensorFlow backends it runs a pure ``keras.ops`` safe
softmax (max-subtracted, masked rows → 0); ``engine="keras"`` forces that path on torch too.

- [`Attention`][attnkit.keras.layers.Attention]: scaled dot-product attention in ``keras.layers.Attention``'s calling
  convention (``[query, value(, key)]``, ``mask=[query_mask, value_mask]``).
- [`MultiHeadAttention`][attnkit.keras.layers.MultiHeadAttention]: ``keras.layers.MultiHeadAttention``'s projections and weights,
  plus grouped-query attention (``num_key_value_heads``, the weights of
  ``keras.layers.GroupQueryAttention``).

Both are registered Keras serializables (``get_config``, ``.keras`` files load without
``custom_objects``).

Backend: Keras picks it once, when ``keras`` is first imported (``KERAS_BACKEND``, else
``~/.keras/keras.json``, which Keras itself writes with ``"tensorflow"`` on first use). If ``keras``
is not imported yet, ``KERAS_BACKEND`` is unset and the configured backend is not installed,
importing ``attnkit.keras`` sets ``KERAS_BACKEND=torch`` (torch comes with attnkit) and says so in a
log line, instead of failing on a missing TensorFlow.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
from pathlib import Path


def _json_backend() -> str:
    """The backend in Keras's config file (Keras's default, ``tensorflow``, when there is none)."""
    config = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "keras.json"
    try:
        return str(json.loads(config.read_text()).get("backend", "tensorflow"))
    except (OSError, ValueError, AttributeError):
        return "tensorflow"


if "keras" not in sys.modules and not os.environ.get("KERAS_BACKEND"):
    chosen = _json_backend()
    if importlib.util.find_spec(chosen) is None:
        os.environ["KERAS_BACKEND"] = "torch"
        logging.getLogger("attnkit").info("attnkit.keras: Keras backend %r is not installed; using KERAS_BACKEND=torch", chosen)

from .layers import Attention, MultiHeadAttention  # noqa: E402

__all__ = ["Attention", "MultiHeadAttention"]
