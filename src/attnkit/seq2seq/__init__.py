"""Encoder-decoder translation with attention, small enough to train on a CPU in minutes.

- [`data`][attnkit.seq2seq.data]: the built-in date task (with alignment spans) and a TSV loader.
- [`vocab`][attnkit.seq2seq.vocab]: character- or word-level vocabularies built from data.
- [`model`][attnkit.seq2seq.model]: the annotated BiGRU encoder, GRU decoder and attention.
- [`train`][attnkit.seq2seq.train]: training with atomic checkpoints and exact resume.
- [`decode`][attnkit.seq2seq.decode]: greedy and beam search; [`Translator`][attnkit.seq2seq.decode.Translator].
- [`evaluate`][attnkit.seq2seq.evaluate]: exact match by input length; the alignment score.
- [`plot`][attnkit.seq2seq.plot]: the alignment heatmap (matplotlib).

The command line: ``attnkit seq2seq train | translate | evaluate`` (`attnkit.cli.seq2seq`).
"""

__all__: list[str] = []
