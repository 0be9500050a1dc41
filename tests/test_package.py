"""The package surface: __all__, light imports, and the docstring examples run."""

from __future__ import annotations

import doctest
import importlib
import subprocess
import sys

import pytest

import attnkit

CORE_MODULES = [
    "attnkit", "attnkit.softmax", "attnkit.normalizers", "attnkit.functional", "attnkit.masks",
    "attnkit.scores", "attnkit.cli.walkthrough", "attnkit.engines.dispatch", "attnkit.spec",
]


def test_all_names_exist_and_error_class():
    for name in attnkit.__all__:
        assert hasattr(attnkit, name), name
    assert issubclass(attnkit.AttnkitError, ValueError)


def test_import_is_light():
    # Count only what attnkit adds on top of torch (torch itself may pull tqdm in).
    code = (
        "import sys, torch; before = set(sys.modules); import attnkit; "
        "new = set(sys.modules) - before; "
        "print(sorted(m for m in new if m.split('.')[0] in ('matplotlib', 'transformers', 'jinja2', 'entmax', 'tqdm', 'selenium')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize("module", CORE_MODULES)
def test_docstring_examples(module):
    mod = importlib.import_module(module)
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0


def test_py_typed_shipped():
    from importlib.resources import files

    assert files("attnkit").joinpath("py.typed").is_file()
