"""The Prefect flow end to end in a git + DVC copy of the project (tiny settings, two architectures).

The flow runs in this process against a temporary Prefect server (``prefect_test_harness``); its
training stages run as the real stage processes; MLflow logs to the copy's own SQLite store.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient

from components.registry.register import CHAMPION
from tests.conftest import empty_mlflow_store, tiny_params
from tests.dvcproject import clone_project, dvc, ran_stages, run

pytestmark = pytest.mark.slow

ARCHS = ["mlp", "cnn"]
REPORT_FILES = ("classification_report.json", "predictions.csv")
MODEL_NAME = "digits-classifier"


@pytest.fixture(scope="module")
def prefect_server() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    params = tiny_params(max_epochs=1)
    params["train"]["architectures"] = ARCHS
    # Dropout draws from torch's process-wide generator: the flow's in-process stages must not
    # interleave with a training, or its weights would differ from dvc repro's (compared below).
    params["models"]["mlp"]["dropout"] = params["models"]["cnn"]["dropout"] = 0.3
    # The one run that creates its MLflow store from nothing, as on a fresh clone.
    return clone_project(tmp_path_factory.mktemp("flow-project"), params, mlflow_db=False)


def run_flow(project: Path, **parameters: Any) -> tuple[str, dict[str, Any]]:
    """Run the flow on ``project``; return its flow-run id and result. Fails unless it completed."""
    from flows.pipeline import training_pipeline

    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the project's own mlflow.db
        state = training_pipeline(project_root=str(project), return_state=True, **parameters)
    assert state.is_completed(), state
    return str(state.state_details.flow_run_id), state.result()


@pytest.fixture(scope="module")
def first_run(prefect_server: None, project: Path) -> tuple[str, dict[str, Any]]:
    return run_flow(project)


def _client(project: Path) -> MlflowClient:
    return MlflowClient(f"sqlite:///{project / 'mlflow.db'}")


def _versions(project: Path) -> list[Any]:
    return _client(project).search_model_versions(f"name = '{MODEL_NAME}'")


def test_flow_runs_every_stage_with_lineage_and_leaves_dvc_clean(
    project: Path, first_run: tuple[str, dict[str, Any]]
) -> None:
    flow_run_id, result = first_run
    per_arch = ("train", "evaluate", "compress", "explain")
    stages = {"ingest", "preprocess", *(f"{s}@{a}" for s in per_arch for a in ARCHS)}
    assert result["stages_run"] == dict.fromkeys(stages, True)

    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as prefect:
        task_runs = prefect.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    names = {t.name.rsplit("-", 1)[0] if "[" not in t.name else t.name for t in task_runs}
    assert {f"{s}[{a}]" for s in ("train", "evaluate") for a in ARCHS} | {"register"} <= names
    assert {t.state_type.value for t in task_runs} == {"COMPLETED"}

    for arch in ARCHS:
        assert (project / "models" / arch / "weights.safetensors").is_file()
        assert json.loads((project / "reports" / arch / "metrics.json").read_text())["test_images"] == 270
    registration = json.loads((project / "reports" / "registration.json").read_text())
    # Each architecture, then its compressed model when compress@ accepted it.
    registered = [d["architecture"] for d in registration["decisions"]]
    assert [a for a in registered if not a.endswith("-compressed")] == ARCHS
    accepted = [a for a in ARCHS if (project / f"models/{a}-compressed/weights.safetensors").is_file()]
    assert [a.removesuffix("-compressed") for a in registered if a.endswith("-compressed")] == accepted

    # Lineage: the flow's parent run and every child carry the flow run, the commit, the data.
    client = _client(project)
    commit = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    parent = client.get_run(result["parent_run_id"])
    data_version = parent.data.tags["data.version"]
    assert parent.data.tags["prefect.flow_run_id"] == flow_run_id
    assert parent.data.tags["git.commit"] == commit
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert sorted(c.data.tags["architecture"] for c in children) == sorted(ARCHS)
    for child in children:
        assert child.data.tags["prefect.flow_run_id"] == flow_run_id
        assert child.data.tags["git.commit"] == commit
        assert child.data.tags["data.version"] == data_version
        assert child.info.status == "FINISHED"
        assert "test_accuracy" in child.data.metrics
    versions = _versions(project)
    assert len(versions) == len(registered)
    assert {v.tags["prefect.flow_run_id"] for v in versions} == {flow_run_id}
    assert client.get_model_version_by_alias(MODEL_NAME, CHAMPION) is not None

    # DVC agrees: nothing to do; its metrics and plots read what the flow wrote.
    assert json.loads(dvc(project, "status", "--json").stdout) == {}
    assert ran_stages(dvc(project, "repro").stdout) == set()
    shown = json.loads(dvc(project, "metrics", "show", "--json").stdout)
    metrics = next(iter(shown.values()))["data"]
    for arch in ARCHS:
        assert 0.0 <= metrics[f"reports/{arch}/metrics.json"]["data"]["accuracy"] <= 1.0
    plots = dvc(project, "plots", "show", "--json").stdout
    assert all(f"reports/{arch}/predictions.csv" in plots for arch in ARCHS)

    # A flow-parameter override detaches exactly the stages that read the key, and what follows.
    from components.config import load_params
    from components.dvc_sync import DvcStages

    stages = DvcStages.open(project, load_params(project / "params.yaml", {"train.max_epochs": 9}))
    assert stages is not None
    detached = {
        s: stages.detached(s) for s in ("ingest", "preprocess", "train@mlp", "evaluate@cnn", "register")
    }
    assert detached == {
        "ingest": False, "preprocess": False, "train@mlp": True, "evaluate@cnn": True, "register": True
    }  # fmt: skip


def test_dvc_repro_rebuilds_what_the_flow_built(
    project: Path, first_run: tuple[str, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [
        "models/mlp/weights.safetensors",
        "models/mlp/model.json",
        "models/mlp/stats.json",
        *(f"reports/mlp/{name}" for name in REPORT_FILES),
        "reports/registration.json",
    ]
    from_flow = {name: (project / name).read_bytes() for name in files}
    versions = len(_versions(project))
    # compress@/explain@mlp too: evaluate@mlp's new metrics.json (its timings) is their input
    redo = ("train@mlp", "evaluate@mlp", "compress@mlp", "explain@mlp", "register")
    repro = dvc(project, "repro", "--force", "--single-item", *redo)
    assert ran_stages(repro.stdout) == set(redo)
    assert {name: (project / name).read_bytes() for name in files} == from_flow
    assert len(_versions(project)) == versions  # same weights: no new version

    # The other architecture too, trained here alone: the same weights as the flow's.
    from components.config import load_params
    from components.training.train import train

    monkeypatch.setenv("MLFLOW_TRACKING_URI", empty_mlflow_store(tmp_path / "mlflow.db"))
    params = load_params(project / "params.yaml")
    alone = tmp_path / "cnn"
    train(params, "cnn", project / "data/prepared", alone, work_root=tmp_path / "work", project_root=project)
    weights = "weights.safetensors"
    assert (alone / weights).read_bytes() == (project / "models/cnn" / weights).read_bytes()


def test_rerun_redoes_nothing_and_more_epochs_retrain_and_register(
    project: Path, first_run: tuple[str, dict[str, Any]]
) -> None:
    versions = len(_versions(project))
    _, again = run_flow(project)
    assert not any(again["stages_run"].values()), again["stages_run"]
    assert len(_versions(project)) == versions
    # The no-op run's parent says so (it was an empty run among the others); a run that did work not.
    from flows.pipeline import NOTHING_RAN_TAG

    noop = _client(project).get_run(again["parent_run_id"]).data.tags
    assert noop[NOTHING_RAN_TAG] == "true"
    assert noop["mlflow.note.content"].startswith("Nothing ran: every stage was up to date")
    assert NOTHING_RAN_TAG not in _client(project).get_run(first_run[1]["parent_run_id"]).data.tags

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["max_epochs"] = 4
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "commit", "-qam", "more epochs"], project)
    _, edited = run_flow(project)
    ran = {stage for stage, did in edited["stages_run"].items() if did}
    assert ran == {f"{s}@{a}" for s in ("train", "evaluate", "compress", "explain") for a in ARCHS}
    decisions = edited["registration"]["decisions"]
    assert {d["architecture"] for d in decisions} >= set(ARCHS)
    assert len(_versions(project)) == versions + len(decisions)  # compressed ones too, when accepted
    for decision in decisions:
        previous = decision["previous_champion_value"]
        assert decision["promoted"] == (previous is None or decision["value"] > previous), decision
    assert json.loads(dvc(project, "status", "--json").stdout) == {}


def test_dvc_push_to_the_default_remote_and_pull_back_into_an_empty_cache(
    project: Path, first_run: tuple[str, dict[str, Any]]
) -> None:
    outputs = ["data/raw", "data/prepared", *(f"models/{arch}" for arch in ARCHS)]  # DVC's cached outs
    weights = (project / "models/mlp/weights.safetensors").read_bytes()
    dvc(project, "push")
    store = project.parent / "classifier-pipeline-dvc-remote"  # .dvc/config: ../../ from .dvc/
    assert len([f for f in store.rglob("*") if f.is_file()]) > 0

    shutil.rmtree(project / ".dvc" / "cache")
    for name in outputs:
        shutil.rmtree(project / name)
    assert json.loads(dvc(project, "status", "--json").stdout) != {}
    dvc(project, "pull")
    assert (project / "models/mlp/weights.safetensors").read_bytes() == weights
    assert json.loads(dvc(project, "status", "--json").stdout) == {}


def test_a_failing_architecture_fails_the_flow_with_its_own_error_after_the_others_finish(
    project: Path, first_run: tuple[str, dict[str, Any]]
) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from components.errors import ParamsError
    from flows.pipeline import training_pipeline

    versions = len(_versions(project))
    too_deep = {"models.cnn.channels": [8, 16, 32, 64]}  # four 2x2 poolings of an 8x8 image
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        state = training_pipeline(project_root=str(project), overrides=too_deep, return_state=True)

    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, ParamsError), error  # the stage's own error (exit 2), not UnfinishedRun
    assert "8x8 image is too small" in str(error)
    with get_client(sync_client=True) as prefect:
        task_runs = prefect.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[str(state.state_details.flow_run_id)]))
        )
    states = {t.name: (t.state_type.value, t.state_name) for t in task_runs if "[" in t.name}
    # evaluate@, compress@, explain@cnn and register need train@cnn, as in dvc.yaml: they never started
    assert states == {
        "train[mlp]": ("COMPLETED", "Completed"),
        "evaluate[mlp]": ("COMPLETED", "Completed"),
        "compress[mlp]": ("COMPLETED", "Completed"),
        "explain[mlp]": ("COMPLETED", "Completed"),
        "train[cnn]": ("FAILED", "Failed"),
    }
    assert not [t.name for t in task_runs if t.name.startswith("register")]
    assert len(_versions(project)) == versions
    client = _client(project)
    runs = client.search_runs(
        [experiment.experiment_id for experiment in client.search_experiments()],
        filter_string=f"tags.`prefect.flow_run_id` = '{state.state_details.flow_run_id}'",
    )
    assert [r.info.status for r in runs if "mlflow.parentRunId" not in r.data.tags] == ["FAILED"]
    assert json.loads(dvc(project, "status", "--json").stdout) == {}  # nothing was recorded


def test_ctrl_c_stops_the_training_and_writes_or_records_nothing(
    project: Path, first_run: tuple[str, dict[str, Any]]
) -> None:
    """Ctrl-C stops the flow's training at the end of its current step: no model folder, no
    dvc.lock entry, and the MLflow runs end KILLED."""
    import signal
    import threading
    import time

    from components.errors import Preempted
    from flows.pipeline import training_pipeline

    params_file, lock_file = project / "params.yaml", project / "dvc.lock"
    original, lock = params_file.read_text(), lock_file.read_bytes()
    weights = {arch: (project / "models" / arch / "weights.safetensors").read_bytes() for arch in ARCHS}
    params = yaml.safe_load(original)
    # Minutes of training, not stopped early: only the interrupt can end it within the test.
    params["train"] |= {"max_epochs": 1000, "early_stopping_patience": 0}
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    client = _client(project)
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]

    def training_runs() -> list[Any]:
        runs = client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'")
        return [r for r in runs if "architecture" in r.data.tags]

    def ctrl_c_once_training_runs(main: int) -> None:
        deadline = time.monotonic() + 120
        while not training_runs() and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)  # a few epochs in
        signal.pthread_kill(main, signal.SIGINT)  # what Ctrl-C does to the main thread

    interrupter = threading.Thread(
        target=ctrl_c_once_training_runs, args=(threading.main_thread().ident,), daemon=True
    )
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.delenv("MLFLOW_TRACKING_URI", raising=False)
            interrupter.start()
            with pytest.raises((KeyboardInterrupt, Preempted)):
                training_pipeline(project_root=str(project))
        deadline = time.monotonic() + 60
        while training_runs() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not training_runs(), "the training went on after the interrupt"
    finally:
        params_file.write_text(original)

    latest = client.search_runs(experiments, order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert "architecture" in latest.data.tags
    assert latest.info.status == "KILLED"
    assert client.get_run(latest.data.tags["mlflow.parentRunId"]).info.status == "KILLED"
    assert len(client.get_metric_history(latest.info.run_id, "val_loss")) < 100
    after = {arch: (project / "models" / arch / "weights.safetensors").read_bytes() for arch in ARCHS}
    assert after == weights
    assert lock_file.read_bytes() == lock
    assert json.loads(dvc(project, "status", "--json").stdout) == {}
