"""Rewrite reStructuredText roles in attnkit's docstrings as mkdocstrings cross-references.

Usage: python tools/docstring_roles.py SITE [--write]

``:func:`attention``` → ``[`attention`][attnkit.functional.attention]`` when the target is documented
on the site (its canonical path is in ``SITE/objects.inv``, written by ``mkdocs build``), otherwise
plain code ``` `attention` ```. ``~`` keeps only the last component as the text, as in Sphinx.
Names resolve like Python would from where the docstring sits (griffe's scope rules). Only lines
inside docstrings change. Without ``--write`` it prints each rewrite and changes nothing.

tests/test_docs.py fails on any raw role left in the built site; run this after adding one.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from pathlib import Path

import griffe
from mkdocstrings import Inventory

ROOT = Path(__file__).resolve().parents[1]
ROLE = re.compile(r":(?:py:)?(func|class|attr|meth|mod|data|exc|obj):`(~?)([^`<]*?)(?:\s*<([^>]+)>)?`")


def _walk(obj):
    if obj.is_alias:
        return
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


def _module(obj):
    while not obj.is_module:
        obj = obj.parent
    return obj


def _canonical(path: str, pkg) -> str | None:
    try:
        found = pkg.modules_collection[path]
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None
    try:
        return found.final_target.path if found.is_alias else found.path
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def resolve(target: str, where, pkg) -> str | None:
    """Canonical path of ``target`` as written in the docstring of ``where``, or None."""
    if target.startswith("."):  # a module relative to the docstring's package
        base = _module(where)
        base = base if base.is_package else base.parent
        wanted = f"{base.path}{target}"
        return wanted if _canonical(wanted, pkg) == wanted else None  # not a name the package re-exports
    if target.startswith("attnkit"):
        return _canonical(target, pkg)
    head, _, rest = target.partition(".")
    scope = where
    while scope is not None:
        if head in scope.members:
            return _canonical(scope.members[head].path + (f".{rest}" if rest else ""), pkg)
        scope = scope.parent
    return _canonical(f"attnkit.{target}", pkg)


def _unique(target: str, inventory: set[str], pkg) -> str | None:
    """The one documented object whose path ends with ``target`` (names loaded lazily, which griffe
    cannot follow: ``attnkit.nn.MultiHeadAttention``), or None if there are none or several."""
    for tail in ("." + target.removeprefix("attnkit.").lstrip(".~"), "." + target.rsplit(".", 1)[-1]):
        found = {_canonical(e, pkg) for e in inventory if e.endswith(tail)} - {None}
        if found:
            return found.pop() if len(found) == 1 else None
    return None


def rewrites(site: Path):
    inventory = set(Inventory.parse_sphinx(open(site / "objects.inv", "rb")))
    pkg = griffe.load("attnkit", search_paths=[str(ROOT / "src")], resolve_aliases=False)
    edits: dict[Path, dict[int, list]] = defaultdict(dict)
    for obj in _walk(pkg):
        doc = obj.docstring
        if doc is None or doc.lineno is None or not ROLE.search(doc.value):
            continue
        path = Path(obj.filepath)
        for lineno in range(doc.lineno, doc.endlineno + 1):
            edits[path][lineno] = obj
    for path, lines in edits.items():
        text = path.read_text(encoding="utf-8").split("\n")
        for lineno, obj in sorted(lines.items()):
            def sub(m, obj=obj):
                role, tilde, label, target = m.groups()
                target = (target or label).strip()
                label = label.strip() if m.group(4) else target.lstrip("~")
                if tilde:
                    label = target.rsplit(".", 1)[-1]
                canon = resolve(target, obj, pkg)
                if canon is None and (target.startswith("attnkit.") or "." not in target.lstrip("~")):
                    canon = _unique(target, inventory, pkg)
                if canon is not None and role == "mod" and not pkg.modules_collection[canon].is_module:
                    canon = None  # a module's name shadowed by a function it exports (cli.explain)
                if canon is not None and canon in inventory:
                    return f"[`{label}`][{canon}]"
                return f"`{label}`"
            new = ROLE.sub(sub, text[lineno - 1])
            if new != text[lineno - 1]:
                yield path, lineno, text[lineno - 1], new
                text[lineno - 1] = new
        if "--write" in sys.argv:
            path.write_text("\n".join(text), encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    n = 0
    for path, lineno, old, new in rewrites(Path(sys.argv[1])):
        n += 1
        print(f"{path.relative_to(ROOT)}:{lineno}\n  - {old.strip()}\n  + {new.strip()}")
    print(f"{n} lines {'rewritten' if '--write' in sys.argv else 'would change (dry run)'}")
