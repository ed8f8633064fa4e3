"""The package's layout: no import circles (function-level imports included), the bottom layer imports nothing
of the package, the layers import only downwards, and no module grows past its size without saying why."""
from __future__ import annotations

import ast
from pathlib import Path

import tinytales

PACKAGE = Path(tinytales.__file__).parent
MAX_LINES = 500

# each module's layer; a module may import only from its own layer or below
LAYERS = {
    "core": 0, "defaults": 0, "ingredients": 0, "presets": 0, "optim": 1, "plot": 0, "allocator": 0, "grade": 0, "trackers": 0,
    "tokenizer": 1, "kernels": 1, "config": 5, "model": 2, "decoding": 3,
    "formats": 3, "stories": 2, "batches": 4, "checkpoint": 4, "evaluate": 5, "generate": 4, "batching": 5, "train": 6,
    "compare": 6, "serve": 7, "cli": 8,
}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `name` imports anywhere in its code (top level and inside functions)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            submodules = {f"{module}.{alias.name}" for alias in node.names} & known
            found |= submodules or ({module} & known)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names} & known
    return found - {name}


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def layer(module: str) -> int:
    return LAYERS[module.split(".")[1]]


def test_there_is_no_import_circle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: being visited, 2: done

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circle = trail[trail.index(nxt):] + [nxt] if nxt in trail else [node, nxt]
                raise AssertionError("import circle: " + " -> ".join(circle))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_the_walker_sees_function_level_imports(tmp_path):
    module = tmp_path / "x.py"
    module.write_text("def f():\n    from .core import EOT\n    from . import model\n")
    assert imports("tinytales.x", module, {"tinytales.core", "tinytales.model"}) == {"tinytales.core",
                                                                                      "tinytales.model"}


def test_every_module_has_a_layer_and_imports_only_downwards():
    graph = import_graph()
    unplaced = sorted({name.split(".")[1] for name in graph if name != "tinytales"} - set(LAYERS) - {"__main__"})
    assert not unplaced, f"give these modules a layer in LAYERS: {unplaced}"
    upward = [(a, b) for a, deps in graph.items() for b in deps
              if a not in ("tinytales", "tinytales.__main__") and b != "tinytales" and layer(b) > layer(a)]
    assert not upward, f"imports from a higher layer: {upward}"
    assert graph["tinytales.core"] == set()


def test_long_modules_say_why():
    long = []
    for name, path in modules().items():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_LINES and "Longer than" not in (ast.get_docstring(ast.parse(text)) or ""):
            long.append(f"{name} ({text.count(chr(10))} lines)")
    assert not long, f"over {MAX_LINES} lines without a 'Longer than ...' reason in the docstring: {long}"
