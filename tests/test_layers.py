"""The packages are layers: every module imports only its own package or the layers below it, and no group of
modules imports itself in a circle. Function-level imports count too. The old flat module names still import,
with a DeprecationWarning, as the same module objects."""

from __future__ import annotations

import ast
import importlib
import warnings
from pathlib import Path

import pytest

import diffusion

PACKAGE_ROOT = Path(diffusion.__file__).parent

# Lower rank = lower layer. A module may import modules of its own rank only inside its own package.
LAYER_RANK = {"core": 0, "models": 1, "formats": 2, "serving": 3, "lab2d": 3, "training": 4, "evaluation": 4,
              "app": 5, "__main__": 6}
TOP_LEVEL_ALLOWED = {"__init__.py", "__main__.py"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE_ROOT.rglob("*.py")}


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The diffusion modules that `name` imports anywhere in its body (resolved to files)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            candidates = [f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target
                          for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in modules:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name and candidate != "diffusion":
                found.add(candidate)
    return found


def layer(name: str) -> str:
    return name.split(".")[1]


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def test_every_module_belongs_to_a_layer():
    strays = sorted(path.name for path in PACKAGE_ROOT.glob("*.py") if path.name not in TOP_LEVEL_ALLOWED)
    assert not strays, f"top-level modules outside the layers: {strays}"
    packages = {path.name for path in PACKAGE_ROOT.iterdir() if (path / "__init__.py").exists()}
    assert packages == set(LAYER_RANK) - {"__main__"}


def test_imports_run_downward_only():
    upward = [f"{name} -> {target}" for name, targets in import_graph().items() if name != "diffusion"
              for target in targets
              if LAYER_RANK[layer(target)] > LAYER_RANK[layer(name)]
              or (LAYER_RANK[layer(target)] == LAYER_RANK[layer(name)] and layer(target) != layer(name))]
    assert not upward, "imports that run upward or sideways between layers:\n" + "\n".join(sorted(upward))


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a list of modules, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str):
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (circle := visit(target)):
                return circle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (circle := visit(node)):
            return circle
    return None


def test_no_import_circles():
    circle = find_circle(import_graph())
    assert circle is None, "import circle: " + " -> ".join(circle)


def test_the_circle_finder_finds_a_circle():
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) is None


def test_the_layer_check_sees_an_upward_import(tmp_path):
    module = tmp_path / "diffusion" / "core" / "bad.py"
    module.parent.mkdir(parents=True)
    module.write_text("from ..serving.engine import ModelCache\n")
    modules = {"diffusion.core.bad": module, "diffusion.serving.engine": module}
    found = imported_modules("diffusion.core.bad", module, modules)
    assert found == {"diffusion.serving.engine"}


@pytest.mark.parametrize("old_name", sorted(diffusion.MOVED_MODULES))
def test_the_flat_layout_names_still_import_with_a_warning(old_name):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old_name)
    assert module is importlib.import_module(diffusion.MOVED_MODULES[old_name])
    # The warning is raised the first time the old name is looked up in this process.
    assert any(diffusion.MOVED_MODULES[old_name] in str(w.message) for w in caught) or old_name in __import__("sys").modules
