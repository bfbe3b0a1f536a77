"""The package's import graph: folders are layers, imports only point down, and no module imports itself in a circle.

Read with ``ast`` (function-local imports included), so a lazy import cannot hide an upward dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "newllm"

# Lowest first. A module may import from its own layer (no cycles) and from any layer before it.
LAYERS = ["utils", "config", "data", "models", "recurrence", "evaluation", "plotting", "training", "experiments",
          "notebook", "__main__"]
MAX_MODULE_LINES = 520


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path) -> set[str]:
    """Every newllm module ``path`` imports, at any depth of the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("newllm")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("newllm"):
            found.add(node.module)
            # "from newllm.data import corpus" imports the module newllm.data.corpus
            found |= {f"{node.module}.{alias.name}" for alias in node.names
                      if (PACKAGE.parent / node.module.replace(".", "/") / f"{alias.name}.py").exists()}
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: use absolute imports (from newllm.x import y)")
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(path): imports_of(path) for path in PACKAGE.rglob("*.py")}


def test_every_module_sits_in_a_known_layer():
    unknown = {m for m in graph() if layer_of(m) not in LAYERS + ["__init__"]}
    assert not unknown, f"modules outside the layers {LAYERS}: {sorted(unknown)}"


def test_imports_only_point_down():
    upward = []
    for module, deps in graph().items():
        if layer_of(module) == "__init__":
            continue
        for dep in deps:
            if dep == "newllm" or layer_of(dep) == "__init__":
                upward.append(f"{module} -> {dep} (import from the subpackage that defines it)")
            elif LAYERS.index(layer_of(dep)) > LAYERS.index(layer_of(module)):
                upward.append(f"{module} -> {dep}")
    assert not upward, "upward imports:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    deps = graph()
    modules = set(deps)

    def resolve(dep: str) -> set[str]:  # "newllm.config" (a package) stands for the modules its __init__ re-exports
        return {dep} if dep in modules else set()

    state: dict[str, int] = {}
    cycles = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for dep in sorted(deps.get(module, ())):
            for target in resolve(dep):
                if target == module:
                    continue
                if state.get(target) == 1:
                    cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
                elif target not in state:
                    visit(target, stack + [target])
        state[module] = 2

    for module in sorted(modules):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_stay_small(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.name} has {lines} lines: split it by job (at most ~500)"


def test_the_checker_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from newllm.notebook.presets import resolve\n")
    assert "newllm.notebook.presets" in imports_of(bad)
