"""The layering of DESIGN.md, read from the source: no import circle and no upward import.

Every ``import`` / ``from ... import`` in ``src/attnkit`` counts, wherever it is written: at the top,
inside a function (a lazy import), or under ``if TYPE_CHECKING:`` (an annotation is a dependency
too), plus ``importlib.import_module("attnkit...")`` with a literal name. An import of a module's own
ancestor package is not an edge (Python initializes the package first, whoever asks).

Layers, top to bottom (docs/architecture.md): cli (and the runnable examples) > applications
(inspect, viz, seq2seq, bench) > modules and adapters (nn, integrations, the package facade) >
functional > engines > the kernel (engines/kernel: the contract, its two backends and the build,
which no engine module may be imported by) > spec and math (spec, dropout, masks, scores, softmax,
normalizers, errors, the numeric and machine facts). A module may import its own layer or any layer
below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "attnkit"

# (layer, module-name prefixes): a module belongs to the layer of its longest matching prefix.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("cli", ("attnkit.cli", "attnkit.__main__", "attnkit.examples")),
    ("applications", ("attnkit.inspect", "attnkit.viz", "attnkit.seq2seq", "attnkit.bench")),
    ("modules and adapters", ("attnkit.nn", "attnkit.integrations", "attnkit.kv_cache", "attnkit.keras")),
    ("functional", ("attnkit.functional", "attnkit.distributed")),
    ("engines", ("attnkit.engines",)),
    ("kernel", ("attnkit.engines.kernel",)),
    ("spec and math", ("attnkit.spec", "attnkit.dropout", "attnkit.masks", "attnkit.scores", "attnkit.softmax",
                       "attnkit.normalizers", "attnkit.errors", "attnkit._numerics", "attnkit._machine",
                       "attnkit._devices", "attnkit._layout")),
]
# The package itself (``import attnkit``): the public facade, which re-exports nn.KVCache.
FACADE_LAYER = "modules and adapters"
RANK = {name: len(LAYERS) - n for n, (name, _) in enumerate(LAYERS)}  # higher rank = higher layer


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return mods


def _targets(node: ast.AST, name: str, is_pkg: bool) -> list[str]:
    """Absolute module names an import node asks for (the module, and ``module.name`` candidates)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            base = name.split(".") if is_pkg else name.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            mod = ".".join(base + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
        return [f"{mod}.{a.name}" for a in node.names] + [mod]
    if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        return [node.args[0].value]
    return []


def import_graph() -> dict[str, set[str]]:
    """``module -> modules it imports`` inside attnkit (edges to one's own ancestors left out)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, (path, is_pkg) in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = _targets(node, name, is_pkg)
            if isinstance(node, ast.ImportFrom):
                # `from pkg import sub`: the edge is to pkg.sub when it is a module, else to pkg.
                *subs, mod = targets
                found = [t for t in subs if t in mods]
                targets = found if len(found) == len(subs) else [*found, mod]
            for t in targets:
                while t not in mods and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != name and not name.startswith(t + "."):
                    graph[name].add(t)
    return graph


def layer_of(module: str) -> str | None:
    if module == "attnkit":
        return FACADE_LAYER
    matches = [(len(p), layer) for layer, prefixes in LAYERS for p in prefixes
               if module == p or module.startswith(p + ".")]
    return max(matches)[1] if matches else None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    assert [m for m in _modules() if layer_of(m) is None] == []


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_no_upward_import():
    up = [f"{a} ({layer_of(a)}) imports {b} ({layer_of(b)})" for a, bs in sorted(import_graph().items()) for b in sorted(bs)
          if RANK[layer_of(b)] > RANK[layer_of(a)]]  # type: ignore[index]
    assert up == []


def test_the_checker_sees_lazy_type_checking_and_relative_imports(tmp_path, monkeypatch):
    """The checker itself can fail: a planted circle through a lazy import and an upward
    TYPE_CHECKING import are both reported."""
    pkg = tmp_path / "attnkit"
    (pkg / "engines").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "engines" / "__init__.py").write_text("from . import a\n")
    (pkg / "engines" / "a.py").write_text("def f():\n    from .b import g\n")
    (pkg / "engines" / "b.py").write_text("from typing import TYPE_CHECKING\nfrom . import a\n"
                                          "if TYPE_CHECKING:\n    from ..functional import attention\n")
    (pkg / "functional.py").write_text("import importlib\nimportlib.import_module('attnkit.engines.a')\n")
    monkeypatch.setitem(globals(), "SRC", pkg)
    graph = import_graph()
    assert graph["attnkit.engines.a"] == {"attnkit.engines.b"}
    assert graph["attnkit.engines.b"] == {"attnkit.engines.a", "attnkit.functional"}
    assert graph["attnkit.functional"] == {"attnkit.engines.a"}
    assert cycles(graph) == [["attnkit.engines.a", "attnkit.engines.b", "attnkit.functional"]]
    with pytest.raises(AssertionError):
        test_no_upward_import()
