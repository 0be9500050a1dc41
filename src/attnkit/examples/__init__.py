"""Runnable examples (``python -m attnkit.examples.<name> --help``).

- `attnkit.examples.ring_attention`: sequence-parallel exact attention across processes,
  ``torchrun --nproc-per-node 4 -m attnkit.examples.ring_attention --seq-len 65536``.
"""
