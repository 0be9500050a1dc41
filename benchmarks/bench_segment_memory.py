"""Transformer-XL segment memory: recall accuracy by dependency distance, with memory vs without.

The task (synthetic, generated here): a stream of 64 tokens read in segments of 16. Filler tokens,
and a few *writes* ``W(k, v)`` (one token carrying key ``k`` and value ``v``) and, ``d`` tokens
later, *reads* ``R(k)`` whose target is ``v``. ``d`` is drawn from 1..47, so a read's write often lies
one, two or three segments back. Each model (2 layers of :class:`attnkit.nn.SegmentMemoryAttention` + MLP,
d_model 64, 4 heads, ALiBi) sees one segment at a time; ``mem_len=48`` carries each layer's inputs of
the three previous segments (gradient stopped), ``mem_len=16`` one segment, ``mem_len=0`` none. Same
data, seed, steps and optimizer for every model.

    PYTHONPATH=src python benchmarks/bench_segment_memory.py --steps 600 --mem-lens 48,16,0 \\
        --md benchmarks/segment_memory.md --plot benchmarks/segment_memory.png

Prints accuracy on 4,000 fresh reads per distance bucket, with the no-memory ceiling (the share of
the bucket's reads whose write is in the read's own segment, plus chance on the rest).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from attnkit.nn import SegmentMemoryAttention

SEG, N_SEG, KEYS, VALUES, FILLER, READS, MAX_D = 16, 4, 16, 16, 32, 6, 47
WRITE0 = FILLER  # W(k, v) = WRITE0 + k·VALUES + v
READ0 = WRITE0 + KEYS * VALUES  # R(k) = READ0 + k
VOCAB = READ0 + KEYS
BUCKETS = [(1, 8), (8, 16), (16, 24), (24, 32), (32, 40), (40, 48)]


def make_batch(rng: np.random.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``tokens (B, T)``, ``targets (B, T)`` (-100 except at reads) and ``distance (B, T)`` (0 except at reads)."""
    T = SEG * N_SEG
    tokens = rng.integers(0, FILLER, size=(batch, T))
    targets = np.full((batch, T), -100)
    distance = np.zeros((batch, T), dtype=np.int64)
    for b in range(batch):
        used = np.zeros(T, dtype=bool)
        keys = rng.permutation(KEYS)[:READS]  # distinct keys: a read has exactly one matching write
        for key in keys:
            for _ in range(50):  # find a free (write, read) pair of positions
                t = int(rng.integers(1, T))
                d = int(rng.integers(1, min(MAX_D, t) + 1))
                if not used[t] and not used[t - d]:
                    break
            else:
                continue
            value = int(rng.integers(0, VALUES))
            used[t] = used[t - d] = True
            tokens[b, t - d] = WRITE0 + key * VALUES + value
            tokens[b, t] = READ0 + key
            targets[b, t], distance[b, t] = value, d
    return torch.from_numpy(tokens), torch.from_numpy(targets), torch.from_numpy(distance)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mem_len: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SegmentMemoryAttention(dim, heads, mem_len=mem_len)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x, memory):
        a, new_memory = self.attn(self.ln1(x), memory)  # the memory holds this layer's (normalized) inputs
        x = x + a
        return x + self.mlp(self.ln2(x)), new_memory


class Model(nn.Module):
    def __init__(self, mem_len: int, dim: int = 64, heads: int = 4, layers: int = 2):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, mem_len) for _ in range(layers))
        self.head = nn.Linear(dim, VALUES)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, T, VALUES)``, computed segment by segment with each layer's memory carried over."""
        memories = [None] * len(self.blocks)
        outs = []
        for seg in tokens.split(SEG, dim=1):
            x = self.embed(seg)
            for i, block in enumerate(self.blocks):
                x, memories[i] = block(x, memories[i])
            outs.append(self.head(x))
        return torch.cat(outs, 1)


def train(mem_len: int, steps: int, batch: int, seed: int) -> tuple[Model, list[float], float]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = Model(mem_len)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    losses, t0 = [], time.perf_counter()
    for _ in range(steps):
        tokens, targets, _ = make_batch(rng, batch)
        loss = nn.functional.cross_entropy(model(tokens).reshape(-1, VALUES), targets.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return model, losses, time.perf_counter() - t0


@torch.no_grad()
def evaluate(model: Model, n_batches: int, batch: int, seed: int) -> dict:
    """Accuracy per distance bucket on fresh reads, and each bucket's same-segment share."""
    rng = np.random.default_rng(seed)
    right, total, same = np.zeros(len(BUCKETS)), np.zeros(len(BUCKETS)), np.zeros(len(BUCKETS))
    for _ in range(n_batches):
        tokens, targets, distance = make_batch(rng, batch)
        pred = model(tokens).argmax(-1)
        pos = torch.arange(tokens.shape[1]).expand_as(tokens)
        for i, (lo, hi) in enumerate(BUCKETS):
            sel = (targets >= 0) & (distance >= lo) & (distance < hi)
            right[i] += (pred[sel] == targets[sel]).sum().item()
            total[i] += sel.sum().item()
            same[i] += ((pos[sel] % SEG) >= distance[sel]).sum().item()  # the write is in the read's segment
    return {"acc": right / total, "n": total, "same": same / total}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--eval-batches", type=int, default=40, help="evaluation batches of --batch sequences")
    p.add_argument("--mem-lens", default="48,16,0", help="memory lengths to train, comma-separated (0: no memory)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--md", default=None, help="also write the markdown table here")
    p.add_argument("--plot", default=None, help="write the accuracy-by-distance plot (.png) here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    for mem_len in (int(m) for m in args.mem_lens.split(",")):
        name = f"mem_len={mem_len}" if mem_len else "no memory"
        model, losses, secs = train(mem_len, args.steps, args.batch, args.seed)
        results[name] = evaluate(model, args.eval_batches, args.batch, args.seed + 1)
        print(f"{name}: trained {args.steps} steps in {secs:.0f} s, final loss {np.mean(losses[-20:]):.3f}")
    first = next(iter(results.values()))
    ceiling = first["same"] + (1 - first["same"]) / VALUES
    lines = ["| distance d | reads | write in the read's segment | " + " | ".join(results) + " | no-memory ceiling |",
             "|---|---:|---:|" + "---:|" * len(results) + "---:|"]
    for i, (lo, hi) in enumerate(BUCKETS):
        row = [f"{lo}–{hi - 1}", f"{int(first['n'][i])}", f"{first['same'][i]:.0%}"]
        row += [f"{r['acc'][i]:.1%}" for r in results.values()] + [f"{ceiling[i]:.1%}"]
        lines.append("| " + " | ".join(row) + " |")
    table = "\n".join(lines)
    print(table)
    if args.md:
        with open(args.md, "w") as fh:
            fh.write(table + "\n")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        mids = [(lo + hi - 1) / 2 for lo, hi in BUCKETS]
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        for name, r in results.items():
            ax.plot(mids, 100 * r["acc"], marker="o", label=name)
        ax.plot(mids, 100 * ceiling, ls=":", color="gray", label="no-memory ceiling")
        for s in (SEG, 2 * SEG):
            ax.axvline(s, color="lightgray", lw=0.8)
        ax.set(xlabel="distance from write to read (tokens; segments of 16)", ylabel="recall accuracy (%)",
               ylim=(0, 102), title="Transformer-XL segment memory on attnkit (ALiBi)")
        ax.legend(loc="lower left", fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
