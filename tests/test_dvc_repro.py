"""Real ``dvc repro`` in a temporary git repository holding a copy of this project."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, tiny_params

pytestmark = pytest.mark.slow


def _project_files() -> list[str]:
    """Files a fresh clone would have: tracked plus untracked-but-not-ignored."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    return [f for f in listed if (REPO / f).is_file() and not f.startswith("tests/")]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
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


def _dvc(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = _run([sys.executable, "-m", "dvc", *args], cwd)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _clone(root: Path, params: dict[str, Any] | None = None) -> Path:
    """Copy the project into ``root`` (optionally with other params) and commit it."""
    for name in _project_files():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    if params is not None:
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for args in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "clone"]):
        assert _run(args, root).returncode == 0
    return root


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _clone(tmp_path_factory.mktemp("clone"))


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


OUTPUT_FOLDERS = ("data/raw", "data/prepared", "models/", "reports/")
ARCHS = ("mlp", "cnn", "lstm", "transformer")
MODEL_STAGES = {f"{stage}@{arch}" for stage in ("train", "evaluate") for arch in ARCHS}


def test_committed_dvc_lock_matches_the_code_and_params(clone: Path) -> None:
    """In a fresh clone only the (uncommitted) outputs are missing: no stage's code or params differ
    from dvc.lock. Fails when code changed without `dvc repro` and committing dvc.lock."""
    status = json.loads(_dvc(clone, "status", "--json").stdout)
    for stage, changes in status.items():
        for change in changes:
            for kind, paths in change.items():
                hint = f"stage {stage}: {change}; run `uv run dvc repro` and commit dvc.lock"
                assert kind in {"changed outs", "changed deps"}, hint
                # Allowed: missing outputs, and upstream outputs missing as this stage's deps.
                assert all(path.startswith(OUTPUT_FOLDERS) for path in paths), hint
                assert set(paths.values()) <= {"deleted", "not in cache"}, hint


DATA_STAGES = ("ingest", "preprocess")


def test_data_stages_build_then_are_a_no_op_then_rerun_only_what_changed(clone: Path) -> None:
    first = _dvc(clone, "repro", "preprocess")
    assert _ran(first.stdout) == {"ingest", "preprocess"}, first.stdout
    manifest = json.loads((clone / "data/prepared/manifest.json").read_text())
    assert manifest["source"] == "digits"
    assert sum(e["count"] for e in manifest["splits"].values()) == 1797

    second = _dvc(clone, "repro", "preprocess")
    assert _ran(second.stdout) == set(), second.stdout
    assert "up to date" in second.stdout
    assert json.loads(_dvc(clone, "status", "--json", *DATA_STAGES).stdout) == {}

    raw_before = (clone / "data/raw/all.safetensors").read_bytes()
    test_before = (clone / "data/prepared/test.safetensors").read_bytes()
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["preprocess"]["seed"] = 1234
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(_dvc(clone, "status", "--json", *DATA_STAGES).stdout)
    assert set(status) == {"preprocess"}, status

    third = _dvc(clone, "repro", "preprocess")
    assert _ran(third.stdout) == {"preprocess"}, third.stdout
    assert (clone / "data/raw/all.safetensors").read_bytes() == raw_before
    assert (clone / "data/prepared/test.safetensors").read_bytes() != test_before
    assert json.loads(_dvc(clone, "status", "--json", *DATA_STAGES).stdout) == {}

    # A training-only key is not a dependency of the data stages.
    params["train"]["max_epochs"] = 99
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _ran(_dvc(clone, "repro", "preprocess").stdout) == set()


def test_repro_refuses_bad_params_before_touching_outputs(clone: Path) -> None:
    _dvc(clone, "repro", "preprocess")
    before = {p.name: p.read_bytes() for p in (clone / "data/prepared").iterdir()}
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["preprocess"]["val_fraction"] = 0.9
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = _run([sys.executable, "-m", "dvc", "repro", "preprocess"], clone)
    assert result.returncode != 0
    assert "val_fraction + test_fraction must be < 1" in result.stdout + result.stderr
    # Outs are `persist: true` and replaced atomically by the stage: the last good version stays.
    assert {p.name: p.read_bytes() for p in (clone / "data/prepared").iterdir()} == before


def test_full_pipeline_repro_trains_and_evaluates_every_architecture(tmp_path: Path) -> None:
    clone = _clone(tmp_path, tiny_params(max_epochs=1))
    first = _dvc(clone, "repro")
    assert _ran(first.stdout) == {"ingest", "preprocess", *MODEL_STAGES}, first.stdout

    shown = json.loads(_dvc(clone, "metrics", "show", "--json").stdout)
    metrics = next(iter(shown.values()))["data"]
    for arch in ARCHS:
        values = metrics[f"reports/{arch}/metrics.json"]["data"]
        assert 0.0 <= values["accuracy"] <= 1.0, arch
        assert values["test_images"] == 270, arch
        assert (clone / "models" / arch / "weights.safetensors").is_file()
        assert (clone / "reports" / arch / "confusion_matrix.png").is_file()
    plots = _dvc(clone, "plots", "show", "--json").stdout
    for arch in ARCHS:
        assert f"reports/{arch}/predictions.csv" in plots, arch

    assert _ran(_dvc(clone, "repro").stdout) == set()
    assert json.loads(_dvc(clone, "status", "--json").stdout) == {}

    # Every stage process logged into the clone's own store, under one parent run.
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{clone / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "digits"]
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert sorted(r.data.tags["architecture"] for r in children) == sorted(ARCHS)
    assert len({r.data.tags["mlflow.parentRunId"] for r in children}) == 1
    assert all(r.info.status == "FINISHED" and "test_accuracy" in r.data.metrics for r in children)

    # One architecture's sizes are a dependency of its stages only.
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["models"]["mlp"]["hidden_sizes"] = [48]
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert set(json.loads(_dvc(clone, "status", "--json").stdout)) == {"train@mlp"}
