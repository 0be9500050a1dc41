"""Capture and analyse attention maps: what a model attends to, head by head.

- [`capture`][attnkit.inspect._capture.capture] runs a Hugging Face model on attnkit's attention and returns
  [`AttentionMaps`][attnkit.inspect._maps.AttentionMaps] (per layer ``(B, H, L, S)`` weights, tokens, padding masks).
- [`record`][attnkit.inspect._record.record] hooks attnkit/torch attention modules explicitly for the length of a block.
- Analyses: [`head_mean`][attnkit.inspect._analysis.head_mean], [`head_max`][attnkit.inspect._analysis.head_max], [`rollout`][attnkit.inspect._analysis.rollout] ([`rollout_sequence`][attnkit.inspect._analysis.rollout_sequence] for one unpadded sequence), [`entropy`][attnkit.inspect._analysis.entropy],
  [`top_keys`][attnkit.inspect._analysis.top_keys], [`find_heads`][attnkit.inspect._analysis.find_heads], [`strongest_heads`][attnkit.inspect._analysis.strongest_heads]; [`row_scores`][attnkit.inspect._contrast.row_scores] (pre-softmax
  scores, from ``capture(..., scores=True)``) and [`contrast_heads`][attnkit.inspect._contrast.contrast_heads] (heads tested on a pair of texts).
- [`AttentionMaps.words`][attnkit.inspect._maps.AttentionMaps.words] joins word pieces (to = sum, from = mean: `AGGREGATION`);
  [`AttentionMaps.to_bertviz`][attnkit.inspect._maps.AttentionMaps.to_bertviz] gives BertViz's inputs; in Jupyter the maps show the viewer.
- [`AttentionMaps.save`][attnkit.inspect._maps.AttentionMaps.save] / [`AttentionMaps.load`][attnkit.inspect._maps.AttentionMaps.load] keep maps in ``.npz`` or
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
