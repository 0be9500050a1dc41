"""Encoder-decoder translation with attention, small enough to train on a CPU in minutes.

- :mod:`~attnkit.seq2seq.data`: the built-in date task (with alignment spans) and a TSV loader.
- :mod:`~attnkit.seq2seq.vocab`: character- or word-level vocabularies built from data.
- :mod:`~attnkit.seq2seq.model`: the annotated BiGRU encoder, GRU decoder and attention.
- :mod:`~attnkit.seq2seq.train`: training with atomic checkpoints and exact resume.
- :mod:`~attnkit.seq2seq.decode`: greedy and beam search; :class:`~attnkit.seq2seq.decode.Translator`.
- :mod:`~attnkit.seq2seq.evaluate`: exact match by input length; the alignment score.
- :mod:`~attnkit.seq2seq.plot`: the alignment heatmap (matplotlib).

The command line: ``attnkit seq2seq train | translate | evaluate`` (:mod:`attnkit.cli.seq2seq`).
"""

__all__: list[str] = []
