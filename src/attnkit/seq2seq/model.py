"""The encoder-decoder translator with attention, annotated.

Read it top to bottom; each function sits next to the formula it computes. The source
``x_1 .. x_S`` is read by a bidirectional GRU, the **encoder**, which gives one state per
source token; the **decoder**, a GRU, writes the output one token at a time::

    h_i = [→h_i ; ←h_i]                    encoder state of source token i (both directions)
    s_t = GRU(s_{t-1}, E[y_{t-1}])         decoder state before emitting y_t;  s_0 = tanh(W_b c)
    α_t = softmax_i score(s_t, h_i)        attention weights over the source (padding gets 0)
    C_t = Σ_i α_ti h_i                     the context: what the decoder reads at step t
    h̃_t = tanh(W_c [s_t ; C_t])            combine state and context
    p(y_t | y_<t, x) = softmax(W_o h̃_t)    next-token distribution

``score`` is Luong's ``dot`` (``s_tᵀh_i``), ``general`` (``s_tᵀ W h_i``) or Bahdanau's ``additive``
(``vᵀ tanh(W_q s_t + W_k h_i)``) — the modules of `attnkit.nn.score_attention`. This is Luong
et al.'s global attention (2015) without input feeding: ``s_t`` does not depend on ``C_{t-1}``,
so with teacher forcing the decoder GRU runs over the whole target in one call and all steps
attend in one batched call.

``score="none"`` is the fixed-context baseline (Sutskever et al. 2014, Cho et al. 2014): every
step reads the same ``C_t = c``, the encoder's final states ``[→h_S ; ←h_1]``. The whole source
must squeeze through that one vector — the bottleneck that attention removes.

>>> import torch
>>> m = Seq2Seq(ModelConfig(src_vocab=30, tgt_vocab=15, score="general", embed=8, hidden=16))
>>> src, lengths = pad_batch([[5, 6, 7], [8, 9]])
>>> logits, weights = m(src, lengths, torch.tensor([[1, 4, 5], [1, 6, 0]]))
>>> logits.shape, weights.shape                  # (B, T, V_out), (B, T, S)
(torch.Size([2, 3, 15]), torch.Size([2, 3, 3]))
>>> weights[1, :, 2].abs().sum().item()           # the padding position of source 2 gets no weight
0.0
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, NamedTuple, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from attnkit.errors import AttnkitError
from attnkit.nn.score_attention import AdditiveAttention, BilinearAttention, DotAttention

from .vocab import Vocab

__all__ = ["SCORES", "ModelConfig", "Memory", "Seq2Seq", "pad_batch"]

Score = Literal["dot", "general", "additive", "none"]
SCORES: tuple[str, ...] = ("dot", "general", "additive", "none")
"""The attention scores a model can use (``"none"``: no attention, a fixed context from the encoder's final states)."""


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the translator. ``hidden`` is the decoder width; each encoder direction has ``hidden // 2``."""

    src_vocab: int
    tgt_vocab: int
    score: Score = "general"
    embed: int = 64
    hidden: int = 128
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise AttnkitError.build(f"score in {SCORES}", repr(self.score), "pick one of those")
        if self.hidden < 2 or self.hidden % 2:
            raise AttnkitError.build("an even hidden size >= 2", str(self.hidden), "each encoder direction gets hidden // 2")

    def to_dict(self) -> dict:
        return asdict(self)


class Memory(NamedTuple):
    """What the encoder hands the decoder: ``states (B, S, hidden)``, ``lengths (B,)``, ``final (B, hidden)``."""

    states: Tensor
    lengths: Tensor
    final: Tensor


def pad_batch(seqs: Sequence[Sequence[int]], pad: int = Vocab.PAD) -> tuple[Tensor, Tensor]:
    """Right-pad id lists into ``(B, T)`` int64 and return their lengths ``(B,)``."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.int64)
    out = torch.full((len(seqs), int(lengths.max()) if len(seqs) else 0), pad, dtype=torch.int64)
    for row, s in enumerate(seqs):
        out[row, : len(s)] = torch.as_tensor(list(s), dtype=torch.int64)
    return out, lengths


class Encoder(nn.Module):
    """``h_i = [→h_i ; ←h_i]``: a bidirectional GRU over the embedded source."""

    def __init__(self, vocab: int, embed: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed, padding_idx=Vocab.PAD)
        self.drop = nn.Dropout(dropout)
        self.rnn = nn.GRU(embed, hidden // 2, batch_first=True, bidirectional=True)

    def forward(self, src: Tensor, lengths: Tensor) -> Memory:
        """``src (B, S)`` ids, ``lengths (B,)`` → [`Memory`][attnkit.seq2seq.model.Memory]."""
        x = self.drop(self.embed(src))  # (B, S, embed)
        # Packing makes the backward direction start at each row's last real token, not at padding.
        packed = pack_padded_sequence(x, lengths.cpu().clamp(min=1), batch_first=True, enforce_sorted=False)
        out, h_n = self.rnn(packed)  # h_n: (2, B, hidden/2) = [→h_S, ←h_1]
        states, _ = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])  # (B, S, hidden)
        return Memory(states, lengths, torch.cat([h_n[0], h_n[1]], dim=-1))


def _score_module(score: str, hidden: int) -> nn.Module | None:
    """The attention layer for ``score`` (queries ``s_t`` and keys ``h_i`` are both ``hidden`` wide)."""
    if score == "dot":
        return DotAttention()
    if score == "general":
        return BilinearAttention(hidden, hidden)
    if score == "additive":
        return AdditiveAttention(hidden, hidden, hidden)
    return None  # "none": the fixed context


class Decoder(nn.Module):
    """``s_t = GRU(s_{t-1}, E[y_{t-1}])``, then attention, ``h̃_t = tanh(W_c[s_t; C_t])``, ``W_o h̃_t``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        H = config.hidden
        self.embed = nn.Embedding(config.tgt_vocab, config.embed, padding_idx=Vocab.PAD)
        self.drop = nn.Dropout(config.dropout)
        self.bridge = nn.Linear(H, H)  # W_b: s_0 = tanh(W_b c)
        self.rnn = nn.GRU(config.embed, H, batch_first=True)
        self.attention = _score_module(config.score, H)
        self.combine = nn.Linear(2 * H, H)  # W_c
        self.out = nn.Linear(H, config.tgt_vocab)  # W_o

    def init_state(self, memory: Memory) -> Tensor:
        """``s_0 = tanh(W_b c)``, shape ``(1, B, hidden)`` (the GRU's layer axis first)."""
        return torch.tanh(self.bridge(memory.final)).unsqueeze(0)

    def attend(self, s: Tensor, memory: Memory) -> tuple[Tensor, Tensor | None]:
        """``C_t = Σ_i α_ti h_i`` for decoder states ``s (B, T, hidden)``: ``(B, T, hidden)``, ``α (B, T, S)``.

        Without attention every step gets the fixed vector ``c`` and there are no weights.
        """
        if self.attention is None:
            return memory.final.unsqueeze(1).expand_as(s), None
        return self.attention(s, memory.states, kv_lengths=memory.lengths)

    def predict(self, s: Tensor, context: Tensor) -> Tensor:
        """Logits ``W_o tanh(W_c [s_t ; C_t])``."""
        return self.out(self.drop(torch.tanh(self.combine(torch.cat([s, context], dim=-1)))))

    def forward(self, prev: Tensor, state: Tensor, memory: Memory) -> tuple[Tensor, Tensor, Tensor | None]:
        """Run the decoder over ``prev (B, T)`` (the previous tokens, ``SOS`` first).

        Returns ``logits (B, T, V_out)``, the last state ``(1, B, hidden)``, weights ``(B, T, S)`` or ``None``.
        """
        s, state = self.rnn(self.drop(self.embed(prev)), state)  # all T steps at once: (B, T, hidden)
        context, weights = self.attend(s, memory)
        return self.predict(s, context), state, weights


class Seq2Seq(nn.Module):
    """Encoder + decoder. ``forward`` is teacher-forced training; [`step`][attnkit.seq2seq.model.Seq2Seq.step] is one decoding step."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config.src_vocab, config.embed, config.hidden, config.dropout)
        self.decoder = Decoder(config)

    def encode(self, src: Tensor, lengths: Tensor) -> Memory:
        """``src (B, S)``, ``lengths (B,)`` → [`Memory`][attnkit.seq2seq.model.Memory]."""
        return self.encoder(src, lengths)

    def forward(self, src: Tensor, src_lengths: Tensor, prev: Tensor) -> tuple[Tensor, Tensor | None]:
        """Teacher forcing: ``prev (B, T)`` is the target shifted right (``SOS y_1 .. y_{T-1}``).

        Returns ``logits (B, T, V_out)`` for ``y_1 .. y_T`` and weights ``(B, T, S)`` (``None`` for ``"none"``).
        """
        memory = self.encode(src, src_lengths)
        logits, _, weights = self.decoder(prev, self.decoder.init_state(memory), memory)
        return logits, weights

    def start(self, memory: Memory) -> Tensor:
        """The decoder state ``s_0`` for a fresh [`Memory`][attnkit.seq2seq.model.Memory]."""
        return self.decoder.init_state(memory)

    def step(self, prev: Tensor, state: Tensor, memory: Memory) -> tuple[Tensor, Tensor, Tensor | None]:
        """One decoding step from the previous tokens ``prev (B,)``.

        Returns ``logits (B, V_out)``, the new state ``(1, B, hidden)``, weights ``(B, S)`` or ``None``.
        """
        logits, state, weights = self.decoder(prev.unsqueeze(1), state, memory)
        return logits.squeeze(1), state, None if weights is None else weights.squeeze(1)
