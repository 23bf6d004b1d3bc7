"""The import graph of the `matl_keras` package, every import counted.

Reads the source with `ast` (imports nothing of ours): module-level imports
and the ones inside functions (`def f(): from matl_keras import config`)
alike, so that a cycle cannot hide behind a deferred import. Prints each
module's imports of the package, the cycles (strongly connected components
of more than one module, or a module importing itself) and the imports
that break the layers (`LAYERS`, lowest first: a module may import its own
layer and those below).

    python tools/import_graph.py            # summary; exit 1 on a cycle or
                                            # a layer break
    python tools/import_graph.py --edges    # every edge, `a -> b (line)`
"""

from __future__ import annotations

import argparse
import ast
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "matl_keras"

# Lowest first; a module belongs to the first prefix it starts with.
LAYERS = [
    ["matl_keras.errors"],
    ["matl_keras.runs"],
    ["matl_keras.registry"],
    ["matl_keras.layers"],
    ["matl_keras.models", "matl_keras.keras_objects"],
    ["matl_keras.data"],
    ["matl_keras.evaluation"],
    ["matl_keras.training"],
    ["matl_keras.config"],
    ["matl_keras.commands"],
    ["matl_keras.cli", "matl_keras.tf_startup", "matl_keras.__main__"],
]


def modules() -> dict[str, str]:
    """`{module name: file}` of the package."""
    found = {}
    root = os.path.join(REPO, PACKAGE)
    for folder, _, files in os.walk(root):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, REPO)[: -len(".py")]
            module = rel.replace(os.sep, ".")
            if module.endswith(".__init__"):
                module = module[: -len(".__init__")]
            found[module] = path
    return found


def _resolve(name: str, known: dict[str, str]) -> str | None:
    """The package module `name` refers to (a name inside a module, as in
    `from matl_keras.runs import RUN_FILE`, is its module)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def edges(known: dict[str, str]) -> dict[str, list[tuple[str, int]]]:
    """`{module: [(imported module, line), ...]}`, every import."""
    graph: dict[str, list[tuple[str, int]]] = {m: [] for m in known}
    for module, path in known.items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        is_package = path.endswith("__init__.py")
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = module.split(".")
                    keep = len(parts) - node.level + (1 if is_package else 0)
                    base = ".".join(parts[:keep] + ([base] if base else []))
                # `from matl_keras import runs` imports the module `runs`;
                # `from matl_keras import PLUGIN_API_VERSION` the package.
                targets = [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                if not target.startswith(PACKAGE):
                    continue
                resolved = _resolve(target, known)
                if resolved and resolved != module:
                    graph[module].append((resolved, node.lineno))
    for module in graph:
        seen, kept = set(), []
        for target, line in graph[module]:
            if target not in seen:
                seen.add(target)
                kept.append((target, line))
        graph[module] = kept
    return graph


def cycles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w, _ in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer_of(module: str) -> int | None:
    for rank, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                return rank
    return None


def layer_breaks(graph) -> list[str]:
    breaks = []
    for module, targets in sorted(graph.items()):
        rank = layer_of(module)
        for target, line in targets:
            other = layer_of(target)
            if rank is not None and other is not None and other > rank:
                breaks.append(
                    f"{module}:{line} imports {target} (a layer above)"
                )
    return breaks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edges", action="store_true")
    args = parser.parse_args()
    known = modules()
    graph = edges(known)
    count = sum(len(v) for v in graph.values())
    if args.edges:
        for module, targets in sorted(graph.items()):
            for target, line in targets:
                print(f"{module} -> {target} ({line})")
    found = cycles(graph)
    breaks = layer_breaks(graph)
    print(
        f"{len(known)} modules, {count} imports of the package "
        "(module-level and inside functions)"
    )
    print(f"cycles: {len(found)}")
    for component in found:
        print(f"  {len(component)} modules: {', '.join(component)}")
    print(f"layer breaks: {len(breaks)}")
    for line in breaks:
        print(f"  {line}")
    return 1 if found or breaks else 0


if __name__ == "__main__":
    sys.exit(main())
