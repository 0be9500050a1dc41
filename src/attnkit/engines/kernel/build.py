"""The build of the fused C++ kernel: compiler flags, cache directory, file lock, loading.

Compiled on first use with ``torch.utils.cpp_extension`` (ninja) from every ``.cpp`` in ``csrc/``
into one library, ``-O3 -march=native``, cached in ``$ATTNKIT_CACHE`` (default
``~/.cache/attnkit``) under a directory keyed by the torch version, the hash of every file in
``csrc/`` (a changed header rebuilds too), the compiler flags (the tile rule of `blocks` among
them) and the CPU flags; one line on stderr while it compiles;
a file lock keeps two processes from building at once. No compiler, no ninja, a failed build, or
``ATTNKIT_NO_FUSED=1`` → `build_status` returns the reason and the PyTorch tile path runs.
Nothing here runs at ``import attnkit``; ``attnkit build`` calls `timed_build`.

Example:
    >>> from attnkit.engines.kernel import build
    >>> reason = build.build_status()   # None → the kernel is loaded  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from ..._machine import cpu_info, cpu_vendor
from . import blocks

__all__ = ["build", "timed_build", "build_status", "build_dir", "cache_root", "direct_attention", "half_gemm"]

CSRC = Path(__file__).parent / "csrc"
# CPU flags of native half-precision products in VNNI pairs, the B layout brgemm is given (csrc/gemm.h):
# AMX tiles or AVX512-BF16 dot products for bf16; for fp16 only AMX-FP16 tiles. AVX512-FP16 has no
# pair layout, and brgemm there misreads pairs (measured on a Xeon with avx512_fp16 and no AMX: fp16
# results off by ~1; PyTorch's own `could_pack(kHalf)` asks for amx_fp16 too).
NATIVE_BF16 = frozenset({"amx_bf16", "avx512_bf16"})
NATIVE_FP16 = frozenset({"amx_fp16"})

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
    """-O3 -march=native, the tile rule (`blocks.defines`) and the ATen vector width the CPU supports."""
    have = set(flags)
    # -fopenmp: at::parallel_for is a header template over `#pragma omp parallel` in OpenMP builds
    # of torch; without the flag it silently runs serially (measured: half the speed on 2 cores).
    cflags = ["-O3", "-march=native", "-fno-math-errno", "-fopenmp", *blocks.defines()]
    # Native bf16 / fp16 tile products through oneDNN's brgemm (csrc/gemm.h) where the CPU has them.
    cflags.append(f"-DATTNKIT_NATIVE_BF16={int(bool(NATIVE_BF16 & have))}")
    cflags.append(f"-DATTNKIT_NATIVE_FP16={int(bool(NATIVE_FP16 & have))}")
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= have:
        cflags += ["-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]
    elif {"avx2", "fma"} <= have:
        cflags += ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return cflags


def build_dir() -> Path:
    """The cache directory of this torch version × kernel sources (every file in ``csrc/``) × CPU flags."""
    flags = _cpu_flags()
    key = hashlib.sha256()
    for path in sorted(p for p in CSRC.iterdir() if p.suffix in (".cpp", ".h")):
        key.update(path.name.encode() + b"\0" + path.read_bytes())
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
            sources=[str(p) for p in sorted(CSRC.glob("*.cpp"))],
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


WIDEN, HALF_IF_EVEN, HALF = 0, 1, 2  # half_gemm's modes (fused.half_products applies them)


def half_gemm(dtype: torch.dtype) -> int:
    """How ``dtype`` (bf16 / fp16) inputs are multiplied: `WIDEN` (to float32), `HALF_IF_EVEN` (in
    half precision when both head dims are even and the query range is at least a query block,
    ``blocks.QUERY_TILE_SMALL`` rows; else widened) or `HALF` (always in half precision).

    Where the CPU multiplies ``dtype`` itself (`NATIVE_BF16` / `NATIVE_FP16` flags) the tile
    products go through oneDNN's brgemm in VNNI pairs (compiled in; even head dims). MKL's
    ``cblas_gemm_{bf16bf16,f16f16}f32`` takes the rest: fast where it has native kernels (Intel
    CPUs with AMX or AVX512-BF16); elsewhere it emulates them at fp32 speed and, measured on an AMD
    EPYC, forks an OpenMP team per call (10-40x slower), so odd head dims are widened there. On an
    Intel CPU with AVX512-BF16 but no AMX, float32 products beat both (measured on a Xeon,
    2026-12-07, `B=1 H=8 L=4096 D=64`: bf16 forward 199 ms widened vs 287-297 ms in half precision,
    forward+backward 706 vs 1131-1228 ms; fp16 forward 162 vs 202 ms); its decode steps too, since
    their rows multiply in registers with bf16 dot products (`bench_half_decode.py --products`: one
    row per head 1.01-1.04x MKL's bf16 GEMV, a GQA group 1.05-1.44x, ``L=16`` 1.13-1.21x; a step
    of 8 queries is the one loss, 0.86x).
    ``ATTNKIT_FUSED_HALF_GEMM=1/0`` forces `HALF` / `WIDEN`.
    """
    forced = os.environ.get("ATTNKIT_FUSED_HALF_GEMM", "")
    if forced in ("0", "1"):
        return HALF if forced == "1" else WIDEN
    return _half_gemm_here(dtype)


@functools.lru_cache(maxsize=None)
def _half_gemm_here(dtype: torch.dtype) -> int:
    flags, intel = set(_cpu_flags()), "GenuineIntel" in cpu_vendor()
    if intel and "amx_bf16" in flags:
        return HALF
    if intel and NATIVE_BF16 & flags:
        return WIDEN
    return HALF_IF_EVEN if (NATIVE_BF16 if dtype == torch.bfloat16 else NATIVE_FP16) & flags else WIDEN


def timed_build(force: bool = False) -> tuple[Path, float, bool]:
    """Build (or find) the kernel: ``(library path, seconds, compiled now?)`` — for ``attnkit build``."""
    cached = not force and _library_path(build_dir()).exists()
    start = time.perf_counter()
    lib = build(force=force)
    return lib, time.perf_counter() - start, not cached
