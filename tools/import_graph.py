"""The package's import graph, from the source (ast), every import form counted: `import x`,
`from x import y`, relative `from . import tracking` / `from .steps import ...`, and imports inside
functions (lazy ones), each marked as such.

    python tools/import_graph.py              # one line per module: what it imports from the package
    python tools/import_graph.py --mermaid    # a mermaid flowchart (the picture in docs/layout.md)
    python tools/import_graph.py --cycles     # module-level import cycles, if any
    python tools/import_graph.py --reduced    # mermaid, hook/ and algorithms/ as one node each, implied edges left out
                                              # (docs/layout.md's picture)

`tests/test_layering.py` uses `imports()` to keep the core free of mlflow and of the edge modules.
"""
from __future__ import annotations

import argparse
import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "mlflow_unlearn"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE


@dataclass(frozen=True)
class Import:
    source: str  # importing module, e.g. mlflow_unlearn.steps
    target: str  # imported module, resolved to an absolute name (mlflow_unlearn.tracking, mlflow.pyfunc)
    line: int
    lazy: bool  # inside a function body


def module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """Absolute names a `from ... import ...` brings in: the module itself, and for names that are
    submodules (`from . import tracking`) the submodule too."""
    if node.level == 0:
        base = node.module or ""
    else:
        parts = module.split(".")
        if not is_package:
            parts = parts[:-1]
        parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
        base = ".".join(parts + ([node.module] if node.module else []))
    # `from . import ledger` imports the submodule, not (for this graph) the package it sits in
    out = [base] if base and (node.level == 0 or node.module) else []
    out += [f"{base}.{a.name}" for a in node.names if a.name != "*"]
    return out


def imports(root: Path = ROOT) -> list[Import]:
    """Every import in the package, lazy ones included. Names that are not modules (`from .x import
    func`) appear as `pkg.x.func`; `targets_in_package` maps them back to modules."""
    out = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(path, root)
        tree = ast.parse(path.read_text(), str(path))
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))]
        lazy_lines = {id(c) for f in functions for c in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                targets = _resolve(node, module, path.name == "__init__.py")
            else:
                continue
            for t in targets:
                out.append(Import(module, t, node.lineno, id(node) in lazy_lines))
    return out


def package_modules(root: Path = ROOT) -> set[str]:
    return {module_name(p, root) for p in root.rglob("*.py")}


def to_module(name: str, modules: set[str]) -> str | None:
    """The package module `name` refers to (the longest module prefix), or None outside the package."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def graph(root: Path = ROOT, *, lazy: bool = True) -> dict[str, set[str]]:
    """module -> package modules it imports (itself and its own package's __init__ excluded)."""
    modules = package_modules(root)
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports(root):
        if imp.lazy and not lazy:
            continue
        target = to_module(imp.target, modules)
        if target and target != imp.source and target != PACKAGE:
            edges[imp.source].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Elementary cycles found by DFS (each reported once, rotated to start at its smallest name)."""
    found, seen = [], set()

    def visit(node, path, on_path):
        for nxt in sorted(edges.get(node, ())):
            if nxt in on_path:
                cyc = path[path.index(nxt):]
                i = cyc.index(min(cyc))
                key = tuple(cyc[i:] + cyc[:i])
                if key not in seen:
                    seen.add(key)
                    found.append(list(key))
            elif len(path) < 12:
                visit(nxt, path + [nxt], on_path | {nxt})

    for start in sorted(edges):
        visit(start, [start], {start})
    return found


def short(m: str) -> str:
    return m[len(PACKAGE) + 1:] if m.startswith(PACKAGE + ".") else m


def collapsed(edges: dict[str, set[str]], folders=("hook", "algorithms")) -> dict[str, set[str]]:
    """Short names, each folder of `folders` as one node, and only the edges not implied by a longer
    path (transitive reduction): the picture a newcomer can read."""
    def node(m):
        s = short(m)
        return next((f for f in folders if s == f or s.startswith(f + ".")), s)

    out: dict[str, set[str]] = {}
    for src, dsts in edges.items():
        for dst in dsts:
            a, b = node(src), node(dst)
            if a != b:
                out.setdefault(a, set()).add(b)
            out.setdefault(b, set())

    def reaches(a, b, skip):
        seen, stack = set(), [x for x in out.get(a, ()) if (a, x) != skip]
        while stack:
            n = stack.pop()
            if n == b:
                return True
            if n not in seen:
                seen.add(n)
                stack.extend(out.get(n, ()))
        return False

    return {a: {b for b in bs if not reaches(a, b, (a, b))} for a, bs in out.items()}


def mermaid(edges: dict[str, set[str]], *, direction: str = "LR") -> str:
    ident = lambda m: short(m).replace(".", "_")
    lines = [f"flowchart {direction}"]
    for src in sorted(edges):
        for dst in sorted(edges[src]):
            lines.append(f"  {ident(src)}[{short(src)}] --> {ident(dst)}[{short(dst)}]")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mermaid", action="store_true")
    p.add_argument("--cycles", action="store_true", help="module-level (non-lazy) import cycles")
    p.add_argument("--no-lazy", action="store_true", help="leave out imports inside functions")
    p.add_argument("--reduced", action="store_true", help="mermaid of the collapsed, transitively reduced graph")
    a = p.parse_args(argv)
    edges = graph(lazy=not a.no_lazy)
    if a.cycles:
        found = cycles(graph(lazy=False))
        for c in found:
            print(" -> ".join(map(short, c + c[:1])))
        print(f"{len(found)} module-level cycle(s)")
        return 0
    if a.reduced:
        print(mermaid(collapsed(edges), direction="BT"))
        return 0
    if a.mermaid:
        print(mermaid(edges))
        return 0
    for src in sorted(edges):
        print(f"{short(src):<22} -> {', '.join(sorted(map(short, edges[src]))) or '-'}")
    n_lazy = sum(1 for i in imports() if i.lazy and i.target.startswith(PACKAGE))
    print(f"\n{len(edges)} modules, {sum(map(len, edges.values()))} edges; {n_lazy} function-local package imports")
    return 0


if __name__ == "__main__":
    sys.exit(main())
