"""The pipeline as a Prefect flow: ingest -> preprocess -> (train -> evaluate -> compress) x arch -> register.

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
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, cast

import typer
from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import State

from components.config import Architecture, effective_params
from components.dvc_sync import DvcStages
from components.errors import Preempted
from flows.ephemeral import ephemeral_server_apart_from_ctrl_c, patient_ephemeral_server
from flows.tasks import (
    DATA_STAGES,
    STAGE_TASKS,
    PipelineRun,
    ingest_task,
    open_parent_task,
    preprocess_task,
)

FLOW_NAME = "training-pipeline"

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


def stage_dag(architectures: list[Architecture]) -> dict[str, list[str]]:
    """Each stage after the data stages, in the order the flow runs them, with the stages it needs:
    ``dvc.yaml``'s edges (``register`` reads every model folder, compressed ones included, not the
    reports)."""
    dag: dict[str, list[str]] = {"ingest": [], "preprocess": ["ingest"]}
    for arch in architectures:
        dag[f"train@{arch}"] = ["preprocess"]
        dag[f"evaluate@{arch}"] = ["preprocess", f"train@{arch}"]
        dag[f"compress@{arch}"] = ["preprocess", f"train@{arch}", f"evaluate@{arch}"]
        dag[f"explain@{arch}"] = ["preprocess", f"train@{arch}", f"evaluate@{arch}"]
    trained = [f"train@{arch}" for arch in architectures]
    dag["register"] = ["preprocess", *trained, *(f"compress@{arch}" for arch in architectures)]
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
    from components.naming import experiment_name
    from components.tracking import Tracker
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
