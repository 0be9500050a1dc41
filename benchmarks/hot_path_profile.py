"""Where the microseconds of one small ``attnkit.attention`` call go (issue 18, item 1).

    .venv/bin/python benchmarks/hot_path_profile.py            # B=1 H=12 L=S=16 D=32, fp32, inference

Splits the call into its parts, each timed alone (medians of interleaved runs, one process):
the Python decision (``hot.plan``), the op's fixed cost (its pybind entry, C++ checks, allocations:
the same op on an empty batch), the whole op, the whole ``attnkit.attention`` call; beside
them torch SDPA on the same inputs and, for contrast, the general path (``AttentionSpec.build``
and dispatch, as every call paid before the hot path). Then a cProfile of 2,000 calls.
"""

from __future__ import annotations

import cProfile
import pstats
import sys

import torch

import attnkit
from attnkit.bench.timing import interleaved_medians
from attnkit.engines import dispatch, hot
from attnkit.spec import AttentionSpec


def main() -> None:
    B, H, L, S, D = 1, 12, 16, 16, 32
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, n, D, generator=g) for n in (L, S, S))
    empty = torch.zeros(0, H, L, D)
    with torch.inference_mode():
        args = hot.plan(q, k, v)
        assert type(args) is tuple, args
        empty_args = hot.plan(empty, empty, empty)
        t = interleaved_medians({
            "hot.plan (Python checks)": lambda: hot.plan(q, k, v),
            "op on an empty batch (entry, C++ checks, allocation)": lambda: hot.run(empty_args),
            "op (entry, checks, fused kernel)": lambda: hot.run(args),
            "attnkit.attention (the whole call)": lambda: attnkit.attention(q, k, v),
            "torch SDPA": lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v),
            "general path: AttentionSpec.build + dispatch.choose": lambda: dispatch.choose(AttentionSpec.build(q, k, v)),
        }, repeats=4000)
        print(f"one call B={B} H={H} L=S={L} D={D} fp32 (medians, µs)")
        for name, sec in t.items():
            print(f"  {sec * 1e6:8.2f}  {name}")
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(2000):
            attnkit.attention(q, k, v)
        prof.disable()
    pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(8)


if __name__ == "__main__":
    main()
