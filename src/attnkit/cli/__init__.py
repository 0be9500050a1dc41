"""The ``attnkit`` command (also ``python -m attnkit``): one parser, one module per command.

- :mod:`.main` — the parser, ``--version``, and the one place where an :class:`AttnkitError`
  becomes the one-line ``attnkit CMD: error: ...`` on stderr with exit status 2;
- :mod:`.softmax` (with :mod:`.walkthrough`), :mod:`.explain`, :mod:`.bench` (with
  :mod:`.benchmark`), :mod:`.seq2seq` — each subcommand, thin over the library.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
