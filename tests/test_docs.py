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
    "attnkit": ["attnkit"], "spec": [], "inspect": ["attnkit.inspect"], "viz": ["attnkit.viz"], "nn": ["attnkit.nn"],
    "masks": ["attnkit.masks"], "hf": ["attnkit.integrations.hf"], "ring": ["attnkit.engines.ring"],
    "seq2seq": [f"attnkit.seq2seq.{m}" for m in ("data", "vocab", "model", "train", "decode", "evaluate", "plot")],
}


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


def test_api_reference_renders_every_docstring_convention(site):
    # The docstrings are Google style with Markdown cross-references; a reST role left in one, a
    # grouped "a, b:" parameter (shown as required, without its default) or a Returns description
    # split into one table row per wrapped line shows up on the built page.
    pytest.importorskip("bs4", reason="needs the test extra: pip install -e '.[test]'")
    import _site_checks as checks

    pages = checks.pages(site)
    assert len(pages) >= 15
    roles = {str(p.relative_to(site)): r for p in pages if (r := checks.raw_roles(p))}
    assert not roles, f"raw reST roles on the site (python tools/docstring_roles.py site --write): {roles}"
    assert not checks.required_with_default(site)
    assert not checks.grouped_names(site)
    assert not checks.multi_row_returns(site)
    assert not {str(p.relative_to(site)): f for p in pages if (f := checks.missing_files(p))}


def test_site_checks_catch_the_defects_they_name(tmp_path):
    # The checks above must be able to fail: a page with each defect, as mkdocstrings renders it.
    pytest.importorskip("bs4", reason="needs the test extra: pip install -e '.[test]'")
    import _site_checks as checks

    page = tmp_path / "reference" / "x" / "index.html"
    page.parent.mkdir(parents=True)
    row = '<tr class="doc-section-item"><td><code>{}</code></td><td></td><td>d</td><td>{}</td></tr>'
    table = '<p><span class="doc-section-title">{}:</span></p><table><tbody>{}</tbody></table>'
    page.write_text(
        '<article><div class="doc doc-object"><h2 id="attnkit.attention">attention</h2><div class="doc-contents">'
        "<p>see :func:<code>explain</code> and DESIGN.md</p>"
        + table.format("Parameters", row.format("kv_lengths, q_lengths", "<em>required</em>") + row.format("scale", "<em>required</em>"))
        + table.format("Returns", "<tr><td>T</td><td>a</td></tr><tr><td>T</td><td>b</td></tr>")
        + "</div></div></article>", encoding="utf-8")
    assert checks.raw_roles(page) and checks.missing_files(page) == ["DESIGN.md"]
    assert checks.required_with_default(tmp_path) == ["x: attnkit.attention(kv_lengths, q_lengths)", "x: attnkit.attention(scale)"]
    assert checks.grouped_names(tmp_path) == ["x: attnkit.attention (kv_lengths, q_lengths)"]
    assert checks.multi_row_returns(tmp_path) == ["x: attnkit.attention (2 rows)"]


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
