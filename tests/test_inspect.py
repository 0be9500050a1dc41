"""attnkit.inspect: AttentionMaps, analyses against plain NumPy, token lookup, files, hooks, capture.

NumPy re-implementations here are deliberately naive (loops over sequences, explicit
formulas) so they check the library, not restate it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from attnkit import AttnkitError
from attnkit.inspect import (
    AttentionMaps, capture, entropy, find_heads, head_max, head_mean, locate, record, rollout, strongest_heads, top_keys,
)

# float32 softmax rows and float64 NumPy references differ by a few float32 ulps per product;
# 6 layers of 32-token products stay far below 1e-5.
F32 = 1e-5


def _maps(lengths=(7, 5, 3), N=3, H=4, left=False, seed=0) -> AttentionMaps:
    """Random self-attention maps with padding (right or left), masked keys at 0 like a real model."""
    g = torch.Generator().manual_seed(seed)
    B, L = len(lengths), max(lengths)
    mask = torch.zeros(B, L, dtype=torch.bool)
    for b, n in enumerate(lengths):
        if left:
            mask[b, L - n:] = True
        else:
            mask[b, :n] = True
    weights = []
    for _ in range(N):
        scores = torch.randn(B, H, L, L, generator=g) * 2
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        weights.append(torch.softmax(scores, -1))
    tokens = [[f"t{b}_{i}" for i in range(n)] for b, n in enumerate(lengths)]
    return AttentionMaps(weights, tokens, mask, mask.clone())


def _real(maps: AttentionMaps, b: int) -> np.ndarray:
    """Sequence b's (N, H, l, l) weights, padding removed, float64."""
    q = maps.query_mask[b].numpy()
    k = maps.key_mask[b].numpy()
    return np.stack([w[b].numpy()[:, q][:, :, k] for w in maps.weights]).astype(np.float64)


# --- analyses against NumPy ----------------------------------------------------------------
def _np_rollout(a: np.ndarray, residual: bool, fusion: str) -> np.ndarray:
    """Abnar & Zuidema (2020), eq. for attention rollout, written out."""
    l = a.shape[-1]
    result = np.eye(l)
    for layer in range(a.shape[0]):
        fused = {"mean": a[layer].mean(0), "max": a[layer].max(0), "min": a[layer].min(0)}[fusion]
        if residual:
            fused = 0.5 * fused + 0.5 * np.eye(l)
        fused = fused / fused.sum(-1, keepdims=True)
        result = fused @ result
    return result


@pytest.mark.parametrize("left", [False, True], ids=["right_pad", "left_pad"])
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_rollout_matches_numpy(left, residual, fusion):
    maps = _maps(left=left)
    ours = rollout(maps, residual=residual, head_fusion=fusion)
    assert ours.shape == (3, 7, 7)
    for b in range(maps.batch_size):
        q = maps.query_mask[b]
        ref = _np_rollout(_real(maps, b), residual, fusion)
        got = ours[b][q][:, q].double().numpy()
        np.testing.assert_allclose(got, ref, atol=F32, rtol=0)
        np.testing.assert_allclose(got.sum(-1), 1.0, atol=F32)
        assert (ours[b][~q] == 0).all() and (ours[b][:, ~q] == 0).all()  # nothing flows through padding


def test_rollout_start_layer_and_errors():
    maps = _maps(lengths=(6,), N=4)
    ref = _np_rollout(_real(maps, 0)[2:], True, "mean")
    np.testing.assert_allclose(rollout(maps, start_layer=2)[0].double().numpy(), ref, atol=F32)
    cross = AttentionMaps([torch.full((1, 1, 2, 3), 1 / 3)], [["a", "b"]], key_tokens=[["x", "y", "z"]])
    with pytest.raises(AttnkitError, match="self-attention"):
        rollout(cross)
    with pytest.raises(AttnkitError, match="head_fusion"):
        rollout(maps, head_fusion="median")


@pytest.mark.parametrize("left", [False, True], ids=["right_pad", "left_pad"])
def test_entropy_matches_numpy(left):
    maps = _maps(left=left)
    ours_mean, ours_rows = entropy(maps), entropy(maps, reduce="none")
    assert ours_mean.shape == (3, 3, 4) and ours_rows.shape == (3, 3, 4, 7)
    for b in range(maps.batch_size):
        p = _real(maps, b)  # (N, H, l, l)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(p > 0, -p * np.log(p), 0.0)
        h = terms.sum(-1)
        q = maps.query_mask[b]
        np.testing.assert_allclose(ours_rows[:, b][..., q].double().numpy(), h, atol=F32)
        np.testing.assert_allclose(ours_mean[:, b].double().numpy(), h.mean(-1), atol=F32)
        assert (ours_rows[:, b][..., ~q] == 0).all()


def test_entropy_extremes():
    one_hot = torch.eye(4).expand(1, 2, 4, 4)  # every query on one key: entropy 0
    uniform = torch.full((1, 2, 4, 4), 0.25)  # uniform over 4 keys: log 4
    maps = AttentionMaps([one_hot, uniform], [list("abcd")])
    torch.testing.assert_close(entropy(maps), torch.tensor([[[0.0, 0.0]], [[math.log(4)] * 2]]))


def test_head_mean_max():
    maps = _maps()
    stacked = torch.stack(maps.weights)  # (N, B, H, L, S)
    torch.testing.assert_close(head_mean(maps), stacked.mean(2))
    torch.testing.assert_close(head_max(maps), stacked.amax(2))


# --- head search ------------------------------------------------------------------------------
def _planted() -> AttentionMaps:
    """2 layers × 3 heads over 'the cat sat because it was tired'; layer 1 head 2 links it -> cat."""
    tokens = ["[CLS]", "the", "cat", "sat", "because", "it", "was", "tired", "[SEP]"]
    L = len(tokens)
    g = torch.Generator().manual_seed(3)
    w = torch.softmax(torch.randn(2, 1, 3, L, L, generator=g), -1)
    row = torch.full((L,), 0.02)
    row[2], row[0], row[4] = 0.70, 0.10, 0.04  # cat, [CLS], because (the previous token)
    row[5] = 1 - row.sum() + row[5]
    w[1, 0, 2, 5] = row
    prev = torch.zeros(L)
    prev[4] = 0.9
    prev[3] = 0.1
    w[0, 0, 1, 5] = prev  # a previous-token head, stronger but positional
    special = [[t.startswith("[") for t in tokens]]
    return AttentionMaps(list(w.unbind(0)), [tokens], special=special)


def test_find_heads_ranks_the_planted_head():
    maps = _planted()
    ranked = find_heads(maps, "it", "cat")
    assert len(ranked) == 6
    best = ranked[0]
    assert (best.layer, best.head) == (1, 2) and best.weight == pytest.approx(0.70)
    assert [k.token for k in best.top[:2]] == ["cat", "[CLS]"]
    assert [h.score for h in ranked] == sorted((h.score for h in ranked), reverse=True)
    assert str(best).startswith("layer 1 head 2: cat 0.70, [CLS] 0.10")


def test_find_heads_versus_and_spans():
    maps = _planted()
    ranked = find_heads(maps, "it", "cat", versus="because")
    assert ranked[0].score == pytest.approx(0.70 - 0.04)
    # a multi-token key sums its columns; a multi-token query averages its rows
    span = find_heads(maps, "it", "cat")  # single tokens
    two = find_heads(maps, "it", 2)  # position instead of a word
    assert span[0][:3] == two[0][:3]
    with pytest.raises(AttnkitError, match="the cat sat"):
        find_heads(maps, "it", "dog")


def test_strongest_heads_skips_special_self_and_neighbours():
    maps = _planted()
    assert (strongest_heads(maps, "it")[0].layer, strongest_heads(maps, "it")[0].head) == (0, 1)  # 'because' 0.9
    best = strongest_heads(maps, "it", skip_neighbors=1)[0]
    assert (best.layer, best.head, best.key) == (1, 2, "cat") and best.score == pytest.approx(0.70)


def test_top_keys():
    maps = _planted()
    top = top_keys(maps, 1, 2, "it", k=3)
    assert [t.token for t in top] == ["cat", "[CLS]", "it"]  # "it" keeps the rest: 0.06
    assert top[0].position == 2 and top[0].weight == pytest.approx(0.70)
    with pytest.raises(AttnkitError, match="layer in"):
        top_keys(maps, 2, 0, "it")


# --- tokens -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "tokens,word,expected",
    [
        (["[CLS]", "the", "animal", "didn", "'", "t", "[SEP]"], "didn't", [3, 4, 5]),  # WordPiece punctuation split
        (["[CLS]", "tire", "##d", "[SEP]"], "Tired", [1, 2]),  # continuation pieces, case-insensitive
        (["\u2581The", "\u2581ani", "mal", "\u2581it"], "animal", [1, 2]),  # SentencePiece
        (["The", "\u0120animal", "\u0120it"], "it", [2]),  # byte-level BPE
        (["猫", "が", "寝", "た"], "寝", [2]),
    ],
)
def test_locate(tokens, word, expected):
    assert locate(tokens, word) == expected


def test_locate_occurrence_positions_and_errors():
    toks = ["the", "cat", "saw", "the", "dog"]
    assert locate(toks, "the") == [0] and locate(toks, "the", occurrence=1) == [3]
    assert locate(toks, -1) == [4]
    with pytest.raises(AttnkitError, match="2 occurrence"):
        locate(toks, "the", occurrence=2)
    with pytest.raises(AttnkitError, match="position in"):
        locate(toks, 5)


# --- AttentionMaps ------------------------------------------------------------------------------
def test_sequence_and_select_drop_padding():
    maps = _maps(left=True)
    for b in range(3):
        np.testing.assert_array_equal(maps.sequence(b), _real(maps, b).astype(np.float32))
    one = maps.select(1)
    assert one.batch_size == 1 and one.tokens == [maps.tokens[1]] and one.sequence(0).shape == (3, 4, 5, 5)


def test_validation_errors():
    w = torch.full((1, 1, 2, 2), 0.5)
    with pytest.raises(AttnkitError, match="as many tokens"):
        AttentionMaps([w], [["a"]])
    with pytest.raises(AttnkitError, match="every layer"):
        AttentionMaps([w, torch.full((1, 1, 3, 3), 1 / 3)], [["a", "b"]])
    with pytest.raises(AttnkitError, match="key_tokens"):
        AttentionMaps([torch.full((1, 1, 2, 3), 1 / 3)], [["a", "b"]])


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_save_load_roundtrip(tmp_path, suffix, dtype):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")
    maps = _maps(left=True)
    maps.meta["model"] = "toy"
    maps.special = [[i == 0 for i in range(len(t))] for t in maps.tokens]
    back = AttentionMaps.load(maps.save(tmp_path / f"m{suffix}", dtype=dtype))
    assert back.tokens == maps.tokens and back.special == maps.special and back.meta == maps.meta
    assert torch.equal(back.query_mask, maps.query_mask) and torch.equal(back.key_mask, maps.key_mask)
    # float16 keeps weights in [0, 1] to half a unit in the last place: 2^-11 near 1
    tol = 0.0 if dtype == "float32" else 2.0 ** -11
    for a, b in zip(back.weights, maps.weights):
        assert (a - b).abs().max() <= tol


def test_load_rejects_other_files(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.zeros((1, 1, 1, 1, 1)), query_mask=np.ones((1, 1), bool), key_mask=np.ones((1, 1), bool),
             header=np.array('{"format": "something else"}'))
    with pytest.raises(AttnkitError, match="AttentionMaps.save"):
        AttentionMaps.load(path)
    with pytest.raises(AttnkitError, match=".npz or .safetensors"):
        _maps().save(tmp_path / "maps.pt")


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
@pytest.mark.parametrize("damage", ["missing", "directory", "empty", "truncated", "garbage", "no header"])
def test_load_damaged_files_name_path_and_fix(tmp_path, suffix, damage):
    """Issue 13: BadZipFile, KeyError, JSONDecodeError, SafetensorError become one AttnkitError."""
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")
    path = _maps().save(tmp_path / f"m{suffix}")
    data = path.read_bytes()
    if damage == "missing":
        path.unlink()
    elif damage == "directory":
        path.unlink()
        path.mkdir()
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00\x01garbage" * 100)
    elif suffix == ".npz":  # no header, or a header that is not JSON
        np.savez(path, weights=np.zeros((1, 1, 1, 1, 1)), query_mask=np.ones((1, 1), bool), key_mask=np.ones((1, 1), bool),
                 header=np.array("{not json"))
    else:
        from safetensors.torch import save_file

        save_file({"weights": torch.zeros(1, 1, 1, 1, 1)}, str(path), metadata={"attnkit": "{not json"})
    with pytest.raises(AttnkitError, match="fix: ") as info:
        AttentionMaps.load(path)
    assert str(path) in str(info.value)


def test_load_never_unpickles(tmp_path):
    path = tmp_path / "m.npz"
    np.savez(path, weights=np.array([object()], dtype=object), query_mask=np.ones((1, 1), bool),
             key_mask=np.ones((1, 1), bool), header=np.array("{}"))
    with pytest.raises(AttnkitError, match="damaged"):
        AttentionMaps.load(path)
    with pytest.raises(AttnkitError, match=".npz or .safetensors"):
        AttentionMaps.load(tmp_path / "m.pkl")


# --- record: explicit hooks on nn attention modules -------------------------------------------
def _modules():
    from attnkit.nn import MultiHeadAttention

    return [nn.MultiheadAttention, MultiHeadAttention]


@pytest.mark.parametrize("cls", _modules(), ids=lambda c: c.__module__.split(".")[0])
@pytest.mark.parametrize("need_weights", [False, True, None])
def test_record_hooks_and_leaves_outputs_alone(cls, need_weights):
    torch.manual_seed(0)
    mha = cls(16, 4, batch_first=True).eval()
    x = torch.randn(2, 5, 16)
    kwargs = {} if need_weights is None else {"need_weights": need_weights}
    expected_out, expected_w = mha(x, x, x, **kwargs)
    with record(mha) as rec:
        out, w = mha(x, x, x, **kwargs)
    torch.testing.assert_close(out, expected_out)
    assert (w is None) == (expected_w is None)
    if w is not None:
        torch.testing.assert_close(w, expected_w)  # averaged over heads again if the caller asked so
    _, per_head = mha(x, x, x, need_weights=True, average_attn_weights=False)
    assert len(rec.calls) == 1
    torch.testing.assert_close(rec.calls[0][1], per_head)
    # the hooks are gone after the block
    mha(x, x, x)
    assert len(rec.calls) == 1 and not mha._forward_hooks and not mha._forward_pre_hooks


def test_record_model_layers_and_select():
    from attnkit.nn import MultiHeadAttention

    class Toy(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.ModuleList([MultiHeadAttention(8, 2, batch_first=True) for _ in range(2)])
            self.cross = MultiHeadAttention(8, 2, batch_first=True)

        def forward(self, src, tgt, pad):
            for layer in self.enc:
                src = src + layer(src, key_padding_mask=pad)[0]
            return self.cross(tgt, src, src, key_padding_mask=pad)[0]

    torch.manual_seed(1)
    model = Toy().eval()
    pad = torch.tensor([[False, False, False, True]])  # torch convention: True = padding
    with record(model) as rec:
        model(torch.randn(1, 4, 8), torch.randn(1, 2, 8), pad)
    assert [n for n, _ in rec.calls] == ["enc.0", "enc.1", "cross"]
    maps = rec.maps(["a", "b", "c"], select=lambda n: n.startswith("enc"), query_mask=~pad)
    assert maps.num_layers == 2 and maps.num_heads == 2 and maps.weights[0][0, :, :, 3].abs().max() == 0
    cross = rec.maps(["x", "y"], select=lambda n: n == "cross", key_tokens=["a", "b", "c"], key_mask=~pad)
    assert cross.keys_of(0) == ["a", "b", "c"] and cross.sequence(0).shape == (1, 2, 2, 3)
    with pytest.raises(AttnkitError, match="recorded modules"):
        rec.maps(["a"], select=lambda n: False)


def test_record_needs_an_attention_module():
    with pytest.raises(AttnkitError, match="capture"):
        with record(nn.Linear(2, 2)):
            pass


# --- capture: a real pretrained model on attnkit's attention -------------------------------------
SENTENCE = "The animal didn't cross the street because it was too tired."


@pytest.fixture(scope="module")
def minilm():
    tf = pytest.importorskip("transformers", reason="needs the hf extra: pip install 'attnkit[hf]'")
    from attnkit.integrations.hf import minilm_path

    try:
        path = minilm_path()
    except AttnkitError as e:
        pytest.skip(str(e))
    tf.utils.logging.disable_progress_bar()
    return tf, path, tf.AutoTokenizer.from_pretrained(str(path)), tf.AutoModel.from_pretrained(str(path)).eval()


def test_capture_finds_the_it_animal_head(minilm):
    _, _, tok, model = minilm
    before = model.config._attn_implementation
    maps = capture(model, tok, SENTENCE)
    assert model.config._attn_implementation == before  # switched to attnkit for the run only
    assert (maps.num_layers, maps.num_heads, maps.batch_size) == (6, 12, 1)
    assert maps.tokens[0][10] == "it" and maps.special[0][0] and maps.special[0][-1]
    ranked = find_heads(maps, "it", "animal")
    best = ranked[0]
    street = {k.token: k.weight for k in top_keys(maps, best.layer, best.head, "it", k=16)}["street"]
    assert best.weight > 0.5 and street < 0.1
    # the head the texts quote (layer 5 head 11, 0-based) is among the top two: 0.67 on animal, 0.02 on street
    l5h11 = next(h for h in ranked if (h.layer, h.head) == (5, 11))
    assert ranked.index(l5h11) <= 1 and l5h11.weight == pytest.approx(0.673, abs=0.005)
    assert find_heads(maps, "it", "street")[0].weight < best.weight


@pytest.fixture(scope="module")
def eager64(minilm):
    """HF's eager attention in float64: the test oracle only (capture itself runs attnkit)."""
    tf, path, tok, _ = minilm
    model = tf.AutoModel.from_pretrained(str(path), attn_implementation="eager", dtype=torch.float64).eval()

    def run(text):
        with torch.no_grad():
            return model(**tok([text], return_tensors="pt"), output_attentions=True).attentions

    return run


def test_capture_matches_eager_float64(minilm, eager64):
    """FlashAttention's rule: vs eager float64, at most twice eager float32's error (+1e-6)."""
    from conftest import assert_flash_rule

    tf, path, tok, model = minilm
    maps = capture(model, tok, SENTENCE)
    with torch.no_grad():
        base32 = tf.AutoModel.from_pretrained(str(path), attn_implementation="eager")(
            **tok([SENTENCE], return_tensors="pt"), output_attentions=True).attentions
    for ours, base, ref in zip(maps.weights, base32, eager64(SENTENCE)):
        assert_flash_rule(ours, base, ref)


def test_capture_batch_with_padding_equals_one_by_one(minilm, eager64):
    from conftest import assert_flash_rule

    _, _, tok, model = minilm
    texts = ["Short one.", SENTENCE, "A sentence of middle length, here."]
    batch = capture(model, tok, texts, batch_size=2)  # chunks of 2, padded to the longest of all
    assert batch.batch_size == 3 and batch.query_mask.sum(1).tolist() == [len(t) for t in batch.tokens]
    for b, text in [(0, texts[0]), (2, texts[2])]:  # the padded ones
        single = capture(model, tok, text)
        assert batch.tokens[b] == single.tokens[0]
        # padded or not, as close to float64 as the unpadded run (padding changes only rounding)
        ref = torch.stack([a[0] for a in eager64(text)])
        assert_flash_rule(torch.from_numpy(batch.sequence(b)), torch.from_numpy(single.sequence(0)), ref)


def test_capture_512_tokens(minilm):
    _, _, tok, model = minilm
    text = " ".join([SENTENCE] * 40)
    with pytest.raises(AttnkitError, match="max_length=512"):
        capture(model, tok, text)
    with pytest.raises(AttnkitError, match="max_length <= 512"):  # issue 13: no longer skips the limit
        capture(model, tok, text, max_length=600)
    with pytest.raises(AttnkitError, match="special tokens"):  # 1 token cannot hold [CLS] and [SEP]
        capture(model, tok, SENTENCE, max_length=1)
    with pytest.warns(UserWarning, match="truncated"):
        maps = capture(model, tok, text, max_length=512)
    assert maps.weights[0].shape == (1, 12, 512, 512)
    sums = torch.stack(maps.weights).sum(-1)
    torch.testing.assert_close(sums, torch.ones_like(sums))


def test_capture_decoder_is_causal_and_padding_safe(minilm):
    tf, _, tok, _ = minilm
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = tf.LlamaModel(config).eval()
    texts = ["the cat sat on the mat", "a dog"]
    maps = capture(model, tok, texts)
    seq = maps.sequence(0)
    assert (np.triu(seq, 1) == 0).all()  # no query sees a later key
    np.testing.assert_allclose(maps.sequence(1), capture(model, tok, texts[1]).sequence(0), atol=4 * np.finfo(np.float32).eps)


def test_capture_errors(minilm):
    tf, _, tok, model = minilm
    with pytest.raises(AttnkitError, match="record"):
        capture(nn.Linear(2, 2), tok, "hi")
    with pytest.raises(AttnkitError, match="at least one text"):
        capture(model, tok, [])
    t5 = tf.T5Model(tf.T5Config(vocab_size=tok.vocab_size, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2))
    with pytest.raises(AttnkitError, match="encoder-decoder"):
        capture(t5, tok, "hi")


@pytest.mark.parametrize("module", ["attnkit.inspect", "attnkit.inspect._maps", "attnkit.inspect._analysis",
                                    "attnkit.inspect._tokens", "attnkit.inspect._record", "attnkit.inspect._capture"])
def test_docstring_examples(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
