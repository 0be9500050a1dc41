"""The package surface: __all__, light imports, and the docstring examples run."""

from __future__ import annotations

import doctest
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

import attnkit

CORE_MODULES = [
    "attnkit", "attnkit.softmax", "attnkit.normalizers", "attnkit.functional", "attnkit.masks",
    "attnkit.scores", "attnkit.cli.walkthrough", "attnkit.engines.dispatch", "attnkit.spec", "attnkit._numerics",
    "attnkit._machine", "attnkit.bench.cases", "attnkit.bench.timing", "attnkit.bench.report", "attnkit.bench.sections",
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


@pytest.mark.parametrize("ci", ["", "true"])
def test_fused_tests_fail_in_ci_when_the_kernel_does_not_build(tmp_path, ci):
    """A compiler that fails in a fresh kernel cache: test_fused.py skips on a user's
    machine, and fails when CI is set (CI has a compiler, so a broken build is a bug)."""
    cxx = tmp_path / "broken-c++"  # answers --version like the real one, fails every compile
    cxx.write_text('#!/bin/sh\nif [ "$1" = "--version" ]; then exec c++ --version; fi\necho "error: simulated" >&2\nexit 1\n')
    cxx.chmod(0o755)
    env = {**os.environ, "CI": ci, "CXX": str(cxx), "ATTNKIT_CACHE": str(tmp_path / "cache")}
    env.pop("ATTNKIT_NO_FUSED", None)
    tests = Path(__file__).resolve().parent
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", str(tests / "test_fused.py")],
                          capture_output=True, text=True, env=env, cwd=tests.parent, timeout=600)
    last = proc.stdout.strip().splitlines()[-1]
    if ci:
        assert proc.returncode == 1 and "1 failed" in last and "did not build" in proc.stdout, proc.stdout[-2000:]
    else:
        assert proc.returncode == 0 and "skipped" in last and "failed" not in last, proc.stdout[-2000:]
