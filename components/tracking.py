"""MLflow tracking: where runs go, how they nest, and what every run carries.

- Server: ``MLFLOW_TRACKING_URI`` when set, else ``sqlite:///<project>/mlflow.db`` (MLflow 3 no
  longer accepts a plain file store), with artifacts in ``<project>/mlartifacts``.
- One experiment per dataset (``mlflow.experiment_name``, default the dataset's name:
  :func:`components.naming.experiment_name`).
- One parent run per pipeline run and one child run per architecture, so the MLflow UI compares
  architectures side by side. A flow passes its own parent in ``PIPELINE_PARENT_RUN_ID``; under
  ``dvc repro`` (one process per stage) the stages find their parent by a key made of the data
  version, the settings and the git commit, so every stage of one ``dvc repro`` lands under the
  same parent.
- A run ends FINISHED when its body succeeds and FAILED when it raises; the parent's status
  follows its children (FAILED if any failed, RUNNING while any runs).
- Metrics are logged once per epoch in one asynchronous batch; :meth:`TrackedRun.flush` waits for
  them before the run is closed. A training resumed after a kill logs from its checkpoint the
  epochs whose batches the killed process never sent (:meth:`TrackedRun.log_missing_epochs`).
- Every run the project starts or reopens names the process that holds it open (tags
  ``process.host``, ``process.pid``, ``process.started``, ``process.pid_namespace``). A process
  killed outright (SIGKILL, out of memory) cannot end its run, so :meth:`Tracker.open` marks the
  experiment's RUNNING runs whose process of this host is gone KILLED, and settles their parents.
  Runs of live processes and of other hosts are left alone; a resumed training reopens its run
  whatever its status.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from components.atomic import dumps_json
from components.config import Params
from components.errors import Preempted
from components.hashing import sha256_bytes
from components.processes import ProcessRef, is_gone, say, this_process
from components.tracked_run import TrackedRun
from components.tracking_server import ensure_reachable, tracking_error

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
PARENT_ENV = "PIPELINE_PARENT_RUN_ID"
PARENT_TAG = "mlflow.parentRunId"
RESUMED_FROM_PARENT_TAG = "pipeline.resumed_from_parent"
KEY_TAG = "pipeline.key"
PROCESS_PREFIX = "process."  # process.host, process.pid, process.started, process.pid_namespace


def tracking_uri(project_root: Path | str = ".") -> str:
    """``MLFLOW_TRACKING_URI``, else the project's SQLite file."""
    configured = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if configured:
        return configured
    return f"sqlite:///{(Path(project_root) / DEFAULT_DB).resolve()}"


@contextlib.contextmanager
def fluent_tracking(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (``mlflow.start_run``, ``log_model``, ``register_model``,
    ``pyfunc.load_model``) at ``uri`` for the block, then restore what was there.

    ``mlflow.set_tracking_uri`` changes process-wide state and also writes ``MLFLOW_TRACKING_URI``
    into the environment; both are put back, so a caller's own setting survives.
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils  # the module holding the global URI

    env_before = os.environ.get("MLFLOW_TRACKING_URI")
    global_before = utils._tracking_uri
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        utils._tracking_uri = global_before
        if env_before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env_before


def _is_local(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:", "/"))


def pipeline_key(params: Params, version: str, commit: str) -> str:
    """Key shared by every stage of one pipeline run ."""
    settings = params.model_dump(exclude={"train": {"architectures"}, "mlflow": True})
    return sha256_bytes(dumps_json({"data": version, "commit": commit, "params": settings}).encode())


@dataclass
class Tracker:
    """A client bound to one tracking server and one experiment."""

    client: MlflowClient
    uri: str
    experiment_id: str

    @classmethod
    def open(cls, experiment_name: str, project_root: Path | str = ".") -> Tracker:
        """Connect and get (or create) ``experiment_name``. Raises :class:`TrackingError`
        (:class:`TrackingUnavailable` within seconds for a server that is not there)."""
        uri = tracking_uri(project_root)
        ensure_reachable(uri)
        client = MlflowClient(tracking_uri=uri)
        try:
            experiment = client.get_experiment_by_name(experiment_name)
            if experiment is not None:
                tracker = cls(client, uri, experiment.experiment_id)
                tracker.end_runs_of_gone_processes()
                return tracker
            location = (Path(project_root) / DEFAULT_ARTIFACTS).resolve().as_uri() if _is_local(uri) else None
            try:
                experiment_id = client.create_experiment(experiment_name, artifact_location=location)
            except MlflowException:  # created by a concurrent stage in the meantime
                experiment = client.get_experiment_by_name(experiment_name)
                if experiment is None:
                    raise
                experiment_id = experiment.experiment_id
        except MlflowException as exc:
            raise tracking_error(uri, exc) from exc
        return cls(client, uri, experiment_id)

    def parent_run(self, key: str, tags: Mapping[str, str], given: str | None = None) -> str:
        """The parent run: ``given`` (a flow's own parent), else ``PIPELINE_PARENT_RUN_ID`` if set,
        else the run tagged with ``key`` (created the first time)."""
        found = self.existing_parent(key, given)
        if found:
            return found
        run = self.client.create_run(
            self.experiment_id, run_name=f"pipeline-{key[:8]}", tags={**tags, KEY_TAG: key, **_this_process()}
        )
        return run.info.run_id

    def existing_parent(self, key: str, given: str | None = None) -> str | None:
        """The parent :meth:`parent_run` would return, without creating one: None if there is none yet."""
        given = (given or os.environ.get(PARENT_ENV, "")).strip()
        if given:
            return given
        found = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{KEY_TAG}` = '{key}'", max_results=1
        )
        return found[0].info.run_id if found else None

    def start_parent(self, name: str, tags: Mapping[str, str]) -> str:
        """A new parent run owned by the caller (a flow run), which ends it with :meth:`end_parent`."""
        try:
            run = self.client.create_run(self.experiment_id, run_name=name, tags={**tags, **_this_process()})
            return run.info.run_id
        except MlflowException as exc:
            raise tracking_error(self.uri, exc) from exc

    def end_parent(
        self, run_id: str, succeeded: bool, tags: Mapping[str, str] | None = None, interrupted: bool = False
    ) -> None:
        """End a parent run FINISHED, FAILED, or KILLED when ``interrupted`` (as its children end then)."""
        if tags:
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.set_terminated(run_id, "KILLED" if interrupted else "FINISHED" if succeeded else "FAILED")

    def run_exists(self, run_id: str) -> bool:
        try:
            return self.client.get_run(run_id).info.lifecycle_stage == "active"
        except MlflowException:
            return False

    @contextlib.contextmanager
    def child_run(
        self,
        parent_id: str | None,
        name: str,
        tags: Mapping[str, str],
        resume_run_id: str | None = None,
    ) -> Iterator[TrackedRun]:
        """A run under ``parent_id`` (new, or ``resume_run_id`` reopened) that ends FINISHED, KILLED
        or FAILED (see :meth:`reopened`)."""
        resumed = bool(resume_run_id and self.run_exists(resume_run_id))
        if resume_run_id and resumed:
            run_id = resume_run_id
            self.claim(run_id)  # first: a RUNNING run naming a dead process would be ended by others
            earlier = self.client.get_run(run_id).data.tags.get(PARENT_TAG)
            if parent_id and earlier != parent_id:
                # Resumed by another pipeline run: the run moves under it (the earlier parent keeps
                # the status it ended with; the child remembers where it started).
                self.client.set_tag(run_id, PARENT_TAG, parent_id)
                if earlier:
                    self.client.set_tag(run_id, RESUMED_FROM_PARENT_TAG, earlier)
            # RUNNING last, right before the block that ends it: a failure above leaves it as it was.
            self.client.update_run(run_id, status="RUNNING")
        else:
            all_tags = {**tags, **({PARENT_TAG: parent_id} if parent_id else {}), **_this_process()}
            run_id = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags).info.run_id
        with self.reopened(run_id, parent_id) as run:
            run.resumed = resumed
            yield run

    @contextlib.contextmanager
    def reopened(self, run_id: str, parent_id: str | None = None) -> Iterator[TrackedRun]:
        """Log more to an existing run; it ends FINISHED, KILLED if the body was interrupted (Ctrl-C,
        SIGTERM, a stopped flow), or FAILED if it raised anything else."""
        run = TrackedRun(self.client, run_id)
        status = RunStatus.to_string(RunStatus.FAILED)
        try:
            yield run
            status = RunStatus.to_string(RunStatus.FINISHED)
        except (KeyboardInterrupt, Preempted):
            status = RunStatus.to_string(RunStatus.KILLED)
            raise
        finally:
            with contextlib.suppress(MlflowException):
                run.flush()
            self.client.set_terminated(run_id, status)
            if parent_id:
                self._settle_parent(parent_id)

    def claim(self, run_id: str) -> None:
        """Record this process as the one holding ``run_id`` open (before it is set RUNNING again)."""
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in _this_process().items()])

    def end_runs_of_gone_processes(self) -> list[str]:
        """Mark KILLED the RUNNING runs of this experiment whose process (of this host) is gone, and
        settle their parents; returns their ids. A failure here never stops the caller's stage."""
        try:
            return self._end_runs_of_gone_processes()
        except MlflowException as exc:
            say(f"MLflow: could not look for runs left RUNNING by killed processes: {exc.message}")
            return []

    def _end_runs_of_gone_processes(self) -> list[str]:
        host = this_process().host.replace("'", "")
        running = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"attributes.status = 'RUNNING' and tags.`{PROCESS_PREFIX}host` = '{host}'",
            max_results=1000,
        )
        ended, parents = [], set()
        for run in (run for run in running if _gone(run.data.tags)):
            if KEY_TAG in run.data.tags:  # a dvc repro parent: its status follows its children
                parents.add(run.info.run_id)
                continue
            self.client.set_terminated(run.info.run_id, "KILLED")
            ended.append(run.info.run_id)
            if PARENT_TAG in run.data.tags:
                parents.add(run.data.tags[PARENT_TAG])
        for parent_id in sorted(parents):
            parent = self.client.get_run(parent_id)
            # A parent of a live flow is left to the flow, which ends it when its work is done.
            if parent.info.status == "RUNNING" and (KEY_TAG in parent.data.tags or _gone(parent.data.tags)):
                self._settle_parent(parent_id, empty="KILLED")
                if self.client.get_run(parent_id).info.status != "RUNNING":
                    ended.append(parent_id)
        if ended:
            say(
                f"MLflow: {len(ended)} run(s) left RUNNING by processes of this host that are gone, now "
                f"KILLED (parent runs follow their children): {', '.join(ended)}"
            )
        return ended

    def _settle_parent(self, parent_id: str, empty: str = "FINISHED") -> None:
        """Parent status from its children: RUNNING while any runs, else FAILED if any failed, else
        KILLED if any was interrupted, else FINISHED."""
        children = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'", max_results=1000
        )
        statuses = {child.info.status for child in children}
        if not statuses:
            self.client.set_terminated(parent_id, empty)
            return
        if "RUNNING" in statuses:
            self.client.update_run(parent_id, status="RUNNING")
            return
        ended = next((status for status in ("FAILED", "KILLED") if status in statuses), "FINISHED")
        self.client.set_terminated(parent_id, ended)


def _this_process() -> dict[str, str]:
    return this_process().tags(PROCESS_PREFIX)


def _gone(tags: Mapping[str, str]) -> bool:
    process = ProcessRef.from_tags(tags, PROCESS_PREFIX)
    return process is not None and is_gone(process)
