"""The tutorial notebooks are generated from the tutorial pages: one source, no drift.

``docs/tutorials/NN-name.md`` → ``docs/notebooks/NN-name.ipynb``: prose becomes markdown cells,
each ```` ```pycon ```` block one code cell (the ``>>>``/``...`` prompts and ``# doctest:``
flags removed). The block's expected output is kept beside the cell for tests/test_docs.py,
which executes the notebook and compares each cell's printed output with it.

Regenerate after editing a tutorial page: ``python tests/_notebooks.py``.
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
        examples = parser.get_examples(m.group(1))
        source = "".join(_FLAGS.sub("", line) + "\n" for e in examples for line in e.source.rstrip("\n").split("\n"))
        out.append(("code", source.rstrip("\n"), "".join(e.want for e in examples)))
        pos = m.end()
    if page[pos:].strip():
        out.append(("markdown", page[pos:].strip(), ""))
    return out


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


def write_all() -> list[Path]:
    import nbformat

    NOTEBOOKS.mkdir(parents=True, exist_ok=True)
    written = []
    for page in sorted(PAGES.glob("*.md")):
        path = NOTEBOOKS / (page.stem + ".ipynb")
        nbformat.write(notebook(page.read_text(encoding="utf-8")), path)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in write_all():
        print(p.relative_to(ROOT))
