"""attnkit.keras on the torch backend: Keras's own layers on the same weights, fit, save/load.

KERAS_BACKEND must be set before keras is first imported; if another module imported keras with
another backend first, this module skips (run it alone) instead of testing the wrong backend.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

if "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = "torch"
keras = pytest.importorskip("keras")
if keras.backend.backend() != "torch":
    pytest.skip(f"keras was imported with backend {keras.backend.backend()!r} before this module; run it alone",
                allow_module_level=True)

import attnkit  # noqa: E402
from attnkit.keras import Attention, MultiHeadAttention  # noqa: E402
from attnkit.keras.layers import safe_attention  # noqa: E402
from conftest import ENGINES, assert_flash_rule  # noqa: E402

ENGINES_K = ENGINES + ["keras"]  # "keras": the pure keras.ops safe path, forced on torch


def _data(seed=0, B=2, L=19, S=23, dim=16):
    """L >= 17: attnkit checks K/V for NaN/inf from 17 queries on, which the sdpa engine needs."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, L, dim))
    y = rng.standard_normal((B, S, dim))
    return x, y


def _run(layer, *args, **kwargs):
    """Call a layer; a forced engine that declines the spec skips the case (with its reason)."""
    try:
        return layer(*args, **kwargs)
    except attnkit.AttnkitError as why:
        if "computes exactly" in str(why):  # Keras wraps the message; keep attnkit's line
            pytest.skip(next(line for line in str(why).splitlines() if "computes exactly" in line))
        raise


def _pair(cls_ref, cls_ours, ref_kw, ours_kw, inputs):
    """Keras's layer in float32 and float64, and ours in float32, all on the float32 layer's weights."""
    ref32, ref64 = cls_ref(**ref_kw), cls_ref(**ref_kw, dtype="float64")
    ours = cls_ours(**ours_kw)
    for layer in (ref32, ref64):
        layer(*inputs)  # build
    _run(ours, *inputs)
    ref64.set_weights([w.astype("float64") for w in ref32.get_weights()])
    ours.set_weights(ref32.get_weights())
    return ref32, ref64, ours


MASKS = ["none", "causal", "padding", "attention_mask"]


def _mask_kwargs(kind, B, L, S):
    if kind == "causal":
        return {"use_causal_mask": True}
    if kind == "padding":  # the second sequence has 4 real keys
        return {"value_mask": np.arange(S)[None, :] < np.array([[S], [4]])}
    if kind == "attention_mask":
        rng = np.random.default_rng(1)
        m = rng.random((B, L, S)) < 0.6
        m[:, :, 0] = True  # every row sees a key (Keras's layer gives empty rows uniform weights)
        return {"attention_mask": m}
    return {}


@pytest.mark.parametrize("engine", ENGINES_K)
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("G", [4, 2, 1])
def test_mha_matches_keras(engine, mask, G):
    x, y = _data()
    B, L, S = x.shape[0], x.shape[1], y.shape[1]
    if G == 4:
        ref_cls, ref_kw = keras.layers.MultiHeadAttention, dict(num_heads=4, key_dim=8, value_dim=6)
        ours_kw = dict(num_heads=4, key_dim=8, value_dim=6, engine=engine)
    else:  # Keras's grouped-query layer has one head size
        ref_cls, ref_kw = keras.layers.GroupQueryAttention, dict(head_dim=8, num_query_heads=4, num_key_value_heads=G)
        ours_kw = dict(num_heads=4, key_dim=8, num_key_value_heads=G, engine=engine)
    x32, y32 = x.astype("float32"), y.astype("float32")
    ref32, ref64, ours = _pair(ref_cls, MultiHeadAttention, ref_kw, ours_kw, (x32, y32))
    kw = _mask_kwargs(mask, B, L, S)
    scores = G == 4  # Keras's GroupQueryAttention returns scores too, but one check of them is enough
    o64 = ref64(x, y, return_attention_scores=scores, **kw)
    o32 = ref32(x32, y32, return_attention_scores=scores, **kw)
    ours_out = _run(ours, x32, y32, return_attention_scores=scores, **kw)
    if scores:
        (o64, w64), (o32, w32), (ours_out, w) = o64, o32, ours_out
        assert tuple(w.shape) == (B, 4, L, S)
        assert_flash_rule(w, w32, w64)
    assert isinstance(ours_out, torch.Tensor) and ours_out.dtype == torch.float32
    assert_flash_rule(ours_out, o32, o64)


@pytest.mark.parametrize("engine", ENGINES_K)
def test_mha_gradients_match_keras_float64(engine):
    """Gradients through the layer (inputs and every weight) against Keras's layer in float64."""
    x, y = _data(seed=3)
    kw = dict(num_heads=4, key_dim=8)
    x32, y32 = x.astype("float32"), y.astype("float32")
    ref32, ref64, ours = _pair(keras.layers.MultiHeadAttention, MultiHeadAttention, kw, {**kw, "engine": engine}, (x32, y32))
    mask = {"value_mask": np.arange(y.shape[1])[None, :] < np.array([[23], [5]])}
    up = torch.from_numpy(np.random.default_rng(4).standard_normal((2, 19, 16)))

    def grads(layer, xin, yin):
        xt, yt = torch.tensor(xin, requires_grad=True), torch.tensor(yin, requires_grad=True)
        out = _run(layer, xt, yt, **mask)
        params = [w.value for w in layer.trainable_weights]
        g = torch.autograd.grad((out * up.to(out.dtype)).sum(), [xt, yt, *params])
        return [t.detach().double() for t in g]

    for a, b, c in zip(grads(ours, x32, y32), grads(ref32, x32, y32), grads(ref64, x, y)):
        assert_flash_rule(a, b, c)


def _luong64(q, k, v, scale, key_mask, causal):
    """softmax(scale·q·kᵀ over visible keys)·v in float64 numpy (the oracle; Keras's Attention
    layer computes in float32 whatever its dtype policy)."""
    s = scale * np.einsum("bld,bsd->bls", q, k)
    vis = np.broadcast_to(key_mask[:, None, :], s.shape).copy()
    if causal:
        vis &= np.tril(np.ones(s.shape[1:], bool))
    s = np.where(vis, s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    return torch.from_numpy(w @ v), torch.from_numpy(w)


@pytest.mark.parametrize("engine", ENGINES_K)
@pytest.mark.parametrize("causal", [False, True])
def test_attention_matches_keras_attention(engine, causal):
    x, y = _data(seed=5)
    x32, y32 = x.astype("float32"), y.astype("float32")
    ref, ours = keras.layers.Attention(use_scale=True), Attention(use_scale=True, scale=1.0, engine=engine)
    ref([x32, y32])
    _run(ours, [x32, y32])
    for layer in (ref, ours):
        layer.scale.assign(np.asarray(0.7, "float32"))  # a learned scale away from its init
    mask = [np.ones((2, 19), bool), np.arange(23)[None, :] < np.array([[23], [3]])]
    o64, w64 = _luong64(x32.astype("float64"), y32.astype("float64"), y32.astype("float64"), np.float64(np.float32(0.7)),
                        mask[1], causal)
    o32, w32 = ref([x32, y32], mask=mask, return_attention_scores=True, use_causal_mask=causal)
    out, w = _run(ours, [x32, y32], mask=mask, return_attention_scores=True, use_causal_mask=causal)
    assert_flash_rule(out, o32, o64)
    assert_flash_rule(w, w32, w64)


def test_attention_default_scale_is_one_over_sqrt_dim():
    x, y = _data(seed=6)
    x, y = x.astype("float32"), y.astype("float32")
    out = Attention(engine="reference")([x, y])
    expect = attnkit.attention(torch.from_numpy(x)[:, None], torch.from_numpy(y)[:, None], torch.from_numpy(y)[:, None],
                               engine="reference")[:, 0]
    assert torch.allclose(out, expect, atol=1e-6)


@pytest.mark.parametrize("engine", ["auto", "keras"])
def test_masked_query_rows_give_zero(engine):
    """A query row that is masked (or sees no key) has weights 0 and attention output 0 — never NaN."""
    x, _ = _data(seed=7)
    x = x.astype("float32")
    mha = MultiHeadAttention(num_heads=2, key_dim=4, engine=engine)
    query_mask = np.array([[True] * 19, [True] * 3 + [False] * 16])
    out, w = mha(x, x, query_mask=query_mask, return_attention_scores=True)
    assert torch.isfinite(out).all()
    assert (w[1, :, 3:] == 0).all() and (w[0].sum(-1) - 1).abs().max() < 1e-6
    bias = mha._output_dense.bias.value
    assert torch.allclose(out[1, 3:], bias.expand(16, -1), atol=0)  # attention output 0 -> only the output bias


def test_keras_ops_path_is_safe_for_huge_scores():
    """The keras.ops path subtracts the max: scores of ±1e4 give the exact one-hot row, not NaN."""
    q = np.array([[[[100.0]], [[100.0]]]], "float32").reshape(1, 2, 1, 1)  # (B, L, H, D)
    k = np.array([[[[100.0]], [[-100.0]]]], "float32").reshape(1, 2, 1, 1)
    v = np.array([[[[1.0]], [[2.0]]]], "float32").reshape(1, 2, 1, 1)
    out, w = safe_attention(q, k, v)
    with np.errstate(over="ignore", invalid="ignore"):  # the overflow is the point
        naive = np.exp(np.float32(1e4)) / (np.exp(np.float32(1e4)) + np.exp(np.float32(-1e4)))
    assert np.isnan(naive)  # e^10000 overflows float32: inf / inf
    assert torch.equal(w[0, 0], torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert torch.equal(out[0, :, 0, 0], torch.tensor([1.0, 1.0]))


def test_attnkit_runs_on_torch_backend(monkeypatch):
    """engine='auto' calls attnkit.attention on torch; engine='keras' does not."""
    import attnkit.functional as functional

    calls = []
    real = functional.attention
    monkeypatch.setattr(functional, "attention", lambda *a, **k: calls.append(k) or real(*a, **k))
    x, _ = _data()
    x = x.astype("float32")
    MultiHeadAttention(num_heads=2, key_dim=4)(x, x, use_causal_mask=True)
    assert len(calls) == 1 and calls[0]["causal"] == "top_left"
    MultiHeadAttention(num_heads=2, key_dim=4, engine="keras")(x, x)
    assert len(calls) == 1


def _model(engine="auto", G=2):
    inp = keras.Input((8, 1))
    h = keras.layers.Dense(16)(inp)
    h = MultiHeadAttention(num_heads=4, key_dim=4, num_key_value_heads=G, engine=engine, name="mha")(h, h)
    return keras.Model(inp, keras.layers.Dense(1)(keras.layers.Flatten()(h)))


def test_fit_trains_and_save_load(tmp_path):
    """model.fit lowers the loss on a task that needs attention across positions; .keras round trip."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 8, 1)).astype("float32")
    target = x.max(axis=1)  # the largest of 8 tokens: each output must look at every position
    model = _model()
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    first = model.evaluate(x, target, verbose=0)
    hist = model.fit(x, target, epochs=30, batch_size=64, verbose=0)
    last = hist.history["loss"][-1]
    assert last < 0.3 * first, (first, last)

    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)  # registered: no custom_objects needed
    assert isinstance(loaded.get_layer("mha"), MultiHeadAttention)
    assert loaded.get_layer("mha").get_config() == model.get_layer("mha").get_config()
    assert torch.equal(loaded(x[:16]), model(x[:16]))


def test_get_config_round_trip():
    for layer in (MultiHeadAttention(4, 8, value_dim=6, num_key_value_heads=2, dropout=0.1, output_shape=12, seed=3),
                  Attention(use_scale=True, scale=0.5, dropout=0.2, seed=1, engine="keras")):
        clone = type(layer).from_config(layer.get_config())
        assert clone.get_config() == layer.get_config()


def test_dropout_only_in_training():
    x, _ = _data(seed=8)
    x = x.astype("float32")
    keras.utils.set_random_seed(1)
    mha = MultiHeadAttention(num_heads=2, key_dim=4, dropout=0.5, seed=2)
    a, b = mha(x, x, training=False), mha(x, x, training=False)
    c = mha(x, x, training=True)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_errors_say_expected_got_fix():
    with pytest.raises(attnkit.AttnkitError, match="num_key_value_heads"):
        MultiHeadAttention(num_heads=4, key_dim=8, num_key_value_heads=3)
    with pytest.raises(attnkit.AttnkitError, match="engine"):
        MultiHeadAttention(num_heads=4, key_dim=8, engine="fast")


def test_jax_backend_runs_the_keras_ops_path():
    """The other-backend path on JAX, in a subprocess (the backend is fixed per process).

    jax/jaxlib are ~380 MB installed, so they are not in the ``test`` extra: this runs where jax is
    installed (``pip install jax``) and skips otherwise; on torch the same code runs as engine="keras".
    """
    pytest.importorskip("jax")
    code = textwrap.dedent("""
        import numpy as np, keras
        from attnkit.keras import MultiHeadAttention
        assert keras.backend.backend() == "jax"
        x = np.random.default_rng(0).standard_normal((2, 6, 16)).astype("float32")
        ref = keras.layers.MultiHeadAttention(num_heads=4, key_dim=8)
        o_ref, w_ref = ref(x, x, return_attention_scores=True, use_causal_mask=True)
        ours = MultiHeadAttention(num_heads=4, key_dim=8); ours(x, x); ours.set_weights(ref.get_weights())
        o, w = ours(x, x, return_attention_scores=True, use_causal_mask=True)
        print(float(np.abs(np.asarray(o) - np.asarray(o_ref)).max()), float(np.abs(np.asarray(w) - np.asarray(w_ref)).max()))
    """)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    d_out, d_w = map(float, res.stdout.split())
    assert d_out < 1e-5 and d_w < 1e-6


def test_docstring_examples():
    import doctest

    import attnkit.keras.layers as layers

    assert doctest.testmod(layers, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE).failed == 0


def test_keras_masks_from_masked_inputs_are_used():
    """An Embedding(mask_zero=True) input fills query_mask/value_mask like Keras's layer: padding keys are ignored."""
    tokens = np.array([[5, 3, 7, 0, 0], [2, 9, 4, 6, 1]])
    emb = keras.layers.Embedding(10, 8, mask_zero=True)
    x = emb(tokens)
    mha = MultiHeadAttention(num_heads=2, key_dim=4)
    auto = mha(x, x)
    explicit = mha(x, x, query_mask=tokens != 0, value_mask=tokens != 0)
    unmasked = mha(x, x, query_mask=np.ones_like(tokens, bool), value_mask=np.ones_like(tokens, bool))
    assert torch.equal(auto, explicit) and not torch.allclose(auto[0, :3], unmasked[0, :3])


def test_import_falls_back_to_torch_when_the_configured_backend_is_missing(tmp_path):
    """Keras writes keras.json with "tensorflow" on first use; without TensorFlow, attnkit.keras picks torch."""
    import importlib.util

    if importlib.util.find_spec("tensorflow") is not None:
        pytest.skip("tensorflow is installed: Keras's default backend imports")
    (tmp_path / "keras.json").write_text('{"backend": "tensorflow"}')
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["KERAS_HOME"] = str(tmp_path)
    code = "import attnkit.keras, keras; print(keras.backend.backend())"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "torch", res.stderr[-2000:]


@pytest.mark.parametrize("G", [4, 2])
def test_mha_matches_attnkit_nn_on_the_same_weights(G):
    """The Keras layer and attnkit.nn.MultiHeadAttention (torch) agree when given the same projections."""
    from attnkit.nn import MultiHeadAttention as TorchMHA

    torch.manual_seed(0)
    ref = TorchMHA(16, 4, num_kv_heads=G).double()
    ours = MultiHeadAttention(num_heads=4, key_dim=4, num_key_value_heads=G, dtype="float64")
    x = np.random.default_rng(2).standard_normal((2, 19, 16))
    ours(x, x)
    H, D = 4, 4
    w = lambda lin, heads: lin.weight.detach().T.reshape(16, heads, D).numpy()  # noqa: E731 — (dim, heads, D)
    b = lambda lin, heads: lin.bias.detach().reshape(heads, D).numpy()  # noqa: E731
    ours.set_weights([w(ref.q_proj, H), b(ref.q_proj, H), w(ref.k_proj, G), b(ref.k_proj, G), w(ref.v_proj, G),
                      b(ref.v_proj, G), ref.out_proj.weight.detach().T.reshape(H, D, 16).numpy(),
                      ref.out_proj.bias.detach().numpy()])
    xt = torch.from_numpy(x)
    expect, _ = ref(xt, xt, xt, causal="top_left")
    torch.testing.assert_close(ours(x, x, use_causal_mask=True), expect, rtol=0, atol=1e-12)
