"""The flow's tasks: each stage of ``dvc.yaml`` as a Prefect task calling the stage's own component
function, skipped when DVC reports it up to date and recorded in ``dvc.lock`` after it ran
(:mod:`components.dvc_sync`). torch, Lightning and MLflow are imported inside the tasks that use
them, so importing the flow (deployments, ``--help``) stays quick."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task
from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect.tasks import Task

from components.config import Architecture, Params
from components.data.ingest import ingest
from components.data.prepared import data_version
from components.data.preprocess import preprocess
from components.dvc_sync import DvcStages, run_unless_up_to_date
from components.errors import is_transient

if TYPE_CHECKING:
    from components.registry.decisions import Decision

RAW, PREPARED, MODELS, REPORTS, WORK = "data/raw", "data/prepared", "models", "reports", ".work"
REGISTRATION = "reports/registration.json"


def only_transient(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect ``retry_condition_fn``: retry a service that did not answer, never bad input or a bug."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, BaseException) and is_transient(error)


# A stage that failed for a tracking server away is tried twice more, 5 and then 20 s later. With the
# bounded MLflow retries (pipelines._cli.TRACKING_HTTP_DEFAULTS: about 65 s per call to a server
# that went away) and Tracker.open's 15 s check on each retry, a server that does not come back
# fails the flow in about 2 minutes (it took 12).
RETRY: dict[str, Any] = {"retries": 2, "retry_delay_seconds": [5, 20], "retry_condition_fn": only_transient}


@dataclass(frozen=True)
class PipelineRun:
    """What every task of one flow run needs: where the project is and what it runs with."""

    root: Path
    params: Params
    dvc: DvcStages | None
    tags: dict[str, str] = field(default_factory=dict)
    """Lineage tags for every MLflow run and model version: the Prefect flow run."""
    parent_run_id: str | None = None

    def path(self, relative: str) -> Path:
        return self.root / relative


@task(name="ingest", **RETRY)
def ingest_task(run: PipelineRun) -> bool:
    return run_unless_up_to_date(
        run.dvc, "ingest", lambda: ingest(run.params.data, run.path(RAW), root=run.root)
    )


@task(name="preprocess", **RETRY)
def preprocess_task(run: PipelineRun) -> bool:
    return run_unless_up_to_date(
        run.dvc, "preprocess", lambda: preprocess(run.params.preprocess, run.path(RAW), run.path(PREPARED))
    )


@task(name="open-parent-run", **RETRY)
def open_parent_task(run: PipelineRun) -> str:
    from components.code_version import code_tags
    from components.naming import experiment_name
    from components.tracking import Tracker

    tracker = Tracker.open(experiment_name(run.params), run.root)
    tags = {"data.source": run.params.data.source, "data.version": data_version(run.path(PREPARED))}
    return tracker.start_parent(
        f"flow-{run.tags.get('prefect.flow_run_name', 'local')}", {**tags, **code_tags(run.root), **run.tags}
    )


@task(name="train", task_run_name="train[{arch}]", **RETRY)
def train_task(run: PipelineRun, arch: Architecture) -> bool:
    """``train@<arch>``: in this process on one device, the stage command under ``torchrun`` on several."""
    from components.tracking import PARENT_ENV
    from components.training.launch import launch_training
    from components.training.train import train
    from components.training.world_size import needs_launcher

    out = f"{MODELS}/{arch}"

    def launched() -> None:
        env = {PARENT_ENV: run.parent_run_id} if run.parent_run_id else {}
        launch_training(
            run.params, arch, PREPARED, out, project_root=run.root, tags=run.tags, env=env,
            on_line=lambda line: print(f"[train@{arch}] {line}", file=sys.stderr, flush=True),
        )  # fmt: skip

    def in_process() -> None:
        train(
            run.params, arch, run.path(PREPARED), run.path(out), work_root=run.path(WORK),
            project_root=run.root, tags=run.tags, parent_run_id=run.parent_run_id, progress_bar=False,
        )  # fmt: skip

    body = launched if needs_launcher(run.params.train) else in_process
    return run_unless_up_to_date(run.dvc, f"train@{arch}", body)


@task(name="evaluate", task_run_name="evaluate[{arch}]", **RETRY)
def evaluate_task(run: PipelineRun, arch: Architecture) -> bool:
    from components.evaluation.evaluate import evaluate

    def body() -> None:
        models, reports = run.path(f"{MODELS}/{arch}"), run.path(f"{REPORTS}/{arch}")
        evaluate(run.params, arch, run.path(PREPARED), models, reports, project_root=run.root)

    return run_unless_up_to_date(run.dvc, f"evaluate@{arch}", body)


@task(name="compress", task_run_name="compress[{arch}]", **RETRY)
def compress_task(run: PipelineRun, arch: Architecture) -> bool:
    from components.compression.compress import compress

    def body() -> None:
        model, out = run.path(f"{MODELS}/{arch}"), run.path(f"{MODELS}/{arch}-compressed")
        report = run.path(f"{REPORTS}/{arch}/compression.json")
        compress(run.params, arch, run.path(PREPARED), model, out, report, project_root=run.root)

    return run_unless_up_to_date(run.dvc, f"compress@{arch}", body)


@task(name="explain", task_run_name="explain[{arch}]", **RETRY)
def explain_task(run: PipelineRun, arch: Architecture) -> bool:
    from components.interpret.explain import explain

    def body() -> None:
        models, reports = run.path(f"{MODELS}/{arch}"), run.path(f"{REPORTS}/{arch}")
        explain(run.params, arch, run.path(PREPARED), models, reports, project_root=run.root)

    return run_unless_up_to_date(run.dvc, f"explain@{arch}", body)


@task(name="register", **RETRY)
def register_task(run: PipelineRun) -> dict[str, Any]:
    """The ``register`` stage (every architecture, then ``reports/registration.json``), recorded in
    ``dvc.lock``. Always runs: registration is idempotent and the registry is outside DVC's view."""
    from components.registry.register import register_all

    def say(decision: Decision) -> None:
        get_run_logger().info(
            "register@%s: version %s: %s", decision.architecture, decision.version, decision.reason
        )

    report = register_all(
        run.params, run.path(MODELS), run.path(PREPARED), run.path(REGISTRATION),
        project_root=run.root, tags=run.tags, on_decision=say,
    )  # fmt: skip
    if run.dvc is not None:
        run.dvc.record("register")
    return report


STAGE_TASKS: dict[str, Task[..., Any]] = {
    "train": train_task,
    "evaluate": evaluate_task,
    "compress": compress_task,
    "explain": explain_task,
    "register": register_task,
}
DATA_STAGES = ("ingest", "preprocess")  # run first, outside run_stages: everything needs them
