"""Shared fixtures: a project folder with its own params.yaml, and stage runners."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

# Nothing in the test suite may phone home.
for key, value in {
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}.items():
    os.environ.setdefault(key, value)


def default_params() -> dict[str, Any]:
    """The repository's params.yaml as a mapping."""
    return yaml.safe_load((REPO / "params.yaml").read_text())


class Project:
    """A temporary project folder: ``params.yaml`` plus ``data/``, and the stage CLIs to run in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.params_file = root / "params.yaml"
        self.raw = root / "data" / "raw"
        self.prepared = root / "data" / "prepared"
        self.write_params()

    def write_params(self, **sections: dict[str, Any]) -> Path:
        """Write params.yaml: the repository defaults with the given sections' keys replaced."""
        params = default_params()
        for name, values in sections.items():
            params[name] = {**params.get(name, {}), **values}
        self.params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        return self.params_file

    def run(self, stage: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``python -m pipelines.<stage>`` in the project folder, as DVC would."""
        return subprocess.run(
            [sys.executable, "-m", f"pipelines.{stage}", *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"},
            check=False,
        )


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)
