"""A griffe extension for the API reference: read attnkit's doctests as code, not prose.

attnkit docstrings title their doctests ``Example:`` (singular); griffe's Google parser only knows
``Examples:`` and would render the doctest lines as markdown prose (where ``x[0][1]`` even reads as
a link). This rewrites the title on load, and fences doctests that have no title at all.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_TITLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_BARE = re.compile(r"^(>>> .*(?:\n(?!\s*$).*)*)", re.MULTILINE)  # a doctest at column 0, up to a blank line


class ExampleSections(griffe.Extension):
    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        if obj.docstring is None:
            return
        text = _TITLE.sub(r"\1Examples:", obj.docstring.value)
        if "Examples:" not in text:
            text = _BARE.sub(lambda m: "```pycon\n" + m.group(1) + "\n```", text)
        obj.docstring.value = text
