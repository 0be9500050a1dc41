"""Encoder-decoder translation with attention: data, vocabulary and model."""

__all__: list[str] = []
