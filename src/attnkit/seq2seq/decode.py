"""Decoding: greedy (batched) and beam search, with log-probabilities and per-step attention.

A hypothesis's ``log_prob`` is ``Σ_t log p(y_t | y_<t, x)`` over every emitted token, the final
``EOS`` included when it finished. ``weights[t]`` is the attention ``α_t`` over the source used
to emit token ``t`` (rows for ``EOS`` included), so ``weights`` has one row per emitted token.

Beam search keeps the ``beam`` best prefixes by log-probability. With ``length_penalty = a``
hypotheses are ranked by ``log_prob / T^a`` (``T`` emitted tokens; ``a = 0``: plain log-probability,
``a = 1``: per-token average), which offsets the search's bias towards short outputs. It stops
when no live prefix can still beat the best finished one (log-probabilities only fall as a
prefix grows) or at ``max_len``. Plain beam search can prune the greedy path and end below it;
here the greedy hypothesis is always a candidate, so the result never ranks below greedy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import Tensor

from attnkit._numerics import NEG_INF
from attnkit.errors import AttnkitError
from attnkit.softmax import log_softmax

from .model import Memory, Seq2Seq, pad_batch
from .vocab import Vocab

__all__ = ["Hypothesis", "Translation", "Translator", "beam_search", "greedy"]


@dataclass
class Hypothesis:
    """One output: ``tokens`` (ids, no ``SOS``/``EOS``), ``log_prob``, ``weights (T, S)`` or ``None``."""

    tokens: list[int]
    log_prob: float
    weights: Tensor | None
    finished: bool

    @property
    def steps(self) -> int:
        """Emitted tokens ``T``: the output plus the ``EOS`` if finished."""
        return len(self.tokens) + int(self.finished)

    def score(self, length_penalty: float = 0.0) -> float:
        """``log_prob / T^length_penalty`` (the ranking used by beam search)."""
        return self.log_prob / max(1, self.steps) ** length_penalty


def _check_source(src: Tensor, lengths: Tensor) -> None:
    if src.dim() != 2 or lengths.shape != (src.shape[0],):
        raise AttnkitError.build("src (B, S) ids and lengths (B,)", f"{tuple(src.shape)} and {tuple(lengths.shape)}",
                                 "use attnkit.seq2seq.model.pad_batch")
    if len(lengths) and int(lengths.min()) < 1:
        raise AttnkitError.build("non-empty sources", "a source of length 0", "give every input at least one token")


@torch.no_grad()
def greedy(model: Seq2Seq, src: Tensor, lengths: Tensor, max_len: int) -> list[Hypothesis]:
    """Pick ``argmax_y p(y | y_<t, x)`` at every step, for a whole batch at once.

    ``src (B, S)``, ``lengths (B,)``. Returns one [`Hypothesis`][attnkit.seq2seq.decode.Hypothesis] per row; ``weights`` is
    ``(T, lengths[b])`` (``None`` for ``score="none"``).
    """
    _check_source(src, lengths)
    memory = model.encode(src, lengths)
    state = model.start(memory)
    B = src.shape[0]
    prev = torch.full((B,), Vocab.SOS, dtype=torch.int64)
    done = torch.zeros(B, dtype=torch.bool)
    toks, logps, alphas = [], [], []
    for _ in range(max_len):
        logits, state, alpha = model.step(prev, state, memory)
        logp = log_softmax(logits.float(), -1)
        prev = logp.argmax(-1)
        toks.append(prev)
        logps.append(logp.gather(1, prev[:, None]).squeeze(1).masked_fill(done, 0.0))  # nothing after EOS counts
        alphas.append(alpha)
        done = done | (prev == Vocab.EOS)
        if bool(done.all()):
            break
    tok = torch.stack(toks, 1)  # (B, T)
    cum = torch.stack(logps, 1).sum(1)
    weights = None if alphas[0] is None else torch.stack(alphas, 1)  # (B, T, S)
    out = []
    for b in range(B):
        row = tok[b].tolist()
        finished = Vocab.EOS in row
        n = row.index(Vocab.EOS) if finished else len(row)
        w = None if weights is None else weights[b, : n + finished, : int(lengths[b])]
        out.append(Hypothesis(row[:n], float(cum[b]), w, finished))
    return out


def _expand(memory: Memory, n: int) -> Memory:
    return Memory(memory.states.expand(n, -1, -1), memory.lengths.expand(n), memory.final.expand(n, -1))


@torch.no_grad()
def beam_search(model: Seq2Seq, src: Sequence[int] | Tensor, max_len: int, *, beam: int = 4,
                length_penalty: float = 0.0) -> Hypothesis:
    """The best hypothesis for one source (a 1-D id sequence) by ``log_prob / T^length_penalty``.

    ``beam=1`` is greedy decoding. The greedy hypothesis is always among the candidates, so the
    result scores at least as well as [`greedy`][attnkit.seq2seq.decode.greedy] under the same ``length_penalty``.
    """
    if beam < 1 or length_penalty < 0:
        raise AttnkitError.build("beam >= 1 and length_penalty >= 0", f"beam={beam}, length_penalty={length_penalty}",
                                 "e.g. beam=4, length_penalty=0.6")
    src_b, lengths = pad_batch([list(map(int, src))])
    best_greedy = greedy(model, src_b, lengths, max_len)[0]
    if beam == 1:
        return best_greedy
    memory = model.encode(src_b, lengths)
    state = model.start(memory)
    tokens = torch.empty(1, 0, dtype=torch.int64)  # (n, t) live prefixes
    alphas = None if model.decoder.attention is None else torch.empty(1, 0, int(lengths[0]))  # (n, t, S)
    scores = torch.zeros(1, dtype=torch.float32)  # log-probability of each live prefix
    finished: list[Hypothesis] = [best_greedy]

    def best_done() -> float:
        return max(h.score(length_penalty) for h in finished)

    for t in range(max_len):
        n = tokens.shape[0]
        prev = tokens[:, -1] if t else torch.full((1,), Vocab.SOS, dtype=torch.int64)
        logits, state, alpha = model.step(prev, state, _expand(memory, n))
        cand = scores[:, None] + log_softmax(logits.float(), -1)  # (n, V)
        if alpha is not None:
            alpha_all = torch.cat([alphas, alpha[:, None]], 1)  # (n, t+1, S)
        for i in range(n):  # every prefix + EOS is a finished candidate
            finished.append(Hypothesis(tokens[i].tolist(), float(cand[i, Vocab.EOS]),
                                       None if alpha is None else alpha_all[i], True))
        cand[:, Vocab.EOS] = NEG_INF
        cand[:, (Vocab.PAD, Vocab.SOS)] = NEG_INF
        top = cand.flatten().topk(min(beam, cand.numel()))
        keep = top.values > NEG_INF
        rows, toks = top.indices[keep] // cand.shape[1], top.indices[keep] % cand.shape[1]
        if rows.numel() == 0:
            break
        tokens = torch.cat([tokens[rows], toks[:, None]], 1)
        scores, state = top.values[keep], state[:, rows]
        if alpha is not None:
            alphas = alpha_all[rows]
        # A live prefix's final log_prob only falls; T^a grows to at most max_len^a: this bounds its best score.
        if float(scores.max()) / max_len**length_penalty <= best_done():
            break
    else:
        finished += [Hypothesis(tokens[i].tolist(), float(scores[i]), None if alphas is None else alphas[i], False)
                     for i in range(tokens.shape[0])]
    return max(finished, key=lambda h: h.score(length_penalty))


# --------------------------------------------------------------------------- text in, text out


@dataclass
class Translation:
    """A decoded text with its tokens, ``log_prob`` and attention ``weights (T, S)`` (``None`` without attention).

    ``output_tokens`` lists every emitted token, ``"<eos>"`` included when the output finished,
    so it labels the rows of ``weights``; ``source_tokens`` labels its columns.
    """

    source: str
    output: str
    source_tokens: list[str]
    output_tokens: list[str]
    log_prob: float
    weights: Tensor | None = field(repr=False)


class Translator:
    """A trained [`Seq2Seq`][attnkit.seq2seq.model.Seq2Seq] with its vocabularies: text in, [`Translation`][attnkit.seq2seq.decode.Translation] out.

    Load one from a training directory with [`attnkit.seq2seq.train.load_translator`][attnkit.seq2seq.train.load_translator].
    """

    def __init__(self, model: Seq2Seq, src_vocab: Vocab, tgt_vocab: Vocab, max_len: int) -> None:
        self.model, self.src_vocab, self.tgt_vocab, self.max_len = model.eval(), src_vocab, tgt_vocab, max_len

    def reference(self, target: str) -> str:
        """``target`` as this model would write it (word level joins tokens with single spaces)."""
        return " ".join(self.tgt_vocab.tokens(target)) if self.tgt_vocab.level == "word" else target

    def _ids(self, text: str) -> list[int]:
        ids = self.src_vocab.encode(text)
        if not ids:
            raise AttnkitError.build("a non-empty input", repr(text), "pass the text to translate")
        return ids

    def _wrap(self, text: str, hyp: Hypothesis) -> Translation:
        out_tokens = [self.tgt_vocab.itos[i] for i in hyp.tokens] + ["<eos>"] * hyp.finished
        return Translation(text, self.tgt_vocab.decode(hyp.tokens), self.src_vocab.tokens(text), out_tokens,
                           hyp.log_prob, hyp.weights)

    def translate(self, text: str, *, beam: int = 1, length_penalty: float = 0.0) -> Translation:
        """Translate one text (greedy for ``beam=1``)."""
        hyp = beam_search(self.model, self._ids(text), self.max_len, beam=beam, length_penalty=length_penalty)
        return self._wrap(text, hyp)

    def translate_batch(self, texts: Sequence[str], *, batch_size: int = 512) -> list[Translation]:
        """Greedy translations of many texts, ``batch_size`` at a time."""
        out: list[Translation] = []
        for start in range(0, len(texts), batch_size):
            chunk = list(texts[start : start + batch_size])
            src, lengths = pad_batch([self._ids(t) for t in chunk])
            out += [self._wrap(t, h) for t, h in zip(chunk, greedy(self.model, src, lengths, self.max_len))]
        return out
