"""Pre-softmax scores (capture(..., scores=True), logits, row_scores) and contrast_heads.

Oracles: a float64 einsum for `logits`; for MiniLM, layer 0's q.k/sqrt(d) recomputed in float64 from the
model's own embedding output and query/key projections; for every layer, softmax(scores) must give the
captured weights (themselves checked against eager float64 in test_inspect.py).
"""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
import torch

from attnkit import AttnkitError
from attnkit.inspect import AttentionMaps, capture, contrast_heads, default_candidates, logits, row_scores
from attnkit.inspect import _capture, _contrast
from test_inspect import minilm  # noqa: F401 -- the shared MiniLM fixture (skips without the hf extra)

TIRED = "The animal didn't cross the street because it was too tired."
WIDE = "The animal didn't cross the street because it was too wide."


@pytest.mark.parametrize("H,G", [(4, 4), (4, 2), (4, 1)])
def test_logits_match_float64_einsum(H, G):
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, H, 5, 7, generator=g), torch.randn(2, G, 6, 7, generator=g)
    bias = torch.randn(1, H, 5, 6, generator=g)
    kk = k.double().repeat_interleave(H // G, 1)
    raw = torch.einsum("bhld,bhsd->bhls", q.double(), kk)
    assert torch.allclose(logits(q, k).double(), raw / math.sqrt(7), atol=1e-5)
    capped = 3 * torch.tanh(raw * 0.5 / 3) + bias.double()  # softcap 3 actually bends the scores
    assert torch.allclose(logits(q, k, scaling=0.5, softcap=3.0, position_bias=bias).double(), capped, atol=1e-5)


def test_maps_scores_validation_and_missing_scores():
    w = torch.softmax(torch.zeros(1, 1, 2, 2), -1)
    with pytest.raises(AttnkitError, match="one scores tensor"):
        AttentionMaps([w], [["a", "b"]], scores=[torch.zeros(1, 1, 2, 3)])
    maps = AttentionMaps([w], [["a", "b"]])
    with pytest.raises(AttnkitError, match="scores=True"):
        row_scores(maps, 0, 0, "a")
    scored = AttentionMaps([w], [["a", "b"]], scores=[torch.zeros(1, 1, 2, 2)])
    with pytest.raises(AttnkitError, match="layer in"):
        row_scores(scored, 1, 0, "a")


def test_contrast_heads_ranks_the_head_that_moves():
    a = torch.full((1, 3, 4, 4), 0.25)
    a[0, :, 3] = torch.tensor([0.1, 0.6, 0.2, 0.1])  # every head: "it" -> cat in text A
    b = a.clone()
    b[0, 2, 3] = torch.tensor([0.1, 0.1, 0.7, 0.1])  # head 2 moves to mat in text B
    b[0, 1, 3] = torch.tensor([0.1, 0.4, 0.4, 0.1])  # head 1 half-way
    toks = [["[CLS]", "cat", "mat", "it"]]
    ranked = contrast_heads(AttentionMaps([a], toks), AttentionMaps([b], toks), "it", ["cat", "mat"], skip_neighbors=0)
    assert [(h.layer, h.head) for h in ranked] == [(0, 2), (0, 1), (0, 0)]
    assert ranked[0].change == pytest.approx((0.6 - 0.2) - (0.1 - 0.7), abs=1e-6)
    assert ranked[1].change == pytest.approx(0.4, abs=1e-6) and ranked[2].change == pytest.approx(0.0, abs=1e-6)
    assert (ranked[0].target_a, ranked[0].target_b) == ("cat", "mat")
    with pytest.raises(AttnkitError, match="two candidate words"):
        contrast_heads(AttentionMaps([a], toks), AttentionMaps([b], toks), "it", ["cat"])


@pytest.mark.parametrize("module", [_capture, _contrast])
def test_docstring_examples(module):
    assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0


def test_capture_scores_layer0_against_float64_projections(minilm):
    tf, path, tok, model = minilm
    before = model.config._attn_implementation
    maps = capture(model, tok, [TIRED, "It was."], scores=True)
    assert model.config._attn_implementation == before and _capture._SCORE_SINK.get() is None
    # oracle: layer 0's q and k from the float64 model's embeddings, q.k / sqrt(d)
    m64 = tf.AutoModel.from_pretrained(str(path), dtype=torch.float64).eval()
    enc = tok([TIRED], return_tensors="pt")
    with torch.no_grad():
        h = m64.embeddings(input_ids=enc["input_ids"], token_type_ids=enc["token_type_ids"])
        att = m64.encoder.layer[0].attention.self
        H, d = m64.config.num_attention_heads, m64.config.hidden_size // m64.config.num_attention_heads
        q = att.query(h).view(1, -1, H, d).transpose(1, 2)
        k = att.key(h).view(1, -1, H, d).transpose(1, 2)
        ref = (q @ k.transpose(-1, -2) / math.sqrt(d))[0].numpy()
    assert np.abs(maps.scores_of(0)[0] - ref).max() < 1e-4
    for b in range(2):  # every layer, padded batch: softmax over the real keys gives the captured weights
        p = torch.softmax(torch.from_numpy(maps.scores_of(b)).double(), -1).numpy()
        assert np.abs(p - maps.sequence(b)).max() < 1e-5
    assert capture(model, tok, TIRED).scores is None


def test_capture_scores_of_a_gqa_decoder_reproduce_its_causal_weights(minilm, tmp_path):
    tf, _, tok, _ = minilm
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = tf.LlamaModel(config).eval()
    maps = capture(model, tok, "the cat sat because it was tired", scores=True)
    s = torch.from_numpy(maps.scores_of(0)).double()  # (N, H, l, l), post-RoPE q.k / sqrt(d)
    causal = torch.ones(s.shape[-2:], dtype=torch.bool).tril()
    p = torch.softmax(s.masked_fill(~causal, float("-inf")), -1).numpy()
    assert np.abs(p - maps.sequence(0)).max() < 1e-5


def test_row_scores_and_contrast_on_minilm(minilm):
    _, _, tok, model = minilm
    a, b = capture(model, tok, TIRED, scores=True), capture(model, tok, WIDE)
    keys = row_scores(a, 3, 1, "it")
    assert [k.token for k in keys] == a.tokens[0]
    s = np.array([k.score for k in keys], dtype=np.float64)
    assert np.allclose(np.exp(s - s.max()) / np.exp(s - s.max()).sum(), [k.weight for k in keys], atol=1e-6)
    assert max(keys, key=lambda k: k.score).token == "animal"
    assert default_candidates(a, b, "it") == ("animal", "street")
    ranked = contrast_heads(a, b, "it", ("animal", "street"))
    wa, wb = a.sequence(0)[3, 1, 10], b.sequence(0)[3, 1, 10]  # "it" is token 10 in both
    assert (ranked[0].layer, ranked[0].head) == (3, 1)
    assert ranked[0].change == pytest.approx((wa[2] - wa[8]) - (wb[2] - wb[8]), abs=1e-6)
    assert ranked[0].target_a == "animal" and ranked[0].target_b != "street"  # the head does not switch to street
