"""Checks on the built documentation site (HTML), shared by tests/test_docs.py and usable by hand:

    python tests/_site_checks.py site/      # after: mkdocs build --strict

- no raw reStructuredText role (``:func:`x```, ``:class:``, ``:attr:``, ``:meth:``, ...) in visible text;
- no parameter shown as *required* when the function has a default for it (or a grouped entry
  ``a, b`` that cannot have one default);
- every Returns section is one item (a wrapped description split into rows was the old defect);
- one name per Parameters/Attributes row (``kv_lengths, q_lengths`` rendered as one "required" name);
- no page cites a file the repository does not have (``DESIGN.md``, ``STYLE.md``).
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path

from bs4 import BeautifulSoup

ROLE = re.compile(r":(func|class|attr|meth|mod|data|exc|obj|ref|py:\w+):`?")


def pages(site: Path) -> list[Path]:
    return sorted(p for p in site.rglob("index.html") if "search" not in p.parts)


def _soup(path: Path) -> BeautifulSoup:
    return BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")


def raw_roles(path: Path) -> list[str]:
    """Visible text around each raw reST role on a page."""
    article = _soup(path).find("article") or _soup(path)
    text = article.get_text(" ")
    return [text[max(0, m.start() - 40):m.end() + 40].replace("\n", " ") for m in ROLE.finditer(text)]


def _resolve(identifier: str):
    """The Python object a mkdocstrings heading id names (``attnkit.nn.KVCache.append``), or None."""
    parts = identifier.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for name in parts[cut:]:
                obj = getattr(obj, name)
        except AttributeError:
            return None
        return obj
    return None


def _sections(doc):
    """(title, table) pairs of a documented object's own docstring sections (not its members')."""
    contents = doc.find("div", class_="doc-contents", recursive=False)
    if contents is None:
        return []
    out = []
    for title in contents.find_all("span", class_="doc-section-title"):
        if title.find_parent("div", class_="doc-object") is not doc:
            continue
        table = title.find_parent("p").find_next_sibling("table")
        if table is not None:
            out.append((title.get_text(strip=True).rstrip(":"), table))
    return out


def _documented(site: Path):
    for path in pages(site):
        soup = _soup(path)
        for doc in soup.find_all("div", class_="doc-object"):
            heading = doc.find(["h2", "h3", "h4", "h5"], id=True)
            if heading is not None:
                yield path, heading["id"], doc


def required_with_default(site: Path) -> list[str]:
    """``page: object.param`` for each parameter the site calls required although it has a default."""
    bad = []
    for path, ident, doc in _documented(site):
        for title, table in _sections(doc):
            if title != "Parameters":
                continue
            obj = _resolve(ident)
            try:
                params = inspect.signature(obj).parameters if callable(obj) else {}
            except (TypeError, ValueError):
                params = {}
            for row in table.select("tbody > tr"):
                cells = row.find_all("td", recursive=False)
                if not cells or "required" not in cells[-1].get_text():
                    continue
                name = cells[0].get_text(strip=True).lstrip("*")
                p = params.get(name)
                if "," in name or (p is not None and p.default is not inspect.Parameter.empty):
                    bad.append(f"{path.parent.name}: {ident}({name})")
    return bad


def grouped_names(site: Path) -> list[str]:
    """``page: object (a, b)`` for each Parameters/Attributes row that names several things at once."""
    bad = []
    for path, ident, doc in _documented(site):
        for title, table in _sections(doc):
            if title not in ("Parameters", "Attributes", "Other Parameters"):
                continue
            for row in table.select("tbody > tr"):
                cells = row.find_all("td", recursive=False)
                if cells and "," in cells[0].get_text(strip=True):
                    bad.append(f"{path.parent.name}: {ident} ({cells[0].get_text(strip=True)})")
    return bad


def missing_files(path: Path) -> list[str]:
    """Names of files outside the repository that a page cites (the old DESIGN.md / STYLE.md)."""
    text = (_soup(path).find("article") or _soup(path)).get_text(" ")
    return sorted(set(re.findall(r"\b(?:DESIGN|STYLE|TESTING-NOTES)\.md\b", text)))


def multi_row_returns(site: Path) -> list[str]:
    """``page: object (n rows)`` for each Returns table with more than one row."""
    bad = []
    for path, ident, doc in _documented(site):
        for title, table in _sections(doc):
            rows = table.select("tbody > tr")
            if title == "Returns" and len(rows) > 1:
                bad.append(f"{path.parent.name}: {ident} ({len(rows)} rows)")
    return bad


def main(site: str) -> int:
    root = Path(site)
    roles = {str(p.relative_to(root)): r for p in pages(root) if (r := raw_roles(p))}
    problems = [f"raw role on {p}: {r}" for p, rs in roles.items() for r in rs]
    problems += [f"required but has a default: {x}" for x in required_with_default(root)]
    problems += [f"multi-row Returns: {x}" for x in multi_row_returns(root)]
    problems += [f"grouped names: {x}" for x in grouped_names(root)]
    problems += [f"cites {f} (not in the repository) on {p.relative_to(root)}" for p in pages(root) for f in missing_files(p)]
    print("\n".join(problems) or "site checks: clean")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "site"))
