"""Issue 13: every bad command line is one line on stderr with exit status 2, checked before the work.

Each test names the case of the issue it guards. "Before the work" is shown without timing: the
model loader, the data reader and the training step are replaced by functions that fail the test
if called. Library loaders (checkpoints, TSV files, attention-map files) are tested in
test_seq2seq.py and test_inspect.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from attnkit.cli import main

SENTENCE = "The animal didn't cross the street because it was too tired."
SMALL = ["--hidden", "16", "--embed", "8", "--batch-size", "16", "--no-progress"]
pytestmark = pytest.mark.usefixtures("one_thread")


def _cli(*args: str | bytes, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``python -m attnkit ARGS`` (bytes arguments pass through undecoded)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "attnkit", *args], capture_output=True, env=env, cwd=cwd, timeout=300)


def _one_line_exit_2(proc: subprocess.CompletedProcess) -> str:
    err = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def _main_error(capsys, *args: str) -> str:
    """``attnkit.cli.main(args)`` must return 2 with one ``attnkit CMD: error: ...; fix: ...`` line."""
    assert main(list(args)) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"attnkit {args[0]}: error: expected "), captured.err
    assert "; fix: " in lines[0]
    return lines[0]


def _forbid(monkeypatch, target: object, name: str) -> None:
    def fail(*args, **kwargs):
        raise AssertionError(f"{name} ran although the command line was invalid")

    monkeypatch.setattr(target, name, fail)


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if any data is read, a model built or a training step runs."""
    from attnkit.seq2seq import train

    for name in ("read_data", "load_translator", "load_checkpoint"):
        _forbid(monkeypatch, train, name)
    _forbid(monkeypatch, train.Trainer, "train_step")


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if explain loads a model (or even transformers)."""
    from attnkit.cli import _model

    _forbid(monkeypatch, _model, "load")


# ---- the one place: cli.main turns library and file errors into one line ----------------------


@pytest.mark.parametrize("error", [PermissionError(13, "Permission denied", "/x/attention.html"),
                                   UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
                                   json.JSONDecodeError("Expecting value", "", 0), EOFError("Ran out of input")])
def test_main_turns_file_errors_into_one_line(monkeypatch, capsys, error):
    from attnkit.cli import walkthrough

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(walkthrough, "softmax_steps", fail)
    err = _main_error(capsys, "softmax", "1", "2")
    assert type(error).__name__ in err and "\n" not in err.strip()


def test_main_keeps_tracebacks_for_bugs(monkeypatch):
    from attnkit.cli import walkthrough

    def bug(*args, **kwargs):
        raise ZeroDivisionError("a bug in attnkit, not a bad input")

    monkeypatch.setattr(walkthrough, "softmax_steps", bug)
    with pytest.raises(ZeroDivisionError):
        main(["softmax", "1"])


# ---- tracebacks today: attnkit softmax, attnkit bench ----------------------------------


def test_softmax_explain_near_float64_overflow(capsys):
    # 708.9 passed the old "e^x fits" test, but three of them overflow fsum
    assert main(["softmax", "708.9", "708.9", "708.9", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "subtract the max" in out and "\nsoftmax = [0.333, 0.333, 0.333]\n" in out
    assert main(["softmax", "-800", "-801", "--explain"]) == 0  # e^x underflows to 0: no division by zero
    out = capsys.readouterr().out
    assert "underflow" in out and "\nsoftmax = [0.731, 0.269]\n" in out


def test_softmax_tiny_temperature_names_the_temperature(capsys):
    err = _main_error(capsys, "softmax", "1", "2", "--temperature", "1e-320")
    assert "x/T = [inf, inf]" in err and "larger temperature" in err and "[1.0, 2.0]" not in err


def test_bench_negative_threads():
    proc = _cli("bench", "--quick", "--threads", "-1")
    assert "--threads >= 0" in _one_line_exit_2(proc)


@pytest.mark.parametrize("args,what", [(["--threads", "-1"], "--threads"), (["--repeats", "0"], "--repeats"),
                                       (["--budget", "nan"], "--budget"), (["--output", "DIR"], "--output")])
def test_bench_checks_before_timing(capsys, monkeypatch, tmp_path, args, what):
    from attnkit.bench import sections

    _forbid(monkeypatch, sections, "run_benchmark")
    args = [str(tmp_path) if a == "DIR" else a for a in args]
    assert what in _main_error(capsys, "bench", "--quick", *args)


# ---- explain: model folders, positions, output paths, argv -------------------------------


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("transformers", reason="needs the hf extra")
    from attnkit import AttnkitError
    from attnkit.integrations.hf import minilm_path

    try:
        return minilm_path()
    except AttnkitError as e:
        pytest.skip(str(e))


def _broken_copy(src: Path, dst: Path, case: str) -> Path:
    """A copy of the MiniLM folder (symlinks) broken one way."""
    dst.mkdir()
    drop = {"weights": {"model.safetensors"}, "tokenizer": {"vocab.txt", "tokenizer.json", "tokenizer_config.json",
                                                             "special_tokens_map.json"}}.get(case, set())
    for f in src.iterdir():
        if f.is_file() and f.name not in drop and not (case in ("config", "empty", "heads") and f.name == "config.json") \
                and not (case == "truncated" and f.name == "model.safetensors"):
            (dst / f.name).symlink_to(f)
    if case == "config":
        (dst / "config.json").write_text('{"model_type": "bert", ', encoding="utf-8")
    elif case == "empty":
        (dst / "config.json").write_text("", encoding="utf-8")
    elif case == "heads":
        config = json.loads((src / "config.json").read_text(encoding="utf-8"))
        (dst / "config.json").write_text(json.dumps({**config, "num_attention_heads": 7}), encoding="utf-8")
    elif case == "truncated":
        data = (src / "model.safetensors").read_bytes()
        (dst / "model.safetensors").write_bytes(data[: len(data) // 2])
    return dst


@pytest.mark.parametrize("case,expected", [
    ("config", "not valid JSON"), ("empty", "not valid JSON"), ("weights", "weights file"),
    ("truncated", "intact model.safetensors"), ("heads", "7 heads for hidden_size 384"), ("tokenizer", "tokenizer files"),
])
def test_broken_model_folder_is_one_line_before_transformers(minilm, tmp_path, monkeypatch, capsys, case, expected):
    from attnkit.integrations import hf

    folder = _broken_copy(minilm, tmp_path / case, case)
    _forbid(monkeypatch, hf, "_transformers")  # the folder is judged from its files alone
    err = _main_error(capsys, "explain", SENTENCE, "--token", "it", "--model", str(folder))
    assert expected in err and str(folder) in err


def test_broken_model_folder_subprocess(minilm, tmp_path):
    folder = _broken_copy(minilm, tmp_path / "truncated", "truncated")
    err = _one_line_exit_2(_cli("explain", SENTENCE, "--token", "it", "--model", str(folder)))
    assert "truncated" in err and "re-download" in err


def test_unloadable_model_is_one_line(minilm, tmp_path, monkeypatch, capsys):
    # what only loading can find (here: a weight the model class rejects) is wrapped with the folder named
    import transformers

    folder = _broken_copy(minilm, tmp_path / "ok", "none")

    def reject(*args, **kwargs):
        raise RuntimeError("Error(s) in loading state_dict for BertModel: size mismatch")

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", reject)
    err = _main_error(capsys, "explain", SENTENCE, "--token", "it", "--model", str(folder), "--html", "", "--png", "")
    assert "size mismatch" in err and str(folder) in err


@pytest.fixture
def model_never_loads(monkeypatch):
    pytest.importorskip("transformers")
    import transformers

    _forbid(monkeypatch, transformers.AutoModel, "from_pretrained")


LONG = " ".join([SENTENCE] * 45)  # 632 tokens, over MiniLM's 512 positions


def test_explain_position_limit_with_max_length(minilm, model_never_loads, capsys):
    err = _main_error(capsys, "explain", LONG, "--token", "it", "--max-length", "600")
    assert "--max-length <= 512" in err and "expanded size" not in err
    err = _main_error(capsys, "explain", LONG, "--token", "it")
    assert "pass --max-length 512" in err and "max_length=" not in err


def test_explain_max_length_below_special_tokens(minilm, model_never_loads, capsys):
    err = _main_error(capsys, "explain", SENTENCE, "--token", "it", "--max-length", "1")
    assert "--max-length >= 3" in err


def test_explain_occurrence_is_counted_from_one(minilm, model_never_loads, capsys):
    err = _main_error(capsys, "explain", SENTENCE, "--token", "it", "--occurrence", "3")
    assert "1 occurrence(s) of 'it', asked for the 3rd" in err


def test_explain_token_position_and_truncation_notice(minilm, tmp_path, capsys):
    assert main(["explain", LONG, "--token", "10", "--max-length", "20", "--top", "1", "--html", "", "--png", ""]) == 0
    out = capsys.readouterr().out
    assert out.startswith("truncated the text from 632 to 20 tokens (--max-length 20)")
    assert '"10" (token 10)' in out and "20 tokens" in out  # token 10 is "it"


@pytest.mark.parametrize("option,value,expected", [
    ("--html", "DIR", "a file path"), ("--png", "DIR", "a file path"), ("--png", "out.jpg", ".png or .svg"),
    ("--html", "FILE/x.html", "is a file"), ("--png", "missing/x.png", "does not exist"),
])
def test_explain_output_paths_before_the_model(tmp_path, no_model, capsys, option, value, expected):
    (tmp_path / "FILE").write_text("x")
    path = str(tmp_path) if value == "DIR" else str(tmp_path / value)
    err = _main_error(capsys, "explain", SENTENCE, "--token", "it", option, path)
    assert expected in err and option in err


def test_non_utf8_argv_is_one_line(tmp_path):
    err = _one_line_exit_2(_cli("explain", b"caf\xe9 it", "--token", "it", "--html", "", "--png", ""))
    assert "UTF-8" in err and "argument 2" in err
    err = _one_line_exit_2(_cli("seq2seq", "translate", "--model", str(tmp_path), b"\xff\xfe", "--plot", str(tmp_path / "p.png")))
    assert "UTF-8" in err


def test_titles_are_plain_text(tmp_path):
    pytest.importorskip("matplotlib")
    from attnkit.seq2seq.plot import plot_alignment

    png = tmp_path / "t.png"
    fig = plot_alignment(torch.full((2, 4), 0.25), list("$\\x$"), ["$x$", "<eos>"], path=png, title="$\\x$ → $x$")
    assert png.read_bytes()[:4] == b"\x89PNG" and fig.axes[0].get_title() == "$\\x$ → $x$"


# ---- seq2seq: inputs, numbers and output paths before any training -----------------------


@pytest.mark.parametrize("args,expected", [
    (["--data", "MISSING"], "no such file"), (["--data", "DIR"], "a directory"),
    (["--lr", "nan"], "--lr a finite number > 0"), (["--lr", "-1"], "--lr"), (["--dropout", "1"], "--dropout"),
    (["--epochs", "0"], "--epochs >= 1"), (["--hidden", "0"], "--hidden >= 1"), (["--max-length", "0"], "--max-length"),
    (["--max-minutes", "inf"], "--max-minutes"), (["--threads", "0"], "--threads >= 1"),
    (["--out", "FILE"], "--out a directory"), (["--out", "FILE/run"], "is a file"),
])
def test_train_checks_before_training(tmp_path, no_training, capsys, args, expected):
    (tmp_path / "FILE").write_text("x")
    subst = {"MISSING": str(tmp_path / "nope.tsv"), "DIR": str(tmp_path), "FILE": str(tmp_path / "FILE"),
             "FILE/run": str(tmp_path / "FILE" / "run")}
    args = [subst.get(a, a) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "run")]
    assert expected in _main_error(capsys, "seq2seq", "train", *args)
    assert not (tmp_path / "run").exists()


def test_train_missing_data_subprocess(tmp_path):
    err = _one_line_exit_2(_cli("seq2seq", "train", "--data", str(tmp_path / "nope.tsv"), "--out", str(tmp_path / "r")))
    assert "no such file" in err and "nope.tsv" in err


@pytest.mark.parametrize("cmd,args,expected", [
    ("translate", ["x", "--length-penalty", "nan"], "--length-penalty"),
    ("translate", ["x", "--beam", "0"], "--beam >= 1"),
    ("translate", ["x", "--plot", "DIR"], "--plot a file path"),
    ("translate", ["x", "--plot", "a.jpg"], "--plot ending in .png"),
    ("translate", ["x", "--plot", "FILE/a.png"], "is a file"),
    ("evaluate", ["--limit", "0"], "--limit >= 1"),
    ("evaluate", ["--length-penalty", "nan"], "--length-penalty"),
    ("evaluate", ["--bucket-width", "0"], "--bucket-width"),
    ("evaluate", ["--data", "MISSING"], "no such file"),
])
def test_translate_evaluate_check_before_loading(tmp_path, no_training, capsys, cmd, args, expected):
    (tmp_path / "FILE").write_text("x")
    subst = {"DIR": str(tmp_path), "MISSING": str(tmp_path / "nope.tsv"), "FILE/a.png": str(tmp_path / "FILE" / "a.png"),
             "a.jpg": str(tmp_path / "a.jpg")}
    args = [subst.get(a, a) for a in args]
    assert expected in _main_error(capsys, "seq2seq", cmd, "--model", str(tmp_path), *args)


def test_damaged_checkpoint_is_one_line(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    err = _one_line_exit_2(_cli("seq2seq", "translate", "--model", str(tmp_path), "x"))
    assert str(tmp_path / "checkpoint.pt") in err and "fix:" in err


# ---- seq2seq on a trained run: data changes, stored paths, other directories ----------------


def _corpus(path: Path, n: int, extra: str = "") -> Path:
    words = ["red", "green", "blue", "cat", "dog", "sun"]
    g = torch.Generator().manual_seed(n)
    lines = []
    for _ in range(n):
        ws = [words[int(i)] for i in torch.randint(0, len(words), (3,), generator=g)]
        lines.append(f"{' '.join(ws)}{extra}\t{' '.join(reversed(ws))}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One epoch on a 60-pair TSV, trained from its own directory with a relative --data path."""
    home = tmp_path_factory.mktemp("train")
    _corpus(home / "toy.tsv", 60)
    cwd = os.getcwd()
    os.chdir(home)
    try:
        assert main(["seq2seq", "train", "--data", "toy.tsv", "--epochs", "1", "--out", "run", *SMALL]) == 0
    finally:
        os.chdir(cwd)
    return home


def _copy_run(run: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(run / "run", out)
    return out


def test_evaluate_from_another_directory(run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the relative toy.tsv of training does not exist here
    assert main(["seq2seq", "evaluate", "--model", str(run / "run")]) == 0
    assert "held-out split of toy.tsv" in capsys.readouterr().out


def test_resume_with_changed_data_is_refused(run, tmp_path, capsys):
    out = _copy_run(run, tmp_path)
    bigger = _corpus(tmp_path / "toy.tsv", 200, extra=" zebra")  # 60 pairs -> 200, with new characters
    err = _main_error(capsys, "seq2seq", "train", "--resume", "--out", str(out), "--data", str(bigger), "--epochs", "2")
    assert "60 pairs" in err and "200 pairs" in err and "start a new run" in err
    (out / "data.tsv").write_text((out / "data.tsv").read_text() + "sun sun\tnus nus\n")  # the run's own copy edited
    assert "60 pairs" in _main_error(capsys, "seq2seq", "train", "--resume", "--out", str(out), "--epochs", "2")


def test_resume_with_same_data_continues_and_cleans_stale_tmp(run, tmp_path, capsys):
    out = _copy_run(run, tmp_path)
    stale = out / ".checkpoint.pt.k9x2.tmp"  # what kill -9 during a save leaves
    stale.write_bytes(b"half")
    assert main(["seq2seq", "train", "--resume", "--out", str(out), "--data", str(run / "toy.tsv"), "--epochs", "2",
                 "--no-progress"]) == 0
    assert not stale.exists() and "resuming" in capsys.readouterr().out


def test_resume_of_a_finished_run_is_complete_and_idempotent(run, tmp_path, capsys):
    """The same --resume command twice (a scheduler re-running a finished job) exits 0 and trains nothing."""
    out = _copy_run(run, tmp_path)
    before = (out / "checkpoint.pt").read_bytes()
    for extra in ([], ["--epochs", "1"]):  # the config's epochs, then the same number given explicitly
        assert main(["seq2seq", "train", "--resume", "--out", str(out), "--no-progress", *extra]) == 0
        said = capsys.readouterr().out
        assert "has completed its 1 epochs" in said and "--epochs 2 or more" in said and "resuming" not in said
    assert (out / "checkpoint.pt").read_bytes() == before  # untouched: nothing trained, nothing saved


def test_resume_with_fewer_epochs_than_trained_is_refused(run, tmp_path, capsys):
    out = _copy_run(run, tmp_path)
    assert main(["seq2seq", "train", "--resume", "--out", str(out), "--epochs", "2", "--no-progress"]) == 0
    capsys.readouterr()
    err = _main_error(capsys, "seq2seq", "train", "--resume", "--out", str(out), "--epochs", "1")
    assert "at least the 2 epochs" in err and "--epochs 2 (complete)" in err


def test_stored_data_path_is_never_opened_or_echoed(run, tmp_path, monkeypatch, capsys):
    from attnkit.seq2seq import data as data_mod
    from attnkit.seq2seq import train

    out = _copy_run(run, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET first line\n")
    state = train.load_checkpoint(out)
    state["config"]["data"] = os.path.relpath(secret, out)  # a path planted in the checkpoint
    torch.save(state, out / "checkpoint.pt")
    opened = []
    real = data_mod.load_tsv
    monkeypatch.setattr(train, "load_tsv", lambda p: opened.append(Path(p)) or real(p))
    assert main(["seq2seq", "evaluate", "--model", str(out)]) == 0
    assert opened == [out / "data.tsv"] and "TOPSECRET" not in capsys.readouterr().out
    (out / "data.tsv").unlink()
    err = _main_error(capsys, "seq2seq", "evaluate", "--model", str(out))
    assert "TOPSECRET" not in err and str(out / "data.tsv") in err and all(p != secret for p in opened)


def test_train_epochs_zero_and_evaluate_limit_zero(run, capsys):
    assert "--epochs >= 1" in _main_error(capsys, "seq2seq", "train", "--resume", "--out", str(run / "run"), "--epochs", "0")
    assert "--limit >= 1" in _main_error(capsys, "seq2seq", "evaluate", "--model", str(run / "run"), "--limit", "0")


def test_translate_plot_with_a_dollar_title(run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "p.png"
    assert main(["seq2seq", "translate", "--model", str(run / "run"), "$\\x$ red", "--plot", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_one_huge_line_is_skipped_by_line_number(tmp_path, capsys):
    corpus = _corpus(tmp_path / "c.tsv", 40)
    lines = corpus.read_text().splitlines()
    lines.insert(2, "x" * 100_000 + "\tshort")  # line 3: would stall training for hours
    corpus.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    assert main(["seq2seq", "train", "--data", str(corpus), "--epochs", "1", "--out", str(out), *SMALL]) == 0
    assert "skipped 1 pair(s) longer than 256 tokens (--max-length), at line(s) 3" in capsys.readouterr().out
    from attnkit.seq2seq.train import load_checkpoint

    assert load_checkpoint(out)["max_len"] <= 2 * 256 + 2
    assert main(["seq2seq", "evaluate", "--model", str(out), "--data", str(corpus)]) == 0  # and in evaluate --data
    assert "skipped 1 pair(s) with sources longer than the run's 256 tokens, at line(s) 3" in capsys.readouterr().out
    (tmp_path / "long.tsv").write_text("a" * 300 + "\tb\n" + "c" * 300 + "\td\n")
    err = _main_error(capsys, "seq2seq", "train", "--data", str(tmp_path / "long.tsv"), "--out", str(tmp_path / "r2"))
    assert "raise --max-length" in err


def test_checks_docstring_examples():
    import doctest

    from attnkit.cli import _checks

    assert doctest.testmod(_checks, optionflags=doctest.ELLIPSIS).failed == 0
