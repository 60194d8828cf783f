"""Every stage of dvc.yaml lists, among its deps, every file of code its command runs.

The code a stage runs is its entry module and everything that module imports, transitively (read from the
source, lazy imports included), plus the method file of the run for the per-run stages. A file the stage
runs but does not list would let DVC call the stage up to date after that file changed. Left out on purpose:
benchmark/__init__.py (a docstring) and benchmark/__main__.py (routes a command to its module's `main`).
"""
from __future__ import annotations

import functools
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.test_layers import import_graph, project_modules

ENTRIES = {"prepare": "benchmark.data.prepare", "train": "benchmark.training.train",
           "evaluate": "benchmark.evaluation.evaluate", "performance": "benchmark.tools.bench_performance",
           "report": "benchmark.reporting.report"}
NOT_DEPS = {"benchmark", "benchmark.__main__"}
METHODS = sorted(path.stem for path in (REPO / "methods").glob("*.py") if path.stem not in ("__init__", "base"))


@functools.cache
def repository_graph() -> dict[str, set[str]]:
    return import_graph(REPO)


def code_run_by(entry: str, method: str | None) -> set[str]:
    graph, seen = repository_graph(), set()
    todo = [entry] + ([f"methods.{method}"] if method else [])
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph[module])
    return seen - NOT_DEPS


def listed(deps: list, method: str | None) -> list[Path]:
    paths = [next(iter(dep)) if isinstance(dep, dict) else dep for dep in deps]
    return [REPO / str(path).replace("${item.method}", method or "") for path in paths]


def unlisted(stage: str, method: str | None = None) -> list[str]:
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]
    deps = listed((spec.get("do") or spec)["deps"], method)
    files = project_modules(REPO)
    return sorted(str(files[module].relative_to(REPO)) for module in code_run_by(ENTRIES[stage], method)
                  if not any(files[module] == dep or dep in files[module].parents for dep in deps))


@pytest.mark.parametrize("stage", ["prepare", "performance", "report"])
def test_a_stage_lists_the_code_it_runs(stage):
    assert unlisted(stage) == []


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_a_per_run_stage_lists_the_code_it_runs_for_every_method(stage, method):
    assert unlisted(stage, method) == []


def test_the_check_sees_a_missing_dep(monkeypatch):
    """Without benchmark/nn among the train stage's deps, the networks and losses Ours builds from go unlisted."""
    original = yaml.safe_load

    def without_nn(text):
        loaded = original(text)
        deps = loaded["stages"]["train"]["do"]["deps"]
        loaded["stages"]["train"]["do"]["deps"] = [dep for dep in deps if dep != "benchmark/nn"]
        return loaded

    monkeypatch.setattr(yaml, "safe_load", without_nn)
    assert unlisted("train", "ours") == ["benchmark/nn/losses.py", "benchmark/nn/networks.py"]
