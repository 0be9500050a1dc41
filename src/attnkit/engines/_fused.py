"""The fused C++ tile path: ``unsupported``, ``forward``, ``backward`` and the lazy build.

The kernel (``csrc/flash_attention.cpp``) is FlashAttention-2 forward and backward over one
query range × one key range with causal/window/lengths, bool and float masks, biases, ALiBi,
softcap and dropout fused in the tile. It registers the torch ops
``torch.ops.attnkit_fused.forward`` / ``.backward`` (with fake kernels, so meta tensors and
``torch.compile`` see one operator each); autograd stays in the engines, which call
`forward` and `backward` below (the signatures and contract of
`attnkit.engines._kernel.forward` / ``backward``, the same as the PyTorch tile path).

Build: compiled on first use with ``torch.utils.cpp_extension`` (ninja), ``-O3 -march=native``,
cached in ``$ATTNKIT_CACHE`` (default ``~/.cache/attnkit``) under a directory keyed by the torch
version, the source hash and the CPU flags; one line on stderr while it compiles; a file lock
keeps two processes from building at once. No compiler, no ninja, a failed build, or
``ATTNKIT_NO_FUSED=1`` → `unsupported` returns the reason and the PyTorch tile path runs.
Nothing here runs at ``import attnkit``.

Example:
    >>> from attnkit.engines import _fused
    >>> reason = _fused.unsupported(spec)   # None → the fused path can run `spec`  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

from .._machine import cpu_info, cpu_vendor
from ..spec import AttentionSpec

__all__ = ["unsupported", "forward", "backward", "build", "build_status", "cache_root", "half_gemm"]

SOURCE = Path(__file__).parent / "csrc" / "flash_attention.cpp"
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_CAUSAL = {None: 0, "bottom_right": 1, "top_left": 2}

# Build state of this process: None = not tried yet, "" = loaded, else the reason it failed.
_status: str | None = None
_library: Path | None = None


# --------------------------------------------------------------------------- build


def cache_root() -> Path:
    """Where builds are cached: ``$ATTNKIT_CACHE`` or ``~/.cache/attnkit``."""
    return Path(os.environ.get("ATTNKIT_CACHE") or Path.home() / ".cache" / "attnkit")


def _cpu_flags() -> list[str]:
    """The CPU's feature flags (`attnkit._machine`, read once), else just the machine name."""
    return sorted(cpu_info()[1]) or [platform.machine()]


def _compile_flags(flags: list[str]) -> list[str]:
    """-O3 -march=native plus the ATen vector width the CPU supports (Vectorized<float> reads it)."""
    have = set(flags)
    # -fopenmp: at::parallel_for is a header template over `#pragma omp parallel` in OpenMP builds
    # of torch; without the flag it silently runs serially (measured: half the speed on 2 cores).
    cflags = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp"]
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= have:
        cflags += ["-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]
    elif {"avx2", "fma"} <= have:
        cflags += ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return cflags


def build_dir() -> Path:
    """The cache directory of this torch version × kernel source × CPU flags."""
    flags = _cpu_flags()
    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    key.update(" ".join(_compile_flags(flags) + flags).encode())
    key.update(f"{torch.__version__} {sys.version_info[:2]}".encode())
    return cache_root() / f"fused-torch{torch.__version__.replace('+', '-')}-{key.hexdigest()[:16]}"


def _library_path(directory: Path) -> Path:
    return directory / "attnkit_fused.so"


def _first_error_line(err: BaseException) -> str:
    """The first line of a compiler error that says what went wrong."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    for ln in lines:
        if "error" in ln.lower() and "error building extension" not in ln.lower():
            return ln[:300]
    return (lines[0] if lines else type(err).__name__)[:300]


def _compile(directory: Path) -> None:
    """Compile into ``directory`` (under a file lock), announcing it in one stderr line."""
    from torch.utils import cpp_extension

    directory.mkdir(parents=True, exist_ok=True)
    with _FileLock(directory / "build.lock"):
        if _library_path(directory).exists():  # another process finished it while we waited
            return
        print(f"attnkit: compiling the fused CPU kernel into {directory} (once per machine, under a minute) ...", file=sys.stderr)
        cpp_extension.load(
            name="attnkit_fused",
            sources=[str(SOURCE)],
            extra_cflags=_compile_flags(_cpu_flags()),
            extra_ldflags=["-fopenmp"],  # libgomp.so.1: the same soname torch already loaded
            build_directory=str(directory),
            is_python_module=False,
            verbose=False,
        )


class _FileLock:
    """An exclusive ``flock`` on a file (a no-op where fcntl does not exist)."""

    def __init__(self, path: Path):
        self.path, self.handle = path, None

    def __enter__(self) -> "_FileLock":
        try:
            import fcntl
        except ImportError:  # not POSIX: cpp_extension's own baton still guards the build dir
            return self
        self.handle = open(self.path, "w")
        fcntl.flock(self.handle, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            import fcntl

            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()


def _toolchain_missing() -> str | None:
    from torch.utils import cpp_extension

    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler!r} not found; install g++ or set CXX)"
    if not cpp_extension.is_ninja_available():
        return "ninja is not installed (pip install ninja)"
    return None


def build(force: bool = False) -> Path:
    """Compile (if needed) and load the kernel; returns the cached library path.

    Raises ``RuntimeError`` with a one-line reason when it cannot be built. ``force`` rebuilds.
    """
    global _status, _library
    directory = build_dir()
    lib = _library_path(directory)
    if _status == "" and not force:
        assert _library is not None
        return _library
    if force and lib.exists():
        lib.unlink()
    if not lib.exists():
        missing = _toolchain_missing()
        if missing:
            raise RuntimeError(missing)
        try:
            _compile(directory)
        except (RuntimeError, OSError, ImportError, ValueError) as err:  # compiler output → one line
            raise RuntimeError(f"build failed: {_first_error_line(err)}") from err
    if _status != "":
        torch.ops.load_library(str(lib))
        _load_direct(lib)
        _register_fakes()
        _library, _status = lib, ""
    return lib


_direct: object = None  # the library's pybind entry of the hot path op, when it imports


def _load_direct(lib: Path) -> None:
    """Import the same library as a Python module: its ``attention`` is the hot path op without the
    dispatcher (the op itself stays registered for torch.compile). A failure leaves the op."""
    global _direct
    import importlib.util

    try:
        spec = importlib.util.spec_from_file_location("attnkit_fused", lib)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        _direct = module.attention
    except (ImportError, AttributeError, OSError):
        _direct = None


def direct_attention() -> object:
    """The hot path op's direct Python entry (``None`` if the library did not import as a module)."""
    return _direct


def build_status() -> str | None:
    """Build/load on first call; ``None`` when the kernel is loaded, else why not (cached)."""
    global _status
    if os.environ.get("ATTNKIT_NO_FUSED", "") not in ("", "0"):
        return "disabled by ATTNKIT_NO_FUSED=1"
    if _status is None:
        try:
            build()
        except RuntimeError as err:
            _status = str(err).splitlines()[0] if str(err) else "build failed"
    return _status or None


def _register_fakes() -> None:
    """Shape-only kernels so meta tensors and torch.compile can trace the ops."""

    @torch.library.register_fake("attnkit_fused::forward")
    def _(q, k, v, kv_lengths, q_lengths, mask, float_mask, bias, alibi_slopes, ints, floats):
        B, H, Lb, _ = q.shape
        rows = [q.new_empty(B, H, Lb, dtype=torch.float32) for _ in range(3)]
        return q.new_empty(B, H, Lb, v.shape[-1], dtype=torch.float32), *rows

    @torch.library.register_fake("attnkit_fused::attention")
    def _(q, k, v, mask, kv_lengths, q_lengths, alibi_slopes, causal, window_left, window_right, scale, softcap,
          half_gemm):
        B, H, L, _ = q.shape
        return q.new_empty(B, H, L, v.shape[-1]), q.new_empty(B, H, L, dtype=torch.float32)

    @torch.library.register_fake("attnkit_fused::backward")
    def _(q, k, v, dout, m, l, delta, dq, dk, dv, d_float_mask, d_bias, *rest):
        return None


# --------------------------------------------------------------------------- the two functions


def unsupported(spec: AttentionSpec) -> str | None:
    """Why the fused path cannot run ``spec`` (``None`` if it can). May build on first call."""
    if spec.device.type != "cpu":
        return f"the fused kernel is CPU-only (device {spec.device.type})"
    if spec.dtype not in _DTYPES:
        return f"{spec.dtype} runs on the PyTorch tile path (the fused kernel covers float32/bfloat16/float16)"
    if spec.normalizer != "softmax":
        return "only the softmax normalizer is fused"
    if spec.score_mod is not None:
        return "a Python score_mod callable cannot be fused (use alibi/softcap/bias arguments instead)"
    return build_status()


def half_gemm() -> bool:
    """Whether bf16/fp16 inputs run half-precision tile GEMMs (else they are widened to float32).

    MKL's ``cblas_gemm_{bf16bf16,f16f16}f32`` is fast where it has native kernels (Intel CPUs with
    AMX or AVX512-BF16); on other CPUs it emulates them at fp32 speed and, measured on an AMD EPYC,
    forks an OpenMP team per call (10-40x slower). ``ATTNKIT_FUSED_HALF_GEMM=1/0`` overrides.
    """
    forced = os.environ.get("ATTNKIT_FUSED_HALF_GEMM", "")
    if forced in ("0", "1"):
        return forced == "1"
    flags = set(_cpu_flags())
    intel = "GenuineIntel" in cpu_vendor()
    return intel and bool({"amx_bf16", "avx512_bf16"} & flags)


def _gemm_dtype(dt: torch.dtype) -> torch.dtype:
    return dt if dt == torch.float32 or half_gemm() else torch.float32


def _as4d(t: Tensor | None, dtype: torch.dtype | None = None) -> Tensor | None:
    if t is None:
        return None
    t = t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))
    return t if dtype is None else t.to(dtype)


def _args(spec: AttentionSpec, i0: int, j0: int) -> tuple:
    """The spec flattened for the op: optional tensors, ints, floats."""
    left, right = spec.window if spec.window is not None else (None, None)
    threshold = int(round(spec.dropout_p * 2**32)) if spec.dropout_p > 0 else 0
    lengths = [None if t is None else t.to(torch.int64).contiguous() for t in (spec.kv_lengths, spec.q_lengths)]
    alibi = None
    if spec.alibi_slopes is not None:
        alibi = spec.alibi_slopes.to(torch.float32).expand(spec.B, spec.H).contiguous()
    ints = [
        i0,
        j0,
        spec.L,
        spec.S,
        _CAUSAL[spec.causal],
        -1 if left is None else left,
        -1 if right is None else right,
        spec.seed & (2**63 - 1),
        threshold,
    ]
    floats = [float(spec.scale), float(spec.softcap or 0.0), float(spec.dropout_p)]
    tensors = (
        *lengths,
        _as4d(spec.mask, torch.bool),
        _as4d(spec.float_mask, torch.float32),
        _as4d(spec.bias, torch.float32),
        alibi,
    )
    return tensors, ints, floats


def forward(q: Tensor, k: Tensor, v: Tensor, spec: AttentionSpec, i0: int = 0,
            j0: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Queries ``[i0, i0+Lb)`` × keys ``[j0, j0+Sb)`` of ``spec``: ``(out (B,H,Lb,E), lse, m, l (B,H,Lb))`` float32.

    ``q (B,H,Lb,D)``, ``k (B,G,Sb,D)``, ``v (B,G,Sb,E)``. ``out`` is normalized over this key
    range's visible keys; ``m``/``l`` are each row's max and sum (``lse = m + log l``); rows that see
    none: ``out = 0``, ``lse = m = -inf``, ``l = 0``.
    """
    tensors, ints, floats = _args(spec, i0, j0)
    dt = _gemm_dtype(q.dtype)
    return torch.ops.attnkit_fused.forward(
        q.to(dt).contiguous(), k.to(dt).contiguous(), v.to(dt).contiguous(), *tensors, ints, floats
    )


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
    tensors, ints, floats = _args(spec, i0, j0)
    dt = _gemm_dtype(q.dtype)
    f32 = torch.float32

    def target(t: Tensor | None) -> Tensor | None:
        # The kernel writes contiguous float32 4-D tensors; anything else goes through a temp.
        if t is None:
            return None
        return t if t.dtype == f32 and t.is_contiguous() and t.dim() == 4 else torch.zeros(_as4d(t).shape, dtype=f32)

    grads = (dq, dk, dv, d_float_mask, d_bias)
    outs = [target(t) for t in grads]
    torch.ops.attnkit_fused.backward(
        q.to(dt).contiguous(),
        k.to(dt).contiguous(),
        v.to(dt).contiguous(),
        dout.to(dt).contiguous(),
        m.to(f32).contiguous(),
        l.to(f32).contiguous(),
        delta.to(f32).contiguous(),
        *outs,
        *tensors,
        ints,
        floats,
    )
    for given, used in zip(grads, outs):
        if given is not None and used is not given:
            given += used.view(given.shape).to(given.dtype)


def timed_build(force: bool = False) -> tuple[Path, float, bool]:
    """Build (or find) the kernel: ``(library path, seconds, compiled now?)`` — for ``attnkit build``."""
    cached = not force and _library_path(build_dir()).exists()
    start = time.perf_counter()
    lib = build(force=force)
    return lib, time.perf_counter() - start, not cached
