"""Forwards over many key blocks (the one-pass softmax of later blocks): attnkit's hot path vs SDPA.

A row's later key blocks take one pass against the max so far (``csrc/row_step.h``,
``lazy_exp_sum_row``), its first block two. This script is the A/B behind that change: run it on two
trees in turn (the tree is whatever ``attnkit`` imports, e.g. ``PYTHONPATH=/tmp/old/src`` with
``ATTNKIT_CACHE=/tmp/old_cache`` for the code before) and compare the ratios, never absolute times
across processes.

    PYTHONPATH=src python benchmarks/bench_long_rows.py [--rounds 7] [--cases full4096 alibi4096]

Rows ``vs SDPA``: SDPA time / attnkit time, interleaved medians in one process (GQA: SDPA on K/V
repeated per head, decode: SDPA's ``enable_gqa``). Rows ``vs plain``: attnkit with ALiBi / softcap /
a boolean mask over attnkit's plain call on the same inputs (issue 18: ALiBi at most 1.2x plain).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import attnkit
from attnkit.bench.machine import header
from attnkit.bench.timing import interleaved_medians

CASES = {  # name: (B, H, G, L, S, D, dtype, causal)
    "full4096": (1, 8, 8, 4096, 4096, 64, torch.float32, False),
    "causal4096": (1, 8, 8, 4096, 4096, 64, torch.float32, True),
    "bf16_4096": (1, 8, 8, 4096, 4096, 64, torch.bfloat16, False),
    "prefill2048": (1, 8, 2, 2048, 2048, 64, torch.float32, True),
    "gqa_decode": (4, 32, 8, 1, 2048, 128, torch.float32, False),
    "decode8k": (1, 8, 8, 1, 8192, 64, torch.float32, False),
}
VARIANTS = ("alibi4096", "softcap4096", "boolmask4096")  # B=1 H=8 L=S=4096 D=64 fp32, vs attnkit plain


def vs_sdpa(name: str, rounds: int) -> str:
    B, H, G, L, S, D, dtype, causal = CASES[name]
    g = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, L, D, generator=g).to(dtype)
    k, v = (torch.randn(B, G, S, D, generator=g).to(dtype) for _ in range(2))
    kr, vr = k.repeat_interleave(H // G, 1), v.repeat_interleave(H // G, 1)
    fns = {"attnkit": lambda: attnkit.attention(q, k, v, causal=causal or None)}
    if L == 1:
        fns["sdpa"] = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    else:
        fns["sdpa"] = lambda: F.scaled_dot_product_attention(q, kr, vr, is_causal=causal)
    t = interleaved_medians(fns, rounds if L > 1 else 40 * rounds)
    return f"| {name} | {t['attnkit'] * 1e3:.2f} | {t['sdpa'] * 1e3:.2f} | {t['sdpa'] / t['attnkit']:.3f}× SDPA |"


def vs_plain(name: str, rounds: int) -> str:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 8, 4096, 64, generator=g) for _ in range(3))
    kw = {"alibi4096": dict(alibi_slopes=attnkit.alibi_slopes(8)), "softcap4096": dict(softcap=30.0),
          "boolmask4096": dict(mask=torch.rand(4096, 4096, generator=g) > 0.1)}[name]
    t = interleaved_medians({"plain": lambda: attnkit.attention(q, k, v), "variant": lambda: attnkit.attention(q, k, v, **kw)},
                            rounds)
    return f"| {name} | {t['variant'] * 1e3:.2f} | {t['plain'] * 1e3:.2f} (plain) | {t['variant'] / t['plain']:.3f}× plain |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timed runs per implementation")
    parser.add_argument("--cases", nargs="+", default=[*CASES, *VARIANTS], choices=[*CASES, *VARIANTS])
    args = parser.parse_args()
    print(header(torch.get_num_threads()))
    print("\n| case | attnkit ms | peer ms | ratio |\n|---|---:|---:|---:|")
    with torch.inference_mode():
        for name in args.cases:
            print(vs_sdpa(name, args.rounds) if name in CASES else vs_plain(name, args.rounds), flush=True)


if __name__ == "__main__":
    main()
