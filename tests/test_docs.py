"""The documentation site: ``mkdocs build --strict`` passes, the API reference names every public
name, and every tutorial runs — as the notebook a user opens, its printed outputs compared with
the tutorial page.

Needs the ``docs`` extra (mkdocs, Material, mkdocstrings) for the build and the ``test`` extra
(nbclient, nbformat, ipykernel) for the notebooks; CI installs both.
"""

from __future__ import annotations

import doctest
import importlib
import os
import re
import subprocess
import sys
import types

import pytest

from _notebooks import NOTEBOOKS, PAGES, ROOT, cells, notebook

TUTORIALS = sorted(p.stem for p in PAGES.glob("*.md"))
REFERENCE = {  # API reference page -> the modules whose __all__ it must cover
    "attnkit": ["attnkit"], "inspect": ["attnkit.inspect"], "viz": ["attnkit.viz"], "nn": ["attnkit.nn"],
    "masks": ["attnkit.masks"], "hf": ["attnkit.integrations.hf"], "ring": ["attnkit.engines.ring"], "keras": ["attnkit.keras"],
    "seq2seq": [f"attnkit.seq2seq.{m}" for m in ("data", "vocab", "model", "train", "decode", "evaluate", "plot")],
}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs", reason="needs the docs extra: pip install -e '.[docs]'")
    pytest.importorskip("mkdocstrings_handlers.python", reason="needs the docs extra: pip install -e '.[docs]'")
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_mkdocs_build_strict_and_every_public_name_documented(site):
    # Every name in a public module's __all__ has an entry in the API reference: under that module,
    # or (names re-exported lazily, e.g. attnkit.nn.KVCache = attnkit.KVCache) wherever it is defined.
    ids = set()
    for page in REFERENCE:
        ids |= set(re.findall(r'id="([\w.]+)"', (site / "reference" / page / "index.html").read_text(encoding="utf-8")))
    documented_modules = {m for ms in REFERENCE.values() for m in ms}
    missing = []
    for modules in REFERENCE.values():
        for module in modules:
            mod = importlib.import_module(module)
            for name in mod.__all__:
                if isinstance(getattr(mod, name), types.ModuleType):  # documented on its own page
                    assert getattr(mod, name).__name__ in documented_modules
                elif not any(i == f"{module}.{name}" or i.endswith(f".{name}") for i in ids):
                    missing.append(f"{module}.{name}")
    assert not missing, f"public names without an API reference entry: {missing}"
    for name in TUTORIALS:
        assert (site / "tutorials" / name / "index.html").is_file()


def test_notebooks_are_generated_from_the_tutorial_pages():
    nbformat = pytest.importorskip("nbformat", reason="needs the test extra")
    assert sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")) == TUTORIALS
    for name in TUTORIALS:
        want = notebook((PAGES / f"{name}.md").read_text(encoding="utf-8"))
        got = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        assert [(c.cell_type, c.source) for c in got.cells] == [(c.cell_type, c.source) for c in want.cells], \
            f"{name}.ipynb is out of date: run python tests/_notebooks.py"


def _printed(cell) -> str:
    """What a cell printed (stdout and displayed values, as doctest would see them)."""
    parts = []
    for out in cell.outputs:
        if out.output_type == "stream" and out.name == "stdout":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data") and "text/plain" in out.data:
            parts.append(out.data["text/plain"] + "\n")
    return "".join(parts)


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_notebook_runs_and_prints_what_the_page_says(name, tmp_path):
    nbclient = pytest.importorskip("nbclient", reason="needs the test extra: pip install -e '.[test]'")
    pytest.importorskip("ipykernel", reason="needs the test extra: pip install -e '.[test]'")
    nbformat = pytest.importorskip("nbformat")
    if name.startswith("03"):
        pytest.importorskip("transformers", reason="tutorial 3 needs the hf extra")
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    # Every expression's value is shown (as on the tutorial page), not only a cell's last one.
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}},
                                     extra_arguments=["--InteractiveShell.ast_node_interactivity=all"])
    client.execute(env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TQDM_DISABLE="1"))
    checker, flags = doctest.OutputChecker(), doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    code = [c for c in nb.cells if c.cell_type == "code"]
    expected = [want for kind, _, want in cells((PAGES / f"{name}.md").read_text(encoding="utf-8")) if kind == "code"]
    assert len(code) == len(expected)
    for n, (cell, want) in enumerate(zip(code, expected)):
        got = _printed(cell)
        assert checker.check_output(want, got, flags), f"{name} cell {n}:\n{cell.source}\n--- page says:\n{want}--- notebook printed:\n{got}"
