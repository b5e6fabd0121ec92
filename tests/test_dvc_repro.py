"""Real ``dvc repro`` in a temporary git repository holding a copy of this project."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_params
from tests.dvcproject import clone_project, dvc, ran_stages, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clone_project(tmp_path_factory.mktemp("clone"))


OUTPUT_FOLDERS = ("data/raw", "data/prepared", "models/", "reports/")
ARCHS = ("mlp", "cnn", "lstm", "transformer")
MODEL_STAGES = {f"{stage}@{arch}" for stage in ("train", "evaluate") for arch in ARCHS}


def test_committed_dvc_lock_matches_the_code_and_params(clone: Path) -> None:
    """In a fresh clone only the (uncommitted) outputs are missing: no stage's code or params differ
    from dvc.lock. Fails when code changed without `dvc repro` and committing dvc.lock."""
    status = json.loads(dvc(clone, "status", "--json").stdout)
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
    first = dvc(clone, "repro", "preprocess")
    assert ran_stages(first.stdout) == {"ingest", "preprocess"}, first.stdout
    manifest = json.loads((clone / "data/prepared/manifest.json").read_text())
    assert manifest["source"] == "digits"
    assert sum(e["count"] for e in manifest["splits"].values()) == 1797

    second = dvc(clone, "repro", "preprocess")
    assert ran_stages(second.stdout) == set(), second.stdout
    assert "up to date" in second.stdout
    assert json.loads(dvc(clone, "status", "--json", *DATA_STAGES).stdout) == {}

    raw_before = (clone / "data/raw/all.safetensors").read_bytes()
    test_before = (clone / "data/prepared/test.safetensors").read_bytes()
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["preprocess"]["seed"] = 1234
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = json.loads(dvc(clone, "status", "--json", *DATA_STAGES).stdout)
    assert set(status) == {"preprocess"}, status

    third = dvc(clone, "repro", "preprocess")
    assert ran_stages(third.stdout) == {"preprocess"}, third.stdout
    assert (clone / "data/raw/all.safetensors").read_bytes() == raw_before
    assert (clone / "data/prepared/test.safetensors").read_bytes() != test_before
    assert json.loads(dvc(clone, "status", "--json", *DATA_STAGES).stdout) == {}

    # A training-only key is not a dependency of the data stages.
    params["train"]["max_epochs"] = 99
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert ran_stages(dvc(clone, "repro", "preprocess").stdout) == set()


def test_repro_refuses_bad_params_before_touching_outputs(clone: Path) -> None:
    dvc(clone, "repro", "preprocess")
    before = {p.name: p.read_bytes() for p in (clone / "data/prepared").iterdir()}
    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["preprocess"]["val_fraction"] = 0.9
    (clone / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = run([sys.executable, "-m", "dvc", "repro", "preprocess"], clone)
    assert result.returncode != 0
    assert "val_fraction + test_fraction must be < 1" in result.stdout + result.stderr
    # Outs are `persist: true` and replaced atomically by the stage: the last good version stays.
    assert {p.name: p.read_bytes() for p in (clone / "data/prepared").iterdir()} == before


def test_full_pipeline_repro_trains_and_evaluates_every_architecture(tmp_path: Path) -> None:
    clone = clone_project(tmp_path, tiny_params(max_epochs=1))
    first = dvc(clone, "repro")
    assert ran_stages(first.stdout) == {"ingest", "preprocess", *MODEL_STAGES}, first.stdout

    shown = json.loads(dvc(clone, "metrics", "show", "--json").stdout)
    metrics = next(iter(shown.values()))["data"]
    for arch in ARCHS:
        values = metrics[f"reports/{arch}/metrics.json"]["data"]
        assert 0.0 <= values["accuracy"] <= 1.0, arch
        assert values["test_images"] == 270, arch
        assert (clone / "models" / arch / "weights.safetensors").is_file()
        assert (clone / "reports" / arch / "confusion_matrix.png").is_file()
    plots = dvc(clone, "plots", "show", "--json").stdout
    for arch in ARCHS:
        assert f"reports/{arch}/predictions.csv" in plots, arch

    assert ran_stages(dvc(clone, "repro").stdout) == set()
    assert json.loads(dvc(clone, "status", "--json").stdout) == {}

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
    assert set(json.loads(dvc(clone, "status", "--json").stdout)) == {"train@mlp"}
