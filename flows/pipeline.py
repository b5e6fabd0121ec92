"""The whole pipeline as one Prefect flow: ingest -> preprocess -> (train -> evaluate -> register) x arch.

Wiring only: every task calls the component function its DVC stage calls. Training on one device
runs in this process, one architecture at a time (training seeds process-wide random generators and
sets torch's deterministic mode, so two at once would change each other's results); training on
several devices runs the stage's own command under ``torchrun`` (see
:mod:`components.training.launch`), one launch at a time, since each takes every device it names.
Several nodes are beyond one flow run: each node must start its own processes (``infra/slurm``,
``infra/k8s``), so the flow refuses ``train.num_nodes`` > 1 before it starts. DVC stays the
record: a stage DVC reports up to date is skipped, and each stage that ran is committed to
``dvc.lock`` (see :mod:`components.dvc_sync`), so ``dvc status`` is clean after a flow run.

- Architectures are submitted concurrently and each one's evaluate starts when its own training is
  done; the in-process work (one-device training, evaluate, register) takes turns, so results do
  not depend on timing; ``torchrun`` trainings take turns with each other (the in-process
  evaluation and registration of a trained architecture run meanwhile).
  Registrations run one at a time in ``train.architectures`` order (version numbers and the
  champion among equals do not depend on which training finished first).
- Retries only for transient failures (a tracking server that did not answer), never bad input.
- One architecture failing does not stop the others: every branch runs to its end, then the flow
  fails with the first failed stage's own error (``flow failed: <message>``, exit 2 or 75).
- Interrupting the flow (Ctrl-C) stops every branch: a training stops at its next batch (a
  ``torchrun`` launch is stopped), nothing later starts, and nothing more is written or recorded.
- The flow owns the MLflow parent run; every run and model version carries the Prefect flow-run id,
  the git commit and the data version.

Run it: ``python -m flows.pipeline`` (ephemeral Prefect server unless ``PREFECT_API_URL`` is set).
"""

from __future__ import annotations

import contextvars
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from prefect import allow_failure, flow, get_run_logger, task
from prefect.client.schemas.objects import TaskRun
from prefect.futures import PrefectFuture, wait
from prefect.runtime import flow_run
from prefect.states import State
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import Task

from components.config import Architecture, Params, load_params
from components.data.ingest import ingest
from components.data.prepared import data_version
from components.data.preprocess import preprocess
from components.dvc_sync import DvcStages, run_unless_up_to_date
from components.errors import ParamsError, is_transient
from components.torch_turns import (
    clear_stop,
    one_at_a_time,
    one_launch_at_a_time,
    request_stop,
    stop_requested,
)

# torch, Lightning and MLflow (train, evaluate, register, tracking) are imported by the tasks that
# use them: importing this module is what `flows.deploy`, a deployment's registration and `--help`
# pay, about 25 s more on a small CPU with them at the top.
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

# Seconds to wait for Prefect's ephemeral server (no PREFECT_API_URL) to answer. Prefect waits 20 s;
# the first start on a fresh 2-core machine (bytecode not compiled yet, the server's imports and its
# SQLite migrations) took longer, and `make run` failed there before doing anything.
EPHEMERAL_SERVER_STARTUP_TIMEOUT_S = 180
EPHEMERAL_TIMEOUT_VARIABLE = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"


@contextmanager
def patient_ephemeral_server() -> Iterator[None]:
    """Within: Prefect waits up to :data:`EPHEMERAL_SERVER_STARTUP_TIMEOUT_S` for its ephemeral server.

    A value the user set (``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``, in the environment or
    a Prefect profile) wins. Prefect reads its settings when it is imported, so setting the variable
    here would be too late; its ``temporary_settings`` is what takes effect.
    """
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as timeout
    from prefect.settings import temporary_settings

    if EPHEMERAL_TIMEOUT_VARIABLE in os.environ or timeout.value() != timeout.default():
        yield
        return
    with temporary_settings(updates={timeout: EPHEMERAL_SERVER_STARTUP_TIMEOUT_S}):
        yield


@contextmanager
def ephemeral_server_apart_from_ctrl_c() -> Iterator[None]:
    """Without ``PREFECT_API_URL``: start Prefect's ephemeral server now, out of Ctrl-C's reach.

    A terminal's Ctrl-C goes to every process of the foreground group, so Prefect's ephemeral
    server (a child of this process) stopped at once, while the flow was still reporting its
    interrupted state: the flow printed connection tracebacks and then hung at exit, draining its
    events to the gone server. Started here from a thread that blocks SIGINT (a child inherits the
    signal mask of the thread that starts it), the server outlives the Ctrl-C, the run is recorded
    as crashed, and Prefect stops the server when this process exits (SIGTERM). The flow reuses
    it: Prefect keeps one ephemeral server per process. The start waits as long as
    :func:`patient_ephemeral_server` says.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    failed: list[BaseException] = []

    def start() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            server.start()
        except BaseException as exc:  # re-raised in the caller's thread
            failed.append(exc)

    # Prefect's settings (the startup timeout among them) live in a context variable, which a new
    # thread does not inherit: without the copied context the server waited Prefect's 20 s.
    with patient_ephemeral_server():
        context = contextvars.copy_context()
    starter = threading.Thread(
        target=context.run, args=(start,), name="prefect-ephemeral-server", daemon=True
    )
    starter.start()
    starter.join()
    if failed:
        raise failed[0]
    yield


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
    from components.tracking import Tracker, code_tags, experiment_name

    tracker = Tracker.open(experiment_name(run.params), run.root)
    tags = {"data.source": run.params.data.source, "data.version": data_version(run.path(PREPARED))}
    return tracker.start_parent(
        f"flow-{run.tags.get('prefect.flow_run_name', 'local')}", {**tags, **code_tags(run.root), **run.tags}
    )


@task(name="train", task_run_name="train[{arch}]", **RETRY)
def train_task(run: PipelineRun, arch: Architecture) -> bool:
    """``train@<arch>``: in this process on one device, the stage command under ``torchrun`` on several."""
    from components.tracking import PARENT_ENV
    from components.training.callbacks import StopWhen
    from components.training.launch import launch_training, needs_launcher
    from components.training.train import train

    out = f"{MODELS}/{arch}"

    def launched() -> None:
        env = {PARENT_ENV: run.parent_run_id} if run.parent_run_id else {}
        one_launch_at_a_time(
            launch_training, run.params, arch, PREPARED, out, project_root=run.root, tags=run.tags,
            env=env, on_line=lambda line: print(f"[train@{arch}] {line}", file=sys.stderr, flush=True),
            should_stop=stop_requested,
        )  # fmt: skip

    def in_process() -> None:
        one_at_a_time(
            train, run.params, arch, run.path(PREPARED), run.path(out), work_root=run.path(WORK),
            project_root=run.root, tags=run.tags, parent_run_id=run.parent_run_id, progress_bar=False,
            callbacks=[StopWhen(stop_requested, arch)],
        )  # fmt: skip

    body = launched if needs_launcher(run.params.train) else in_process
    return run_unless_up_to_date(run.dvc, f"train@{arch}", body)


@task(name="evaluate", task_run_name="evaluate[{arch}]", **RETRY)
def evaluate_task(run: PipelineRun, arch: Architecture) -> bool:
    from components.evaluation.evaluate import evaluate

    return run_unless_up_to_date(
        run.dvc,
        f"evaluate@{arch}",
        lambda: one_at_a_time(
            evaluate,
            run.params,
            arch,
            run.path(PREPARED),
            run.path(f"{MODELS}/{arch}"),
            run.path(f"{REPORTS}/{arch}"),
            project_root=run.root,
        ),
    )


@task(name="register", task_run_name="register[{arch}]", **RETRY)
def register_task(run: PipelineRun, arch: Architecture) -> Decision:
    from components.registry.register import register

    decision = one_at_a_time(
        register,
        run.params,
        arch,
        run.path(f"{MODELS}/{arch}"),
        run.path(PREPARED),
        project_root=run.root,
        tags=run.tags,
    )
    get_run_logger().info("register[%s]: version %s: %s", arch, decision.version, decision.reason)
    return decision


@task(name="registration-report", **RETRY)
def report_task(run: PipelineRun, decisions: list[Decision]) -> dict[str, Any]:
    """``reports/registration.json``, recorded as the ``register`` stage's output."""
    from components.registry.register import champion_version, write_report

    champion = champion_version(run.params, run.root)
    report = write_report(decisions, champion, run.path(REGISTRATION))
    if run.dvc is not None:
        run.dvc.record("register")
    return report


def raise_first_failure(futures: dict[str, PrefectFuture[Any]]) -> None:
    """Re-raise the error of the first failed task among finished ``futures`` (by name, in order):
    a stage's own :class:`PipelineError` keeps its message and exit code; later failures are logged.

    Tasks that never ran because an upstream failed (Prefect's NotReady) are not failures of their
    own: the upstream's error is the one that says what to fix.
    """
    failed = [
        (name, future)
        for name, future in futures.items()
        if future.state.is_final() and not future.state.is_completed()  # failed, crashed, cancelled
    ]
    for name, future in failed[1:]:
        get_run_logger().error("%s also failed: %s", name, future.state.result(raise_on_failure=False))
    if failed:
        failed[0][1].result()


def effective_params(
    params_file: Path,
    architectures: list[str] | None,
    max_epochs: int | None,
    data_source: str | None,
    overrides: dict[str, Any] | None,
) -> Params:
    """``params_file`` with the flow parameters applied, validated by the same schema as the stages.

    ``train.num_nodes`` > 1 is refused here, before anything runs: one flow run starts processes on
    its own machine only, and the other nodes' processes must be started there (SLURM, Kubernetes).
    """
    chosen: dict[str, Any] = dict(overrides or {})
    for key, value in (
        ("train.architectures", architectures),
        ("train.max_epochs", max_epochs),
        ("data.source", data_source),
    ):
        if value is not None:
            chosen[key] = value
    params = load_params(params_file, chosen)
    if params.train.num_nodes > 1:
        raise ParamsError(
            f"train.num_nodes: {params.train.num_nodes}: the flow trains on its own machine only; start "
            "the train stage on every node (infra/slurm/train.sbatch, infra/k8s/train-job.yaml, or "
            "torchrun with a rendezvous: README 'Running on a GPU cluster') and run the flow with "
            "train.num_nodes: 1"
        )
    return params


@flow(name=FLOW_NAME, task_runner=ThreadPoolTaskRunner(max_workers=8), log_prints=True)  # type: ignore[arg-type]
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

    clear_stop()  # a run interrupted earlier in this process stopped its jobs; these may run
    data_stages = {"ingest": ingest_task(run), "preprocess": preprocess_task(run)}
    parent = open_parent_task(run)
    run = replace(run, parent_run_id=parent)

    registrations: list[PrefectFuture[Decision]] = []
    every_task: dict[str, PrefectFuture[Any]] = {}  # by name, architecture by architecture
    for arch in settings.train.architectures:
        trained = train_task.submit(run, arch)
        evaluated = evaluate_task.submit(run, arch, return_state=False, wait_for=[trained])
        previous = [allow_failure(registrations[-1])] if registrations else []
        registered = register_task.submit(run, arch, return_state=False, wait_for=[evaluated, *previous])
        registrations.append(registered)
        every_task |= {
            f"train@{arch}": trained,
            f"evaluate@{arch}": evaluated,
            f"register@{arch}": registered,
        }

    tracker = Tracker.open(experiment_name(settings), root)
    try:
        # Every branch runs to its end before any result is read: reading a branch whose upstream
        # failed (state NotReady) would raise Prefect's UnfinishedRun and cancel the branches
        # still running, so one architecture's bad settings would stop the others mid-training.
        wait(list(every_task.values()))
        raise_first_failure(every_task)
        decisions = [future.result() for future in registrations]
        report = report_task(run, decisions)
    except BaseException as exc:
        # Ctrl-C (or Prefect cancelling the run) lands here, in the main thread, while the
        # branches' worker threads would train and record on: they stop at their next batch.
        request_stop()
        tracker.end_parent(parent, succeeded=False, interrupted=not isinstance(exc, Exception))
        raise
    # train@/evaluate@<arch> return whether the stage ran (register@ returns its decision).
    stage_runs = {
        name: future.result() for name, future in every_task.items() if not name.startswith("register@")
    }
    stages = {**data_stages, **stage_runs}
    skipped = sorted(name for name, did in stages.items() if not did)
    nothing_ran = NOTHING_RAN_TAGS if not any(stages.values()) else {}
    tracker.end_parent(
        parent, succeeded=True, tags={"pipeline.skipped_stages": ",".join(skipped) or "none", **nothing_ran}
    )
    return {"stages_run": stages, "registration": report, "parent_run_id": parent}


def _sigterm_as_ctrl_c(signum: int, frame: object) -> None:
    """SIGTERM (a preempted job) stops the flow as Ctrl-C does; once stopping, later ones wait for it.

    During the flow run Prefect's own handler takes SIGTERM first and, after the flow stopped its
    branches, sends it again to reach this one: then it must not interrupt the shutdown.
    """
    if not stop_requested():
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

    from components.errors import EXIT_PREEMPTED
    from pipelines._cli import console, key_overrides, run_stage, set_offline_defaults

    set_offline_defaults()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")

    def body() -> None:
        overrides = key_overrides(set_ or [])
        # Bad settings are refused in one line before Prefect's server starts (up to a minute).
        chosen = list(arch) if arch else None
        effective_params(project_root.resolve() / params_file, chosen, max_epochs, data_source, overrides)
        from components.tracking import ensure_reachable, tracking_uri

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
            from pipelines.summary import print_summary

            print_summary(project_root / params_file, project_root, architectures=arch or None)

    signal.signal(signal.SIGTERM, _sigterm_as_ctrl_c)
    try:
        run_stage("flow", body)
    except (KeyboardInterrupt, TerminationSignal):
        request_stop()  # the worker threads' trainings stop at their next step; exit waits for them
        console.print("flow stopped: run it again to resume", highlight=False)
        sys.exit(EXIT_PREEMPTED)


if __name__ == "__main__":
    app()
