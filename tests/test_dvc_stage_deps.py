"""``dvc.yaml`` lists, as each stage's deps, every project file its command runs.

A file missing there is code DVC does not watch: editing it leaves ``dvc repro`` reporting the stage
up to date while the stage would now produce something else. Imports are followed from the stage's
CLI module through the project's own modules, at any depth and inside functions too (the stages
import torch-heavy code lazily), skipping ``if TYPE_CHECKING:`` blocks, which never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

PROJECT_PACKAGES = ("components", "pipelines")


def _module_file(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imported_modules(path: Path) -> set[str]:
    """Project modules ``path`` imports anywhere (functions included), outside TYPE_CHECKING blocks."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _is_type_checking_block(node):
            for child in node.orelse:  # type: ignore[attr-defined]
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # submodules
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return {name for name in found if name.split(".")[0] in PROJECT_PACKAGES}


def _files_run_by(module: str) -> set[Path]:
    """Every project file that running ``python -m module`` may execute, packages' __init__ included."""
    seen: set[Path] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
            path = _module_file(".".join(parts[:depth]))
            if path is not None and path not in seen:
                seen.add(path)
                pending.extend(_imported_modules(path))
    return seen


def _stages() -> dict[str, dict[str, object]]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


@pytest.mark.parametrize("stage", sorted(_stages()))
def test_every_project_file_a_stage_runs_is_one_of_its_deps(stage: str) -> None:
    spec = _stages()[stage]
    command = str(spec["cmd"]).split()
    module = command[command.index("-m") + 1]
    deps = [REPO / str(dep) for dep in spec["deps"] if "${" not in str(dep)]  # type: ignore[attr-defined]

    def covered(path: Path) -> bool:
        return any(path == dep or dep in path.parents for dep in deps)

    missing = sorted(
        str(path.relative_to(REPO))
        for path in _files_run_by(module)
        if not covered(path) and not _only_a_docstring(path)
    )
    assert missing == [], f"dvc.yaml stage {stage!r}: add these to its deps: {missing}"


def _only_a_docstring(path: Path) -> bool:
    """A package ``__init__.py`` holding nothing but its docstring runs no code worth a dep."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    only_text = all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)
    return path.name == "__init__.py" and only_text


def test_a_package_init_with_code_is_not_taken_for_a_docstring(tmp_path: Path) -> None:
    init = tmp_path / "__init__.py"
    init.write_text('"""Docs."""\n')
    assert _only_a_docstring(init)
    init.write_text('"""Docs."""\nDEFAULT = 3\n')
    assert not _only_a_docstring(init)


def test_the_flow_follows_dvc_yamls_dag() -> None:
    """The flow runs a stage only after the stages it needs, as ``dvc repro`` does: its DAG
    (``flows.pipeline.stage_dag``) has exactly the edges DVC derives from ``dvc.yaml``'s deps and outs
    (``register`` reads every model folder and not the reports, so it waits on training alone)."""
    from dvc.repo import Repo

    from components.config import load_params
    from flows.pipeline import stage_dag

    archs = load_params(REPO / "params.yaml").train.architectures
    with Repo(str(REPO)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        dvc_edges = {(stage.addressing, needed.addressing) for stage, needed in graph.edges}
    flow_edges = {(stage, needed) for stage, upstream in stage_dag(archs).items() for needed in upstream}
    assert flow_edges == dvc_edges
