"""The fused C++ tile path: the op wrapper (``unsupported``, ``forward``, ``backward``).

The kernel (``csrc/``) is FlashAttention-2 forward and backward over one query range × one key
range with causal/window/lengths, bool and float masks, biases, ALiBi, softcap and dropout fused
in the tile. It registers the torch ops ``torch.ops.attnkit_fused.forward`` / ``.backward``
(with fake kernels, so meta tensors and ``torch.compile`` see one operator each)
and the hot path's ``.attention``. Autograd stays in `attnkit.engines.kernel` (``attend``), which
calls the functions below: the contract of `attnkit.engines.kernel.forward` / ``backward``, the
same as the PyTorch tile path's.

The ops take the problem as **named** arguments (the schema's tail, ``csrc/params.h``
``ATTNKIT_SPEC_SCHEMA``); `spec_args` is the one place that builds them from a spec. The
build (compiler, cache, flags, lock) is `attnkit.engines.kernel.build`.

Example:
    >>> from attnkit.engines.kernel import fused
    >>> reason = fused.unsupported(spec)   # None → the fused path can run `spec`  # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...spec import AttentionSpec
from . import blocks
from .build import HALF, HALF_IF_EVEN, build_status, half_gemm

__all__ = ["CAUSAL", "DTYPES", "half_products", "unsupported", "status", "spec_args", "forward", "backward"]

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
"""The dtypes the kernel computes (the hot path checks them too)."""
CAUSAL = {None: 0, "bottom_right": 1, "top_left": 2}
"""The ops' ``causal`` codes (``AttentionSpec.causal`` → int); the hot path uses them too."""

_fakes_registered = False


def status() -> str | None:
    """Build/load the kernel on first call (and register the ops' fake kernels); ``None`` when
    loaded, else why not."""
    global _fakes_registered
    why = build_status()
    if why is None and not _fakes_registered:
        _register_fakes()
        _fakes_registered = True
    return why


def _register_fakes() -> None:
    """Shape-only kernels so meta tensors and torch.compile can trace the ops."""

    @torch.library.register_fake("attnkit_fused::forward")
    def _(q, k, v, *args, **kwargs):
        B, H, Lb, _ = q.shape  # out: (B, Lb, H, E) storage seen as (B, H, Lb, E)
        rows = [q.new_empty(B, H, Lb, dtype=torch.float32) for _ in range(3)]
        return q.new_empty(B, Lb, H, v.shape[-1], dtype=torch.float32).permute(0, 2, 1, 3), *rows

    @torch.library.register_fake("attnkit_fused::attention")
    def _(q, k, v, mask, kv_lengths, q_lengths, alibi_slopes, causal, window_left, window_right, scale, softcap,
          half_gemm):
        B, H, L, _ = q.shape  # the op's output is (B, L, H, E) storage seen as (B, H, L, E)
        return q.new_empty(B, L, H, v.shape[-1]).permute(0, 2, 1, 3), q.new_empty(B, H, L, dtype=torch.float32)

    @torch.library.register_fake("attnkit_fused::backward")
    def _(q, k, v, dout, m, l, delta, dq, dk, dv, d_float_mask, d_bias, *args, **kwargs):
        return None


def unsupported(spec: AttentionSpec) -> str | None:
    """Why the fused path cannot run ``spec`` (``None`` if it can). May build on first call."""
    if spec.device.type != "cpu":
        return f"the fused kernel is CPU-only (device {spec.device.type})"
    if spec.dtype not in DTYPES:
        return f"{spec.dtype} runs on the PyTorch tile path (the fused kernel covers float32/bfloat16/float16)"
    if spec.normalizer != "softmax":
        return "only the softmax normalizer is fused"
    if spec.score_mod is not None:
        return "a Python score_mod callable cannot be fused (use alibi/softcap/bias arguments instead)"
    return status()


def half_products(mode: int, q_shape: torch.Size, v_shape: torch.Size) -> bool:
    """Whether bf16/fp16 inputs of these ``q``/``v`` shapes multiply in half precision under
    `build.half_gemm`'s ``mode`` (else widened to float32): the one rule, for the forward/backward
    ops and the hot path's op. Shapes, not tensors: the hot path has read them already."""
    # VNNI products need even head dims, and not a range shorter than a query block (a decode
    # step: brgemm compiles a kernel per shape, and a growing cache is a new shape every step).
    native = q_shape[-1] % 2 == 0 and v_shape[-1] % 2 == 0 and q_shape[-2] >= blocks.QUERY_TILE_SMALL
    return mode == HALF or (mode == HALF_IF_EVEN and native)


def _gemm_dtype(dt: torch.dtype, q: Tensor, v: Tensor) -> torch.dtype:
    """The tile GEMMs' input dtype for ``dt`` inputs with head dims ``q``/``v`` (`half_products`)."""
    return dt if dt == torch.float32 or half_products(half_gemm(dt), q.shape, v.shape) else torch.float32


def _row_major(t: Tensor) -> bool:
    """Rows (the last dim) contiguous and no two rows overlapping: a layout the kernel reads and writes in place."""
    n = t.shape[-1]
    return (t.stride(-1) == 1 or n <= 1) and all(size <= 1 or stride >= n for size, stride in zip(t.shape[:-1], t.stride()[:-1]))


def _as4d(t: Tensor | None, dtype: torch.dtype | None = None) -> Tensor | None:
    if t is None:
        return None
    t = t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))
    return t if dtype is None else t.to(dtype)


def spec_args(spec: AttentionSpec, i0: int, j0: int) -> dict:
    """The problem of queries ``[i0, ...)`` × keys ``[j0, ...)`` of ``spec`` as the ops' named arguments."""
    left, right = spec.window if spec.window is not None else (None, None)
    alibi = None
    if spec.alibi_slopes is not None:
        alibi = spec.alibi_slopes.to(torch.float32).expand(spec.B, spec.H).contiguous()
    return dict(
        kv_lengths=None if spec.kv_lengths is None else spec.kv_lengths.to(torch.int64).contiguous(),
        q_lengths=None if spec.q_lengths is None else spec.q_lengths.to(torch.int64).contiguous(),
        mask=_as4d(spec.mask, torch.bool),
        float_mask=_as4d(spec.float_mask, torch.float32),
        bias=_as4d(spec.bias, torch.float32),
        alibi_slopes=alibi,
        i0=i0,
        j0=j0,
        L=spec.L,
        S=spec.S,
        causal=CAUSAL[spec.causal],
        window_left=-1 if left is None else left,
        window_right=-1 if right is None else right,
        seed=spec.seed & (2**63 - 1),
        dropout_threshold=int(round(spec.dropout_p * 2**32)) if spec.dropout_p > 0 else 0,
        scale=float(spec.scale),
        softcap=float(spec.softcap or 0.0),
        dropout_p=float(spec.dropout_p),
    )


def forward(q: Tensor, k: Tensor, v: Tensor, spec: AttentionSpec, i0: int = 0,
            j0: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Queries ``[i0, i0+Lb)`` × keys ``[j0, j0+Sb)`` of ``spec``: ``(out (B,H,Lb,E), lse, m, l (B,H,Lb))`` float32.

    ``q (B,H,Lb,D)``, ``k (B,G,Sb,D)``, ``v (B,G,Sb,E)``. ``out`` is normalized over this key
    range's visible keys; ``m`` is each row's max (or a point up to 8·ln 2 below it) and
    ``l = Σ exp(s - m)`` (``lse = m + log l``); rows that see none: ``out = 0``, ``lse = m = -inf``,
    ``l = 0``.
    """
    half = int(_gemm_dtype(q.dtype, q, v) == q.dtype)  # 0: half inputs widened by the op (per tile for decode)
    # The op reads any layout with contiguous rows in place (a model's (B, L, H, D) storage included).
    return torch.ops.attnkit_fused.forward(q, k, v, **spec_args(spec, i0, j0), half_gemm=half)


def backward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    dout: Tensor,
    m: Tensor,
    l: Tensor,
    delta: Tensor,
    spec: AttentionSpec,
    i0: int = 0,
    j0: int = 0,
    *,
    dq: Tensor,
    dk: Tensor,
    dv: Tensor,
    d_float_mask: Tensor | None = None,
    d_bias: Tensor | None = None,
) -> None:
    """Accumulate this block's gradients into ``dq``, ``dk``, ``dv`` (and ``d_float_mask``/``d_bias``).

    ``m``/``l``/``delta`` are the FINAL per-row max, sum and ``rowsum(dO∘O) − dlse`` of these
    queries; rows with ``l = 0`` contribute nothing.
    """
    dt = _gemm_dtype(q.dtype, q, v)
    f32 = torch.float32

    def target(t: Tensor | None) -> Tensor | None:
        # The kernel writes float32 4-D tensors in any layout with contiguous rows (dq/dk/dv in that of
        # q/k/v: a model's transposed views get their gradients without a copy); else through a temp.
        if t is None:
            return None
        return t if t.dtype == f32 and t.dim() == 4 and _row_major(t) else torch.zeros(_as4d(t).shape, dtype=f32)

    grads = (dq, dk, dv, d_float_mask, d_bias)
    outs = [target(t) for t in grads]
    torch.ops.attnkit_fused.backward(
        q.to(dt),  # read in place where rows are contiguous (the op copies anything else)
        k.to(dt),
        v.to(dt),
        dout.to(dt),
        m.to(f32).contiguous(),
        l.to(f32).contiguous(),
        delta.to(f32).contiguous(),
        *outs,
        **spec_args(spec, i0, j0),
    )
    for given, used in zip(grads, outs):
        if given is not None and used is not given:
            given += used.view(given.shape).to(given.dtype)
