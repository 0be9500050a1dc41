"""The ``attnkit`` command (also ``python -m attnkit``): one parser, one module per command.

- `.main` — the parser, ``--version``, and the one place where an [`AttnkitError`][attnkit.errors.AttnkitError]
  becomes the one-line ``attnkit CMD: error: ...`` on stderr with exit status 2;
- `.softmax` (with `.walkthrough`), `.explain`, `.bench` (with
  `.benchmark`), `.seq2seq` — each subcommand, thin over the library.
"""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
