"""The code a run was made with: the git commit and whether the checkout differs from it."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _git(project_root: Path | str, *args: str) -> str:
    return subprocess.run(
        ["git", *args],
        cwd=project_root,
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout.strip()


def git_commit(project_root: Path | str = ".") -> str:
    """The checked-out commit, or ``unknown`` outside a git repository."""
    try:
        return _git(project_root, "rev-parse", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def git_dirty(project_root: Path | str = ".") -> bool:
    """Whether tracked code or settings differ from the commit.

    What the pipeline itself rewrites as it runs (``dvc.lock``, the metrics and plot data under
    ``reports/``) does not count.
    """
    try:
        changed = _git(
            project_root,
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":!dvc.lock",
            ":!reports",
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return bool(changed)


def code_tags(project_root: Path | str = ".") -> dict[str, str]:
    """Tags that pin a run to its code."""
    commit = git_commit(project_root)
    return {
        "git.commit": commit,
        "mlflow.source.git.commit": commit,
        "git.dirty": str(git_dirty(project_root)).lower(),
    }
