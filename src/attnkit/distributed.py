"""Attention over a sequence sharded across processes: the public home of ring attention.

Beside [`attnkit.attention`][attnkit.functional.attention] for one process, this module is what a ``torchrun`` script
imports: shard the sequence, run ring attention on every rank, gather the result. The
algorithm lives in [`attnkit.engines.ring`][attnkit.engines.ring] (an engine that computes key shards held by
other ranks and merges the partials with [`attnkit.merge_partials`][attnkit.softmax.merge_partials]); these names are
re-exported here, and [`ring_attention`][attnkit.engines.ring.ring_attention], [`shard_sequence`][attnkit.engines.ring.shard_sequence] and
[`gather_sequence`][attnkit.engines.ring.gather_sequence] also as ``attnkit.ring_attention`` etc.

Example (run under ``torchrun --nproc-per-node 2``)::

    from attnkit.distributed import gather_sequence, ring_attention, shard_sequence

    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    r, P = dist.get_rank(), dist.get_world_size()
    q, k, v = (shard_sequence(t, r, P) for t in (q_full, k_full, v_full))
    out = gather_sequence(ring_attention(q, k, v, causal=True))  # == attnkit.attention(q_full, ..., causal=True)
"""

from __future__ import annotations

from .engines.ring import chunk_ids, gather_sequence, ring_attention, shard_sequence, unshard_sequence

__all__ = ["ring_attention", "shard_sequence", "gather_sequence", "unshard_sequence", "chunk_ids"]
