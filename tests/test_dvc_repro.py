"""Real ``dvc repro`` in a temporary git repository holding a copy of this project."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.dvcproject import clone_project, dvc, ran_stages, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clone_project(tmp_path_factory.mktemp("clone"))


OUTPUT_FOLDERS = ("data/raw", "data/prepared", "models", "reports/")


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
                # `models` (a dep of register) holds only .gitignore until the train stages run.
                allowed = {"deleted", "not in cache"}
                assert all(v in allowed or (p, v) == ("models", "modified") for p, v in paths.items()), hint


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
