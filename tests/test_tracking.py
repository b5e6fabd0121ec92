"""What MLflow holds after train and evaluate, read back with ``MlflowClient`` from a temp SQLite store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest
from lightning.pytorch.callbacks import Callback
from mlflow.tracking import MlflowClient

from components.code_version import git_commit
from components.config import flatten, validate_params
from components.data.prepared import data_version
from components.evaluation.evaluate import evaluate
from components.tracking import KEY_TAG, PARENT_TAG, Tracker
from components.training.train import train
from tests.conftest import tiny_params

pytestmark = pytest.mark.usefixtures("tracking_uri")


class Explode(Callback):
    def on_train_epoch_end(self, trainer: L.Trainer, *args: Any) -> None:
        raise ValueError("boom")


@pytest.fixture(scope="module")
def tracked(digits_project: Path) -> dict[str, Any]:
    """Two architectures trained and evaluated in one pipeline run."""
    params = validate_params(tiny_params(max_epochs=2))
    prepared = digits_project / "data" / "prepared"
    runs = {}
    for arch in ("mlp", "cnn"):
        result = train(
            params,
            arch,
            prepared,
            digits_project / "models" / arch,
            work_root=digits_project / ".work",
            project_root=digits_project,
        )
        evaluate(
            params,
            arch,
            prepared,
            digits_project / "models" / arch,
            digits_project / "reports" / arch,
            project_root=digits_project,
        )
        runs[arch] = result.run_id
    return {"params": params, "runs": runs, "root": digits_project}


def test_architectures_are_children_of_one_parent_run(tracked: dict[str, Any]) -> None:
    client = MlflowClient()
    children = [client.get_run(run_id) for run_id in tracked["runs"].values()]
    parents = {child.data.tags[PARENT_TAG] for child in children}
    assert len(parents) == 1
    parent = client.get_run(parents.pop())
    assert KEY_TAG in parent.data.tags
    assert parent.info.status == "FINISHED"
    assert {child.info.run_name for child in children} == {"mlp", "cnn"}
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.name == "digits"  # one experiment per dataset


def test_child_run_holds_params_curves_tags_metrics_and_artifacts(tracked: dict[str, Any]) -> None:
    client = MlflowClient()
    root: Path = tracked["root"]
    run = client.get_run(tracked["runs"]["cnn"])
    assert run.info.status == "FINISHED"

    params = run.data.params
    expected = flatten({"train": tracked["params"].train.model_dump()})
    assert {k: params[k] for k in expected} == expected
    assert params["models.cnn.channels"] == "[8, 16]"
    assert "models.mlp.hidden_sizes" not in params  # only this architecture's sizes
    # An auto setting is logged as given and as the network was built (8x8 digits: same padding).
    model_json = json.loads((root / "models" / "cnn" / "model.json").read_text())
    assert (params["models.cnn.padding"], params["network.padding"]) == ("auto", "1")
    assert model_json["config"]["padding"] == 1
    assert params["network.input_shape"] == "(1, 8, 8)"

    tags = run.data.tags
    assert tags["architecture"] == "cnn"
    assert tags["data.version"] == data_version(root / "data" / "prepared")
    assert tags["git.commit"] == git_commit(root) != "unknown"

    for key in ("train_loss", "val_loss", "train_acc", "val_acc"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in history] == [0, 1], key

    reported = json.loads((root / "reports" / "cnn" / "metrics.json").read_text())
    assert run.data.metrics["test_accuracy"] == pytest.approx(reported["accuracy"])
    assert run.data.metrics["test_f1_macro"] == pytest.approx(reported["f1_macro"])
    assert run.data.metrics["test_images_per_second"] > 0
    assert run.data.metrics["test_images"] == reported["test_images"]
    assert not [key for key in run.data.metrics if key.startswith("test_test_")]
    assert run.data.metrics["model_parameters"] > 0
    assert run.data.metrics["model_bytes"] == (root / "models" / "cnn" / "weights.safetensors").stat().st_size

    model_files = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "model_files")}
    assert {"weights.safetensors", "model.json", "stats.json", "train_info.json"} <= model_files
    evaluation = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"confusion_matrix.png", "classification_report.json", "metrics.json"} <= evaluation


def test_a_failing_run_ends_failed_and_so_does_its_parent(tmp_path: Path, digits_project: Path) -> None:
    params = validate_params(tiny_params(max_epochs=2, seed=7))  # other settings: another parent
    with pytest.raises(ValueError, match="boom"):
        train(
            params,
            "lstm",
            digits_project / "data" / "prepared",
            tmp_path / "lstm",
            work_root=tmp_path / ".work",
            project_root=digits_project,
            callbacks=[Explode()],
        )
    client = MlflowClient()
    tracker = Tracker.open("digits", digits_project)
    (run,) = client.search_runs([tracker.experiment_id], filter_string="tags.architecture = 'lstm'")
    assert run.info.status == "FAILED"
    assert client.get_run(run.data.tags[PARENT_TAG]).info.status == "FAILED"
    assert not (tmp_path / "lstm").exists()
