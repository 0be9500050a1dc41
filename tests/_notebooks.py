"""The tutorial notebooks are generated from the tutorial pages: one source, no drift.

``docs/tutorials/NN-name.md`` → ``docs/notebooks/NN-name.ipynb``: prose becomes markdown cells,
each ```` ```pycon ```` block code cells (the ``>>>``/``...`` prompts removed), split after each
example that prints something, so every printed value is a cell's last value (what Jupyter
shows). The expected output is kept beside the cell for tests/test_docs.py, which executes the
notebook and compares each cell's printed output with it. The notebooks are stored executed
(with their outputs), so they read like the page before anyone runs them.

Regenerate and execute after editing a tutorial page: ``python tests/_notebooks.py``.
"""

from __future__ import annotations

import doctest
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = ROOT / "docs" / "tutorials"
NOTEBOOKS = ROOT / "docs" / "notebooks"
_FENCE = re.compile(r"^```pycon\n(.*?)^```\n", re.S | re.M)
_FLAGS = re.compile(r"\s*#\s*doctest:.*$")


def cells(page: str) -> list[tuple[str, str, str]]:
    """``(kind, source, expected output)`` for each cell of a tutorial page, in order."""
    out: list[tuple[str, str, str]] = []
    pos = 0
    parser = doctest.DocTestParser()
    for m in _FENCE.finditer(page):
        prose = page[pos:m.start()].strip()
        if prose:
            out.append(("markdown", prose, ""))
        group: list = []
        for example in parser.get_examples(m.group(1)):
            group.append(example)
            if example.want:  # this output ends a cell
                out.append(_cell(group))
                group = []
        if group:
            out.append(_cell(group))
        pos = m.end()
    if page[pos:].strip():
        out.append(("markdown", page[pos:].strip(), ""))
    return out


def _cell(examples: list) -> tuple[str, str, str]:
    source = "".join(_FLAGS.sub("", line) + "\n" for e in examples for line in e.source.rstrip("\n").split("\n"))
    return ("code", source.rstrip("\n"), "".join(e.want for e in examples))


def execute(nb, cwd: str):  # -> the same notebook, run top to bottom with its outputs
    """Run a notebook in a fresh kernel, offline and on one thread (as CI runs it)."""
    import os

    import nbclient

    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": cwd}})
    client.execute(env=dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TQDM_DISABLE="1"))
    return nb


def notebook(page: str):  # -> nbformat.NotebookNode
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}}
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "markdown" else nbformat.v4.new_code_cell(src)
                for kind, src, _ in cells(page)]
    for n, cell in enumerate(nb.cells):
        cell.id = f"cell-{n}"  # stable ids: regenerating gives the same file
    return nb


def write_all(names: list[str] | None = None) -> list[Path]:
    """Generate, execute (in a scratch folder: tutorials write files) and store each notebook."""
    import tempfile

    import nbformat

    NOTEBOOKS.mkdir(parents=True, exist_ok=True)
    written = []
    for page in sorted(PAGES.glob("*.md")):
        if names and page.stem not in names:
            continue
        path = NOTEBOOKS / (page.stem + ".ipynb")
        with tempfile.TemporaryDirectory() as scratch:
            nb = execute(notebook(page.read_text(encoding="utf-8")), scratch)
        for cell in nb.cells:  # stored outputs without run-specific noise
            cell.get("metadata", {}).pop("execution", None)
        nbformat.write(nb, path)
        written.append(path)
    return written


if __name__ == "__main__":
    import sys

    for p in write_all(sys.argv[1:] or None):
        print(p.relative_to(ROOT))
