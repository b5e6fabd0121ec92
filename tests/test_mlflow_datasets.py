"""Experiments do not mix datasets: default names per dataset, and the splits a run read as MLflow
dataset inputs, read back with ``MlflowClient`` from a temp SQLite store."""

from __future__ import annotations

import json
from typing import Any

import mlflow.data
import pytest
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from components.config import DataParams, Params, validate_params
from components.data.ingest import ingest
from components.data.prepared import data_version, load_prepared
from components.data.preprocess import preprocess
from components.evaluation.evaluate import evaluate
from components.naming import dataset_name, experiment_name, registered_model_name
from components.registry.register import register
from components.tracking import Tracker
from components.tracking_datasets import DIGEST_CHARS, split_inputs
from components.training.train import train
from tests import datagen
from tests.conftest import tiny_params

pytestmark = pytest.mark.usefixtures("tracking_uri")


def _params(**sections: dict[str, Any]) -> Params:
    raw = tiny_params(max_epochs=1, architectures=["mlp"])
    for name, values in sections.items():
        raw[name] = {**raw[name], **values}
    return validate_params(raw)


# Naming


@pytest.mark.parametrize(
    ("source", "path", "expected"),
    [
        ("digits", "data/source", "digits"),
        ("digits", "data/MyData.npz", "digits"),  # digits reads no files: the path never counts
        ("mnist", "data/elsewhere", "mnist"),  # the source names the data; the folder only holds it
        ("fashion_mnist", "x", "fashion_mnist"),
        ("npz", "data/MyData.npz", "npz-mydata"),
        ("npz", "/abs/folder/set.npz", "npz-set"),
        ("npz", "data/source", "npz-source"),  # the default data.path
        ("imagefolder", "data/Pets/", "imagefolder-pets"),  # a folder, trailing slash
        ("idx", "data/Fashion_Set v2", "idx-fashion-set-v2"),
        ("npz", "data/Données (2024)!.csv.gz", "npz-donnees-2024"),  # accents, brackets, .csv.gz
        ("npz", "runs/v1.2", "npz-v1-2"),  # ".2" is no extension
        ("npz", "data/.hidden", "npz-hidden"),
        ("npz", ".", "npz"),  # nothing to name it by: the source alone
        ("npz", "data/..", "npz"),
        ("npz", "data/%%%.npz", "npz"),
    ],
)
def test_dataset_name(source: str, path: str, expected: str) -> None:
    assert dataset_name(DataParams(source=source, path=path)) == expected


def test_names_are_short_and_explicit_names_win() -> None:
    long = dataset_name(DataParams(source="npz", path="a" * 70 + "-b.npz"))
    assert long == "npz-" + "a" * 64
    digits = _params()
    assert (experiment_name(digits), registered_model_name(digits)) == ("digits", "digits-classifier")
    npz = _params(data={"source": "npz", "path": "data/My Set.npz"})
    assert (experiment_name(npz), registered_model_name(npz)) == ("npz-my-set", "npz-my-set-classifier")
    chosen = _params(
        data={"source": "npz", "path": "data/My Set.npz"},
        mlflow={"experiment_name": "mine"},
        register={"model_name": "my-model"},
    )
    assert (experiment_name(chosen), registered_model_name(chosen)) == ("mine", "my-model")


# Two npz datasets through the stage functions


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Two npz files, each ingested, prepared, trained (mlp, one epoch), evaluated and registered."""
    done = {}
    for name, classes in (("alpha", 3), ("beta", 4)):
        root = tmp_path_factory.mktemp(f"npz-{name}")
        datagen.write_npz(root / "data" / f"{name.title()}.npz", n=60, classes=classes)
        params = _params(data={"source": "npz", "path": f"data/{name.title()}.npz"})
        prepared = root / "data" / "prepared"
        ingest(params.data, root / "data" / "raw", root)
        preprocess(params.preprocess, root / "data" / "raw", prepared)
        model = root / "models" / "mlp"
        result = train(params, "mlp", prepared, model, work_root=root / ".work", project_root=root)
        evaluate(params, "mlp", prepared, model, root / "reports" / "mlp", project_root=root)
        decision = register(params, "mlp", model, prepared, project_root=root)
        done[name] = {"params": params, "root": root, "prepared": prepared, "run_id": result.run_id}
        done[name] |= {"decision": decision}
    return done


def test_two_npz_datasets_get_their_own_experiment_and_registered_model(
    two_datasets: dict[str, dict[str, Any]],
) -> None:
    client = MlflowClient()
    for name, done in two_datasets.items():
        run = client.get_run(done["run_id"])
        experiment = client.get_experiment(run.info.experiment_id)
        assert experiment.name == f"npz-{name}"
        assert done["decision"].model_name == f"npz-{name}-classifier"
        assert [str(v.version) for v in client.search_model_versions(f"name = 'npz-{name}-classifier'")] == [
            "1"
        ]
    experiments = {client.get_run(done["run_id"]).info.experiment_id for done in two_datasets.values()}
    assert len(experiments) == 2
    assert not client.search_registered_models("name = 'npz-classifier'")  # the old shared default


def _inputs(run_id: str) -> dict[str, Any]:
    return {i.dataset.name: i for i in MlflowClient().get_run(run_id).inputs.dataset_inputs}


def test_the_trained_run_lists_its_train_validation_and_test_data(
    two_datasets: dict[str, dict[str, Any]],
) -> None:
    done = two_datasets["alpha"]
    inputs = _inputs(done["run_id"])
    assert set(inputs) == {"npz-alpha-train", "npz-alpha-val", "npz-alpha-test"}
    prepared = load_prepared(done["prepared"])
    version = data_version(done["prepared"])
    for split, context in (("train", "training"), ("val", "validation"), ("test", "testing")):
        given = inputs[f"npz-alpha-{split}"]
        assert {tag.key: tag.value for tag in given.tags} == {MLFLOW_DATASET_CONTEXT: context}
        assert given.dataset.digest == version[:DIGEST_CHARS]
        assert mlflow.data.get_source(given).uri == str(done["prepared"].resolve())  # MLflow reads it
        x, y = json.loads(given.dataset.schema)["mlflow_colspec"]
        assert x["tensor-spec"]["shape"] == list(prepared.splits[split].x.shape)  # (N, 1, 8, 8)
        assert y["tensor-spec"]["shape"] == [len(prepared.splits[split].x), 3]
        assert given.dataset.profile is None  # nothing computed over the arrays
    assert set(_inputs(two_datasets["beta"]["run_id"])) == {"npz-beta-train", "npz-beta-val", "npz-beta-test"}


def test_logging_the_inputs_again_adds_none(two_datasets: dict[str, dict[str, Any]]) -> None:
    """What a resumed training (train and val again) and a re-run evaluate (test again) do."""
    done = two_datasets["alpha"]
    params, prepared, root = done["params"], done["prepared"], done["root"]
    version = data_version(prepared)
    tracker = Tracker.open(experiment_name(params), root)
    with tracker.reopened(done["run_id"]) as run:
        run.resumed = True
        run.log_inputs(split_inputs(params, load_prepared(prepared), prepared, version, ("train", "val")))
    evaluate(params, "mlp", prepared, root / "models" / "mlp", root / "reports" / "mlp", project_root=root)
    inputs = MlflowClient().get_run(done["run_id"]).inputs.dataset_inputs
    assert sorted(i.dataset.name for i in inputs) == ["npz-alpha-test", "npz-alpha-train", "npz-alpha-val"]
    assert all(len(i.tags) == 1 for i in inputs)  # one context each, not one per logging
