"""The layout's promise: imports only point down the pipeline, and no modules import each other in a circle.

Layers, lowest first (benchmark/__init__.py draws them): the ground floor (config, schema_messages, cli,
artifacts, contract, drawing), data, nn, methods, training, evaluation, reporting, tools, and the command
dispatcher benchmark/__main__.py on top. Every import is read from the source (module level, inside
functions and under TYPE_CHECKING alike: a lazy import is still a dependency).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

GROUND = {"benchmark", "benchmark.config", "benchmark.schema_messages", "benchmark.cli", "benchmark.artifacts",
          "benchmark.contract", "benchmark.drawing"}
LAYERS = ["ground", "data", "nn", "methods", "training", "evaluation", "reporting", "tools", "commands"]
PACKAGES = {"benchmark.data": "data", "benchmark.nn": "nn", "methods": "methods", "benchmark.training": "training",
            "benchmark.evaluation": "evaluation", "benchmark.reporting": "reporting", "benchmark.tools": "tools"}


def project_modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module of the benchmark and methods packages under `root`."""
    modules = {}
    for package in ("benchmark", "methods"):
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def layer_of(module: str) -> str | None:
    if module in GROUND:
        return "ground"
    if module == "benchmark.__main__":
        return "commands"
    for package, layer in PACKAGES.items():
        if module == package or module.startswith(package + "."):
            return layer
    return None


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules `path` imports (`from a import b` counts as a.b when b is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in modules:
                    found.add(submodule)
                elif node.module in modules:
                    found.add(node.module)
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    modules = project_modules(root)
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, targets in sorted(graph.items()):
        here = layer_of(module)
        if here is None:
            problems.append(f"{module} is in no layer")
            continue
        for target in sorted(targets):
            there = layer_of(target)
            if there is None or LAYERS.index(there) > LAYERS.index(here):
                problems.append(f"{module} ({here}) imports {target} ({there or 'no layer'})")
    return problems


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of two or more modules (Tarjan), each a circle of imports."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_no_module_imports_a_layer_above_its_own():
    assert upward_imports(import_graph(REPO)) == []


def test_no_modules_import_each_other_in_a_circle():
    assert circles(import_graph(REPO)) == []


def test_every_layer_folder_has_its_package_and_no_module_sits_outside_a_layer():
    modules = project_modules(REPO)
    assert {layer_of(name) for name in modules} == set(LAYERS)
    assert all(layer_of(name) is not None for name in modules)


@pytest.mark.parametrize("edges, expected", [
    ({"benchmark.data.prepare": {"benchmark.reporting.figures"}}, ["benchmark.data.prepare (data) imports "
                                                                   "benchmark.reporting.figures (reporting)"]),
    ({"methods.base": {"benchmark.training.sampling"}}, ["methods.base (methods) imports "
                                                         "benchmark.training.sampling (training)"]),
    ({"benchmark.sampling": set()}, ["benchmark.sampling is in no layer"]),
    ({"benchmark.training.train": {"methods.base", "benchmark.data.prepared", "benchmark.config"}}, []),
])
def test_the_checker_names_an_upward_import(edges, expected):
    assert upward_imports(edges) == expected


def test_the_checker_finds_a_circle_through_lazy_imports(tmp_path):
    """The circle of the flat layout: benchmark/sampling.py and methods/base.py imported each other, one side only
    under TYPE_CHECKING."""
    (tmp_path / "benchmark").mkdir()
    (tmp_path / "methods").mkdir()
    (tmp_path / "benchmark" / "__init__.py").write_text("")
    (tmp_path / "methods" / "__init__.py").write_text("")
    (tmp_path / "benchmark" / "sampling.py").write_text("from methods.base import Batch\n")
    (tmp_path / "methods" / "base.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from benchmark.sampling import BatchSampler\n")
    assert circles(import_graph(tmp_path)) == [["benchmark.sampling", "methods.base"]]
