"""The one tiled attention kernel: the only place in attnkit where score tiles are made.

One contract, two backends (DESIGN.md, "one tiled kernel"), over a query range × key range of a
larger problem:

- `forward` — the online softmax (FlashAttention-2, Algorithm 1) over queries
  ``[i0, i0+Lb)`` × keys ``[j0, j0+Sb)``: ``(out, lse, m, l)`` normalized over the range's visible
  keys, with each row's max ``m`` and sum ``l`` (``lse = m + log l``);
- `backward` — recompute ``P = exp(S - m) / l`` (the forward's own weights) from the *final*
  ``m, l`` and accumulate ``dQ, dK, dV`` (and d(float mask), d(bias)) with ``dS = P ∘ (dP - Δ)``
  (Algorithm 2);
- `merge` (two partials over disjoint key ranges, exact at any offset), `weights`, `delta`;
- `attend` — the one autograd function: ``attend(q, k, v, spec, fwd, bwd)``. Flash passes
  nothing (one `forward` / `backward` over all keys), decode its split-KV forward, ring its
  forward and backward drivers that rotate K/V shards between processes.

Each call runs on one of two backends with the same signature: the fused C++ kernel
(`attnkit.engines.kernel.fused`, built by `attnkit.engines.kernel.build`) or the PyTorch tile
path (`attnkit.engines.kernel.tiles`). `path` picks one and says why, `force_path` overrides it
for tests, `describe` is what ``explain`` prints. One tile rule (`attnkit.engines.kernel.blocks`)
sizes both: the C++ kernel applies it per head in cache-sized blocks per thread (compiled in as
``-D`` defines), the PyTorch path over all heads in large batched tiles (`tile_sizes`); tiling
never changes which keys a row sees, only the rounding order.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import Tensor

from ..._numerics import all_finite
from ...errors import AttnkitError
from ...softmax import SoftmaxState
from ...spec import AttentionSpec
from .tiles import Tiles, single_block, tile_sizes

__all__ = ["forward", "backward", "attend", "backward_all", "merge", "weights", "delta", "tile_sizes", "single_block",
           "path", "force_path", "describe"]

Partial = "tuple[Tensor, Tensor, Tensor, Tensor]"  # (out, lse, m, l) of a query range over a key range

# --------------------------------------------------------------------------- path selection

_forced: str | None = None
_fused_state: tuple[object | None, str] | None = None


@contextlib.contextmanager
def force_path(name: str | None) -> Iterator[None]:
    """Run every kernel call inside the block on ``"fused"``, ``"torch"`` or the automatic choice (``None``).

    Forcing ``"fused"`` on a spec the fused path cannot run raises [`AttnkitError`][attnkit.errors.AttnkitError] with the reason.
    A backward through `attend` runs on its forward's path even outside the block (it rebuilds the
    forward's weights from its row maxima and sums, so both must make the same scores). The choice
    is process-wide while the block runs: for tests and benchmarks, not for concurrent use.

    Example:
        >>> from attnkit.engines import kernel
        >>> with kernel.force_path("torch"):
        ...     pass
    """
    global _forced
    if name not in ("fused", "torch", None):
        raise AttnkitError.build('force_path("fused" | "torch" | None)', repr(name), "check the spelling")
    before, _forced = _forced, name
    try:
        yield
    finally:
        _forced = before


def _fused():
    """``(module, "")`` if ``kernel/fused.py`` imports, else ``(None, why)``; imported once, lazily."""
    global _fused_state
    if _fused_state is None:
        try:
            from . import fused as mod
        except ModuleNotFoundError as err:
            _fused_state = (None, "not built" if err.name and err.name.endswith("fused") else f"missing {err.name}")
        except Exception as err:  # a broken extension must never break attention: report it, use torch
            _fused_state = (None, f"import failed: {type(err).__name__}: {str(err).strip().splitlines()[0][:200] if str(err).strip() else ''}")
        else:
            _fused_state = (mod, "")
    return _fused_state


def path(spec: AttentionSpec) -> tuple[str, str]:
    """Which tile path runs ``spec``: ``("fused" | "torch", reason)``."""
    if _forced == "torch":
        return "torch", "forced by force_path('torch')"
    mod, why = _fused()
    if mod is not None:
        try:
            why = mod.unsupported(spec)  # type: ignore[attr-defined]
        except Exception as err:  # same guard as the import: report and fall back
            why = f"unsupported() raised {type(err).__name__}: {err}"
    if not why:
        return "fused", "forced by force_path('fused')" if _forced == "fused" else "fused C++ kernel"
    if _forced == "fused":
        raise AttnkitError.build("a spec the fused tile path runs (force_path('fused'))", why, "use force_path('torch') or None")
    return "torch", f"fused: {why}"


def describe(spec: AttentionSpec) -> str:
    """One line for ``explain``: e.g. ``"tile path: torch (fused: not built)"``."""
    name, why = path(spec)
    return f"tile path: {name} ({why})"


# --------------------------------------------------------------------------- the two functions


def forward(q: Tensor, k: Tensor, v: Tensor, spec: AttentionSpec, i0: int = 0, j0: int = 0) -> Partial:
    """Attention of queries ``[i0, i0+Lb)`` over keys ``[j0, j0+Sb)`` of ``spec``'s problem.

    Args:
        q: ``(B, H, Lb, D)``; k: ``(B, G, Sb, D)``; v: ``(B, G, Sb, E)`` — the range's slices.
        spec: the whole problem; masks, score mods, ALiBi, dropout use absolute positions.
        i0, j0: absolute position of the first query and the first key.

    Returns:
        ``out (B, H, Lb, E)`` normalized over the range's visible keys (dropout:
        ``Σ p·keep·v / ((1-p)·l)``), and per row ``(B, H, Lb)`` ``lse = m + log l``, a reference
        point ``m`` (the visible scores' max, or on the fused path up to 8·ln 2 below it: it moves
        lazily, ``csrc/row_step.h``) and the sum ``l = Σ exp(s - m)``, all in ``spec.compute_dtype``.
        Rows with no visible key in the range: ``out = 0``, ``lse = m = -inf``, ``l = 0``.
    """
    if path(spec)[0] == "fused":
        # The fused pass keeps hidden keys out of P·V itself (a row that came out non-finite in a tile
        # where it hides keys is redone over its visible keys), so its result needs no second look.
        return _fused()[0].forward(q, k, v, spec, i0, j0)  # type: ignore[union-attr]
    with torch.no_grad():
        return Tiles(q, k, v, spec, i0, j0).forward()


def backward(
    q: Tensor, k: Tensor, v: Tensor, dout: Tensor, m: Tensor, l: Tensor, delta: Tensor, spec: AttentionSpec,
    i0: int = 0, j0: int = 0, *, dq: Tensor, dk: Tensor, dv: Tensor,
    d_float_mask: Tensor | None = None, d_bias: Tensor | None = None,
) -> None:
    """Accumulate this range's gradient contributions in place.

    Args:
        dout: ``(B, H, Lb, E)`` gradient of the *final* (merged) output of these queries.
        m, l: ``(B, H, Lb)`` *final* row max and sum (over all keys, as `forward` or `merge` gives
            them); ``P = exp(s - m) / l`` is then the forward's own weights. Rows with ``l = 0`` add nothing.
        delta: ``(B, H, Lb)`` ``rowsum(dout ∘ out) - dlse`` with the final ``out`` (see `delta`).
        dq ``(B, H, Lb, D)``, dk ``(B, G, Sb, D)``, dv ``(B, G, Sb, E)``: accumulators in the compute
            dtype (views allowed). d_float_mask / d_bias: accumulators of ``spec.float_mask`` /
            ``spec.bias``'s 4-D shape (gradient = dS summed over broadcast dims), or ``None``.
    """
    if path(spec)[0] == "fused":
        fused = _fused()[0]
        if not _may_hold_garbage(spec):
            fused.backward(q, k, v, dout, m, l, delta, spec, i0, j0, dq=dq, dk=dk, dv=dv,  # type: ignore[union-attr]
                           d_float_mask=d_float_mask, d_bias=d_bias)
            return
        # As in forward: compute into fresh buffers, keep them only if every gradient is finite.
        parts = [torch.zeros_like(t) if t is not None else None for t in (dq, dk, dv, d_float_mask, d_bias)]
        fused.backward(q, k, v, dout, m, l, delta, spec, i0, j0, dq=parts[0], dk=parts[1], dv=parts[2],  # type: ignore[union-attr]
                       d_float_mask=parts[3], d_bias=parts[4])
        if all_finite(*(t for t in parts if t is not None)):
            for acc, part in zip((dq, dk, dv, d_float_mask, d_bias), parts):
                if acc is not None:
                    acc.add_(part)
            return
    with torch.no_grad():
        Tiles(q, k, v, spec, i0, j0).backward(dout, m, l, delta, dq, dk, dv, d_float_mask, d_bias)


def _may_hold_garbage(spec: AttentionSpec) -> bool:
    """K/V may hold NaN/±inf (or were not checked) and some key may be hidden from some row."""
    hides = spec.has_structured_mask or spec.mask is not None
    return spec.kv_nonfinite and hides


def delta(dout: Tensor, out: Tensor, l: Tensor, dlse: Tensor | None) -> Tensor:
    """``Δ = rowsum(dO ∘ O) - dlse`` in ``out``'s (compute) dtype; ``dlse`` ignored on empty rows (``l = 0``).

    A gradient on ``lse`` adds ``P·dlse`` to ``dS`` (``∂lse/∂s = P``), i.e. shifts ``Δ`` by ``-dlse``.
    """
    d = (dout.to(out.dtype) * out).sum(-1)
    if dlse is not None:
        d = d - dlse.to(d.dtype).masked_fill(l == 0, 0.0)
    return d


# Why the backward takes the row max m and sum l, not lse: P' = exp(s - lse) from a float
# lse = m + log l carries lse's rounding (|lse|·2⁻²⁴) into every weight of the row; rows of P'
# summed to 1 ± 1e-6 while Δ = rowsum(dO ∘ O) came from the forward's own weights, and dV and dK
# broke FlashAttention's accuracy rule on causal+window grid cases (issue 21). At a huge offset (a
# float mask of -1e30 on a whole row) log l is lost entirely and P' summed to S. exp(s - m) / l with
# the forward's m, l, exp and score products of the same shapes is the very P the forward made its
# output of: rows sum to 1 at any offset, with no second pass over the keys.


def merge(a: Partial, b: Partial) -> Partial:
    """Two partials of the same queries over disjoint key ranges → the partial over both.

    The rows' ``(m, l)`` merge as [`SoftmaxState`][attnkit.softmax.SoftmaxState]s, and each output
    weighs by its `SoftmaxState.share` of the merged sum: exact at any offset (a huge float mask on
    whole rows), where weights ``exp(lse_part - lse)`` lose ``log l`` with ``lse``'s rounding. An
    empty side (``l = 0``, ``m = -inf``) adds nothing; NaN rows stay NaN.
    """
    sa, sb = SoftmaxState(a[2], a[3]), SoftmaxState(b[2], b[3])
    merged = sa.merge(sb)
    out = (a[0] * sa.share(merged).unsqueeze(-1)).add_(b[0] * sb.share(merged).unsqueeze(-1))
    return out, merged.lse, merged.m, merged.l


def weights(q: Tensor, k: Tensor, spec: AttentionSpec, i0: int = 0, j0: int = 0) -> Tensor:
    """Exact normalized weights ``(B, H, Lb, Sb)`` (compute dtype), rebuilt tile by tile.

    Computed as ``exp(s - m) / l`` from a first pass over the tiles (see ``Tiles.weights``), so
    they round like a plain softmax. Hidden entries and empty rows give 0. Weights are before
    dropout. Always the PyTorch tile path (the result is L×S anyway).
    """
    with torch.no_grad():
        return Tiles(q, k, k[..., :0], spec, i0, j0).weights()



def _grad_extras(spec: AttentionSpec) -> tuple[list[str], list[Tensor]]:
    """The float mask / bias tensors (4-D views of the user's) that autograd may differentiate."""
    names = [n for n in ("float_mask", "bias") if getattr(spec, n) is not None]
    return names, [getattr(spec, n) for n in names]


Forward = Callable[[Tensor, Tensor, Tensor, AttentionSpec], Partial]
"""``fwd(q, k, v, spec) -> (out, lse, m, l)`` in the compute dtype, over the whole problem."""
Backward = Callable[..., "tuple[Tensor, Tensor, Tensor]"]
"""``bwd(q, k, v, out, m, l, dout, dlse, spec, d_extras) -> (dq, dk, dv)`` in the compute dtype;
``d_extras`` maps ``"float_mask"`` / ``"bias"`` to a zeroed accumulator (or ``None``) to add into."""


def backward_all(q: Tensor, k: Tensor, v: Tensor, out: Tensor, m: Tensor, l: Tensor, dout: Tensor,
                 dlse: Tensor | None, spec: AttentionSpec, d_extras: dict[str, Tensor | None]) -> tuple[Tensor, Tensor, Tensor]:
    """`attend`'s default backward: one kernel `backward` over all keys, recomputing P from ``m, l``."""
    ct = spec.compute_dtype
    # In q/k/v's own layout (a model's transposed views), so autograd passes them on without a copy.
    dq, dk, dv = (torch.zeros_like(t, dtype=ct) for t in (q, k, v))
    backward(q, k, v, dout, m, l, delta(dout, out, l, dlse), spec, dq=dq, dk=dk, dv=dv,
             d_float_mask=d_extras.get("float_mask"), d_bias=d_extras.get("bias"))
    return dq, dk, dv


def attend(q: Tensor, k: Tensor, v: Tensor, spec: AttentionSpec, fwd: Forward | None = None,
           bwd: Backward | None = None) -> tuple[Tensor, Tensor]:
    """``(out in q's dtype, lse)`` of the whole problem, differentiable when ``spec.needs_grad``.

    ``fwd`` computes the forward (default: one `forward` over all keys; decode passes its split-KV
    forward, ring its rotation over K/V shards); ``bwd`` the backward from the saved ``q, k, v,
    out, m, l`` (default `backward_all`; ring passes its rotation). The one autograd function of
    the engines: it saves no probabilities, only ``q, k, v, out`` and the rows' ``m, l`` (and a
    float mask or bias that requires grad).
    """
    fwd = forward if fwd is None else fwd
    bwd = backward_all if bwd is None else bwd
    if spec.needs_grad:
        return _Attend.apply(q, k, v, spec, fwd, bwd, *_grad_extras(spec)[1])
    with torch.no_grad():
        out, lse = fwd(q, k, v, spec)[:2]
    return out.to(q.dtype), lse


class _Attend(torch.autograd.Function):
    """Autograd for every engine on the kernel: saves ``q, k, v, out, m, l`` (and a float mask or
    bias that requires grad), never the probabilities."""

    @staticmethod
    def forward(ctx, q, k, v, spec: AttentionSpec, fwd: Forward, bwd: Backward, *extras):  # type: ignore[override]
        out, lse, m, l = fwd(q, k, v, spec)
        # The backward rebuilds the forward's weights from m and l: it must run the same tile path
        # (a test that forces one for the forward gets it for the backward too).
        ctx.spec, ctx.bwd, ctx.forced = spec, bwd, _forced
        ctx.save_for_backward(q, k, v, out, m, l, *extras)
        ctx.set_materialize_grads(False)
        return out.to(q.dtype), lse

    @staticmethod
    def backward(ctx, dout, dlse):  # type: ignore[override]
        q, k, v, out, m, l, *extras = ctx.saved_tensors
        spec: AttentionSpec = ctx.spec
        dout = torch.zeros_like(out) if dout is None else dout
        ct = spec.compute_dtype
        names = _grad_extras(spec)[0]
        need = ctx.needs_input_grad[6:]
        d_ex = {n: torch.zeros(t.shape, dtype=ct, device=t.device) if r else None for n, t, r in zip(names, extras, need)}
        with force_path(ctx.forced):
            dq, dk, dv = ctx.bwd(q, k, v, out, m, l, dout, dlse, spec, d_ex)
        d_extras = [None if d is None else d.to(t.dtype) for d, t in zip(d_ex.values(), extras)]
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None, *d_extras
