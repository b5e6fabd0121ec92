"""Median pruning inside the project's training: a Lightning callback reporting the sweep's
validation metric to the Optuna trial after every epoch.

A trial to prune is stopped like early stopping stops it (``trainer.should_stop``), not by an
exception: training then ends normally, so its MLflow run keeps its curves and ends FINISHED, and the
sweep records the trial as PRUNED. (Optuna's own Lightning integration is a separate package.)
"""

from __future__ import annotations

import lightning as L
import optuna
from lightning.pytorch.callbacks import Callback


class PruneOnMetric(Callback):
    """Reports ``metric`` at each epoch's end (step = the epoch) and stops a trial Optuna prunes."""

    def __init__(self, trial: optuna.Trial, metric: str, enabled: bool) -> None:
        self.trial = trial
        self.metric = metric
        self.enabled = enabled
        self.pruned_at: int | None = None  # the epoch after which the trial was pruned

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.metric not in trainer.callback_metrics:
            return
        epoch = trainer.current_epoch
        self.trial.report(float(trainer.callback_metrics[self.metric]), epoch)
        if self.enabled and self.trial.should_prune():
            self.pruned_at = epoch
            trainer.should_stop = True
