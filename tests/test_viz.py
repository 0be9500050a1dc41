"""attnkit.viz: PNG/SVG heatmaps with real content, and a self-contained HTML viewer whose
embedded data decode back to the maps' top-k weights."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib", reason="needs the viz extra: pip install 'attnkit[viz]'")
pytest.importorskip("jinja2", reason="needs the viz extra: pip install 'attnkit[viz]'")

from matplotlib.image import imread  # noqa: E402

from attnkit import AttnkitError, viz  # noqa: E402
from attnkit.inspect import AttentionMaps, rollout  # noqa: E402

SENTENCE = ["[CLS]", "the", "animal", "didn", "'", "t", "cross", "the", "street", "because", "it", "was", "too", "tired", ".", "[SEP]"]


def _maps(tokens=SENTENCE, N=2, H=3, seed=0) -> AttentionMaps:
    g = torch.Generator().manual_seed(seed)
    L = len(tokens)
    w = [torch.softmax(torch.randn(1, H, L, L, generator=g) * 3, -1) for _ in range(N)]
    return AttentionMaps(w, [list(tokens)], special=[[t.startswith("[") for t in tokens]], meta={"model": "toy"})


def _check_png(path, min_px=250):
    """A real picture: big enough, not one flat colour, with many distinct colours (a heatmap)."""
    img = imread(path)
    assert img.shape[0] >= min_px and img.shape[1] >= min_px
    rgb = img[..., :3].reshape(-1, 3)
    assert rgb.std(0).max() > 0.05
    assert len(np.unique((rgb * 255).astype(np.uint8), axis=0)) > 20


@pytest.mark.parametrize("kind", ["head", "layer", "model", "rollout"])
def test_png_heatmaps_have_content(tmp_path, kind):
    maps = _maps()
    fig = {
        "head": lambda: viz.plot_head(maps, 1, 2, query="it"),
        "layer": lambda: viz.plot_layer(maps, 0),
        "model": lambda: viz.plot_model(maps),
        "rollout": lambda: viz.plot_rollout(maps),
    }[kind]()
    path = viz.save(fig, tmp_path / f"{kind}.png", dpi=100)
    assert path.stat().st_size > 5_000
    _check_png(path)


def test_svg_export_and_bad_suffix(tmp_path):
    path = viz.save(viz.plot_head(_maps(), 0, 0), tmp_path / "head.svg")
    text = path.read_text()
    assert "<svg" in text and text.count("<path") > 5
    with pytest.raises(AttnkitError, match=".png or .svg"):
        viz.save(viz.plot_head(_maps(), 0, 0), tmp_path / "head.jpg")


def test_token_labels_readable_and_thinned():
    ax = viz.plot_head(_maps(), 0, 0).axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == SENTENCE  # all 16 shown, display form
    long = _maps(tokens=[f"w{i}" for i in range(512)], N=1, H=1)
    ax = viz.plot_head(long, 0, 0).axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert 20 <= len(labels) <= 120  # thinned to what fits, each with its position
    assert labels[1].endswith(f"·{ax.get_yticks()[1]:.0f}")
    assert min(t.get_fontsize() for t in ax.get_yticklabels()) >= 5


def test_cjk_labels_render_with_a_cjk_font(tmp_path):
    from attnkit.viz._fonts import cjk_font

    if cjk_font() is None:
        pytest.skip("no CJK font installed (Debian: apt-get install fonts-noto-cjk, see .ci/install_browser.sh)")
    maps = _maps(tokens=["[CLS]", "猫", "が", "道", "を", "渡", "る", "[SEP]"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig = viz.plot_head(maps, 0, 0)
        fig.axes[0].set_title("猫 title set after plotting")  # e.g. by attnkit explain
        viz.save(fig, tmp_path / "cjk.png", dpi=72)
    assert not [w for w in caught if "missing from font" in str(w.message)]
    assert cjk_font() in fig.axes[0].title.get_fontfamily()
    upright = {t.get_text(): t.get_rotation() for t in fig.axes[0].get_xticklabels()}
    assert upright["猫"] == 0 and upright["[CLS]"] == 90  # single CJK characters are not rotated


def test_alignment_plot_uses_the_same_font_helper(tmp_path):
    from attnkit.seq2seq.plot import plot_alignment
    from attnkit.viz._fonts import cjk_font

    if cjk_font() is None:
        pytest.skip("no CJK font installed")
    fig = plot_alignment(torch.softmax(torch.randn(2, 3), -1), list("北京站"), ["a", "b"], title="北京 → ab",
                         path=tmp_path / "a.png")
    assert cjk_font() in fig.axes[0].title.get_fontfamily()
    assert {t.get_rotation() for t in fig.axes[0].get_xticklabels()} == {0.0}  # one-character labels upright


def test_missing_cjk_font_warns_once(monkeypatch, tmp_path):
    import attnkit.viz._fonts as fonts

    monkeypatch.setattr(fonts, "cjk_font", lambda: None)
    monkeypatch.setattr(fonts, "_warned", False)
    maps = _maps(tokens=["[CLS]", "猫", "が", "道", "を", "渡", "る", "[SEP]"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        viz.save(viz.plot_layer(maps, 0), tmp_path / "boxes.png", dpi=40)
    assert [str(w.message) for w in caught if "CJK" in str(w.message) or "missing from font" in str(w.message)] == [
        "attnkit: no CJK font found, CJK text will show as boxes; install one (Debian: apt-get install fonts-noto-cjk)"]


# --- HTML viewer -------------------------------------------------------------------------------
def _embedded(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="attnkit-data">(.*?)</script>', page, re.S)
    return json.loads(m.group(1))


def _arrays(data: dict) -> dict[str, np.ndarray]:
    """The binary arrays of one sequence's payload (``data["sequences"][b]``)."""
    raw = zlib.decompress(base64.b64decode(data["blob"]))
    return {name: np.frombuffer(raw, dtype=dtype, count=n, offset=off) for name, (off, dtype, n) in data["toc"].items()}


def test_html_is_self_contained():
    page = viz.to_html(_maps(), title="demo")
    assert page.startswith("<!DOCTYPE html>")
    for needle in ("http://", "https://", "<link", " src=", "@import", "url("):
        assert needle not in page, needle
    assert page.count("<script") == 2  # the data and the inline viewer


def test_html_payload_decodes_to_top_k():
    maps = _maps(N=2, H=3)
    page = _embedded(viz.to_html(maps, top_k=5))
    data = page["sequences"][0]
    arr = _arrays(data)
    seq = maps.sequence(0)  # (N, H, l, s)
    N, H, l, s, k = seq.shape[0], seq.shape[1], seq.shape[2], seq.shape[3], data["kmax"]
    assert (page["N"], page["H"], data["l"], data["s"], k, page["top_k"]) == (N, H, l, s, 5, 5)
    assert (arr["cnt"] == 5).all()  # every row keeps 5 keys
    idx = arr["idx"].reshape(N, H, l, k)
    val = arr["val"].view(np.float16).astype(np.float32).reshape(N, H, l, k)
    ref = -np.sort(-seq, -1)[..., :k]
    np.testing.assert_allclose(val, ref, atol=2.0 ** -11)  # float16: half an ulp near 1
    np.testing.assert_allclose(np.take_along_axis(seq, idx.astype(np.int64), -1), ref, atol=1e-7)  # the right keys
    hidden = 1 - ref.sum(-1)
    assert data["hidden_mean"] == pytest.approx(hidden.mean(), abs=1e-6)
    assert data["hidden_max"] == pytest.approx(hidden.max(), abs=1e-6)
    # rollout: 8 bits per row, scaled by the stored row maxima
    r = rollout(maps)[0].numpy()
    back = arr["rollout"].reshape(l, s) / 255.0 * arr["rollout_rowmax"][:, None]
    np.testing.assert_allclose(back, r, atol=r.max(-1, keepdims=True).max() / 255)
    assert data["tokens"] == SENTENCE and data["special"][0] and not data["special"][1]


def test_keep_mass_keeps_the_fewest_keys_holding_that_share():
    maps = _maps(N=2, H=3)
    data = _embedded(viz.to_html(maps, top_k=None, keep_mass=0.9))["sequences"][0]
    arr = _arrays(data)
    seq = maps.sequence(0).reshape(-1, len(SENTENCE)).astype(np.float64)
    counts = arr["cnt"]
    srt = -np.sort(-seq, -1)
    cum = np.cumsum(srt, -1)
    want = (cum < 0.9 - 1e-9).sum(-1) + 1  # the fewest keys reaching 90%
    np.testing.assert_array_equal(counts, want)
    assert data["hidden_max"] <= 0.1 + 1e-6 and data["kmax"] == want.max()
    capped = _arrays(_embedded(viz.to_html(maps, top_k=2, keep_mass=0.9))["sequences"][0])
    np.testing.assert_array_equal(capped["cnt"], np.minimum(want, 2))
    with pytest.raises(AttnkitError, match="keep_mass"):
        viz.to_html(maps, keep_mass=1.5)


def test_nan_weight_is_encoded_as_strict_json():
    maps = _maps(N=2, H=3)
    maps.weights[1][0, 2, 4, 3] = float("nan")
    page = viz.to_html(maps)
    text = re.search(r'id="attnkit-data">(.*?)</script>', page, re.S).group(1)
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in the page's JSON"))
    seq = data["sequences"][0]
    assert seq["bad_rows"] == 1 and np.isfinite(seq["hidden_mean"])
    assert _arrays(seq)["bad"].reshape(2, 3, 16)[1, 2, 4] == 1
    maps.weights[0][0, 0, 0, :] = float("nan")  # a whole NaN row: hidden figures stay finite or are strings
    data = json.loads(re.search(r'id="attnkit-data">(.*?)</script>', viz.to_html(maps), re.S).group(1),
                      parse_constant=lambda c: pytest.fail(c))
    assert data["sequences"][0]["bad_rows"] >= 2


def test_batch_is_embedded_and_switchable():
    g = torch.Generator().manual_seed(3)
    w = torch.softmax(torch.randn(2, 2, 5, 5, generator=g), -1)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    maps = AttentionMaps([w], [list("abcde"), list("xyz")], mask)
    data = _embedded(viz.to_html(maps, sequence=1))
    assert [q["tokens"] for q in data["sequences"]] == [list("abcde"), list("xyz")]
    assert data["start"]["sequence"] == 1 and data["sequences"][1]["l"] == 3
    only = _embedded(viz.to_html(maps, sequence=1, sequences=[1]))
    assert [q["tokens"] for q in only["sequences"]] == [list("xyz")] and only["start"]["sequence"] == 0


def test_notebook_viewer_is_an_isolated_iframe():
    import html

    maps = _maps()
    out = maps._repr_html_()
    assert out.startswith("<iframe srcdoc=") and 'sandbox="allow-scripts"' in out
    srcdoc = html.unescape(re.search(r'srcdoc="(.*?)" sandbox', out, re.S).group(1))
    assert srcdoc.startswith("<!DOCTYPE html>") and _embedded(srcdoc)["sequences"][0]["tokens"] == SENTENCE
    v = viz.viewer(maps, view="rollout", layer=0, heads=[1], focus=10, keep_mass=0.95, height=500)
    assert 'height: 500px' in v._repr_html_()
    start = _embedded(v.page)["start"]
    assert start == {"sequence": 0, "view": "rollout", "layer": 0, "focus": 10, "heads": [1]}
    with pytest.raises(AttnkitError, match="view"):
        viz.viewer(maps, view="table")


def test_word_pieces_sum_to_and_mean_from():
    from attnkit.inspect import AGGREGATION, find_heads

    tokens = ["[CLS]", "北", "##京", "is", "big", "[SEP]"]
    maps = _maps(tokens=tokens, N=1, H=2)
    words = maps.words()
    assert words.tokens == [["[CLS]", "北京", "is", "big", "[SEP]"]] and words.meta["words"] == AGGREGATION
    seq, w = maps.sequence(0).astype(np.float64), words.sequence(0)
    np.testing.assert_allclose(w[0, 1, 1, 3], seq[0, 1, 1:3, 4].mean(), rtol=1e-6)  # from a word: mean over pieces
    np.testing.assert_allclose(w[0, 1, 3, 1], seq[0, 1, 4, 1:3].sum(), rtol=1e-6)  # to a word: sum over pieces
    np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-6)
    # the table (find_heads on pieces) and the word-level maps (PNG, HTML) agree
    best = find_heads(maps, "北京", "big")[0]
    assert best.weight == pytest.approx(float(w[best.layer, best.head, 1, 3]), rel=1e-6)
    assert maps.select(0).words().tokens == words.tokens
    plain = _maps()
    assert plain.words() is plain  # nothing to join


def test_to_bertviz_shapes():
    bv = _maps(N=2, H=3).to_bertviz()
    assert len(bv["attention"]) == 2 and tuple(bv["attention"][0].shape) == (1, 3, 16, 16) and bv["tokens"] == SENTENCE
    cross = AttentionMaps([torch.softmax(torch.randn(1, 2, 3, 5), -1)], [["a", "b", "c"]], key_tokens=[list("vwxyz")])
    bv = cross.to_bertviz()
    assert bv["encoder_tokens"] == list("vwxyz") and tuple(bv["cross_attention"][0].shape) == (1, 2, 3, 5)


def test_html_escapes_hostile_tokens():
    tokens = ["[CLS]", "</script><script>alert(1)</script>", "<!--", "&amp;", "[SEP]"]
    page = viz.to_html(_maps(tokens=tokens), title="<b>x</b>")
    assert page.count("<script") == 2 and "alert(1)</script>" not in page
    assert "<title>&lt;b&gt;x&lt;/b&gt;</title>" in page
    assert _embedded(page)["sequences"][0]["tokens"] == tokens


def test_html_cross_attention_and_size(tmp_path):
    cross = AttentionMaps([torch.softmax(torch.randn(1, 2, 3, 5), -1)], [["a", "b", "c"]], key_tokens=[list("vwxyz")])
    data = _embedded(viz.to_html(cross))
    assert not data["self_attention"] and "rollout" not in data["sequences"][0]["toc"]
    assert data["sequences"][0]["keys"] == list("vwxyz")
    # 512 tokens × 6 layers × 12 heads, the size the issue asks to report: compact, well under 3 MB
    g = torch.Generator().manual_seed(0)
    w = [torch.softmax(torch.randn(1, 12, 512, 512, generator=g) * 2, -1) for _ in range(6)]
    path = viz.save_html(AttentionMaps(w, [[f"w{i}" for i in range(512)]]), tmp_path / "big.html")
    assert path.stat().st_size < 3_000_000
    with pytest.raises(AttnkitError, match="top_k"):
        viz.to_html(cross, top_k=0)


@pytest.mark.parametrize("module", ["attnkit.viz", "attnkit.viz._heatmap", "attnkit.viz._html", "attnkit.viz._notebook", "attnkit.inspect._words"])
def test_docstring_examples(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted > 0


def test_show_outside_a_notebook_opens_the_page_in_a_browser(monkeypatch):
    import webbrowser

    opened = []
    monkeypatch.setattr(webbrowser, "open", opened.append)
    assert viz.show(_maps(), view="model") is None
    assert len(opened) == 1 and opened[0].startswith("file://") and opened[0].endswith("attention.html")
    from pathlib import Path
    from urllib.parse import urlparse

    page = Path(urlparse(opened[0]).path).read_text(encoding="utf-8")
    assert _embedded(page)["start"]["view"] == "model"


def test_maps_display_in_a_fresh_kernel_after_importing_only_inspect():
    """inspect does not import viz (viz imports inspect): the viewer is found as a plug-in
    (the attnkit.viewers entry point), also in a process that never imported attnkit.viz."""
    code = (
        "import sys, torch\n"
        "from attnkit.inspect import AttentionMaps\n"
        "assert 'attnkit.viz' not in sys.modules\n"
        "out = AttentionMaps([torch.softmax(torch.randn(1, 2, 3, 3), -1)], [list('abc')])._repr_html_()\n"
        "assert out.startswith('<iframe srcdoc=') and 'attnkit.viz' in sys.modules, out[:80]\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
