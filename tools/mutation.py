"""Plant realistic bugs in attnkit one at a time and check that the test suite catches each one.

    .venv/bin/python tools/mutation.py                 # every mutant (tens of minutes: C++ mutants rebuild)
    .venv/bin/python tools/mutation.py --list          # the mutants, and whether each still applies
    .venv/bin/python tools/mutation.py --only C1 P3    # some of them
    .venv/bin/python tools/mutation.py --no-baseline   # skip the unmutated run of the test files
    .venv/bin/python tools/mutation.py --tests test_properties.py   # what one test file catches alone

Each mutant is ``(file, exact old snippet, new snippet, test files)``. It is applied to a fresh
copy of ``src/`` and ``tests/`` in a temporary directory (the worktree is never edited), the
copy is put first on ``PYTHONPATH`` and its relevant test files run with ``pytest -x -q``:

- **killed**: pytest failed (or timed out): some test caught the bug;
- **survived**: every test passed with the bug in place — a hole in the suite;
- **STALE**: the old snippet is not in the file exactly once (the code changed): refresh the
  mutant, it tests nothing now.

C++ mutants rebuild the fused kernel: the whole run uses a temporary ``ATTNKIT_CACHE`` (the
kernel cache is keyed by the source hash, so each mutant gets its own build and the user's cache
is never touched), and ``CI=1`` so that a kernel that fails to build fails ``test_fused.py``.
Before the mutants, the unmutated copy runs every test file once (a failing baseline would make
every mutant look killed). Exit status: 0 when every mutant is killed, 1 otherwise.

Not collected by pytest (it lives in ``tools/``); it need not run in CI.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CSRC = "src/attnkit/engines/kernel/csrc/"
PARAMS, ROW_STEP = CSRC + "params.h", CSRC + "row_step.h"
FORWARD, BACKWARD, GEMM = CSRC + "forward.cpp", CSRC + "backward.cpp", CSRC + "gemm.h"
TILES = "src/attnkit/engines/kernel/tiles.py"
BLOCKS = "src/attnkit/engines/kernel/blocks.py"  # the tile rule (compiled into the C++ as -D defines)
DECODE = "src/attnkit/engines/decode.py"

# Cheapest first: with -x the first failing file ends the run of a killed mutant early.
KERNEL_TESTS = ("test_fused.py", "test_decode.py", "test_flash.py", "test_attention.py", "test_exactness.py",
                "test_properties.py", "test_ring.py")
TILE_TESTS = ("test_decode.py", "test_flash.py", "test_attention.py", "test_exactness.py", "test_properties.py",
              "test_ring.py")
MERGE_TESTS = ("test_merge.py", "test_decode.py", "test_properties.py", "test_ring.py")
HOT_TESTS = ("test_hot.py", "test_exactness.py", "test_fused.py", "test_attention.py")
DISPATCH_TESTS = ("test_attention.py", "test_exactness.py", "test_cli_explain.py", "test_properties.py")


@dataclass(frozen=True)
class Mutant:
    id: str
    what: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]

    @property
    def rebuilds(self) -> bool:
        return self.file.endswith((".cpp", ".h"))


MUTANTS: list[Mutant] = [
    # ---- the fused C++ kernel
    Mutant("C1", "C++ forward: a fully masked row is not zeroed (no l == 0 guard: 0/0 = NaN)", FORWARD,
           "const float inv = l == 0.f ? 0.f : 1.f / l;", "const float inv = 1.f / l;", KERNEL_TESTS),
    Mutant("C2", "C++: bottom-right causal offset off by one (S - L + 1)", PARAMS,
           "const int64_t pos = ia + (p.causal == 2 ? 0 : kvl - ql);",
           "const int64_t pos = ia + (p.causal == 2 ? 0 : kvl - ql + 1);", KERNEL_TESTS),
    Mutant("C3", "C++ backward: dK misses the softmax scale", BACKWARD,
           "gemm<T>(true, false, cols, p.D, rows, p.scale, dsm_g, cols, qp, p.qs.r, 1.f, dk_acc, p.D);",
           "gemm<T>(true, false, cols, p.D, rows, 1.f, dsm_g, cols, qp, p.qs.r, 1.f, dk_acc, p.D);", KERNEL_TESTS),
    Mutant("C4", "C++: ALiBi slopes negated in the backward only", BACKWARD,
           "as_rows(dout_in);\n  const Params p = make_params(q, k, v, ATTNKIT_SPEC_ARGS);",
           "as_rows(dout_in);\n"
           "  const std::optional<at::Tensor> neg = alibi_slopes ? std::optional<at::Tensor>(alibi_slopes->neg()) : std::nullopt;\n"
           "  const Params p = make_params(q, k, v, kv_lengths, q_lengths, mask, float_mask, bias, neg, i0, j0, L, S, causal,\n"
           "                               window_left, window_right, seed, dropout_threshold, scale, softcap, dropout_p);",
           KERNEL_TESTS),
    Mutant("C5", "C++: window right bound `<` for `<=` (one key too few on the right)", PARAMS,
           "if (p.wr >= 0 && p.causal == 0) hi = std::min(hi, pos + p.wr + 1);",
           "if (p.wr >= 0 && p.causal == 0) hi = std::min(hi, pos + p.wr);", KERNEL_TESTS),
    Mutant("C6", "C++ backward: dropout without the 1/(1-p) scale", BACKWARD,
           "  std::mutex reduce_lock;\n  const float keep_scale = p.dropout_p > 0.f ? 1.f / (1.f - p.dropout_p) : 1.f;",
           "  std::mutex reduce_lock;\n  const float keep_scale = 1.f;", KERNEL_TESTS),
    Mutant("C7", "C++ forward: running sum not rescaled across key blocks", FORWARD,
           "lrow[r] = alpha * lrow[r] + sum;", "lrow[r] = lrow[r] + sum;", KERNEL_TESTS),
    Mutant("C8", "C++ backward: block skip off by one (a row seeing only a block's first key skips it)", BACKWARD,
           "if (lo < ja + cols && hi > ja && lo < hi", "if (lo < ja + cols && hi > ja + 1 && lo < hi", KERNEL_TESTS),
    # ---- the exact backward (issue 21): the forward's own weights, from its row maxima and sums
    Mutant("C9", "C++ backward: P = exp(s - m) without the forward's 1/l (rows sum to l)", BACKWARD,
           "exp_sum_row(s, cols, mr, raw ? p.scale : 1.f, 1.f / lr);", "exp_sum_row(s, cols, mr, raw ? p.scale : 1.f);",
           ("test_backward_rule.py", "test_fused.py")),
    Mutant("C10", "C++: narrow score products allowed (the forward's band and the backward's blocks sum apart)",
           BLOCKS, "MIN_PRODUCT_COLS, MIN_PRODUCT_ROWS = 16, 4", "MIN_PRODUCT_COLS, MIN_PRODUCT_ROWS = 1, 1",
           ("test_backward_rule.py",)),
    Mutant("M2", "SoftmaxState.share (kernel.merge's weights): a part's sum not rescaled to the merged max",
           "src/attnkit/softmax.py", "return (self.l * _rescale(self.m, merged.m)) * merged.l",
           "return self.l * merged.l", ("test_fused.py", "test_decode.py", "test_ring.py")),
    # ---- the hot path (issue 18): the op's own pass and checks, and the Python decision
    Mutant("H1", "C++ forward: a hidden key's P·V is not redone (0·NaN of garbage in a KV cache leaks)", FORWARD,
           "const bool partial = p.mask != nullptr || n0 < inner_lo || n0 + cols > inner_hi || padded;",
           "const bool partial = padded;", HOT_TESTS),
    Mutant("H2", "C++ forward: every key block overwrites the output (GEMM beta 0 after the first block too)", FORWARD,
           "const float beta = !partial && !first ? 1.f : 0.f;", "const float beta = 0.f;", HOT_TESTS),
    Mutant("H3", "C++ hot path op: kv_lengths above S are not refused", FORWARD,
           "d[i] >= 0 && d[i] <= n", "d[i] >= 0", HOT_TESTS),
    Mutant("H4", "the ops' causal codes: 'top_left' runs bottom-right aligned (hot path and fused tiles)",
           "src/attnkit/engines/kernel/fused.py", 'CAUSAL = {None: 0, "bottom_right": 1, "top_left": 2}',
           'CAUSAL = {None: 0, "bottom_right": 1, "top_left": 1}', HOT_TESTS),
    Mutant("H5", "C++ forward: plain scores' scale applied twice in the exp pass", ROW_STEP,
           "at::vec::fmsub(Vec::loadu(s + j, cnt), vscale, vm)",
           "at::vec::fmsub(Vec::loadu(s + j, cnt) * vscale, vscale, vm)",
           HOT_TESTS),
    # ---- layouts read in place (a model's (B, L, H, D) storage)
    Mutant("L1", "C++ backward: dO's rows taken as contiguous in dV += P^T dO (a model's transposed dO)", BACKWARD,
           "gemm<T>(true, false, cols, p.E, rows, 1.f, pm_g, cols, dop, os.r, 1.f, dv_acc, p.E);",
           "gemm<T>(true, false, cols, p.E, rows, 1.f, pm_g, cols, dop, p.E, 1.f, dv_acc, p.E);", ("test_fused.py",)),
    Mutant("L2", "C++ forward: q's rows taken as contiguous (a model's (B, L, H, D) storage)", FORWARD,
           "qg = qp, ldq = p.qs.r;", "qg = qp, ldq = p.D;", HOT_TESTS),
    Mutant("P1", "C++ forward: heads of a GQA group packed into one block whatever q's layout (rows not equally apart)",
           FORWARD, "return p.R > 1 && p.qs.h == p.Lb * p.qs.r;", "return p.R > 1;", ("test_fused.py",)),
    Mutant("W1", "C++ forward: a decode step's widened K/V tile read as if its rows were D apart (a model's layout misread)",
           GEMM, "    const T* a = src + r * ld;\n    float* d", "    const T* a = src + r * cols;\n    float* d", ("test_fused.py",)),
    Mutant("F1", "C++ kernels: the caller's floating-point mode is left flushing denormals after a call",
           CSRC + "parallel.h", "~FlushDenormalResults() { _mm_setcsr(previous); }", "~FlushDenormalResults() {}",
           ("test_fused.py",)),
    Mutant("Q1", "half-product rule: HALF_IF_EVEN sends decode steps to brgemm's VNNI products too",
           "src/attnkit/engines/kernel/fused.py", "and q_shape[-2] >= blocks.QUERY_TILE_SMALL",
           "and q_shape[-2] >= 1", ("test_fused.py",)),
    Mutant("Q2", "half-product rule per CPU: an Intel CPU without AMX gets AMX's mode (half products everywhere)",
           "src/attnkit/engines/kernel/build.py", 'and "amx_bf16" in flags:', "and NATIVE_BF16 & flags:",
           ("test_fused.py",)),
    Mutant("H6", "hot path: the split-KV check runs inside torch.compile too (the compiled call breaks its graph)",
           "src/attnkit/engines/hot.py", "and k_shape[2] >= _SPLIT_KV_MIN_KEYS and not torch.compiler.is_compiling():",
           "and k_shape[2] >= _SPLIT_KV_MIN_KEYS:", ("test_hot.py",)),
    Mutant("E1", "C++ decode rows in registers: a head dim's last partial vector of q·k is dropped",
           CSRC + "few_rows.h", "if (tail) step(full, tail);", "if (false) step(full, tail);",
           HOT_TESTS),
    Mutant("E2", "C++ decode rows in registers: V read as if its rows were E apart (a model's layout misread)",
           CSRC + "few_rows.h", "x[i] = load_as_float(v + j * ldv + i * W);", "x[i] = load_as_float(v + j * NV * W + i * W);",
           HOT_TESTS),
    Mutant("E3", "C++ decode rows in registers: the odd columns of P V (E % vector width) keep last key's weight only",
           CSRC + "few_rows.h", "for (int64_t j = 0; j < cols; ++j) sum += p[r * ldp + j]",
           "for (int64_t j = cols - 1; j < cols; ++j) sum += p[r * ldp + j]", HOT_TESTS),
    Mutant("E4", "C++ decode rows in registers: every row of a block multiplies the first row's query",
           CSRC + "few_rows.h", "n == W ? FloatVec::loadu(q + r * ldq + d)", "n == W ? FloatVec::loadu(q + d)",
           HOT_TESTS),
    Mutant("E5", "C++ decode rows, bf16 dot products: a head dim's last partial pair vector is dropped "
           "(compiled in where the CPU has AVX512-BF16)", CSRC + "few_rows.h", "if (tail) step(full, tail_mask);",
           "if (false) step(full, tail_mask);", HOT_TESTS),
    Mutant("Z1", "C++ lazy row step: after a score jumped past the slack, the weights made before it keep the old max",
           ROW_STEP, "at::vec::map<float>([va](Vec x) { return x * va; }, s + lo, s + lo, jump - lo);", "", HOT_TESTS),
    Mutant("Z2", "C++ lazy row step: the accumulator is not rescaled when the row's max moves",
           FORWARD, "if (step.alpha != 1.f) {", "if (false) {", HOT_TESTS),
    Mutant("Z3", "C++ lazy row step: a score past the slack is never noticed (exp of large arguments, overflow)",
           ROW_STEP, "if (any_above_or_nan(d, slack)) return false;", "", HOT_TESTS),
    Mutant("Z4", "C++ lazy row step: the rest of a row after a jump is weighted against the old max",
           ROW_STEP, "exp_sum_row(s + jump, hi - jump, mnew, raw ? p.scale : 1.f)", "exp_sum_row(s + jump, hi - jump, m, raw ? p.scale : 1.f)", HOT_TESTS),
    Mutant("Z5", "C++ lazy row step, ALiBi: key positions off by one (the bias of the key after)",
           ROW_STEP, "Vec(ja + static_cast<float>(j)) + lanes)", "Vec(ja + static_cast<float>(j + 1)) + lanes)", HOT_TESTS),
    Mutant("Z8", "C++ softcap: tanh of a NaN product is the fast exp's 1 (the NaN lost: a NaN key leaves no trace)",
           ROW_STEP, "return Vec::blendv(t, y, y.isnan());", "return t;", HOT_TESTS),
    Mutant("B1", "C++ score pass: a contiguous boolean mask row hides the keys it keeps (blend inverted)",
           ROW_STEP, "_mm512_set1_ps(kNegInf), x));", "x, _mm512_set1_ps(kNegInf)));", ("test_fused.py",)),
    Mutant("G2", "C++ backward: dQ added into the caller's rows as if they were D apart (a model's layout misread)",
           BACKWARD, "const int64_t ldq = dq_direct ? gs[0].r : p.D;", "const int64_t ldq = p.D;", KERNEL_TESTS),
    # ---- native half products (VNNI pairs; compiled in only where the CPU has avx512_bf16 / amx_bf16)
    Mutant("V1", "C++ forward: the key a VNNI pair adds after an odd cache length is not treated as hidden "
           "(0 * its garbage leaks; killed only where bf16 is native)", FORWARD,
           "const bool padded = a0 < n0 || (a1 > n0 + cols && n0 + cols < p.Sb);", "const bool padded = false;",
           HOT_TESTS),
    # ---- the PyTorch tile path (kernel/tiles.py)
    Mutant("T1", "tile path: accumulator not rescaled to the new running max", TILES,
           "                acc.mul_(alpha.unsqueeze(-1))  # rescale the past to the new max\n", "", TILE_TESTS),
    Mutant("T2", "tile path backward: dropout dP not divided by 1-p", TILES,
           "dp.mul_(keep).div_(1.0 - pd)", "dp.mul_(keep)", TILE_TESTS),
    Mutant("T3", "tile path: a fully masked row is not zeroed (0/0)", TILES,
           "norm = state.l.masked_fill(state.l == 0, 1.0).unsqueeze(-1)", "norm = state.l.unsqueeze(-1)", TILE_TESTS),
    # ---- decode, merge, masks, dropout, dispatch, spec, sdpa
    Mutant("D1", "decode: the merge tree drops the unpaired last partial (odd count)", DECODE,
           "parts = merged + ([parts[-1]] if len(parts) % 2 else [])",
           "parts = merged", ("test_decode.py", "test_properties.py")),
    Mutant("D2", "decode: the last split-KV segment is dropped", DECODE,
           "return _merge_all(list(_pool.map(part, segs)))", "return _merge_all(list(_pool.map(part, segs[:-1])))",
           ("test_decode.py", "test_properties.py")),
    Mutant("G1", "ring backward: the bias gradient is not summed across ranks (each rank keeps its rows only)",
           "src/attnkit/engines/ring.py",
           'ring.all_reduce(d_bias, "sum the bias gradient")', "pass", ("test_ring.py",)),
    Mutant("M1", "merge_partials: half/half weights when one part has lse = -inf", "src/attnkit/softmax.py",
           "d = (lse_a - lse_b).masked_fill(both_empty, 0.0)",
           "d = (lse_a - lse_b).masked_fill((lse_a == NEG_INF) | (lse_b == NEG_INF), 0.0)", MERGE_TESTS),
    Mutant("K1", "masks.block_class: window left bound `<=` for `<` (a block whose last key is the bound is skipped)",
           "src/attnkit/masks.py", "if j1 - 1 < lo_p - left:", "if j1 - 1 <= lo_p - left:", TILE_TESTS),
    Mutant("R1", "dropout: (b, h) pairs collide in the keep mask's row key (b + h for b·H + h)", "src/attnkit/dropout.py",
           "bh = _mix32(base ^ ((idx.b * num_heads + idx.h) & _M32))", "bh = _mix32(base ^ ((idx.b + idx.h) & _M32))",
           ("test_flash.py", "test_fused.py", "test_attention.py", "test_properties.py")),
    Mutant("S1", "dispatch: engine='auto' takes the first engine even when it declines the spec",
           "src/attnkit/engines/dispatch.py", "        elif chosen is None:\n            chosen = name",
           "        if chosen is None:\n            chosen = name", DISPATCH_TESTS),
    Mutant("S2", "spec: kv_bounds ignore kv_lengths when L == 1", "src/attnkit/spec.py",
           "kv_bounds=bounds(kv, S),", "kv_bounds=bounds(kv, S) if L > 1 else (S, S),", TILE_TESTS),
    Mutant("S3", "sdpa engine drops a custom scale", "src/attnkit/engines/sdpa.py",
           "is_causal=spec.causal is not None, scale=spec.scale,", "is_causal=spec.causal is not None,",
           ("test_attention.py", "test_flash.py", "test_properties.py")),
]
assert len({m.id for m in MUTANTS}) == len(MUTANTS), "two mutants share an id (--only would run both)"


def _copy_tree(dst: Path) -> None:
    for name in ("src", "tests"):
        shutil.copytree(ROOT / name, dst / name, ignore=shutil.ignore_patterns("__pycache__", ".hypothesis"))
    shutil.copy2(ROOT / "pyproject.toml", dst / "pyproject.toml")


def _count(m: Mutant) -> int:
    return (ROOT / m.file).read_text(encoding="utf-8").count(m.old)


def _pytest(root: Path, files: tuple[str, ...], env: dict[str, str], timeout: float) -> tuple[str, str, float]:
    """``(outcome, last line, seconds)``: outcome ``passed``, ``failed`` or ``timeout``."""
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *(f"tests/{f}" for f in files)]
    start = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", f"no result after {timeout:.0f} s", time.monotonic() - start
    lines = [line for line in proc.stdout.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else proc.stderr.strip()[-200:]
    failing = next((line for line in lines if line.startswith(("FAILED", "ERROR"))), last)
    return ("passed" if proc.returncode == 0 else "failed"), (last if proc.returncode == 0 else failing), time.monotonic() - start


def _env(root: Path, cache: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "ATTNKIT_CACHE": str(cache), "CI": "1",
           "TORCH_EXTENSIONS_DIR": str(cache / "torch_extensions"), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("ATTNKIT_NO_FUSED", None)
    env.pop("ATTNKIT_HYPOTHESIS_PROFILE", None)  # the ci profile: what CI runs
    return env


def _check_import(root: Path, env: dict[str, str]) -> None:
    """The copy, not the installed worktree, must be what `import attnkit` finds."""
    where = subprocess.run([sys.executable, "-c", "import attnkit; print(attnkit.__file__)"], cwd=root, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    if not where.startswith(str(root)):
        raise SystemExit(f"mutation: `import attnkit` finds {where}, not the copy under {root}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--list", action="store_true", help="list the mutants and whether each applies; run nothing")
    ap.add_argument("--only", nargs="+", metavar="ID", help="run only these mutants")
    ap.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of the test files")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per pytest run (default 3600)")
    ap.add_argument("--tests", nargs="+", metavar="FILE", help="run these test files for every mutant instead of its own "
                    "(e.g. --tests test_properties.py: what the property tests alone catch)")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or m.id in args.only]
    if args.tests:
        chosen = [Mutant(m.id, m.what, m.file, m.old, m.new, tuple(args.tests)) for m in chosen]
    stale = [m for m in chosen if _count(m) != 1]
    if args.list:
        for m in chosen:
            print(f"{m.id:3s} {'STALE' if m in stale else 'ok':5s} {m.file}: {m.what}")
        return 1 if stale else 0
    results: list[tuple[Mutant, str, str, float]] = []
    for m in stale:
        results.append((m, "STALE", f"old snippet found {_count(m)} times in {m.file} (must be once)", 0.0))
        print(f"!!! {m.id} STALE: the old snippet is in {m.file} {_count(m)} times; refresh this mutant", flush=True)
    with tempfile.TemporaryDirectory(prefix="attnkit-mutation-") as tmp:
        cache = Path(tmp) / "cache"
        if not args.no_baseline:
            root = Path(tmp) / "baseline"
            _copy_tree(root)
            env = _env(root, cache)
            _check_import(root, env)
            files = tuple(dict.fromkeys(f for m in chosen for f in m.tests))
            print(f"baseline: {len(files)} test files on the unmutated copy ...", flush=True)
            outcome, last, secs = _pytest(root, files, env, args.timeout)
            print(f"baseline: {outcome} in {secs:.0f} s ({last})", flush=True)
            if outcome != "passed":
                print("mutation: the unmutated suite does not pass; a killed mutant would mean nothing", file=sys.stderr)
                return 2
        for m in chosen:
            if m in stale:
                continue
            root = Path(tmp) / m.id
            _copy_tree(root)
            target = root / m.file
            target.write_text(target.read_text(encoding="utf-8").replace(m.old, m.new, 1), encoding="utf-8")
            env = _env(root, cache)
            _check_import(root, env)
            print(f"{m.id}: {m.what} ...", flush=True)
            outcome, last, secs = _pytest(root, m.tests, env, args.timeout)
            verdict = {"failed": "killed", "timeout": "killed (timeout)", "passed": "SURVIVED"}[outcome]
            results.append((m, verdict, last, secs))
            print(f"{m.id}: {verdict} in {secs:.0f} s — {last}", flush=True)
            shutil.rmtree(root, ignore_errors=True)
    print("\n| mutant | bug | file | result | seconds | first failure (or last line) |")
    print("|---|---|---|---|---:|---|")
    for m, verdict, last, secs in results:
        print(f"| {m.id} | {m.what} | {Path(m.file).name} | {verdict} | {secs:.0f} | {last.replace('|', '/')[:140]} |")
    killed = sum(v.startswith("killed") for _, v, _, _ in results)
    print(f"\n{killed} of {len(results)} mutants killed; {len(stale)} stale", flush=True)
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
