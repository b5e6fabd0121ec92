"""A hyperparameter sweep as a Prefect flow: ``python -m flows.sweep``.

Wiring only: the sweep is :func:`components.sweep.run.run_sweep` (Optuna over the ``sweep:``
section of params.yaml, every trial the project's own ``train`` on ``data/prepared``, run by
``dvc repro`` or the pipeline flow first). The flow prints a line per trial and a table of the best
trials; ``--apply`` writes the winner into params.yaml. Run again, it continues the same study;
several processes (or machines sharing ``sweep.storage``) on one study share its trials.

``--no-prefect`` runs the same sweep without Prefect (no server), e.g. in SLURM array tasks or
Kubernetes jobs; ``--serve`` serves the sweep as a deployment on the ``schedule:`` cron.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from prefect import flow

from components.config import Params, effective_params, key_overrides

FLOW_NAME = "hyperparameter-sweep"


def _settings(root: Path, params_file: str, overrides: dict[str, Any] | None) -> Params:
    return effective_params(root / params_file, None, None, None, overrides)


def sweep(
    project_root: str, params_file: str, overrides: dict[str, Any] | None, apply: bool
) -> dict[str, Any]:
    """Run the sweep, printing a line per trial and the best trials; apply the winner if asked."""
    from rich.console import Console

    from components.sweep.best import apply_best
    from components.sweep.report import leaders_table, next_steps, trial_line
    from components.sweep.run import run_sweep
    from components.sweep.trial import Outcome

    root = Path(project_root).resolve()
    settings = _settings(root, params_file, overrides)
    console = Console(width=None if sys.stdout.isatty() else 140)

    def progress(outcome: Outcome, counted: int, n_trials: int) -> None:
        console.print(trial_line(outcome, counted, n_trials, settings.sweep.metric), highlight=False)

    result = run_sweep(settings, root, on_trial=progress)
    console.print(leaders_table(result, settings.sweep.metric))
    for line in next_steps(result, settings.sweep.architecture):
        console.print(line, highlight=False, soft_wrap=True)
    if apply and result.best_values:
        apply_best(root / params_file, result.best_values)
        console.print(f"applied to {root / params_file}", highlight=False)
    return {"study": result.study, "counted": result.counted, "best": result.best_values}


@flow(name=FLOW_NAME, log_prints=True)
def sweep_flow(
    project_root: str = ".",
    params_file: str = "params.yaml",
    overrides: dict[str, Any] | None = None,
    apply: bool = False,
) -> dict[str, Any]:
    """The sweep of ``params_file``'s ``sweep:`` section (``overrides``: dotted keys)."""
    from pipelines._cli import set_offline_defaults

    set_offline_defaults()
    return sweep(project_root, params_file, overrides, apply)


def deployment(settings: Params, root: Path, params_file: str, interval: float | None = None) -> Any:
    """The sweep as a deployment on the ``schedule:`` cron (or every ``interval`` seconds), named
    ``hyperparameter-sweep/<schedule.deployment_name>``; one run at a time."""
    from prefect.schedules import Cron, Interval

    schedule = (
        Interval(interval) if interval else Cron(settings.schedule.cron, timezone=settings.schedule.timezone)
    )
    return sweep_flow.to_deployment(
        name=settings.schedule.deployment_name,
        schedules=[schedule],
        parameters={"project_root": str(root), "params_file": params_file},
        tags=[settings.data.source, "sweep"],
        description=f"{FLOW_NAME} on {root}",
        concurrency_limit=1,
    )


app = typer.Typer(add_completion=False, help=__doc__)


@app.command()
def main(
    project_root: Annotated[Path, typer.Option(help="Project folder (params.yaml, data/prepared).")] = Path(
        "."
    ),
    params_file: Annotated[
        str, typer.Option("--params", help="Settings file inside the project.")
    ] = "params.yaml",
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override a key: KEY=YAML (repeatable).")
    ] = None,
    n_trials: Annotated[int | None, typer.Option(help="Override sweep.n_trials.")] = None,
    apply: Annotated[bool, typer.Option(help="Write the best values into params.yaml.")] = False,
    prefect: Annotated[
        bool, typer.Option(help="Run as a Prefect flow (--no-prefect: plain process).")
    ] = True,
    serve: Annotated[bool, typer.Option(help="Serve the sweep on the schedule: cron instead.")] = False,
    interval: Annotated[float | None, typer.Option(help="With --serve: every N seconds.")] = None,
) -> None:
    """Run (or continue) the sweep now; SIGTERM or Ctrl-C stop it (exit 143), a rerun continues."""
    from components.errors import EXIT_PREEMPTED
    from flows.ephemeral import ephemeral_server_apart_from_ctrl_c, patient_ephemeral_server
    from pipelines._cli import console, run_stage, set_offline_defaults

    set_offline_defaults()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

    def body() -> None:
        overrides = key_overrides(set_ or [])
        if n_trials is not None:
            overrides["sweep.n_trials"] = n_trials
        root = project_root.resolve()
        settings = _settings(root, params_file, overrides)  # bad settings: one line, before Prefect
        if not prefect:
            sweep(str(root), params_file, overrides or None, apply)
            return
        with patient_ephemeral_server(), ephemeral_server_apart_from_ctrl_c():
            if serve:
                from prefect import serve as serve_all

                serve_all(deployment(settings, root, params_file, interval))
                return
            sweep_flow(
                project_root=str(root), params_file=params_file, overrides=overrides or None, apply=apply
            )

    signal.signal(signal.SIGTERM, _sigterm_as_ctrl_c)
    try:
        run_stage("sweep", body)
    except KeyboardInterrupt:
        console.print("sweep stopped: run it again to continue the study", highlight=False)
        sys.exit(EXIT_PREEMPTED)


def _sigterm_as_ctrl_c(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


if __name__ == "__main__":
    app()
