"""``AttentionMaps``: captured attention weights of every layer, with tokens and padding."""

from __future__ import annotations

import functools
import json
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ..errors import AttnkitError

__all__ = ["AttentionMaps"]

_FORMAT = "attnkit.AttentionMaps/1"


def _read_errors() -> tuple[type[BaseException], ...]:
    """What reading a damaged ``.npz`` / ``.safetensors`` file raises (beyond attnkit's own checks)."""
    st = sys.modules.get("safetensors")
    extra = (st.SafetensorError,) if st is not None and hasattr(st, "SafetensorError") else ()
    return (OSError, EOFError, ValueError, KeyError, TypeError, IndexError, AttributeError, zipfile.BadZipFile, *extra)


def _real_positions(mask: Tensor) -> slice | Tensor:
    """Indices of True entries: a slice when contiguous (left or right padding), saving a gather."""
    idx = mask.nonzero().flatten()
    if len(idx) == 0:
        return slice(0, 0)
    first, last = int(idx[0]), int(idx[-1])
    return slice(first, last + 1) if last - first + 1 == len(idx) else idx


@dataclass
class AttentionMaps:
    """Attention weights of ``N`` layers for a batch of ``B`` sequences.

    Attributes:
        weights: one ``(B, H, L, S)`` float tensor per layer (CPU); row ``[b, h, i]`` is query
            ``i``'s distribution over the ``S`` keys. Every layer has the same shape.
        tokens: per sequence, its real query tokens (padding removed), in order.
        query_mask: ``(B, L)`` bool, True = real token, False = padding (left or right).
        key_mask: ``(B, S)`` bool, likewise for keys.
        key_tokens: per sequence, its real key tokens; ``None`` for self-attention (the keys
            are the query tokens).
        special: per sequence, one flag per real query token (True for ``[CLS]``, ``</s>``...),
            used to leave special tokens out of "most attended" rankings; ``None`` = none special.
        meta: free-form strings (model name, texts) kept when saving.
        scores: optional, one ``(B, H, L, S)`` float tensor per layer: the logits *before* the mask
            and softmax (``q·k·scale``, plus bias/softcap if the model has them), as recorded by
            ``capture(..., scores=True)``. Not written by [`save`][attnkit.inspect._maps.AttentionMaps.save].

    Edge cases: padded rows and columns hold whatever the model computed (usually 0 for
    padded keys); every analysis reads only real positions through [`sequence`][attnkit.inspect._maps.AttentionMaps.sequence].

    Example:
        >>> import torch
        >>> w = torch.softmax(torch.randn(1, 2, 3, 3), -1)
        >>> maps = AttentionMaps([w, w], [["a", "b", "c"]])
        >>> maps.num_layers, maps.num_heads, maps.sequence(0).shape
        (2, 2, (2, 2, 3, 3))
    """

    weights: list[Tensor]
    tokens: list[list[str]]
    query_mask: Tensor | None = None
    key_mask: Tensor | None = None
    key_tokens: list[list[str]] | None = None
    special: list[list[bool]] | None = None
    meta: dict[str, str] = field(default_factory=dict)
    scores: list[Tensor] | None = None

    def __post_init__(self) -> None:
        if not self.weights:
            raise AttnkitError.build("at least one layer of weights", "an empty list", "capture a model with attention layers")
        shape = tuple(self.weights[0].shape)
        for n, w in enumerate(self.weights):
            if w.dim() != 4 or tuple(w.shape) != shape:
                raise AttnkitError.build(f"every layer of shape (B, H, L, S) = {shape}", f"layer {n}: {tuple(w.shape)}", "capture one attention kind (self or cross) per AttentionMaps")
        self.weights = [w.detach().to("cpu", torch.float32) for w in self.weights]
        if self.scores is not None:
            if len(self.scores) != len(self.weights) or any(tuple(s.shape) != shape for s in self.scores):
                raise AttnkitError.build(f"one scores tensor of shape {shape} per layer ({len(self.weights)})",
                                         str([tuple(s.shape) for s in self.scores]), "pass scores=None or one per layer")
            self.scores = [s.detach().to("cpu", torch.float32) for s in self.scores]
        B, _, L, S = shape
        if self.query_mask is None:
            self.query_mask = torch.ones(B, L, dtype=torch.bool)
        if self.key_mask is None:
            self.key_mask = self.query_mask.clone() if L == S and self.key_tokens is None else torch.ones(B, S, dtype=torch.bool)
        self.query_mask = torch.as_tensor(self.query_mask, dtype=torch.bool).cpu()
        self.key_mask = torch.as_tensor(self.key_mask, dtype=torch.bool).cpu()
        if tuple(self.query_mask.shape) != (B, L) or tuple(self.key_mask.shape) != (B, S):
            raise AttnkitError.build(f"query_mask ({B}, {L}) and key_mask ({B}, {S})", f"{tuple(self.query_mask.shape)} and {tuple(self.key_mask.shape)}", "one flag per position, True = real token")
        self._check_tokens("tokens", self.tokens, self.query_mask)
        if self.key_tokens is not None:
            self._check_tokens("key_tokens", self.key_tokens, self.key_mask)
        elif L != S:
            raise AttnkitError.build("key_tokens for cross-attention (L != S)", f"L={L}, S={S} and no key_tokens", "pass key_tokens")
        if self.special is not None and [len(s) for s in self.special] != [len(t) for t in self.tokens]:
            raise AttnkitError.build("one special flag per real token", str([len(s) for s in self.special]), "pass special=None or match tokens")

    @staticmethod
    def _check_tokens(name: str, tokens: list[list[str]], mask: Tensor) -> None:
        counts = mask.sum(1).tolist()
        if [len(t) for t in tokens] != counts:
            raise AttnkitError.build(f"{name} with as many tokens as real positions per sequence {counts}", str([len(t) for t in tokens]), "drop padding tokens, keep special ones")

    # --- shape -------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.weights)

    @property
    def num_heads(self) -> int:
        return int(self.weights[0].shape[1])

    @property
    def batch_size(self) -> int:
        return int(self.weights[0].shape[0])

    @property
    def is_self_attention(self) -> bool:
        return self.key_tokens is None

    def keys_of(self, b: int) -> list[str]:
        """The real key tokens of sequence ``b``."""
        return self.tokens[b] if self.key_tokens is None else self.key_tokens[b]

    def specials_of(self, b: int) -> list[bool]:
        """Special-token flags of sequence ``b``'s real keys (all False when unknown)."""
        if self.special is None or self.key_tokens is not None:
            return [False] * len(self.keys_of(b))
        return list(self.special[b])

    def sequence(self, b: int = 0) -> np.ndarray:
        """Sequence ``b``'s weights without padding: float32 ``(N, H, l, s)``."""
        self._check_b(b)
        qi, ki = _real_positions(self.query_mask[b]), _real_positions(self.key_mask[b])
        return torch.stack([w[b][:, qi][:, :, ki] for w in self.weights]).numpy()  # (N, H, l, s)

    def scores_of(self, b: int = 0) -> np.ndarray:
        """Sequence ``b``'s pre-softmax scores without padding: float32 ``(N, H, l, s)``.

        Raises:
            AttnkitError: when the maps hold no scores (capture with ``scores=True``).
        """
        self._check_b(b)
        if self.scores is None:
            raise AttnkitError.build("maps with pre-softmax scores", "weights only",
                                     "capture with attnkit.inspect.capture(..., scores=True)")
        qi, ki = _real_positions(self.query_mask[b]), _real_positions(self.key_mask[b])
        return torch.stack([s[b][:, qi][:, :, ki] for s in self.scores]).numpy()

    def select(self, b: int) -> "AttentionMaps":
        """Sequence ``b`` alone, padding removed (batch of one)."""
        w = torch.from_numpy(self.sequence(b)).unsqueeze(1)  # (N, 1, H, l, s)
        return AttentionMaps(
            list(w.unbind(0)), [list(self.tokens[b])],
            key_tokens=None if self.key_tokens is None else [list(self.key_tokens[b])],
            special=None if self.special is None else [list(self.special[b])], meta=dict(self.meta),
        )

    def words(self) -> "AttentionMaps":
        """Word pieces joined into words: attention *to* a word = sum over its pieces, *from* a
        word = mean over its pieces (see [`attnkit.inspect.merge_word_pieces`][attnkit.inspect._words.merge_word_pieces])."""
        from ._words import merge_word_pieces

        return merge_word_pieces(self)

    def to_bertviz(self, sequence: int = 0) -> dict:
        """What BertViz's ``head_view`` / ``model_view`` take, without importing bertviz.

        Self-attention: ``{"attention": (layer tensors of shape (1, H, l, l), ...), "tokens": [...]}``;
        cross-attention: ``{"cross_attention": ..., "encoder_tokens": keys, "decoder_tokens": tokens}``.
        Padding is removed. Use: ``from bertviz import head_view; head_view(**maps.to_bertviz())``.

        Example:
            >>> import torch
            >>> maps = AttentionMaps([torch.full((1, 2, 3, 3), 1 / 3)] * 4, [["[CLS]", "hi", "[SEP]"]])
            >>> bv = maps.to_bertviz()
            >>> len(bv["attention"]), tuple(bv["attention"][0].shape), bv["tokens"]
            (4, (1, 2, 3, 3), ['[CLS]', 'hi', '[SEP]'])
        """
        layers = tuple(torch.from_numpy(w).unsqueeze(0) for w in self.sequence(sequence))  # N × (1, H, l, s)
        if self.is_self_attention:
            return {"attention": layers, "tokens": list(self.tokens[sequence])}
        return {"cross_attention": layers, "encoder_tokens": list(self.keys_of(sequence)),
                "decoder_tokens": list(self.tokens[sequence])}

    def _repr_html_(self) -> str | None:
        """Jupyter shows the interactive viewer (in its own iframe; needs the ``viz`` extra).

        The viewer is a plug-in: ``attnkit.viz`` declares it under the ``attnkit.viewers`` entry
        point (pyproject.toml), so ``inspect`` does not import ``viz`` (which imports ``inspect``)
        and a fresh kernel that only imported ``attnkit.inspect`` still finds it. ``None`` (no
        viewer installed) lets Jupyter fall back to the text repr.
        """
        viewer = _viewer()
        return None if viewer is None else viewer(self)._repr_html_()

    def _check_b(self, b: int) -> None:
        if not 0 <= b < self.batch_size:
            raise AttnkitError.build(f"a sequence index in [0, {self.batch_size})", str(b), "count sequences from 0")

    def __repr__(self) -> str:
        B, H, L, S = self.weights[0].shape
        return f"AttentionMaps(layers={self.num_layers}, B={B}, H={H}, L={L}, S={S}, lengths={self.query_mask.sum(1).tolist()})"

    # --- files -------------------------------------------------------------------------
    def save(self, path: str | Path, *, dtype: str = "float16") -> Path:
        """Write the maps to ``.npz`` (NumPy, compressed) or ``.safetensors``.

        ``dtype="float16"`` halves the file (weights in [0, 1] keep ~3 significant digits);
        pass ``"float32"`` to keep them exactly. Load with [`load`][attnkit.inspect._maps.AttentionMaps.load].

        Example:
            >>> import os, tempfile, torch
            >>> maps = AttentionMaps([torch.full((1, 1, 2, 2), 0.5)], [["hi", "there"]])
            >>> path = maps.save(os.path.join(tempfile.mkdtemp(), "maps.npz"))
            >>> AttentionMaps.load(path).tokens, float(AttentionMaps.load(path).weights[0].max())
            ([['hi', 'there']], 0.5)
        """
        path = Path(path)
        if dtype not in ("float16", "float32"):
            raise AttnkitError.build('dtype "float16" or "float32"', repr(dtype), "pick one")
        header = json.dumps({
            "format": _FORMAT, "tokens": self.tokens, "key_tokens": self.key_tokens,
            "special": self.special, "meta": self.meta,
        })
        stacked = torch.stack(self.weights).to(getattr(torch, dtype))  # (N, B, H, L, S)
        if path.suffix == ".safetensors":
            try:
                from safetensors.torch import save_file
            except ImportError:
                raise AttnkitError.build("the safetensors package", "not installed", "pip install safetensors, or save to .npz") from None
            save_file({"weights": stacked.contiguous(), "query_mask": self.query_mask.to(torch.uint8), "key_mask": self.key_mask.to(torch.uint8)},
                      str(path), metadata={"attnkit": header})
        elif path.suffix == ".npz":
            np.savez_compressed(path, weights=stacked.numpy(), query_mask=self.query_mask.numpy(),
                                key_mask=self.key_mask.numpy(), header=np.array(header))
        else:
            raise AttnkitError.build("a path ending in .npz or .safetensors", str(path), "rename the file")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "AttentionMaps":
        """Read maps written by [`save`][attnkit.inspect._maps.AttentionMaps.save] (weights come back as float32).

        Pickles are never executed (``.npz`` is read with ``allow_pickle=False``).

        Raises:
            AttnkitError: naming the path and the fix when the file is missing, of another
                kind, truncated or damaged.
        """
        path = Path(path)
        if path.suffix not in (".npz", ".safetensors"):
            raise AttnkitError.build("a path ending in .npz or .safetensors", str(path), "pass a file written by AttentionMaps.save")
        if not path.is_file():
            raise AttnkitError.build(f"a {path.suffix} file written by AttentionMaps.save",
                                     f"{'a directory' if path.is_dir() else 'no such file'}: {path}", "check the path")
        try:
            header_text, weights, qm, km = cls._read(path)
            header = json.loads(header_text)
            if not isinstance(header, dict) or header.get("format") != _FORMAT:
                fmt = header.get("format") if isinstance(header, dict) else None
                raise AttnkitError.build(f"a file written by AttentionMaps.save ({_FORMAT}) in {path}", repr(fmt)[:60],
                                         "save it with attnkit")
            return cls(list(weights.float().unbind(0)), header["tokens"], qm.bool(), km.bool(),
                       key_tokens=header["key_tokens"], special=header["special"], meta=header["meta"])
        except AttnkitError:
            raise
        except _read_errors() as err:  # numpy, zipfile, json and safetensors each raise their own kinds
            raise AttnkitError.build(f"an intact file written by AttentionMaps.save in {path}",
                                     f"a damaged or truncated file ({type(err).__name__})",
                                     "save the maps again (AttentionMaps.save)") from None

    @staticmethod
    def _read(path: Path) -> tuple[str, Tensor, Tensor, Tensor]:
        """(JSON header, weights (N, B, H, L, S), query mask, key mask) as stored."""
        if path.suffix == ".safetensors":
            try:
                from safetensors import safe_open
            except ImportError:
                raise AttnkitError.build("the safetensors package", "not installed", "pip install safetensors") from None
            with safe_open(str(path), framework="pt") as f:
                header_text = (f.metadata() or {}).get("attnkit", "{}")
                weights, qm, km = (f.get_tensor(n) for n in ("weights", "query_mask", "key_mask"))
        else:
            with np.load(path, allow_pickle=False) as f:
                header_text = str(f["header"])
                weights, qm, km = (torch.from_numpy(f[n]) for n in ("weights", "query_mask", "key_mask"))
        return header_text, weights, qm, km


@functools.lru_cache(maxsize=1)
def _viewer() -> Callable[..., Any] | None:
    """The notebook viewer registered for :class:`AttentionMaps` (entry point group
    ``attnkit.viewers``, name ``AttentionMaps``), loaded once; ``None`` if there is none."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="attnkit.viewers", name="AttentionMaps"):
        return ep.load()
    return None
