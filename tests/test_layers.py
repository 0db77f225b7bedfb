"""The package's import rule (docs/architecture.md): each folder imports only from its own
folder or from the layers below it, at module level; no import cycle among modules."""

from __future__ import annotations

import ast
from pathlib import Path

import attnguide

PACKAGE = Path(attnguide.__file__).parent
LAYERS = {  # lowest first; a module may import its own layer and those below
    "errors": 0, "constants": 0, "_lazy": 0,
    "core": 1,
    "io": 2,
    "models": 3, "data": 3,  # peers: neither imports the other
    "wsss": 4,
    "metrics": 5,
    "engine": 6,
    "viz": 7,
    "tasks": 8, "integrations": 8,  # peers: Lightning / Accelerate build on the engine, not on tasks
    "cli": 9,
}
FUNCTION_LEVEL_ALLOWED: dict[str, str] = {
    # module -> why an attnguide import sits inside a function there
}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield ".".join(parts), path


def _imports(path: Path):
    """(imported attnguide module, line, at module level) of one file."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("attnguide"):
            names = [f"{node.module}.{a.name}" for a in node.names]
            yield node.module, names, node.lineno, id(node) in top
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("attnguide"):
                    yield alias.name, [], node.lineno, id(node) in top


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def test_no_upward_import_and_no_function_level_import():
    bad = []
    for module, path in _modules():
        mine = _layer(module)
        if mine is None:  # attnguide/__init__.py and __main__.py may import anything
            continue
        for imported, names, line, at_top in _imports(path):
            targets = names if imported == "attnguide" else [imported]  # from attnguide import viz
            for target in targets:
                theirs = _layer(target)
                if theirs is None:
                    continue
                if LAYERS[theirs] > LAYERS[mine] or (LAYERS[theirs] == LAYERS[mine] and theirs != mine):
                    bad.append(f"{path.name}:{line} {module} imports {target} (a layer above or beside it)")
                if not at_top and module not in FUNCTION_LEVEL_ALLOWED:
                    bad.append(f"{path.name}:{line} {module} imports {target} inside a function")
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    modules = dict(_modules())
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for target, names, _, _ in _imports(path):
            for candidate in [*names, target]:  # `from pkg import submodule` names a module
                if candidate in modules and candidate != module:
                    graph[module].add(candidate)
                    break
    # a package's __init__ importing its own submodules is how packages export names
    for module in graph:
        graph[module] = {t for t in graph[module] if not t.startswith(module + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))
