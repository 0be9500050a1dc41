"""The seq2seq translator: model invariants, decoding, exact resume, evaluation and the CLI path.

Everything runs on tiny models (hidden 16) for a few steps; none of it needs a trained model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attnkit.cli import main
from attnkit.seq2seq import train as train_mod
from attnkit.seq2seq.data import make_example
from attnkit.seq2seq.decode import Hypothesis, Translation, beam_search, greedy
from attnkit.seq2seq.evaluate import AlignmentScore, alignment_hits, evaluate
from attnkit.seq2seq.model import ModelConfig, Seq2Seq, pad_batch
from attnkit.seq2seq.train import CHECKPOINT, Trainer, TrainConfig, load_checkpoint
from attnkit.seq2seq.vocab import Vocab

TINY = dict(train_size=96, valid_size=16, hidden=16, embed=8, batch_size=16, epochs=2)
ATTENTION = ["dot", "general", "additive"]
F32_EPS = torch.finfo(torch.float32).eps


# Tiny tensors gain nothing from a second thread and stall on a busy machine.
pytestmark = pytest.mark.usefixtures("one_thread")


def _model(score: str, seed: int = 0) -> Seq2Seq:
    torch.manual_seed(seed)
    return Seq2Seq(ModelConfig(src_vocab=20, tgt_vocab=12, score=score, embed=8, hidden=16)).eval()


def _sources(seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(4, 20, (n,), generator=g).tolist() for n in (7, 3, 5, 1)]


# ---- model invariants -----------------------------------------------------------------


@pytest.mark.parametrize("score", ATTENTION)
def test_attention_weights_sum_to_one_over_real_source_tokens(score):
    model = _model(score)
    src, lengths = pad_batch(_sources())
    prev = torch.randint(4, 12, (4, 6), generator=torch.Generator().manual_seed(1))
    _, weights = model(src, lengths, prev)  # (B, T, S)
    real = torch.arange(src.shape[1]) < lengths[:, None]  # (B, S)
    sums = (weights * real[:, None]).sum(-1)
    torch.testing.assert_close(sums, torch.ones_like(sums), rtol=0, atol=16 * F32_EPS)  # softmax over <= 7 terms
    assert not weights.masked_select(~real[:, None].expand_as(weights)).any(), "padding must get exactly 0"
    for b, hyp in enumerate(greedy(model, src, lengths, max_len=6)):  # decoding: one row per emitted token
        assert hyp.weights.shape == (hyp.steps, int(lengths[b]))
        torch.testing.assert_close(hyp.weights.sum(-1), torch.ones(hyp.steps), rtol=0, atol=16 * F32_EPS)


@pytest.mark.parametrize("score", ATTENTION + ["none"])
def test_padding_does_not_change_a_sequence(score):
    """Packed encoding and masked attention: a source batched with longer ones decodes as if alone."""
    model = _model(score)
    srcs = _sources()
    prev = torch.tensor([[1, 5, 6, 7]])
    src_b, len_b = pad_batch(srcs)
    logits_b, _ = model(src_b, len_b, prev.expand(len(srcs), -1))
    for b, s in enumerate(srcs):
        logits_1, _ = model(*pad_batch([s]), prev)
        torch.testing.assert_close(logits_b[b], logits_1[0], rtol=1e-5, atol=1e-5)


def test_no_attention_baseline_has_no_weights():
    model = _model("none")
    hyp = greedy(model, *pad_batch(_sources()), max_len=5)[0]
    assert hyp.weights is None and model.decoder.attention is None


# ---- decoding -------------------------------------------------------------------------


def _sequence_log_prob(model: Seq2Seq, src: list[int], hyp: Hypothesis) -> float:
    """Score a hypothesis again with one teacher-forced pass."""
    out = hyp.tokens + [Vocab.EOS] * hyp.finished
    with torch.no_grad():
        logits, _ = model(*pad_batch([src]), torch.tensor([[Vocab.SOS] + out[:-1]]))
    return float(torch.log_softmax(logits[0], -1).gather(1, torch.tensor(out)[:, None]).sum())


@pytest.mark.parametrize("score", ["general", "none"])
def test_beam_search_log_prob_at_least_greedy(score):
    model = _model(score, seed=3)
    strictly_better = 0
    for seed in range(6):
        for src in _sources(seed):
            g = greedy(model, *pad_batch([src]), max_len=8)[0]
            b = beam_search(model, src, max_len=8, beam=4)
            assert b.log_prob >= g.log_prob
            strictly_better += b.log_prob > g.log_prob + 1e-4
            # The bookkeeping is right: re-scoring the returned tokens gives the same log-probability.
            assert b.log_prob == pytest.approx(_sequence_log_prob(model, src, b), abs=1e-4)
            one = beam_search(model, src, max_len=8, beam=1)
            assert one.tokens == g.tokens and one.log_prob == g.log_prob
    assert strictly_better > 0, "beam search never beat greedy: the search is not exploring"


def test_beam_search_weights_follow_the_chosen_hypothesis():
    model = _model("additive", seed=2)
    src = _sources()[0]
    b = beam_search(model, src, max_len=8, beam=3, length_penalty=1.0)
    assert b.weights.shape == (b.steps, len(src))
    out = b.tokens + [Vocab.EOS] * b.finished
    _, w = model(*pad_batch([src]), torch.tensor([[Vocab.SOS] + out[:-1]]))
    torch.testing.assert_close(b.weights, w[0], rtol=1e-5, atol=1e-6)


# ---- checkpoints and resume -----------------------------------------------------------


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_optimizer(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> bool:
    sa, sb = a.state_dict()["state"], b.state_dict()["state"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])


def test_resume_restores_state_and_continues_identically(tmp_path):
    cfg = TrainConfig(**TINY, dropout=0.2)  # dropout makes the RNG state matter
    straight = Trainer(cfg, tmp_path / "a")
    straight.run(progress=False, log=None)

    first = Trainer(cfg, tmp_path / "b")
    assert first.run(max_steps=4, progress=False, log=None).stopped == "max steps"  # mid-epoch 1 (6 batches)
    rng = torch.get_rng_state()
    torch.manual_seed(123)  # scramble the global RNG: resume must restore it
    resumed = Trainer.resume(tmp_path / "b")
    assert (resumed.epoch, resumed.batch, resumed.step) == (0, 4, 4)
    assert all(torch.equal(v, resumed.model.state_dict()[k]) for k, v in _params(first.model).items())
    assert _same_optimizer(first.optimizer, resumed.optimizer)
    assert torch.equal(torch.get_rng_state(), rng)

    result = resumed.run(progress=False, log=None)
    assert (result.epoch, result.step) == (2, straight.step)
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert _same_optimizer(straight.optimizer, resumed.optimizer)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in straight.history]


def test_time_budget_stops_and_saves(tmp_path):
    trainer = Trainer(TrainConfig(**TINY), tmp_path)
    result = trainer.run(max_minutes=0, progress=False, log=None)
    assert (result.stopped, result.step) == ("time budget", 0)
    assert load_checkpoint(tmp_path)["step"] == 0


def test_checkpoint_is_replaced_atomically(tmp_path, monkeypatch):
    trainer = Trainer(TrainConfig(**TINY), tmp_path)
    trainer.run(epochs=1, progress=False, log=None)
    before = (tmp_path / CHECKPOINT).read_bytes()

    def crash(obj, f):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(train_mod.torch, "save", crash)
    with pytest.raises(OSError):
        trainer.save()
    assert (tmp_path / CHECKPOINT).read_bytes() == before  # the old checkpoint survives intact
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT]  # and no temporary file is left behind
    assert load_checkpoint(tmp_path)["epoch"] == 1


# ---- evaluation -----------------------------------------------------------------------


def test_alignment_score_counts_argmax_inside_the_field_span():
    ex = make_example(__import__("datetime").date(2026, 11, 22), "en_mdy_abbr_ordinal")  # 'Nov 22nd 2026'
    src_v, tgt_v = Vocab.build([ex.source]), Vocab.build([ex.target])
    T, S = len(ex.target) + 1, len(ex.source)

    def score(position_of) -> float:
        w = torch.zeros(T, S)
        for t in range(T):
            w[t, position_of(t)] = 1.0
        acc = AlignmentScore()
        alignment_hits(ex, Translation(ex.source, ex.target, [], [], 0.0, w), src_v, tgt_v, acc)
        assert sum(acc.total.values()) == 8  # YYYY MM DD digits; the two '-' and EOS are not counted
        return acc.score

    aligned = lambda t: ex.aligned_span(t)[0] if t < len(ex.target) and ex.aligned_span(t) else 0  # noqa: E731
    assert score(aligned) == 1.0
    assert score(lambda t: 3) == 0.0  # always the space after 'Nov'
    assert score(lambda t: 9) == 0.5  # always the '2' of the year: the 4 year digits hit


def test_evaluate_buckets_cover_every_example(tmp_path):
    trainer = Trainer(TrainConfig(**TINY), tmp_path)
    report = evaluate(trainer.translator(), trainer.valid_set, bucket_width=4)
    assert sum(b.n for b in report.buckets) == report.n == 16
    assert all(b.lo <= len(e.source) <= b.hi for e in trainer.valid_set for b in report.buckets
               if b.lo <= len(e.source) <= b.hi)
    assert report.alignment is not None and sum(report.alignment.total.values()) > 0


# ---- command line ---------------------------------------------------------------------

SMALL = ["--train-size", "96", "--valid-size", "16", "--hidden", "16", "--embed", "8", "--batch-size", "16",
         "--no-progress"]


def test_cli_train_translate_plot_evaluate(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["seq2seq", "train", "--data", "dates", "--epochs", "1", "--out", out, *SMALL]) == 0
    assert "held-out exact match" in capsys.readouterr().out
    assert main(["seq2seq", "train", "--out", out, "--resume", "--epochs", "2", "--no-progress"]) == 0
    assert load_checkpoint(out)["epoch"] == 2
    assert main(["seq2seq", "train", "--out", out, *SMALL]) == 2  # refuses to overwrite a run
    assert "--resume" in capsys.readouterr().err

    assert main(["seq2seq", "translate", "--model", out, "Nov 22nd 2026", "22/11/26", "--beam", "2", "-v"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all("log p = " in line for line in lines)

    pytest.importorskip("matplotlib")
    png = tmp_path / "nov22.png"
    assert main(["seq2seq", "translate", "--model", out, "Nov 22nd 2026", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main(["seq2seq", "evaluate", "--model", out, "--bucket-width", "10"]) == 0
    report = capsys.readouterr().out
    assert "exact match" in report and "input length" in report and "alignment:" in report


def test_cli_trains_on_a_tsv_file_at_word_level(tmp_path, capsys):
    words = ["red", "green", "blue", "cat", "dog", "sun", "moon", "tree"]
    g = torch.Generator().manual_seed(0)
    lines = ["# a toy corpus: reverse the words"]
    for _ in range(60):
        ws = [words[i] for i in torch.randint(0, len(words), (int(torch.randint(1, 5, (1,), generator=g)),), generator=g)]
        lines.append(f"{' '.join(ws)}\t{' '.join(reversed(ws))}")
    corpus = tmp_path / "toy.tsv"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = str(tmp_path / "run")
    assert main(["seq2seq", "train", "--data", str(corpus), "--level", "word", "--epochs", "1", "--out", out,
                 *SMALL]) == 0
    state = load_checkpoint(out)
    assert state["src_vocab"]["level"] == "word" and "green" in state["src_vocab"]["tokens"]
    assert main(["seq2seq", "evaluate", "--model", out]) == 0
    report = capsys.readouterr().out
    assert "held-out split of" in report and "alignment:" not in report  # a TSV has no spans

    bad = tmp_path / "bad.tsv"
    bad.write_text("ok\tfine\nno tab here\n", encoding="utf-8")
    assert main(["seq2seq", "train", "--data", str(bad), "--out", str(tmp_path / "r2"), *SMALL]) == 2
    assert f"{bad}:2" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["seq2seq", "translate", "--model", str(tmp_path / "missing"), "x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checkpoint.pt" in err
    assert not Path(tmp_path / "missing").exists()


@pytest.mark.parametrize("name", ["model", "decode", "train", "evaluate", "plot"])
def test_docstring_examples(name):
    import doctest
    import importlib

    if name == "plot":
        pytest.importorskip("matplotlib")
    module = importlib.import_module(f"attnkit.seq2seq.{name}")
    assert doctest.testmod(module, optionflags=doctest.ELLIPSIS).failed == 0


# ---- damaged files and changed data (issue 13) -----------------------------------------


def _saved_run(tmp_path):
    trainer = Trainer(TrainConfig(**{**TINY, "epochs": 1}), tmp_path)
    trainer.run(progress=False, log=None)
    return tmp_path / CHECKPOINT


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "not a dict", "missing keys"])
def test_damaged_checkpoint_names_path_and_fix(tmp_path, damage):
    from attnkit import AttnkitError

    path = _saved_run(tmp_path)
    data = path.read_bytes()
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(bytes(range(256)) * 8)
    elif damage == "not a dict":
        torch.save([1, 2, 3], path)
    else:
        state = load_checkpoint(tmp_path)
        del state["optimizer"]
        torch.save(state, path)
    with pytest.raises(AttnkitError, match="fix: ") as info:
        train_mod.load_translator(tmp_path)
    assert str(path) in str(info.value)


class _Exploit:
    def __reduce__(self):
        import os

        return (os.mkdir, ("PWNED",))


def test_checkpoint_pickles_are_refused_not_executed(tmp_path, monkeypatch):
    from attnkit import AttnkitError

    monkeypatch.chdir(tmp_path)
    torch.save({"format": "attnkit.seq2seq/2", "x": _Exploit()}, tmp_path / CHECKPOINT)
    with pytest.raises(AttnkitError, match="refused, not executed"):
        load_checkpoint(tmp_path)
    assert not (tmp_path / "PWNED").exists()


def test_fingerprints_are_stored_and_resume_checks_them(tmp_path):
    from attnkit import AttnkitError

    _saved_run(tmp_path)
    state = load_checkpoint(tmp_path)
    data = train_mod.read_data(train_mod.config_of(state))
    assert state["fingerprint"]["data"] == data.fingerprint and state["fingerprint"]["pairs"] == 112
    state["fingerprint"]["data"] = "0" * 64  # the data the run was trained on is not the data it would read now
    torch.save(state, tmp_path / CHECKPOINT)
    with pytest.raises(AttnkitError, match="112 pairs in generated dates"):
        Trainer.resume(tmp_path)
    with pytest.raises(AttnkitError, match="generated dates"):  # a file for a dates run is not silently ignored
        Trainer.resume(tmp_path, data=tmp_path / "other.tsv")
    state["fingerprint"]["data"], state["fingerprint"]["vocab"] = data.fingerprint, "0" * 64
    torch.save(state, tmp_path / CHECKPOINT)
    with pytest.raises(AttnkitError, match="vocabularies"):
        Trainer.resume(tmp_path)


def test_unwritable_out_dir_fails_before_training(tmp_path, monkeypatch):
    from attnkit import AttnkitError

    (tmp_path / "file").write_text("x")
    monkeypatch.setattr(Trainer, "train_step", lambda *a: pytest.fail("trained although --out is unusable"))
    with pytest.raises(AttnkitError, match="writable training directory"):
        Trainer(TrainConfig(**TINY), tmp_path / "file" / "run")


def test_stale_temporary_checkpoints_are_removed_on_start(tmp_path):
    (tmp_path / ".checkpoint.pt.abc123.tmp").write_bytes(b"killed mid-write")
    (tmp_path / "notes.tmp").write_text("not ours")
    Trainer(TrainConfig(**TINY), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.tmp"]


def test_tsv_errors_name_the_path_never_the_contents(tmp_path):
    from attnkit import AttnkitError
    from attnkit.seq2seq.data import load_tsv

    for path, what in [(tmp_path / "nope.tsv", "no such file"), (tmp_path, "a directory")]:
        with pytest.raises(AttnkitError, match=what) as info:
            load_tsv(path)
        assert str(path) in str(info.value) and "fix: " in str(info.value)
    secret = tmp_path / "secret.tsv"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(AttnkitError) as info:
        load_tsv(secret)
    assert f"{secret}:1" in str(info.value) and "root:x" not in str(info.value)


def test_long_pairs_are_skipped_with_their_line_numbers(tmp_path):
    lines = [f"{w}\t{w[::-1]}" for w in ["abc", "de", "fgh", "ij"]]
    lines[1] = "x" * 50 + "\tshort"
    (tmp_path / "c.tsv").write_text("\n".join(lines) + "\n")
    data = train_mod.read_data(TrainConfig(data=str(tmp_path / "c.tsv"), max_length=10))
    assert data.skipped == [2] and len(data.train) + len(data.valid) == 3
    assert all(e.line in (1, 3, 4) for e in data.train + data.valid)
