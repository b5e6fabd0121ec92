"""``train_info.json``, typed: what one training produced, as the train stage writes it.

:class:`~components.training.artifacts.TrainInfoContract` is the part readers rely on (checked when
the file is read); :class:`TrainInfo` adds everything else the stage records, so a misspelt or
missing key fails when the file is written, not when someone reads it.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field

from components.training.artifacts import MlflowRunRecord, TrainInfoContract


class MlflowRecord(MlflowRunRecord):
    """Where the run that trained the model lives."""

    tracking_uri: str
    experiment_id: str
    run_id: str
    parent_run_id: str


class TrainInfo(TrainInfoContract):
    """Every key of ``train_info.json``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    architecture: str
    network_config: dict[str, Any] = Field(alias="model_config")  # the network's config dataclass
    max_epochs: int
    stopped_early: bool  # fewer epochs than max_epochs: early stopping ended it
    global_steps: int  # optimizer steps, over every epoch and resume
    resumed_from_step: int | None  # the step this process resumed at, None from scratch
    best_val_loss: float | None
    train_images_per_second: float | None  # over the steps this process ran
    device: str
    world_size: int
    num_nodes: int
    strategy: str
    precision: str
    matmul_precision: str
    channels_last: bool
    compile: bool
    seed: int
    fingerprint: str  # see components.training.train.fingerprint
    git_commit: str
    git_dirty: str
    weights_sha256: str  # a digest of the best epoch's tensors (artifacts.weights_digest)
    replica_weights_sha256: list[str]  # the same digest from every DDP rank, in rank order
    mlflow: MlflowRecord
    history: list[dict[str, float]]  # one row per epoch: epoch, step and the epoch metrics

    def to_json(self) -> dict[str, Any]:
        """The mapping written to ``train_info.json`` (and returned by ``train``)."""
        return self.model_dump(mode="json", by_alias=True)
