"""Import-layering contract for seaweed_jax, checked statically with `ast` (nothing is imported).

`check(pkg_dir)` parses every module under `pkg_dir` (a directory named `seaweed_jax`), resolves
each `import` / `from ... import` (absolute or relative, at any depth, `if TYPE_CHECKING:` too)
to the seaweed_jax module or package it names, and returns violations in three groups:
  "layers":  unknown modules, imports of a higher layer, CLI modules importing each other;
  "cycles":  cycles in the module graph and in the package graph;
  "lazy":    imports inside a function body without a `# lazy: <reason>` comment.
Dynamic imports (`importlib.import_module("...")`) are not seen.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = "seaweed_jax"
# Lowest first; a module may import only from its own layer or lower ones.
LAYERS = [
    ["seaweed_jax", "seaweed_jax.config_lib", "seaweed_jax.paths", "seaweed_jax.moving_shapes"],
    ["seaweed_jax.parallel"],
    ["seaweed_jax.kernels"],
    ["seaweed_jax.diffusion"],
    ["seaweed_jax.checkpoint"],
    ["seaweed_jax.data"],
    ["seaweed_jax.models"],
    ["seaweed_jax.eval"],
    ["seaweed_jax.trainer"],
    ["seaweed_jax.inference", "seaweed_jax.cli"],
    ["seaweed_jax.train", "seaweed_jax.sample", "seaweed_jax.reconstruct", "seaweed_jax.evaluate",
     "seaweed_jax.prepare", "seaweed_jax.check", "seaweed_jax.plan"],
]
CLI_LAYER = len(LAYERS) - 1
LAZY = re.compile(r"#\s*lazy:\s*\S")


def layer_of(module: str) -> tuple[int, str] | None:
    """(layer index, table entry) of a module; the package __init__ matches only exactly."""
    for i, entries in enumerate(LAYERS):
        for entry in entries:
            if module == entry or (entry != PKG and module.startswith(entry + ".")):
                return i, entry
    return None


def find_modules(pkg_dir: Path) -> dict[str, Path]:
    """{dotted module name: file}; a package is named by its __init__.py."""
    out = {}
    for path in sorted(pkg_dir.rglob("*.py")):
        parts = list(path.relative_to(pkg_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules) -> str | None:
    """The longest known module prefix of a dotted seaweed_jax name (None if not seaweed_jax)."""
    parts = name.split(".")
    if parts[0] != PKG:
        return None
    while parts and ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts) if parts else None


def imports_of(module: str, path: Path, modules):
    """Yields (import node, the seaweed_jax modules it imports, inside a function body)."""
    is_pkg = path.name == "__init__.py"

    def targets(node):
        if isinstance(node, ast.Import):
            return [_resolve(a.name, modules) for a in node.names]
        base = module if is_pkg else module.rpartition(".")[0]  # the package `from . import` means
        if node.level:
            base = base.rsplit(".", node.level - 1)[0]  # each extra dot goes one package up
            base = f"{base}.{node.module}" if node.module else base
        else:
            base = node.module
        # `from pkg import name`: the submodule pkg.name if it is one, else pkg itself
        return [_resolve(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base, modules)
                for a in node.names]

    def walk(node, in_func):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, [t for t in dict.fromkeys(targets(child)) if t], in_func
            yield from walk(child, in_func or isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    yield from walk(ast.parse(path.read_text(), str(path)), False)


def package_of(module: str, modules) -> str:
    """Package-graph node: a package itself, a top-level module itself, else its package."""
    parent = module.rpartition(".")[0]
    if modules[module].name == "__init__.py" or parent == PKG:
        return module
    return parent


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Shortest cycle (node list, first node repeated last) through each node not yet on one."""
    cycles, seen = [], set()
    for start in sorted(edges):
        if start in seen:
            continue
        paths, visited = {start: [start]}, {start}  # BFS for the shortest way back to `start`
        queue = [start]
        while queue:
            node = queue.pop(0)
            nxt = sorted(edges.get(node, ()))
            if start in nxt:
                cycle = paths[node] + [start]
                seen.update(cycle)
                cycles.append(cycle)
                break
            for n in nxt:
                if n not in visited:
                    visited.add(n)
                    paths[n] = paths[node] + [n]
                    queue.append(n)
    return cycles


def check(pkg_dir) -> dict[str, list[str]]:
    pkg_dir = Path(pkg_dir)
    modules = find_modules(pkg_dir)
    problems = {"layers": [], "cycles": [], "lazy": []}
    mod_edges, pkg_edges, upward = {}, {}, {}
    for module, path in modules.items():
        rel, src, own = path.relative_to(pkg_dir.parent), path.read_text().splitlines(), layer_of(module)
        if own is None:
            problems["layers"].append(
                f"{rel}: module {module} is not in the layer table: add it (or its top-level "
                f"package) to LAYERS in tests/_imports.py")
        for node, targets, in_func in imports_of(module, path, modules):
            if in_func and not any(LAZY.search(src[i - 1])
                                   for i in range(max(1, node.lineno - 1), node.end_lineno + 1)):
                problems["lazy"].append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
            for target in (t for t in targets if t != module):
                mod_edges.setdefault(module, set()).add(target)
                a, b = package_of(module, modules), package_of(target, modules)
                if a != b:
                    pkg_edges.setdefault(a, set()).add(b)
                theirs = layer_of(target)
                if own is None or theirs is None:
                    continue  # the unknown module is reported once, above
                if theirs[0] > own[0] or (own[0] == theirs[0] == CLI_LAYER and own[1] != theirs[1]):
                    upward.setdefault((rel, module, target, own, theirs), []).append(node.lineno)
    for (rel, module, target, own, theirs), lines in upward.items():
        fix = (f"move the shared code down to layer {own[0]} or invert the dependency"
               if theirs[0] > own[0] else "CLI modules must not import each other: move the "
               f"shared code down to layer {CLI_LAYER - 1}")
        problems["layers"].append(
            f"{rel}:{','.join(map(str, lines))}: {module} (layer {own[0]}, {own[1]}) imports "
            f"{target} (layer {theirs[0]}, {theirs[1]}): {fix}")
    for kind, edges in (("module", mod_edges), ("package", pkg_edges)):
        for cycle in find_cycles(edges):
            problems["cycles"].append(f"{kind} import cycle: {' -> '.join(cycle)}: break it by "
                                      f"moving the shared code into a lower module")
    return problems
