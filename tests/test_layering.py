"""The package's modules import in layers (docs/design.md section 2): the graph of their module-level imports has no
cycle. Imports inside functions are left out (they run late, by design); so is the implicit import of a module's
parent package."""

import ast
import pathlib

from helpers import ROOT

# Where each installed package's sources are (triton_kernels/ installs as majority_kernels.triton_kernels).
SOURCES = {"majority_kernels": ROOT / "majority_kernels", "majority_kernels.triton_kernels": ROOT / "triton_kernels"}


def _modules() -> dict[str, pathlib.Path]:
    modules = {}
    for package, folder in SOURCES.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _imports(name: str, path: pathlib.Path, modules: dict[str, pathlib.Path]) -> set[str]:
    """The package modules that `name` imports when it loads (under `if` and `try` too, not inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    stack = list(ast.parse(path.read_text()).body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue  # imported when called, not when the module loads
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in modules else base)
        stack.extend(ast.iter_child_nodes(node))
    return {module for module in found if module in modules and module != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]):
    """One import cycle as a list of modules, or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module):
        state[module] = "open"
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state and (found := visit(target)):
                return found
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_the_package_imports_have_no_cycle():
    graph = _graph()
    assert {"majority_kernels.ops", "majority_kernels.triton_ops.mixing", "majority_kernels.triton_kernels.mixing"} <= (
        set(graph)
    )
    assert "majority_kernels._outputs" in graph["majority_kernels.triton_ops.mixing"]  # relative imports resolved
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_a_cycle_is_found():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
