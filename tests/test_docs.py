"""The documentation site: ``mkdocs build --strict`` passes, the API reference names every public
name, and every tutorial runs — as the notebook a user opens, its printed outputs compared with
the tutorial page.

Needs the ``docs`` extra (mkdocs, Material, mkdocstrings) for the build and the ``test`` extra
(nbclient, nbformat, ipykernel) for the notebooks; CI installs both.
"""

from __future__ import annotations

import doctest
import importlib
import re
import sys
import types

import pytest

from _notebooks import NOTEBOOKS, PAGES, ROOT, cells, execute, notebook

TUTORIALS = sorted(p.stem for p in PAGES.glob("*.md"))
REFERENCE = {  # API reference page -> the modules whose __all__ it must cover
    "attnkit": ["attnkit"], "spec": [], "inspect": ["attnkit.inspect"], "viz": ["attnkit.viz"], "nn": ["attnkit.nn"],
    "masks": ["attnkit.masks"], "hf": ["attnkit.integrations.hf"], "ring": ["attnkit.engines.ring"], "keras": ["attnkit.keras"],
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


def _check_outputs(name: str, nb) -> None:
    # Exact outputs (whitespace aside): the pages carry no doctest directives and no "..." elisions.
    checker, flags = doctest.OutputChecker(), doctest.NORMALIZE_WHITESPACE
    code = [c for c in nb.cells if c.cell_type == "code"]
    expected = [want for kind, _, want in cells((PAGES / f"{name}.md").read_text(encoding="utf-8")) if kind == "code"]
    assert len(code) == len(expected)
    for n, (cell, want) in enumerate(zip(code, expected)):
        got = _printed(cell)
        assert checker.check_output(want, got, flags), f"{name} cell {n}:\n{cell.source}\n--- page says:\n{want}--- notebook printed:\n{got}"


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_notebook_runs_and_prints_what_the_page_says(name, tmp_path):
    pytest.importorskip("nbclient", reason="needs the test extra: pip install -e '.[test]'")
    pytest.importorskip("ipykernel", reason="needs the test extra: pip install -e '.[test]'")
    nbformat = pytest.importorskip("nbformat")
    if name.startswith("03"):
        pytest.importorskip("transformers", reason="tutorial 3 needs the hf extra")
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    _check_outputs(name, execute(nb, str(tmp_path)))  # run as stored, each printed value its cell's last


def test_tutorials_link_their_notebooks_which_are_stored_with_the_pages_outputs(site):
    nbformat = pytest.importorskip("nbformat", reason="needs the test extra")
    for name in TUTORIALS:
        page = (PAGES / f"{name}.md").read_text(encoding="utf-8")
        assert f"](../notebooks/{name}.ipynb)" in page, f"{name}.md does not link its notebook"
        assert (site / "notebooks" / f"{name}.ipynb").is_file()  # published beside the pages
        nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
        assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code"), \
            f"{name}.ipynb is stored unexecuted: run python tests/_notebooks.py"
        _check_outputs(name, nb)
        assert "doctest:" not in page


def test_pages_quote_the_runs_their_pictures_come_from():
    # tools/docs_images.py writes each run's printed output beside its picture; the pages quote it.
    quotes = {"explain-output.txt": "03-real-model.md", "alignment-dates.txt": "04-translation.md"}
    for text, page in quotes.items():
        assert (ROOT / "docs" / "img" / text).read_text(encoding="utf-8").rstrip("\n") in \
            (PAGES / page).read_text(encoding="utf-8"), f"{page} quotes an older docs/img/{text}"


@pytest.mark.parametrize("page", ["engines.md", "faq.md"])
def test_page_examples_print_what_the_page_says(page):
    if page == "engines.md":
        from attnkit.engines.kernel import build

        why = build.build_status()
        if why is not None:
            pytest.skip(f"the page shows the fused kernel's explain lines; it is unavailable here: {why}")
    text = (ROOT / "docs" / page).read_text(encoding="utf-8")
    blocks = re.findall(r"^```pycon\n(.*?)^```\n", text, re.S | re.M)
    assert blocks
    parser, runner = doctest.DocTestParser(), doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    globs: dict = {}
    for n, block in enumerate(blocks):
        runner.run(parser.get_doctest(block, globs, f"{page}[{n}]", page, 0))
    assert runner.summarize(verbose=False).failed == 0


def test_bench_plots_read_a_bench_result(tmp_path):
    # tools/bench_plots.py reads the Markdown `attnkit bench --output` writes (columns found by name).
    pytest.importorskip("matplotlib")
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import bench_plots
    finally:
        sys.path.pop(0)
    run = tmp_path / "run.md"
    run.write_text("""# attnkit bench — 2026-12-01 10:00 UTC

- CPU: test

| case | mode | flash s | × SDPA | target | status |
|---|---|---:|---:|---|---|
| full fp32 B=1 H=8 L=4096 D=64 | fwd | 0.2000 | 1.10× | ≥ 1× SDPA | met |

## Every implementation

| case | mode | impl | median s | GFLOP/s | peak RSS MiB | note |
|---|---|---|---:|---:|---:|---|
| full fp32 B=1 H=8 L=4096 D=64 | fwd | flash | 0.2000 | 1 | 261 | |
| full fp32 B=1 H=8 L=4096 D=64 | fwd | sdpa | 0.2200 | 1 | 262 | |
| full fp32 B=1 H=8 L=4096 D=64 | fwd | naive | — | — | — | n/a |
""", encoding="utf-8")
    rows = bench_plots.parse(run.read_text(encoding="utf-8"))
    assert [(r.impl, r.seconds, r.rss_mib) for r in rows] == [("flash", 0.2, 261.0), ("sdpa", 0.22, 262.0)]
    assert bench_plots.main([str(run), "--out", str(tmp_path / "img")]) == 0
    assert (tmp_path / "img" / "perf-ratios.png").stat().st_size > 1000
    status = (tmp_path / "snippets" / "bench-status.md").read_text(encoding="utf-8")
    assert "2026-12-01 10:00" in status and "| ≥ 1× SDPA | met |" in status
