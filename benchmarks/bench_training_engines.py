"""One training call (forward + backward) per engine: the fused flash kernel vs SDPA, and what
``engine="auto"`` picks.

Since 2026-12-07 ``engine="auto"`` ranks flash before SDPA wherever the fused C++ kernel runs the
spec (`attnkit.engines.dispatch.auto_order`); this script is the measurement behind that order.
Each row times ``torch.autograd.grad(attention(q, k, v, ...), (q, k, v), dO)`` for attnkit with
``engine="flash"``, attnkit with ``engine="sdpa"`` (SDPA behind attnkit's checks), attnkit with
``engine="auto"``, and raw ``F.scaled_dot_product_attention`` (where it takes the same arguments),
interleaved, medians of ``--repeats`` rounds.

    PYTHONPATH=src python benchmarks/bench_training_engines.py [--repeats 21]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import attnkit
from attnkit.bench.machine import header
from attnkit.bench.timing import interleaved_medians

# (B, H, L, D, case): MiniLM-sized (H=12, D=32), BERT-base-sized (D=64) and one long head set.
ROWS = [
    (16, 12, 128, 32, "plain"), (32, 12, 64, 32, "plain"), (8, 12, 128, 64, "plain"), (4, 12, 512, 64, "plain"),
    (1, 8, 2048, 64, "plain"), (8, 12, 128, 64, "causal"), (4, 12, 512, 64, "causal"), (1, 8, 2048, 64, "causal"),
    (16, 12, 128, 32, "float mask"), (16, 12, 128, 32, "bool padding mask"),
]


def _arguments(case: str, B: int, L: int, g: torch.Generator) -> dict:
    if case == "causal":
        return dict(causal="top_left")  # SDPA's is_causal (L = S here, so both alignments agree)
    if case == "float mask":
        return dict(mask=torch.randn(B, 1, L, L, generator=g))
    if case == "bool padding mask":
        return dict(mask=torch.rand(B, 1, 1, L, generator=g) > 0.2)
    return {}


def row(B: int, H: int, L: int, D: int, case: str, repeats: int) -> str:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, L, D, generator=g).requires_grad_() for _ in range(3))
    do = torch.randn(B, H, L, D, generator=g)
    kw = _arguments(case, B, L, g)
    sdpa_kw = dict(is_causal=True) if case == "causal" else dict(attn_mask=kw["mask"]) if "mask" in kw else {}

    def train(fn):
        return lambda: torch.autograd.grad(fn(), (q, k, v), do)

    t = interleaved_medians({
        "flash": train(lambda: attnkit.attention(q, k, v, engine="flash", **kw)),
        "sdpa engine": train(lambda: attnkit.attention(q, k, v, engine="sdpa", **kw)),
        "auto": train(lambda: attnkit.attention(q, k, v, **kw)),
        "raw SDPA": train(lambda: F.scaled_dot_product_attention(q, k, v, **sdpa_kw)),
    }, repeats=repeats)
    auto = attnkit.explain(q, k, v, **kw).engine
    ms = " | ".join(f"{t[n] * 1e3:.2f}" for n in ("flash", "sdpa engine", "auto", "raw SDPA"))
    return f"| B={B} H={H} L=S={L} D={D} {case} | {ms} | {t['raw SDPA'] / t['flash']:.2f}× | {auto} |"


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=21, help="interleaved rounds per row (default 21)")
    args = p.parse_args()
    print(header(torch.get_num_threads()))
    print()
    print("| fwd+bwd, fp32 | flash ms | sdpa engine ms | auto ms | raw SDPA ms | flash vs raw SDPA | auto picks |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for B, H, L, D, case in ROWS:
        print(row(B, H, L, D, case, args.repeats), flush=True)
