"""Scheduled deployments of the training flow (cron from ``params.yaml`` ``schedule``).

- ``python -m flows.deploy serve``: one machine. Registers the deployment with the Prefect server
  (``PREFECT_API_URL``) and runs its scheduled (and hand-triggered) flow runs in this process until
  stopped (``flow.serve``).
- ``python -m flows.deploy work-pool --pool NAME``: a cluster. Registers the deployment for a work
  pool; the pool's workers (process, Docker or Kubernetes) pull the project and run it.

Trigger a run by hand: ``prefect deployment run 'training-pipeline/scheduled'``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, cast

import typer

from components.config import Params, load_params
from components.errors import ParamsError
from flows.ephemeral import ephemeral_server_apart_from_ctrl_c, patient_ephemeral_server
from flows.pipeline import FLOW_NAME, training_pipeline

ENTRYPOINT = "flows/pipeline.py:training_pipeline"

app = typer.Typer(add_completion=False, help=__doc__, no_args_is_help=True)


def _schedules(settings: Params, interval: float | None) -> list[Any]:
    from prefect.schedules import Cron, Interval

    if interval:
        return [Interval(interval)]
    return [Cron(settings.schedule.cron, timezone=settings.schedule.timezone)]


def _setup(project_root: Path, params_file: str) -> tuple[Path, Params]:
    from pipelines._cli import set_offline_defaults

    set_offline_defaults()
    root = project_root.resolve()
    return root, load_params(root / params_file)


def copied_per_run(source: str) -> bool:
    """Whether workers run each flow run in a fresh copy of ``source`` (a git clone or a download,
    by Prefect's own reading of the source) that is gone after the run, rather than in that folder."""
    from prefect.runner.storage import LocalStorage, create_storage_from_source

    return not isinstance(create_storage_from_source(source), LocalStorage)


def work_pool_deployment(
    settings: Params,
    *,
    source: str,
    pool: str,
    project_root: str,
    params_file: str,
    image: str | None,
    interval: float | None,
) -> dict[str, Any]:
    """The arguments of ``deploy`` for a work pool; refuses a source the runs would lose their records with.

    One run at a time, as ``serve`` does: runs of a folder source share that folder (its ``.work``,
    DVC workspace and SQLite store). Without ``MLFLOW_TRACKING_URI``, a git (or remote) source's
    runs would keep their MLflow store, models and registry in the worker's temporary copy.
    """
    if copied_per_run(source) and not os.environ.get("MLFLOW_TRACKING_URI", "").strip():
        raise ParamsError(
            f"--source {source}: workers run a temporary copy of it, so without MLFLOW_TRACKING_URI "
            "each run's MLflow store, models and registry would be deleted with the copy; set "
            "MLFLOW_TRACKING_URI to the tracking server the pool's workers report to (see "
            "docs/operations.md), or give a folder every worker sees as --source"
        )
    return {
        "name": settings.schedule.deployment_name,
        "work_pool_name": pool,
        "schedules": _schedules(settings, interval),
        "parameters": {"project_root": project_root, "params_file": params_file},
        "tags": [settings.data.source],
        "image": image,
        "build": False,
        "push": False,
        "concurrency_limit": 1,
    }


ProjectOption = Annotated[Path, typer.Option(help="Project folder the flow runs in.")]
ParamsOption = Annotated[str, typer.Option("--params", help="Settings file inside the project.")]
IntervalOption = Annotated[
    float | None, typer.Option(help="Run every N seconds instead of the cron schedule (for trials).")
]


@app.command()
def serve(
    project_root: ProjectOption = Path("."),
    params_file: ParamsOption = "params.yaml",
    interval: IntervalOption = None,
) -> None:
    """Serve the deployment from this process: scheduled runs execute here, one at a time."""
    root, settings = _setup(project_root, params_file)
    # Without PREFECT_API_URL: a server in this process, for trials, that outlives a Ctrl-C.
    with patient_ephemeral_server(), ephemeral_server_apart_from_ctrl_c():
        training_pipeline.serve(
            name=settings.schedule.deployment_name,
            schedules=_schedules(settings, interval),
            parameters={"project_root": str(root), "params_file": params_file},
            tags=[settings.data.source],
            description=f"{FLOW_NAME} on {root}",
            limit=1,
        )


@app.command("work-pool")
def work_pool(
    pool: Annotated[str, typer.Option(help="Work pool whose workers run the flow.")],
    source: Annotated[str, typer.Option(help="Where workers get the project: a git URL or a path.")] = ".",
    project_root: Annotated[str, typer.Option(help="Project folder as the workers see it.")] = ".",
    params_file: ParamsOption = "params.yaml",
    image: Annotated[str | None, typer.Option(help="Container image (Docker/Kubernetes pools).")] = None,
    interval: IntervalOption = None,
) -> None:
    """Register the deployment for a work pool (``prefect worker start --pool NAME`` runs it)."""
    from pipelines._cli import run_stage

    def body() -> None:
        _, settings = _setup(Path("."), params_file)
        arguments = work_pool_deployment(
            settings,
            source=source,
            pool=pool,
            project_root=project_root,
            params_file=params_file,
            image=image,
            interval=interval,
        )
        from prefect import Flow

        # Called from sync code, from_source returns the flow itself (its async twin a coroutine).
        deployable = cast(Flow[..., Any], training_pipeline.from_source(source=source, entrypoint=ENTRYPOINT))
        deployment_id = deployable.deploy(**arguments)
        typer.echo(f"deployment {FLOW_NAME}/{settings.schedule.deployment_name}: {deployment_id}")

    run_stage("deploy", body)


if __name__ == "__main__":
    app()
