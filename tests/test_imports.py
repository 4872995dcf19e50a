"""The package has no import circle (issue 17), counting function-level imports too.

The graph is read from the source with ``ast``: every ``import`` and ``from
... import`` anywhere in a module (at the top, inside functions, classes or
``try`` blocks) is an edge to the package module it names; ``from .pkg import
name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``.
Importing ``a.b`` also imports the package ``a`` (its ``__init__``). The body of
``if __name__ == "__main__":`` is left out: it runs only when the module is the
script (``python -m``), whose module is ``__main__``, not the package's.
"""
from __future__ import annotations

import ast
from pathlib import Path

import hpc_profiler

ROOT = Path(hpc_profiler.__file__).parent
PKG = "hpc_profiler"


def _modules() -> dict:
    mods = {}
    for p in ROOT.rglob("*.py"):
        rel = p.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        mods[".".join(parts)] = (p, is_pkg)
    return mods


def _resolve(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_main_block(node) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def import_graph() -> dict:
    mods = _modules()
    graph = {m: set() for m in mods}
    for mod, (path, is_pkg) in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        tree.body = [n for n in tree.body if not _is_main_block(n)]
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(mod, is_pkg, node)
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    targets.append(sub if sub in mods else target)
            for t in targets:
                # importing a.b.c runs a/__init__, a/b/__init__ and a/b/c
                parts = t.split(".")
                for i in range(2, len(parts) + 1):
                    name = ".".join(parts[:i])
                    if name in mods and name != mod and not mod.startswith(name + "."):
                        graph[mod].add(name)
    return graph


def cycles(graph: dict) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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


def test_graph_sees_function_level_imports():
    g = import_graph()
    # status imports the stages at module level; the packer's CLI imports the manifest at function level
    assert "hpc_profiler.workflow.stages" in g["hpc_profiler.status"]
    assert "hpc_profiler.workflow.sites" in g["hpc_profiler.pack"]
    assert "hpc_profiler.pack" not in g["hpc_profiler.ledger"]  # only under __name__ == "__main__"
    # a circle planted in a copy of the graph is found
    g2 = {k: set(v) for k, v in g.items()}
    g2["hpc_profiler.layout"].add("hpc_profiler.status")
    assert any("hpc_profiler.layout" in c and "hpc_profiler.status" in c for c in cycles(g2))


def test_no_import_circles():
    found = cycles(import_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_layout_is_at_the_bottom():
    """The layout imports only the site-file naming: every module may ask it."""
    assert import_graph()["hpc_profiler.layout"] <= {"hpc_profiler.sitefile", "hpc_profiler._atomic",
                                                     "hpc_profiler._version"}
