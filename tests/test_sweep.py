"""A sweep through the real train function on tiny prepared digits: trials in the Optuna storage,
one MLflow parent with a child per trial, best.yaml, and the test split never opened."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from components.config import load_params, validate_params
from components.data.manifest import read_manifest
from components.sweep.best import apply_best, read_best
from components.sweep.run import run_sweep
from components.sweep.runs import BEST_TAG, STATE_TAG, STUDY_TAG, TRIAL_TAG, VALUE_METRIC
from components.sweep.study import COUNTED, storage_url
from tests.conftest import REPO, tiny_params


def _prepared_without_test_split(source: Path, target: Path) -> Path:
    """A copy of the prepared digits whose test split file is gone: any read of it fails."""
    shutil.copytree(source, target)
    manifest = read_manifest(target, "preprocess")
    (target / manifest["splits"]["test"]["file"]).unlink()
    return target


def test_a_sweep_trains_each_trial_under_one_parent_and_writes_the_winner(
    digits_project: Path, tracking_uri: str, tmp_path: Path
) -> None:
    raw = tiny_params(max_epochs=1, early_stopping_patience=0)
    raw["sweep"] = {
        "architecture": "mlp",
        "n_trials": 3,
        "seed": 1,
        "space": {
            "train.learning_rate": {"low": 1e-3, "high": 1e-2, "log": True},
            "models.mlp.hidden_sizes": {"choices": [[16], [32]]},
        },
    }
    params = validate_params(raw)
    prepared = _prepared_without_test_split(digits_project / "data" / "prepared", tmp_path / "prepared")
    seen: list[int] = []
    result = run_sweep(
        params, digits_project, prepared, tmp_path / "sweeps", on_trial=lambda o, c, n: seen.append(o.number)
    )

    url = storage_url(params, digits_project)
    assert url.endswith("/optuna.db")  # its own file, beside mlflow.db
    assert Path(url.removeprefix("sqlite:///")).parent == Path(tracking_uri.removeprefix("sqlite:///")).parent
    study = optuna.load_study(study_name="digits-mlp", storage=url)
    assert len(study.get_trials(states=COUNTED)) == 3
    assert seen == [0, 1, 2]
    # The first trial is params.yaml's own point (learning rate 1e-3, the tiny mlp's [32]).
    assert study.trials[0].params == {"train.learning_rate": 1e-3, "models.mlp.hidden_sizes": "[32]"}
    assert result.counted == 3

    client = MlflowClient(tracking_uri)
    parent = client.get_run(result.parent_run_id)
    assert parent.data.params["sweep.study_name"] == "digits-mlp"
    assert "space.train.learning_rate" in parent.data.params
    assert parent.info.status == "FINISHED"
    assert "sweep/optimization_history.png" in {
        a.path for a in client.list_artifacts(parent.info.run_id, "sweep")
    }
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert sorted(int(c.data.tags[TRIAL_TAG]) for c in children) == [0, 1, 2]
    for child in children:
        assert child.data.tags[STUDY_TAG] == "digits-mlp"
        assert child.data.tags[STATE_TAG] == "complete"
        assert child.info.run_name == f"trial-{child.data.tags[TRIAL_TAG]}"
        assert VALUE_METRIC in child.data.metrics
        assert "val_acc" in child.data.metrics
        trial = study.trials[int(child.data.tags[TRIAL_TAG])]
        assert child.data.params["train.learning_rate"] == str(trial.params["train.learning_rate"])
    best = [c for c in children if c.data.tags.get(BEST_TAG) == "true"]
    assert [int(c.data.tags[TRIAL_TAG]) for c in best] == [study.best_trial.number]

    chosen = read_best(tmp_path / "sweeps" / "digits-mlp" / "best.yaml")
    assert chosen["train.learning_rate"] == study.best_trial.params["train.learning_rate"]
    assert chosen["models.mlp.hidden_sizes"] in ([16], [32])

    # A rerun with the study complete trains nothing more.
    again = run_sweep(params, digits_project, prepared, tmp_path / "sweeps")
    assert again.outcomes == []
    assert len(optuna.load_study(study_name="digits-mlp", storage=url).trials) == 3


def test_apply_writes_the_values_into_params_yaml_keeping_its_comments(tmp_path: Path) -> None:
    params_file = tmp_path / "params.yaml"
    shutil.copyfile(REPO / "params.yaml", params_file)
    before = params_file.read_text()
    apply_best(params_file, {"train.learning_rate": 0.0025, "models.mlp.hidden_sizes": [64, 32]})
    after = params_file.read_text()
    comments = [line for line in before.splitlines() if "#" in line]
    assert all(line.split("#", 1)[1] in after for line in comments)
    assert len(after.splitlines()) == len(before.splitlines())
    params = load_params(params_file)
    assert params.train.learning_rate == 0.0025
    assert params.models.mlp.hidden_sizes == [64, 32]
    assert params.models.cnn.channels == [32, 64]  # the other hidden_sizes-like keys untouched


def test_apply_refuses_a_value_the_schema_refuses_and_writes_nothing(tmp_path: Path) -> None:
    from components.errors import ParamsError

    params_file = tmp_path / "params.yaml"
    shutil.copyfile(REPO / "params.yaml", params_file)
    before = params_file.read_text()
    with pytest.raises(ParamsError, match=r"train\.learning_rate"):
        apply_best(params_file, {"train.learning_rate": -1.0})
    assert params_file.read_text() == before


def test_the_sweep_deployment_builds_on_the_schedule_cron() -> None:
    from flows.sweep import FLOW_NAME, deployment

    settings = load_params(REPO / "params.yaml")
    built = deployment(settings, REPO, "params.yaml")
    assert built.name == settings.schedule.deployment_name
    assert built.flow_name == FLOW_NAME
    assert built.schedules[0].schedule.cron == settings.schedule.cron
