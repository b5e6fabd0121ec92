"""One open MLflow run: params, tags, metric batches sent asynchronously, artifacts."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.entities import DatasetInput, Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.async_logging.run_operations import RunOperations

_MAX_BATCH = 100  # MLflow's limit on params per log_batch call


@dataclass
class TrackedRun:
    """One open run; metric batches are sent asynchronously and awaited in :meth:`flush`."""

    client: MlflowClient
    run_id: str
    resumed: bool = False
    """Reopened after a crash: params logged at its start keep their first value."""
    _pending: list[RunOperations] = field(default_factory=list)

    def log_params(self, params: Mapping[str, str]) -> None:
        """Log ``params``; on a resumed run only those not logged yet (MLflow params are write-once,
        and a resume may differ only in speed settings such as ``train.num_workers``)."""
        logged = self.client.get_run(self.run_id).data.params if self.resumed else {}
        items = [Param(key, value) for key, value in params.items() if key not in logged]
        for start in range(0, len(items), _MAX_BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + _MAX_BATCH])

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(key, value) for key, value in tags.items()])

    def log_inputs(self, inputs: Sequence[DatasetInput]) -> None:
        """Log the datasets the run read (:mod:`components.tracking_datasets`). Logging one again, as
        a resumed training or the evaluation reopening the run does, adds nothing: MLflow links a
        dataset (name and digest) to a run once."""
        if inputs:
            self.client.log_inputs(self.run_id, datasets=list(inputs))

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Queue one batch of metrics at ``step``; returns without waiting for the server."""
        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step) for key, value in metrics.items()]
        operation = self.client.log_batch(self.run_id, metrics=batch, synchronous=False)
        if operation is not None:
            self._pending.append(operation)

    def log_missing_epochs(self, rows: Sequence[Mapping[str, float]]) -> None:
        """Log what the run lacks of ``rows`` (per epoch: ``epoch``, ``step`` and metric values) at
        step ``epoch``. A process killed outright loses the metric batches it had queued but not
        sent, while the checkpoint a resume restores kept them."""
        keys = sorted({key for row in rows for key in row} - {"epoch", "step"})
        logged = {key: {m.step for m in self.client.get_metric_history(self.run_id, key)} for key in keys}
        for row in rows:
            epoch = int(row["epoch"])
            missing = {k: v for k, v in row.items() if k in logged and epoch not in logged[k]}
            if missing:
                self.log_metrics(missing, epoch)

    def log_artifacts(self, folder: Path, artifact_path: str) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path)

    def flush(self) -> None:
        """Wait until every queued metric batch reached the server."""
        pending, self._pending = self._pending, []
        for operation in pending:
            operation.wait()
