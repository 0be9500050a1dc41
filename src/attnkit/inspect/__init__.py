"""Capture and analyse attention maps: what a model attends to, head by head.

- :func:`capture` runs a Hugging Face model on attnkit's attention and returns
  :class:`AttentionMaps` (per layer ``(B, H, L, S)`` weights, tokens, padding masks).
- :func:`record` hooks attnkit/torch attention modules explicitly for the length of a block.
- Analyses: :func:`head_mean`, :func:`head_max`, :func:`rollout` (:func:`rollout_sequence` for one unpadded sequence), :func:`entropy`,
  :func:`top_keys`, :func:`find_heads`, :func:`strongest_heads`; :func:`row_scores` (pre-softmax
  scores, from ``capture(..., scores=True)``) and :func:`contrast_heads` (heads tested on a pair of texts).
- :meth:`AttentionMaps.words` joins word pieces (to = sum, from = mean: :data:`AGGREGATION`);
  :meth:`AttentionMaps.to_bertviz` gives BertViz's inputs; in Jupyter the maps show the viewer.
- :meth:`AttentionMaps.save` / :meth:`AttentionMaps.load` keep maps in ``.npz`` or
  ``.safetensors`` files for later viewing (``attnkit.viz``).

Example:
    >>> import torch
    >>> from attnkit.inspect import AttentionMaps, find_heads
    >>> w = torch.tensor([[[[0.5, 0.5], [0.9, 0.1]]]])   # (B=1, H=1, L=2, S=2)
    >>> find_heads(AttentionMaps([w], [["cat", "it"]]), "it", "cat")[0].weight
    0.8999999761581421
"""

from __future__ import annotations

from ._analysis import HeadScore, KeyWeight, entropy, find_heads, head_max, head_mean, rollout, rollout_sequence, strongest_heads, top_keys
from ._capture import capture, logits
from ._contrast import HeadContrast, ScoredKey, contrast_heads, default_candidates, row_scores
from ._maps import AttentionMaps
from ._record import Recorder, record
from ._tokens import display, locate
from ._words import AGGREGATION, merge_word_pieces, word_groups

__all__ = [
    "AGGREGATION",
    "AttentionMaps",
    "HeadContrast",
    "HeadScore",
    "KeyWeight",
    "Recorder",
    "ScoredKey",
    "capture",
    "contrast_heads",
    "default_candidates",
    "display",
    "entropy",
    "find_heads",
    "head_max",
    "head_mean",
    "locate",
    "logits",
    "merge_word_pieces",
    "record",
    "rollout",
    "rollout_sequence",
    "row_scores",
    "strongest_heads",
    "top_keys",
    "word_groups",
]
