"""``train_info.json``, typed: what one training produced, as the train stage writes it.

:class:`~components.training.artifacts.TrainInfoContract` is the part readers rely on (checked when
the file is read); :class:`TrainInfo` adds everything else the stage records, so a misspelt or
missing key fails when the file is written, not when someone reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from pydantic import ConfigDict, Field

from components.config import Architecture, Params
from components.models import config_to_dict, count_parameters
from components.privacy.dp import privacy_record
from components.training.artifacts import MlflowRunRecord, TrainInfoContract, weights_digest
from components.training.speed import resolve_speed

if TYPE_CHECKING:
    from components.tracking import TrackedRun, Tracker
    from components.training.fitting import Fit
    from components.training.train import Build


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
    # DP-SGD (components.privacy.dp.privacy_record): epsilon spent, delta, noise_multiplier,
    # max_grad_norm, sample_rate, steps, accountant, ...; None for a non-private model.
    privacy: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The mapping written to ``train_info.json`` (and returned by ``train``)."""
        return self.model_dump(mode="json", by_alias=True)


def train_info(
    params: Params,
    arch: Architecture,
    built: Build,
    fit: Fit,
    weights: dict[str, torch.Tensor],
    code: Mapping[str, str],
    mlflow_record: MlflowRecord,
) -> TrainInfo:
    """What this training produced, as ``train_info.json`` records it."""
    trainer, history, speed = fit.trainer, fit.history, resolve_speed(params.train, arch)
    steps_here = trainer.global_step - history.start_step
    images_here = steps_here * params.train.batch_size * trainer.world_size
    best = fit.best.best_model_score
    module = built.module
    private = built.privacy is not None and module.accountant is not None
    privacy = privacy_record(built.privacy, module.accountant) if private else None  # type: ignore[arg-type]
    return TrainInfo(
        architecture=arch,
        model_config=config_to_dict(built.config),
        parameters=count_parameters(built.network),
        epochs=trainer.current_epoch,
        max_epochs=params.train.max_epochs,
        stopped_early=trainer.current_epoch < params.train.max_epochs,
        global_steps=trainer.global_step,
        resumed_from_step=history.start_step or None,
        best_val_loss=float(best) if best is not None else None,
        fit_seconds=round(fit.seconds, 3),
        train_images_per_second=round(images_here / fit.seconds, 1) if steps_here else None,
        device=str(trainer.strategy.root_device),
        world_size=trainer.world_size,
        num_nodes=trainer.num_nodes,
        strategy=type(trainer.strategy).__name__,
        precision=speed.precision,
        matmul_precision=speed.matmul_precision,
        channels_last=speed.channels_last,
        compile=speed.compile,
        seed=params.train.seed,
        data_version=built.version,
        fingerprint=built.key,
        git_commit=code["git.commit"],
        git_dirty=code["git.dirty"],
        weights_sha256=weights_digest(weights),
        replica_weights_sha256=fit.replicas.digests,
        mlflow=mlflow_record,
        history=history.history,
        privacy=privacy,
    )


def mlflow_record(tracker: Tracker, run_id: str, parent_run_id: str) -> MlflowRecord:
    """Where the run lives, as ``train_info.json`` records it."""
    return MlflowRecord(
        tracking_uri=tracker.uri,
        experiment_id=tracker.experiment_id,
        run_id=run_id,
        parent_run_id=parent_run_id,
    )


def log_privacy(run: TrackedRun, privacy: Mapping[str, Any]) -> None:
    """DP-SGD's figures on the run: the fixed ones as params, all of them as ``privacy_*`` metrics."""
    fixed = ("delta", "noise_multiplier", "max_grad_norm", "sample_rate", "accountant", "planned_steps")
    run.log_params({f"privacy.{key}": str(privacy[key]) for key in fixed})
    numeric = {k: float(v) for k, v in privacy.items() if isinstance(v, int | float)}
    run.log_metrics({f"privacy_{key}": value for key, value in numeric.items()})
