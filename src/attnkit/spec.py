"""The checked, normalized description of one attention call that every engine receives.

[`AttentionSpec.build`][attnkit.spec.AttentionSpec.build] is the one place that checks the arguments of an attention call
and builds its spec ([`attnkit.attention`][attnkit.functional.attention], [`attnkit.explain`][attnkit.functional.explain] and ring attention
call it); engines read the spec and never re-validate. Index tensors follow the FlexAttention convention:
``b``, ``h``, ``i``, ``j`` broadcast against a ``(B, H, L, S)`` block of scores.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable, NamedTuple, Union

import torch
from torch import Tensor

from ._devices import check_data
from ._numerics import all_finite
from .errors import AttnkitError
from .normalizers import NORMALIZERS
from .softmax import compute_dtype, softmax

__all__ = ["AttentionSpec", "AttentionOutput", "BlockIndex", "ScoreMod", "Normalizer"]

ScoreMod = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]
"""``score_mod(score, b, h, i, j) -> score``, elementwise on the scaled score."""

Normalizer = Union[str, Callable[..., Tensor]]


class AttentionOutput(NamedTuple):
    """What [`attnkit.attention`][attnkit.functional.attention] returns when ``return_lse`` or ``return_weights`` is set.

    ``out`` is ``(B, H, L, E)`` in the input dtype; ``lse`` is ``(B, H, L)`` float32 (float64
    for float64 input), ``-inf`` for rows with no visible key; ``weights`` is ``(B, H, L, S)``,
    the normalized attention probabilities (before dropout). Unrequested fields are ``None``.
    """

    out: Tensor
    lse: Tensor | None = None
    weights: Tensor | None = None


class BlockIndex(NamedTuple):
    """Broadcast index tensors of a block of scores: ``b (Bb,1,1,1)``, ``h (1,Hh,1,1)``,
    ``i (1,1,Li,1)``, ``j (1,1,1,Sj)`` (int64, absolute positions)."""

    b: Tensor
    h: Tensor
    i: Tensor
    j: Tensor

    @classmethod
    def ranges(
        cls, b: range | Tensor, h: range | Tensor, i: range, j: range, device: torch.device | str | None = None
    ) -> "BlockIndex":
        """Index tensors for the given ranges (or index tensors) of each axis."""

        def as_tensor(r: range | Tensor) -> Tensor:
            if isinstance(r, Tensor):
                return r.to(device=device, dtype=torch.int64).reshape(-1)
            return torch.arange(r.start, r.stop, dtype=torch.int64, device=device)

        return cls(
            as_tensor(b).view(-1, 1, 1, 1),
            as_tensor(h).view(1, -1, 1, 1),
            as_tensor(i).view(1, 1, -1, 1),
            as_tensor(j).view(1, 1, 1, -1),
        )

    def gather(self, t: Tensor) -> Tensor:
        """This block of a ``(B|1, H|1, L|1, S|1)`` tensor (size-1 dims broadcast)."""
        picks = [ix if size != 1 else torch.zeros_like(ix) for ix, size in zip(self, t.shape)]
        return t[picks[0], picks[1], picks[2], picks[3]]


@dataclass(frozen=True)
class AttentionSpec:
    """One attention call, validated. Shapes use the legend ``B, H, G, L, S, D, E`` below.

    Attributes:
        B: batch size.
        H: query heads.
        G: key/value heads (``H % G == 0``).
        L: query length.
        S: key length.
        D: query/key head dim.
        E: value head dim.
        scale: multiplier of ``q·k`` (default ``1/√D``).
        causal: ``None``, ``"bottom_right"`` or ``"top_left"``.
        window: ``(left, right)`` with ``None`` for an unbounded side, or ``None``.
        kv_lengths: ``(B,)`` int64 key lengths or ``None``.
        q_lengths: ``(B,)`` int64 query lengths or ``None``.
        mask: boolean ``(B|1, H|1, L, S)`` tensor (True = may attend) or ``None``.
        float_mask: float ``(B|1, H|1, L|1, S|1)`` mask added to the scores, or ``None``.
        bias: float ``(B|1, H|1, L|1, S|1)`` bias added to the scores, or ``None``.
        score_mod: ``score_mod(score, b, h, i, j)`` or ``None``.
        alibi_slopes: float ``(B, H)`` tensor or ``None``.
        softcap: ``c`` in ``c·tanh(s/c)`` or ``None``.
        normalizer: ``"softmax"``, ``"sparsemax"``, ``"entmax15"``, ``"sigmoid"`` or a callable
            ``f(scores, dim=-1, mask=...)``.
        dropout_p: dropout probability.
        seed: the counter-based dropout generator's seed.
        return_lse: the caller asked for the log-sum-exp.
        return_weights: the caller asked for the weights.
        offset_bounds: Python-int ``(min, max)`` over the batch of the query alignment offset,
            for block skipping without syncs.
        kv_bounds: Python-int ``(min, max)`` over the batch of the key lengths.
        q_bounds: Python-int ``(min, max)`` over the batch of the query lengths.
        q_nonfinite: whether the query may hold NaN or ±inf (``True`` when unknown: the check is
            skipped where it would cost as much as the attention itself, e.g. for decoding shapes).
        kv_nonfinite: the same for the keys and values. Engines use it to keep hidden keys from
            influencing anything and to decline specs they would get wrong.
        needs_grad: autograd will differentiate the result (some engines then decline).
    """

    B: int
    H: int
    G: int
    L: int
    S: int
    D: int
    E: int
    dtype: torch.dtype
    device: torch.device
    scale: float
    causal: str | None = None
    window: tuple[int | None, int | None] | None = None
    kv_lengths: Tensor | None = None
    q_lengths: Tensor | None = None
    mask: Tensor | None = None
    float_mask: Tensor | None = None
    bias: Tensor | None = None
    score_mod: ScoreMod | None = None
    alibi_slopes: Tensor | None = None
    softcap: float | None = None
    normalizer: Normalizer = "softmax"
    dropout_p: float = 0.0
    seed: int = 0
    return_lse: bool = False
    return_weights: bool = False
    offset_bounds: tuple[int, int] = (0, 0)
    kv_bounds: tuple[int, int] = (0, 0)
    q_bounds: tuple[int, int] = (0, 0)
    q_nonfinite: bool = True
    kv_nonfinite: bool = True
    needs_grad: bool = False

    @property
    def compute_dtype(self) -> torch.dtype:
        """float64 for float64 inputs, float32 otherwise (softmax, LSE and accumulation)."""
        return compute_dtype(self.dtype)

    @property
    def has_structured_mask(self) -> bool:
        return (
            self.causal is not None or self.window is not None or self.kv_lengths is not None or self.q_lengths is not None
        )

    @property
    def has_score_mods(self) -> bool:
        return any(
            x is not None for x in (self.float_mask, self.bias, self.score_mod, self.alibi_slopes, self.softcap)
        )

    def align_offset(self) -> Tensor | int:
        """Where query ``i`` sits among the keys: aligned position ``p = i + offset``.

        ``0`` for top-left alignment; otherwise bottom-right, ``S - L``, or per batch
        ``kv_lengths[b] - q_lengths[b]`` (shape ``(B, 1, 1, 1)``) when lengths are given.
        """
        if self.causal == "top_left":
            return 0
        if self.kv_lengths is None and self.q_lengths is None:
            return self.S - self.L
        kv = self.kv_lengths if self.kv_lengths is not None else torch.full((self.B,), self.S, device=self.device)
        ql = self.q_lengths if self.q_lengths is not None else torch.full((self.B,), self.L, device=self.device)
        return (kv - ql).view(-1, 1, 1, 1)

    @classmethod
    def build(cls, q: Tensor, k: Tensor, v: Tensor, *, mask=None, causal=False, window=None, kv_lengths=None,
              q_lengths=None, scale=None, score_mod=None, bias=None, alibi_slopes=None, softcap=None,
              normalizer="softmax", dropout_p=0.0, seed=None, return_lse=False, return_weights=False,
              shards: int = 1) -> "AttentionSpec":
        """Check the arguments of [`attnkit.attention`][attnkit.functional.attention] and build their spec (the one builder).

        Takes ``query (B, H, L, D)``, ``key (B, G, S, D)``, ``value (B, G, S, E)`` and the options
        of [`attnkit.attention`][attnkit.functional.attention] (same names, types and defaults; documented there).
        ``shards=P`` says that query and key are one of ``P`` equal shards of their sequences
        (ring attention): the spec's ``L`` and ``S`` are then the full lengths ``P·L`` and
        ``P·S``, and masks and lengths are checked against those.

        Raises:
            AttnkitError: for mismatched shapes, dtypes or devices, or invalid options.

        Example:
            >>> import torch
            >>> from attnkit.spec import AttentionSpec
            >>> q = torch.randn(2, 4, 3, 8)
            >>> spec = AttentionSpec.build(q, q[:, :2], q[:, :2], causal=True, kv_lengths=torch.tensor([3, 2]))
            >>> spec.G, spec.causal, spec.offset_bounds, spec.kv_bounds
            (2, 'bottom_right', (-1, 0), (2, 3))
        """
        _check_qkv(q, k, v)
        B, H, L, D = q.shape
        G, S, E = k.shape[1], k.shape[2], v.shape[3]
        L, S = L * shards, S * shards
        dims = (B, H, L, S)
        mask = _check_4d("mask", mask, q, dims)
        float_mask = None
        if mask is not None and mask.dtype != torch.bool:
            if not mask.is_floating_point():
                raise AttnkitError.build("a boolean (True = attend) or float (additive) mask", str(mask.dtype), "use mask.bool()")
            float_mask, mask = mask, None
        bias = _check_4d("bias", bias, q, dims)
        if bias is not None and not bias.is_floating_point():
            raise AttnkitError.build("a floating bias", str(bias.dtype), "use bias.float()")
        kv = _check_lengths("kv_lengths", kv_lengths, B, S, q.device)
        ql = _check_lengths("q_lengths", q_lengths, B, L, q.device)
        causal_n = normalize_causal(causal)
        if alibi_slopes is not None:
            check_data("alibi_slopes", alibi_slopes)
            alibi_slopes = torch.as_tensor(alibi_slopes, device=q.device)
            if alibi_slopes.shape not in ((H,), (B, H)) or not alibi_slopes.is_floating_point():
                raise AttnkitError.build(f"float alibi_slopes of shape ({H},) or ({B}, {H})", _shape(alibi_slopes), "use attnkit.alibi_slopes(H)")
            alibi_slopes = alibi_slopes.to(compute_dtype(q.dtype)).expand(B, H)
        if softcap is not None:
            softcap = _real("softcap", softcap, fix="pass a finite cap > 0 such as softcap=50.0 (Gemma 2), or None")
            if not softcap > 0:
                raise AttnkitError.build("softcap > 0 or None", repr(softcap), "e.g. softcap=50.0 (Gemma 2)")
        if isinstance(normalizer, str):
            if normalizer not in _NORMALIZERS:
                raise AttnkitError.build(f"normalizer in {_NORMALIZERS} or a callable", repr(normalizer), "check the spelling")
        elif not callable(normalizer):
            raise AttnkitError.build("normalizer name or callable", type(normalizer).__name__, f"use one of {_NORMALIZERS}")
        else:
            normalizer = _normalizer_name(normalizer)
        if return_lse and normalizer != "softmax":
            raise AttnkitError.build("return_lse only with normalizer='softmax'", f"normalizer={normalizer!r}",
                                     "the log-normalizer is a softmax notion; drop return_lse")
        dropout_p = _real("dropout_p", dropout_p, fix="pass a probability such as 0.1")
        if not 0.0 <= dropout_p < 1.0:
            raise AttnkitError.build("dropout_p in [0, 1)", repr(dropout_p), "pass e.g. 0.1")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
            raise AttnkitError.build("seed as an int or None", repr(seed), "pass e.g. seed=0, or None to draw one")
        if dropout_p > 0 and seed is None:
            seed = draw_seed()
        if scale is None:
            scale = 1.0 / math.sqrt(D) if D > 0 else 1.0
        scale = _real("scale", scale, fix="pass a finite multiplier such as 1/sqrt(D), or None for that default")
        for name, flag in (("return_lse", return_lse), ("return_weights", return_weights)):
            if not isinstance(flag, bool):
                raise AttnkitError.build(f"{name} as a bool", repr(flag), f"pass {name}=True or False")
        extras = [t for t in (float_mask, bias) if t is not None]
        needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, *extras))
        q_nonfinite = not all_finite(q)
        kv_nonfinite = q.shape[2] < _KV_CHECK_MIN_QUERIES or not all_finite(k, v)

        def bounds(t: Tensor | None, default: int) -> tuple[int, int]:
            if t is None or B == 0:
                return (default, default)
            return int(t.min()), int(t.max())

        spec = cls(
            B=B, H=H, G=G, L=L, S=S, D=D, E=E, dtype=q.dtype, device=q.device, scale=float(scale), causal=causal_n,
            window=normalize_window(window), kv_lengths=kv, q_lengths=ql, mask=mask, float_mask=float_mask, bias=bias,
            score_mod=score_mod, alibi_slopes=alibi_slopes, softcap=softcap, normalizer=normalizer,
            dropout_p=float(dropout_p), seed=int(seed or 0), return_lse=return_lse, return_weights=return_weights,
            kv_bounds=bounds(kv, S), q_bounds=bounds(ql, L),
            q_nonfinite=q_nonfinite, kv_nonfinite=kv_nonfinite, needs_grad=needs_grad,
        )
        # The alignment rule lives in align_offset alone; its bounds are set once, before the spec is shared.
        offset = spec.align_offset()
        offsets = (offset, offset) if isinstance(offset, int) else bounds(offset, S - L)
        object.__setattr__(spec, "offset_bounds", offsets)
        return spec


# --------------------------------------------------------------------------- argument checks

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_NORMALIZERS = ("softmax", "sparsemax", "entmax15", "sigmoid")


def _shape(t: Tensor) -> str:
    return str(tuple(t.shape))


def _check_qkv(q: Tensor, k: Tensor, v: Tensor) -> None:
    for name, t in (("query", q), ("key", k), ("value", v)):
        if not isinstance(t, Tensor):
            raise AttnkitError.build(f"{name} to be a torch.Tensor", type(t).__name__, "convert with torch.as_tensor")
        if t.dim() != 4:
            raise AttnkitError.build(
                f"{name} of shape (B, {'H' if name == 'query' else 'G'}, {'L' if name == 'query' else 'S'}, "
                f"{'E' if name == 'value' else 'D'})",
                f"{t.dim()}-D {_shape(t)}",
                "add a head dim with .unsqueeze(1), or split heads with .view(B, L, H, D).transpose(1, 2)",
            )
        if t.dtype not in _FLOATS:
            raise AttnkitError.build(f"{name} of a floating dtype {_FLOATS}", str(t.dtype), f"use {name}.float()")
        if t.dtype != q.dtype:
            raise AttnkitError.build(f"{name} of dtype {q.dtype} like query", str(t.dtype), f"cast with .to({q.dtype})")
        if t.device != q.device:
            raise AttnkitError.build(f"{name} on {q.device} like query", str(t.device), f"move it with .to('{q.device}')")
        if t.device.type == "meta":
            raise AttnkitError.build(f"{name} with data (a cpu or cuda tensor)", "a meta tensor (shape only)",
                                     "materialize it, e.g. torch.empty_like(t, device='cpu'), or trace with torch.compile")
    B, H, L, D = q.shape
    if k.shape[0] != B or k.shape[3] != D:
        raise AttnkitError.build(f"key of shape (B, G, S, D) with B={B}, D={D} like query", _shape(k), "match the batch and head dim")
    G, S = k.shape[1], k.shape[2]
    if G == 0 or H % G != 0:
        raise AttnkitError.build(
            f"key heads G dividing query heads H={H} (MHA G=H, GQA, MQA G=1)", f"G={G}", "repeat or regroup key/value heads"
        )
    if tuple(v.shape[:3]) != (B, G, S):
        raise AttnkitError.build(f"value of shape (B, G, S, E) = ({B}, {G}, {S}, E) like key", _shape(v), "match key's first three dims")


def _check_lengths(name: str, lengths: Tensor | None, B: int, n: int, device: torch.device) -> Tensor | None:
    if lengths is None:
        return None
    check_data(name, lengths)
    lengths = torch.as_tensor(lengths, device=device)
    if lengths.shape != (B,) or lengths.is_floating_point() or lengths.dtype == torch.bool:
        raise AttnkitError.build(f"{name} as an integer tensor of shape ({B},)", f"{lengths.dtype} {_shape(lengths)}", "one length per batch row")
    if B and (int(lengths.min()) < 0 or int(lengths.max()) > n):
        raise AttnkitError.build(f"{name} in [0, {n}]", str(lengths.tolist()), "lengths count real (non-padding) positions")
    return lengths.to(torch.int64)


def _check_4d(name: str, t: Tensor | None, q: Tensor, dims: tuple[int, int, int, int]) -> Tensor | None:
    """A mask/bias broadcastable to (B, H, L, S), returned as a 4-D view."""
    if t is None:
        return None
    if not isinstance(t, Tensor):
        raise AttnkitError.build(f"{name} to be a tensor", type(t).__name__, "pass a torch.Tensor")
    if t.device != q.device:
        raise AttnkitError.build(f"{name} on {q.device}", str(t.device), f"move it with .to('{q.device}')")
    try:
        if torch.broadcast_shapes(t.shape, dims) != torch.Size(dims):
            raise RuntimeError
    except RuntimeError:
        raise AttnkitError.build(
            f"{name} broadcastable to (B, H, L, S) = {dims}", _shape(t), "use shape (B|1, H|1, L|1, S|1)"
        ) from None
    while t.dim() < 4:
        t = t.unsqueeze(0)
    return t


def _real(name: str, value: object, *, fix: str) -> float:
    """A finite real number (int, float, numpy scalar, 0-d tensor), or an AttnkitError."""
    if isinstance(value, Tensor) and value.numel() == 1 and value.dtype != torch.bool:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
        raise AttnkitError.build(f"{name} as a finite number", repr(value), fix)
    return float(value)


# Up to this many queries, a pass over K and V to look for NaN/inf would cost about as much as
# the attention itself (decoding); the spec then says "unknown" and engines take care anyway.
_KV_CHECK_MIN_QUERIES = 17


def _normalizer_name(fn: Callable[..., Tensor]) -> Normalizer:
    """Map attnkit's own normalizer functions to their names, so engines can recognize them."""
    known = {softmax: "softmax", **{f: n for n, f in NORMALIZERS.items()}}
    return known.get(fn, fn)


# The argument conventions the builder normalizes (masks and dropout re-export them).
def normalize_causal(causal: bool | str | None) -> str | None:
    """``False``/``None`` → ``None``; ``True``/``"bottom_right"`` → ``"bottom_right"``; ``"top_left"`` stays."""
    if causal is None or causal is False:
        return None
    if causal is True or causal == "bottom_right":
        return "bottom_right"
    if causal == "top_left":
        return "top_left"
    raise AttnkitError.build(
        'causal in (False, True, "bottom_right", "top_left")',
        repr(causal),
        'use True for KV-cache style alignment or "top_left" for torch SDPA is_causal',
    )


def normalize_window(window: tuple[int | None, int | None] | None) -> tuple[int | None, int | None] | None:
    """Validate ``(left, right)``; each side a non-negative int or ``None`` (unbounded)."""
    if window is None:
        return None
    if not isinstance(window, (tuple, list)) or len(window) != 2:
        raise AttnkitError.build("window=(left, right)", repr(window), "pass e.g. window=(256, 0)")
    for side in window:
        if side is not None and (isinstance(side, bool) or not isinstance(side, int) or side < 0):
            raise AttnkitError.build(
                "window sides to be non-negative ints or None", repr(window), "e.g. window=(128, None)"
            )
    left, right = window
    return None if left is None and right is None else (left, right)


def draw_seed(generator: torch.Generator | None = None) -> int:
    """A fresh 62-bit seed from torch's RNG (so ``torch.manual_seed`` makes dropout reproducible)."""
    return int(torch.randint(0, 2**62, (), generator=generator).item())
