"""A copy of this project in a temporary git repository, and real DVC commands run in it."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import REPO, empty_mlflow_store


def project_files() -> list[str]:
    """Files a fresh clone would have: tracked plus untracked-but-not-ignored."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [f for f in listed if (REPO / f).is_file() and not f.startswith("tests/")]


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        # The stage commands call ``python``: the interpreter running the tests.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    env.pop("PYTHONPATH", None)
    env.pop("MLFLOW_TRACKING_URI", None)  # runs go to the clone's own mlflow.db
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env, check=False)


def dvc(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = run([sys.executable, "-m", "dvc", *args], cwd)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def clone_project(root: Path, params: dict[str, Any] | None = None, *, mlflow_db: bool = True) -> Path:
    """Copy the project into ``root`` (optionally with other params) and commit it.

    ``mlflow_db``: start with an empty, migrated ``mlflow.db`` (ignored by git, as in a clone where
    the pipeline has run once); false leaves the first stage to create it.
    """
    for name in project_files():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    if params is not None:
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for args in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "clone"]):
        assert run(args, root).returncode == 0
    if mlflow_db:
        empty_mlflow_store(root / "mlflow.db")
    return root


def ran_stages(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))
