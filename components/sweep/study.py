"""The Optuna study of a sweep: where it is stored, opening it, and trials left by dead processes.

Storage: ``sweep.storage``, else ``OPTUNA_STORAGE``, else (MLflow on its local SQLite file) an
SQLite file ``optuna.db`` beside ``mlflow.db``: a file of its own, as both keep an
``alembic_version`` table. A tracking server needs a shared database given explicitly.

A process killed mid-trial leaves its trial RUNNING forever. Each trial records the process that
runs it (``process.*`` user attributes, as MLflow runs do): before each trial, RUNNING trials whose
process on this host is gone are marked FAIL, as are trials no process claimed within :data:`GRACE_S`
(killed between ``ask`` and the claim). Trials of other hosts are failed by Optuna's heartbeat
when they have not beaten for :data:`GRACE_S`. Failed trials never count towards ``n_trials``.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import optuna
from optuna.exceptions import ExperimentalWarning, UpdateFinishedTrialError
from optuna.storages import RDBStorage, fail_stale_trials
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

from components.config import Params
from components.errors import ParamsError
from components.naming import dataset_name
from components.processes import ProcessRef, is_gone, this_process
from components.tracking import tracking_uri

STORAGE_ENV = "OPTUNA_STORAGE"
DEFAULT_STORAGE_FILE = "optuna.db"
HEARTBEAT_S = 20  # how often a running trial records that its process is alive
GRACE_S = 120  # a trial of another host is failed after this long without a heartbeat
PROCESS_ATTR = "process"  # the claiming process (host, pid, started, pid_namespace), one attribute
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)  # the trials n_trials counts


@contextmanager
def quiet_optuna() -> Iterator[None]:
    """Heartbeats, stale-trial checks and the matplotlib plots are "experimental" in Optuna 5, and
    the heartbeat is used with ask/tell on purpose (a trial must fit n_trials before it runs)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ExperimentalWarning)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        yield


optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints its own line per trial


def study_name(params: Params) -> str:
    """``sweep.study_name``, else ``<dataset name>-<architecture>`` (``digits-cnn``)."""
    return params.sweep.study_name or f"{dataset_name(params.data)}-{params.sweep.architecture}"


def storage_url(params: Params, project_root: Path | str = ".") -> str:
    """Where the study lives (see the module's docstring); refuses a tracking server without one."""
    if params.sweep.storage:
        return params.sweep.storage
    configured = os.environ.get(STORAGE_ENV, "").strip()
    if configured:
        return configured
    mlflow_uri = tracking_uri(project_root)
    if not mlflow_uri.startswith("sqlite:///"):
        raise ParamsError(
            f"sweep.storage: MLflow tracks to {mlflow_uri}, so a sweep needs a database every process "
            f"reaches: set sweep.storage or {STORAGE_ENV} (e.g. the PostgreSQL of infra/: "
            "postgresql://user:password@host:5432/optuna; docs/sweeps.md)"
        )
    mlflow_db = Path(mlflow_uri.removeprefix("sqlite:///"))  # mlflow.db, or the file MLflow was given
    return f"sqlite:///{mlflow_db.parent / DEFAULT_STORAGE_FILE}"


def open_storage(url: str) -> RDBStorage:
    """The relational storage with heartbeats; SQLite waits for a lock rather than failing at once."""
    engine: dict[str, object] = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)


def counted(study: optuna.Study) -> int:
    """Finished and pruned trials: what ``n_trials`` counts."""
    return len(study.get_trials(deepcopy=False, states=COUNTED))


def claim(trial: optuna.Trial) -> None:
    """Record this process on ``trial`` (its liveness is how a rerun tells a dead trial), in one
    attribute: one write, so a process killed while claiming leaves all of it or none."""
    trial.set_user_attr(PROCESS_ATTR, this_process().tags(""))


def may_run(study: optuna.Study, trial: optuna.Trial, n_trials: int) -> bool:
    """Whether ``trial`` is within ``n_trials``: fewer than that many trials numbered before it are
    finished, pruned or running. Trial numbers are handed out atomically by the storage, so of
    processes racing for the last place exactly one gets it."""
    live = (*COUNTED, TrialState.RUNNING)
    earlier = [t for t in study.get_trials(deepcopy=False, states=live) if t.number < trial.number]
    return len(earlier) < n_trials


def _process_gone(trial: FrozenTrial) -> bool:
    recorded = trial.user_attrs.get(PROCESS_ATTR)
    process = ProcessRef.from_tags(recorded, "") if isinstance(recorded, dict) else None
    return process is not None and process != this_process() and is_gone(process)


def _unclaimed(trial: FrozenTrial, after_s: float) -> bool:
    """Started over ``after_s`` ago and never claimed: its process died between ``ask`` and
    :func:`claim` (milliseconds apart), so nothing else would ever end it."""
    claimed = PROCESS_ATTR in trial.user_attrs
    started = trial.datetime_start
    return not claimed and started is not None and (datetime.now() - started).total_seconds() > after_s


def fail_dead_trials(study: optuna.Study, unclaimed_after_s: float = GRACE_S) -> list[int]:
    """Mark FAIL the RUNNING trials whose process (on this host) is gone, those no process claimed
    within ``unclaimed_after_s``, and those of other hosts whose heartbeat stopped; return the
    numbers of those this call failed."""
    failed = []
    storage = study._storage  # the study's own storage object (no public accessor)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        gone = _process_gone(trial)
        if gone or _unclaimed(trial, unclaimed_after_s):
            why = "its process was killed" if gone else "no process claimed it (killed as it started)"
            try:
                storage.set_trial_user_attr(trial._trial_id, "sweep.failed", why)
                if storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                    failed.append(trial.number)
            except UpdateFinishedTrialError:  # another process failed it first
                pass
    fail_stale_trials(study)
    return failed


@contextmanager
def heartbeat(study: optuna.Study, trial: optuna.Trial) -> Iterator[None]:
    """Record ``trial``'s heartbeat every :data:`HEARTBEAT_S` while the block runs."""
    storage = study._storage  # the study's own storage object (no public accessor)
    assert isinstance(storage, BaseHeartbeat)  # RDBStorage, behind Optuna's cache
    stop = threading.Event()

    def beat() -> None:
        while True:
            storage.record_heartbeat(trial._trial_id)
            if stop.wait(HEARTBEAT_S):
                return

    thread = threading.Thread(target=beat, name=f"optuna-heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
