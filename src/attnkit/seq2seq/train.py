"""Training: teacher forcing, Adam, gradient clipping, atomic checkpoints, exact resume.

Each batch minimizes the cross-entropy of the gold next token, ``-Σ_t log p(y_t | y_<t, x)``,
with the gold prefix fed to the decoder (teacher forcing), averaged over non-padding tokens.

A training directory holds ``checkpoint.pt``: the configuration, both vocabularies, the model,
the optimizer, torch's RNG state, the position (epoch and batch within it), the history and a
fingerprint (SHA-256) of the training data and of the vocabularies. A run on a TSV file also
keeps a copy of the file, ``data.tsv``, so resuming and evaluating read the run's own data from
any working directory, and a path stored inside a checkpoint is never opened. Both files are
written to a temporary file in the same directory and moved into place with ``os.replace``, so a
crash or Ctrl-C leaves the previous version intact (a temporary file left by ``kill -9`` is
removed on the next start). The batch order of epoch ``e`` is a function of ``(seed, e)`` only,
so resuming — even mid-epoch — continues with exactly the batches, dropout draws and optimizer
state an uninterrupted run would have used; resuming with other data or another vocabulary is
refused.

Pairs longer than ``max_length`` tokens (source or target) are skipped and reported by line
number: training cost grows faster than linearly with length, and decoding runs up to twice the
longest target, so one 100,000-character line would stall a run for hours.

>>> import tempfile
>>> cfg = TrainConfig(train_size=64, valid_size=16, hidden=16, embed=8, epochs=1, batch_size=32)
>>> with tempfile.TemporaryDirectory() as d:
...     result = Trainer(cfg, d).run(progress=False, log=None)
...     translator = load_translator(d)
>>> result.epoch, result.step, result.stopped
(1, 2, 'done')
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import random
import shutil
import tempfile
import zipfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from attnkit.errors import AttnkitError
from attnkit.softmax import softmax_cross_entropy

from .data import BUILTIN_TASKS, Example, load_tsv
from .vocab import _tokens
from .decode import Translator
from .model import ModelConfig, Seq2Seq, pad_batch
from .vocab import Vocab

__all__ = ["CHECKPOINT", "DATA", "Data", "TrainConfig", "TrainResult", "Trainer", "config_of", "load_checkpoint",
           "load_data", "load_translator", "read_data", "run_data", "save_atomic"]

CHECKPOINT = "checkpoint.pt"
"""File name of a run's checkpoint inside its run directory."""
DATA = "data.tsv"
"""File name of the run's copy of a TSV training file inside its run directory."""
_FORMAT = "attnkit.seq2seq/2"  # /2: data and vocabulary fingerprints, the data copy, max_length
_FIX_DAMAGED = "the file is damaged (truncated or not written by attnkit); retrain, or restore it from a copy"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run. ``data`` is a built-in generated task (``"dates"``, or
    ``"date-lists"``: up to 8 dates per line, 100+ characters) or the path of a TSV file.

    ``train_size``/``valid_size`` apply to the built-in tasks; a TSV file is shuffled with ``seed`` and
    split, ``valid_fraction`` of it held out. Pairs whose source or target has more than
    ``max_length`` tokens are skipped. The defaults train the date task to >= 95% held-out
    exact match in a few minutes on 2 CPU cores (see ``benchmarks/RESULTS.md``).
    """

    data: str = "dates"
    level: str = "char"
    score: str = "general"
    embed: int = 64
    hidden: int = 128
    dropout: float = 0.0
    epochs: int = 4
    batch_size: int = 64
    lr: float = 3e-3
    clip: float = 1.0
    train_size: int = 20_000
    valid_size: int = 2_000
    valid_fraction: float = 0.1
    seed: int = 0
    max_length: int = 256

    def __post_init__(self) -> None:
        for name in ("embed", "hidden", "epochs", "batch_size", "train_size", "valid_size", "max_length"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise AttnkitError.build(f"{name} >= 1", str(getattr(self, name)), f"pass a positive {name}")
        numbers = (self.valid_fraction, self.lr, self.clip, self.dropout)
        # written as "not (x > 0)" so that NaN fails too
        if (not all(isinstance(x, (int, float)) and math.isfinite(x) for x in numbers) or not 0 < self.valid_fraction < 1
                or not self.lr > 0 or not self.clip > 0 or not 0 <= self.dropout < 1):
            raise AttnkitError.build("0 < valid_fraction < 1, lr > 0, clip > 0, 0 <= dropout < 1",
                                     f"{self.valid_fraction}, {self.lr}, {self.clip}, {self.dropout}",
                                     "e.g. valid_fraction=0.1, lr=3e-3, clip=1.0, dropout=0.1")
        if self.level not in ("char", "word"):
            raise AttnkitError.build('level "char" or "word"', repr(self.level), "pass one of the two")
        ModelConfig(1, 1, self.score, self.embed, self.hidden, self.dropout)  # validates score and sizes


@dataclass
class TrainResult:
    """How a [`Trainer.run`][attnkit.seq2seq.train.Trainer.run] ended: ``stopped`` is ``"done"``, ``"time budget"`` or ``"max steps"``."""

    epoch: int
    step: int
    elapsed: float
    valid_exact: float
    stopped: str
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class Data:
    """The examples a run trains and holds out, the TSV lines skipped as too long, and their fingerprint."""

    train: list[Example]
    valid: list[Example]
    skipped: list[int] = field(default_factory=list)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of every (source, target) pair in order, train then held out."""
        h = hashlib.sha256()
        for e in (*self.train, *self.valid):
            h.update(json.dumps([e.source, e.target], ensure_ascii=False).encode("utf-8") + b"\n")
        return h.hexdigest()


def read_data(config: TrainConfig, path: str | Path | None = None) -> Data:
    """The examples a config defines (the same every time): a generated built-in task, or the TSV file
    ``path`` (default ``config.data``) shuffled with the seed and split.

    Pairs with more than ``config.max_length`` source or target tokens are left out and their
    line numbers listed in ``skipped``; a file with fewer than 2 pairs left raises.
    """
    if config.data in BUILTIN_TASKS:  # "dates", "date-lists": generated, no download
        train, valid = BUILTIN_TASKS[config.data](config.train_size, config.valid_size, seed=config.seed)
        return Data(train, valid)
    path = config.data if path is None else path
    examples, skipped = [], []
    for e in load_tsv(path):
        if max(len(_tokens(e.source, config.level)), len(_tokens(e.target, config.level))) > config.max_length:
            skipped.append(e.line)
        else:
            examples.append(e)
    if len(examples) < 2:
        raise AttnkitError.build(f"a TSV file with at least 2 pairs of at most {config.max_length} tokens",
                                 f"{len(examples)} in {path} ({len(skipped)} longer)",
                                 "add more lines, or raise --max-length" if skipped else "add more lines")
    random.Random(config.seed).shuffle(examples)
    n_valid = min(len(examples) - 1, max(1, round(config.valid_fraction * len(examples))))
    return Data(examples[n_valid:], examples[:n_valid], skipped)


def load_data(config: TrainConfig, path: str | Path | None = None) -> tuple[list[Example], list[Example]]:
    """The train and held-out examples of [`read_data`][attnkit.seq2seq.train.read_data]."""
    data = read_data(config, path)
    return data.train, data.valid


def _vocab_fingerprint(src: Vocab, tgt: Vocab) -> str:
    text = json.dumps([src.to_dict(), tgt.to_dict()], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def run_data(directory: str | Path, state: dict[str, Any], data: str | Path | None = None) -> Data:
    """The data of the run saved in ``directory``, checked against the checkpoint's fingerprints.

    Reads only what the user named: generated dates, the run's own copy ``directory/data.tsv``,
    or ``data`` when given — never a path stored in the checkpoint. Refuses data whose pairs or
    vocabulary differ from the ones the run was trained on.
    """
    config, directory = config_of(state), Path(directory)
    if data is not None and config.data in BUILTIN_TASKS:
        raise AttnkitError.build(f"no --data for {directory} (it trained on generated {config.data})", str(data),
                                 "leave --data out to resume, or start a new run with another --out to train on the file")
    if data is None and config.data not in BUILTIN_TASKS:
        data = directory / DATA
        if not data.is_file():
            raise AttnkitError.build(f"the run's copy of its training data, {data}", "no such file",
                                     "restore it, or pass the original file with --data")
    got = read_data(config, data)
    want = state["fingerprint"]
    if got.fingerprint != want["data"]:
        source = f"generated {config.data}" if config.data in BUILTIN_TASKS else str(data)
        raise AttnkitError.build(f"the data this run was trained on ({want['pairs']} pairs, sha256 {want['data'][:12]})",
                                 f"{len(got.train) + len(got.valid)} pairs in {source} (sha256 {got.fingerprint[:12]})",
                                 f"pass the original file, or leave --data out to use the run's copy ({directory / DATA}); "
                                 "to train on new data start a new run with another --out")
    vocabs = Vocab.build((e.source for e in got.train), config.level), Vocab.build((e.target for e in got.train), config.level)
    if _vocab_fingerprint(*vocabs) != want["vocab"]:
        raise AttnkitError.build("the vocabularies stored in the checkpoint", "other vocabularies built from the same data "
                                 "(another attnkit version?)", "retrain with this version, or resume with the version that trained it")
    return got


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file next to ``path``, then ``os.replace`` it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows: readers see the old file or the new one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_KEYS = ("config", "model_config", "src_vocab", "tgt_vocab", "max_len", "model", "optimizer", "rng", "epoch", "batch",
         "step", "elapsed", "epoch_loss", "history", "fingerprint")


def load_checkpoint(directory: str | Path) -> dict[str, Any]:
    """The checkpoint dict of a training directory (tensors and plain Python values only).

    Loaded with ``weights_only=True``: a pickle that would run code is refused, never executed.

    Raises:
        AttnkitError: naming the file and the fix when it is missing, unreadable, truncated,
            not a checkpoint, or of another format.
    """
    path = Path(directory) / CHECKPOINT
    if not path.is_file():
        raise AttnkitError.build(f"a training directory containing {CHECKPOINT}", f"no {path}",
                                 "train first: attnkit seq2seq train --out DIR")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile, KeyError) as err:
        refused = isinstance(err, pickle.UnpicklingError) and "weights_only" in str(err)
        got = "a pickle that would run code (refused, not executed)" if refused else f"an unreadable file ({type(err).__name__})"
        raise AttnkitError.build(f"an attnkit checkpoint in {path}", got, _FIX_DAMAGED) from None
    if not isinstance(state, dict) or state.get("format") != _FORMAT:
        fmt = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise AttnkitError.build(f"a checkpoint of format {_FORMAT} in {path}", repr(fmt)[:60],
                                 "retrain the model with this attnkit version")
    missing = [k for k in _KEYS if k not in state]
    if missing or not all(isinstance(state[k], dict) for k in ("config", "model_config", "fingerprint")) \
            or not {"data", "pairs", "vocab"} <= set(state["fingerprint"]):
        raise AttnkitError.build(f"a complete checkpoint in {path}", f"missing or damaged entries {missing[:4]}", _FIX_DAMAGED)
    return state


def config_of(state: dict[str, Any]) -> TrainConfig:
    """The [`TrainConfig`][attnkit.seq2seq.train.TrainConfig] saved in a checkpoint dict (unknown keys from other versions are ignored)."""
    names = {f.name for f in fields(TrainConfig)}
    try:
        return TrainConfig(**{k: v for k, v in state["config"].items() if k in names})
    except (TypeError, AttributeError) as err:
        raise AttnkitError.build("a checkpoint configuration of known options", type(err).__name__, _FIX_DAMAGED) from None


def _model_from(state: dict[str, Any]) -> Seq2Seq:
    try:
        model = Seq2Seq(ModelConfig(**state["model_config"]))
        model.load_state_dict(state["model"])
    except (TypeError, RuntimeError, KeyError) as err:
        raise AttnkitError.build("model weights matching the checkpoint's model_config",
                                 f"{type(err).__name__} while loading them", _FIX_DAMAGED) from None
    return model


def load_translator(directory: str | Path, state: dict[str, Any] | None = None) -> Translator:
    """The trained model of a training directory (or of its already loaded ``state``), ready to translate."""
    state = load_checkpoint(directory) if state is None else state
    return Translator(_model_from(state), Vocab.from_dict(state["src_vocab"]), Vocab.from_dict(state["tgt_vocab"]),
                      int(state["max_len"]))


def _clean_stale(out_dir: Path) -> None:
    """Remove temporary files a killed [`save_atomic`][attnkit.seq2seq.train.save_atomic] left behind (``.checkpoint.pt.*.tmp``)."""
    for name in (CHECKPOINT, DATA):
        for tmp in out_dir.glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def _copy_atomic(src: str | Path, dst: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as f, open(src, "rb") as g:
            shutil.copyfileobj(g, f)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _pack(examples: list[Example], src_vocab: Vocab, tgt_vocab: Vocab) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """All examples as padded tensors: sources ``(N, S)``, their lengths, targets ``SOS y EOS`` ``(N, T+2)``, lengths."""
    src, src_len = pad_batch([src_vocab.encode(e.source) for e in examples])
    tgt, tgt_len = pad_batch([tgt_vocab.encode(e.target, sos=True, eos=True) for e in examples])
    return src, src_len, tgt, tgt_len


class Trainer:
    """A training run in ``out_dir``: build fresh with ``Trainer(config, out_dir)`` or [`resume`][attnkit.seq2seq.train.Trainer.resume]."""

    def __init__(self, config: TrainConfig, out_dir: str | Path, *, _state: dict[str, Any] | None = None,
                 _data: Data | None = None) -> None:
        self.config, self.out_dir = config, Path(out_dir)
        data = read_data(config) if _data is None else _data  # before writing anything: a bad file costs nothing
        self.train_set, self.valid_set, self.skipped = data.train, data.valid, data.skipped
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            _clean_stale(self.out_dir)
            # Prove the directory writable now, not at the first save an epoch later.
            fd, probe = tempfile.mkstemp(prefix=f".{CHECKPOINT}.", suffix=".tmp", dir=self.out_dir)
            os.close(fd)
            os.unlink(probe)
            if _state is None and config.data not in BUILTIN_TASKS:
                _copy_atomic(config.data, self.out_dir / DATA)
        except OSError as err:
            raise AttnkitError.build("a writable training directory", f"{self.out_dir} ({err.strerror or err})",
                                     "choose another --out") from None
        self._fingerprint = {"data": data.fingerprint, "pairs": len(data.train) + len(data.valid)}
        if _state is None:
            self.src_vocab = Vocab.build((e.source for e in self.train_set), config.level)
            self.tgt_vocab = Vocab.build((e.target for e in self.train_set), config.level)
            self.max_len = 2 * max(len(self.tgt_vocab.tokens(e.target)) for e in self.train_set) + 2
            torch.manual_seed(config.seed)  # the initial weights depend on the seed only
            self.model = Seq2Seq(ModelConfig(len(self.src_vocab), len(self.tgt_vocab), config.score,
                                             config.embed, config.hidden, config.dropout))
        else:
            self.src_vocab, self.tgt_vocab = Vocab.from_dict(_state["src_vocab"]), Vocab.from_dict(_state["tgt_vocab"])
            self.max_len = int(_state["max_len"])
            self.model = _model_from(_state)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.epoch, self.batch, self.step, self.elapsed = 0, 0, 0, 0.0
        self.epoch_loss = 0.0  # sum of this epoch's batch losses so far (a resumed epoch keeps its mean right)
        self.history: list[dict[str, float]] = []
        self._data = _pack(self.train_set, self.src_vocab, self.tgt_vocab)
        if _state is not None:
            self._restore(_state)

    def _restore(self, state: dict[str, Any]) -> None:
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"])
            self.epoch, self.batch, self.step = int(state["epoch"]), int(state["batch"]), int(state["step"])
            self.elapsed, self.history = float(state["elapsed"]), list(state["history"])
            self.epoch_loss = float(state["epoch_loss"])
        except AttnkitError:
            raise
        except (TypeError, ValueError, RuntimeError, KeyError) as err:
            raise AttnkitError.build(f"a resumable checkpoint in {self.out_dir / CHECKPOINT}",
                                     f"{type(err).__name__} restoring the optimizer and position", _FIX_DAMAGED) from None
        if not 0 <= self.batch <= self.batches_per_epoch:
            raise AttnkitError.build(f"a batch position in [0, {self.batches_per_epoch}]", str(self.batch), _FIX_DAMAGED)

    @classmethod
    def resume(cls, out_dir: str | Path, data: str | Path | None = None) -> Trainer:
        """Continue the run saved in ``out_dir`` exactly where it stopped.

        The data is the run's own (regenerated dates, or its copy ``out_dir/data.tsv``), or
        ``data`` when given; either must match the checkpoint's fingerprint (see [`run_data`][attnkit.seq2seq.train.run_data]).
        """
        state = load_checkpoint(out_dir)
        return cls(config_of(state), out_dir, _state=state, _data=run_data(out_dir, state, data))

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(len(self.train_set) / self.config.batch_size)

    def translator(self) -> Translator:
        return Translator(self.model, self.src_vocab, self.tgt_vocab, self.max_len)

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": _FORMAT, "config": asdict(self.config), "model_config": self.model.config.to_dict(),
            "src_vocab": self.src_vocab.to_dict(), "tgt_vocab": self.tgt_vocab.to_dict(), "max_len": self.max_len,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "rng": torch.get_rng_state(),
            "epoch": self.epoch, "batch": self.batch, "step": self.step, "elapsed": self.elapsed,
            "epoch_loss": self.epoch_loss, "history": self.history,
            "fingerprint": {**self._fingerprint, "vocab": _vocab_fingerprint(self.src_vocab, self.tgt_vocab)},
        }

    def save(self) -> Path:
        """Write ``out_dir/checkpoint.pt`` atomically; returns its path."""
        path = self.out_dir / CHECKPOINT
        save_atomic(self.state_dict(), path)
        return path

    def _order(self, epoch: int) -> Tensor:
        """The example order of ``epoch``: a function of ``(seed, epoch)`` only, so resume can replay it."""
        return torch.randperm(len(self.train_set), generator=torch.Generator().manual_seed(self.config.seed * 7919 + epoch))

    def train_step(self, rows: Tensor) -> tuple[float, float]:
        """One optimizer step on the examples ``rows``; returns ``(loss, token accuracy)``."""
        src, src_len, tgt, tgt_len = (t[rows] for t in self._data)
        src, tgt = src[:, : int(src_len.max())], tgt[:, : int(tgt_len.max())]  # trim the batch's padding
        prev, gold = tgt[:, :-1], tgt[:, 1:]  # teacher forcing: feed SOS y_1.., predict y_1.. EOS
        self.model.train()
        logits, _ = self.model(src, src_len, prev)
        loss = softmax_cross_entropy(logits.reshape(-1, logits.shape[-1]), gold.reshape(-1), ignore_index=Vocab.PAD)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.clip)
        self.optimizer.step()
        real = gold != Vocab.PAD
        acc = (logits.detach().argmax(-1) == gold)[real].float().mean()
        return float(loss.detach()), float(acc)

    def valid_exact(self) -> float:
        """Exact-match accuracy of greedy decoding on the held-out split."""
        out = self.translator().translate_batch([e.source for e in self.valid_set])
        translator = self.translator()
        return sum(t.output == translator.reference(e.target) for t, e in zip(out, self.valid_set)) / len(out)

    def run(self, *, epochs: int | None = None, max_minutes: float | None = None, max_steps: int | None = None,
            progress: bool = True, log: Callable[[str], None] | None = print) -> TrainResult:
        """Train until ``epochs`` epochs are complete (default: the config's), saving after each epoch.

        ``max_minutes`` (wall clock of this call) and ``max_steps`` (optimizer steps of this call)
        stop early, mid-epoch if need be, after saving. ``progress`` shows a tqdm bar (loss,
        token accuracy, ETA) when tqdm is installed; ``log`` receives one line per epoch.
        """
        epochs = self.config.epochs if epochs is None else epochs
        bar = _progress_bar(progress, total=epochs * self.batches_per_epoch,
                            initial=min(self.epoch * self.batches_per_epoch + self.batch, epochs * self.batches_per_epoch))
        start, steps, stopped = time.perf_counter(), 0, "done"
        ema_loss = ema_acc = None
        try:
            while self.epoch < epochs and stopped == "done":
                order = self._order(self.epoch)
                bs = self.config.batch_size
                while self.batch < self.batches_per_epoch:
                    if max_minutes is not None and time.perf_counter() - start >= 60 * max_minutes:
                        stopped = "time budget"
                        break
                    if max_steps is not None and steps >= max_steps:
                        stopped = "max steps"
                        break
                    t0 = time.perf_counter()
                    loss, acc = self.train_step(order[self.batch * bs : (self.batch + 1) * bs])
                    self.elapsed += time.perf_counter() - t0
                    self.batch, self.step, steps = self.batch + 1, self.step + 1, steps + 1
                    self.epoch_loss += loss
                    ema_loss = loss if ema_loss is None else 0.9 * ema_loss + 0.1 * loss
                    ema_acc = acc if ema_acc is None else 0.9 * ema_acc + 0.1 * acc
                    if bar is not None:
                        bar.set_postfix(epoch=self.epoch + 1, loss=f"{ema_loss:.3f}", acc=f"{ema_acc:.3f}", refresh=False)
                        bar.update(1)
                if stopped != "done":
                    break
                record = {"epoch": self.epoch + 1, "loss": self.epoch_loss / self.batches_per_epoch,
                          "valid_exact": self.valid_exact(), "elapsed": self.elapsed}
                self.epoch, self.batch, self.epoch_loss = self.epoch + 1, 0, 0.0
                self.history.append(record)
                self.save()
                if log is not None:
                    msg = (f"epoch {self.epoch}/{epochs}: train loss {record['loss']:.4f}, held-out exact match "
                           f"{100 * record['valid_exact']:.2f}% ({len(self.valid_set)} examples), "
                           f"{self.elapsed:.0f}s of training")
                    if bar is not None:
                        with bar.external_write_mode():
                            log(msg)
                    else:
                        log(msg)
        finally:  # on an exception (Ctrl-C too) the last saved checkpoint stays as it was
            if bar is not None:
                bar.close()
        if stopped != "done":
            self.save()
        valid = self.history[-1]["valid_exact"] if self.history and self.batch == 0 else self.valid_exact()
        if stopped != "done" and log is not None:
            log(f"stopped ({stopped}) at epoch {self.epoch + 1}, batch {self.batch}/{self.batches_per_epoch}: held-out "
                f"exact match {100 * valid:.2f}%; continue with --resume")
        return TrainResult(self.epoch, self.step, self.elapsed, valid, stopped, list(self.history))


def _progress_bar(enabled: bool, total: int, initial: int) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the bar is optional: pip install 'attnkit[seq2seq]'
        return None
    return tqdm(total=total, initial=initial, unit="batch", dynamic_ncols=True, leave=True)
