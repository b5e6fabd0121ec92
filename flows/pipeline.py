"""The whole pipeline as one Prefect flow: ingest -> preprocess -> (train -> evaluate) x arch -> register.

Wiring only: every task calls the component function its DVC stage calls, and the flow follows
``dvc.yaml``'s DAG (:func:`stage_dag`; a test compares the two). Stages run one after another in the
flow's own thread, each a Prefect task (the UI shows every task and its state): training seeds and
draws from process-wide random generators, so one torch job at a time is what keeps the flow's
results equal to ``dvc repro``'s. Training on several devices runs the stage's own command under
``torchrun`` (see :mod:`components.training.launch`): real parallelism is separate processes, never
threads sharing one torch. Several nodes are beyond one flow run (``infra/slurm``, ``infra/k8s``),
so the flow refuses ``train.num_nodes`` > 1 before it starts.

DVC stays the record: a stage DVC reports up to date is skipped, and each stage that ran is committed
to ``dvc.lock`` (see :mod:`components.dvc_sync`), so ``dvc status`` is clean after a flow run.

- Retries only for transient failures (a tracking server that did not answer), never bad input.
- A failing stage does not stop the stages that do not depend on it (the other architectures); the
  flow then fails with the first failed stage's own error (``flow failed: <message>``, exit 2 or 75).
  ``register`` runs only when every training succeeded, as under ``dvc repro``.
- SIGTERM or Ctrl-C stops the flow: a training writes its resume checkpoint at the end of the
  current step, nothing later starts, nothing more is recorded, and the command exits 143.
- The flow owns the MLflow parent run; every run and model version carries the Prefect flow-run id,
  the git commit and the data version.

Run it: ``python -m flows.pipeline`` (ephemeral Prefect server unless ``PREFECT_API_URL`` is set).
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from prefect import flow, get_run_logger, task
from prefect.client.schemas.objects import TaskRun
from prefect.runtime import flow_run
from prefect.states import State
from prefect.tasks import Task

from components.config import Architecture, Params, effective_params
from components.data.ingest import ingest
from components.data.prepared import data_version
from components.data.preprocess import preprocess
from components.dvc_sync import DvcStages, run_unless_up_to_date
from components.errors import Preempted, is_transient
from flows.ephemeral import ephemeral_server_apart_from_ctrl_c, patient_ephemeral_server

# torch, Lightning and MLflow (train, evaluate, register, tracking) are imported by the tasks that
# use them: importing this module is what `flows.deploy`, a deployment's registration and `--help`
# pay, many seconds more with them at the top.
if TYPE_CHECKING:
    from components.registry.register import Decision

FLOW_NAME = "training-pipeline"
RAW, PREPARED, MODELS, REPORTS, WORK = "data/raw", "data/prepared", "models", "reports", ".work"
REGISTRATION = "reports/registration.json"

# A flow run in which DVC found every stage up to date still has its parent run (opened before the
# stages' status is known; it links the Prefect flow run and records that the commit was checked),
# marked so that a user comparing runs filters it out: tags."pipeline.nothing_ran" != "true".
NOTHING_RAN_TAG = "pipeline.nothing_ran"
NOTHING_RAN_TAGS = {
    NOTHING_RAN_TAG: "true",
    "mlflow.note.content": (
        "Nothing ran: every stage was up to date (DVC), so nothing was trained or evaluated; "
        "registration only re-checked the existing versions and the champion."
    ),
}


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
    from components.tracking import Tracker, experiment_name

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
    "register": register_task,
}
DATA_STAGES = ("ingest", "preprocess")  # run first, outside run_stages: everything needs them


def stage_dag(architectures: list[Architecture]) -> dict[str, list[str]]:
    """Each stage after the data stages, in the order the flow runs them, with the stages it needs:
    ``dvc.yaml``'s edges (``register`` reads every model folder, not the reports)."""
    dag: dict[str, list[str]] = {"ingest": [], "preprocess": ["ingest"]}
    for arch in architectures:
        dag[f"train@{arch}"] = ["preprocess"]
        dag[f"evaluate@{arch}"] = ["preprocess", f"train@{arch}"]
    dag["register"] = ["preprocess", *(f"train@{arch}" for arch in architectures)]
    return dag


def stage_state(run: PipelineRun, stage: str) -> State[Any]:
    """Run ``stage`` (``train@mlp``, ``register``) as its Prefect task here; its final state."""
    kind, _, arch = stage.partition("@")
    arguments = (run, arch) if arch else (run,)
    return cast("State[Any]", STAGE_TASKS[kind](*arguments, return_state=True))


def run_stages(run: PipelineRun, dag: dict[str, list[str]]) -> dict[str, Any]:
    """Run every stage of ``dag`` after the data stages in order, each once its upstream succeeded;
    return each one's result. A failed stage stops only what depends on it; then the first failure
    is raised. SIGTERM or Ctrl-C (``Preempted``, ``KeyboardInterrupt``) stops everything at once."""
    results: dict[str, Any] = {}
    failed: dict[str, BaseException] = {}
    logger = get_run_logger()
    for stage, upstream in dag.items():
        if stage in DATA_STAGES:
            continue
        blocked = [name for name in upstream if name not in DATA_STAGES and name not in results]
        if blocked:
            logger.warning("%s: not run, %s did not succeed", stage, ", ".join(blocked))
            continue
        state = stage_state(run, stage)
        if state.is_completed():
            results[stage] = state.result()
            continue
        error = state.result(raise_on_failure=False)
        if isinstance(error, Preempted):
            raise error
        failed[stage] = error if isinstance(error, BaseException) else RuntimeError(f"{stage}: {state}")
    for stage, error in list(failed.items())[1:]:
        logger.error("%s also failed: %s", stage, error)
    if failed:
        raise next(iter(failed.values()))
    return results


@flow(name=FLOW_NAME, log_prints=True)
def training_pipeline(
    project_root: str = ".",
    params_file: str = "params.yaml",
    architectures: list[str] | None = None,
    max_epochs: int | None = None,
    data_source: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the pipeline on ``params_file`` (relative to ``project_root``), with optional overrides
    of its keys (``overrides`` takes dotted keys, e.g. ``{"train.batch_size": 256}``)."""
    from components.tracking import Tracker, experiment_name
    from pipelines._cli import set_offline_defaults

    set_offline_defaults()  # bounded MLflow retries also where a worker runs the flow
    root = Path(project_root).resolve()
    settings = effective_params(root / params_file, architectures, max_epochs, data_source, overrides)
    run_id = str(flow_run.id or "local")
    run = PipelineRun(
        root=root,
        params=settings,
        dvc=DvcStages.open(root, settings),
        tags={"prefect.flow_run_id": run_id, "prefect.flow_run_name": str(flow_run.name or "local")},
    )
    data_stages = {"ingest": ingest_task(run), "preprocess": preprocess_task(run)}
    parent = open_parent_task(run)
    run = replace(run, parent_run_id=parent)
    tracker = Tracker.open(experiment_name(settings), root)
    try:
        results = run_stages(run, stage_dag(settings.train.architectures))
    except BaseException as exc:
        interrupted = isinstance(exc, Preempted) or not isinstance(exc, Exception)
        tracker.end_parent(parent, succeeded=False, interrupted=interrupted)
        raise
    report = results.pop("register")
    stages = {**data_stages, **results}  # train@/evaluate@<arch>: whether the stage ran
    skipped = sorted(name for name, did in stages.items() if not did)
    nothing_ran = NOTHING_RAN_TAGS if not any(stages.values()) else {}
    tracker.end_parent(
        parent, succeeded=True, tags={"pipeline.skipped_stages": ",".join(skipped) or "none", **nothing_ran}
    )
    return {"stages_run": stages, "registration": report, "parent_run_id": parent}


_STOPPING: list[int] = []


def _sigterm_as_ctrl_c(signum: int, frame: object) -> None:
    """SIGTERM (a preempted job) stops the flow as Ctrl-C does; once stopping, later ones wait for it.

    During the flow run Prefect's own handler takes SIGTERM first and, after the flow stopped its
    branches, sends it again to reach this one: then it must not interrupt the shutdown.
    """
    if not _STOPPING:
        _STOPPING.append(signum)
        raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    project_root: Annotated[Path, typer.Option(help="Project folder (params.yaml, data/, models/).")] = Path(
        "."
    ),
    params_file: Annotated[
        str, typer.Option("--params", help="Settings file inside the project.")
    ] = "params.yaml",
    arch: Annotated[
        list[str] | None, typer.Option(help="Train only these architectures (repeatable).")
    ] = None,
    max_epochs: Annotated[int | None, typer.Option(help="Override train.max_epochs.")] = None,
    data_source: Annotated[str | None, typer.Option(help="Override data.source.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key: KEY=YAML (repeatable).")
    ] = None,
    summary: Annotated[bool, typer.Option(help="Print the results table at the end.")] = True,
) -> None:
    """Run the flow once, now, and print the results table.

    SIGTERM or Ctrl-C stop it (each training writes its resume checkpoint first) with exit code 143.
    """
    from prefect.exceptions import TerminationSignal

    from components.config import key_overrides
    from components.errors import EXIT_PREEMPTED
    from pipelines._cli import console, run_stage, set_offline_defaults

    set_offline_defaults()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")

    def body() -> None:
        overrides = key_overrides(set_ or [])
        # Bad settings are refused in one line before Prefect's server starts (up to a minute).
        chosen = list(arch) if arch else None
        effective_params(project_root.resolve() / params_file, chosen, max_epochs, data_source, overrides)
        from components.tracking import tracking_uri
        from components.tracking_server import ensure_reachable

        ensure_reachable(tracking_uri(project_root))  # a server that is not there: exit 75 in seconds
        with patient_ephemeral_server(), ephemeral_server_apart_from_ctrl_c():
            training_pipeline(
                project_root=str(project_root),
                params_file=params_file,
                architectures=chosen,
                max_epochs=max_epochs,
                data_source=data_source,
                overrides=overrides or None,
            )
        if summary:
            from components.summary import print_summary

            print_summary(project_root / params_file, project_root, architectures=arch or None)

    signal.signal(signal.SIGTERM, _sigterm_as_ctrl_c)
    try:
        run_stage("flow", body)
    except (KeyboardInterrupt, TerminationSignal):
        console.print("flow stopped: run it again to resume", highlight=False)
        sys.exit(EXIT_PREEMPTED)


if __name__ == "__main__":
    app()
