"""A Lightning ``Trainer`` built from ``params.yaml`` ``train``."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, Checkpoint, EarlyStopping, ModelCheckpoint, RichProgressBar

from components.config import TrainParams
from components.training.speed import SpeedSettings

LAST = "last"
BEST = "best"


class ResumeCheckpoint(Checkpoint):
    """``last.ckpt``, the state a crashed run resumes from: at each epoch's end and, with
    ``every_n_steps``, at the end of the first ``training_step`` call that reaches each multiple of
    N optimizer steps (a call runs ``train.steps_per_call`` steps, so step counts are not checked
    one by one, as Lightning's ``ModelCheckpoint(every_n_train_steps=...)`` would).

    Written to a temporary sibling and renamed over the old file, so a crash while writing leaves
    the previous checkpoint intact. A ``Checkpoint`` subclass: Lightning runs it after the other
    callbacks' epoch-end hooks, so their state (the epoch history) is in the file.
    """

    def __init__(self, path: Path, every_n_steps: int) -> None:
        self.path = path
        self.every_n_steps = every_n_steps
        self._saved_step = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._saved_step = trainer.global_step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        n = self.every_n_steps
        if n and trainer.global_step // n > self._saved_step // n:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)

    def _save(self, trainer: L.Trainer) -> None:
        partial = self.path.with_name(f"{self.path.name}.partial")
        trainer.save_checkpoint(partial)  # every rank takes part; global rank zero writes
        if trainer.is_global_zero:
            os.replace(partial, self.path)
        self._saved_step = trainer.global_step


def checkpoint_callbacks(folder: Path, every_n_steps: int) -> tuple[ResumeCheckpoint, ModelCheckpoint]:
    """``last.ckpt`` to resume from (each epoch, and every N steps) and ``best.ckpt`` by validation loss."""
    resume = ResumeCheckpoint(folder / f"{LAST}.ckpt", every_n_steps)
    best = ModelCheckpoint(
        dirpath=folder,
        filename=BEST,
        monitor="val_loss",
        mode="min",
        save_top_k=1,
        enable_version_counter=False,
    )
    return resume, best


def build_trainer(
    params: TrainParams,
    speed: SpeedSettings,
    work_dir: Path,
    callbacks: Sequence[Callback],
    interactive: bool,
) -> L.Trainer:
    """The Trainer: devices, nodes, strategy, precision, epochs, early stopping, checkpoints.

    Gradient clipping is the module's (its optimization is manual, see ``Classifier``).

    Deterministic algorithms are switched on where they are cheap (the CPU); on GPUs they are
    requested with warnings only, as some CUDA kernels have no deterministic variant.

    Under ``torchrun`` or SLURM ``srun`` Lightning detects the environment and joins the process
    group the launcher set up (``devices * num_nodes`` must equal its world size); otherwise, with
    several devices, Lightning's own ``ddp`` launcher starts the other processes. Batches are
    sharded by :mod:`components.training.batches` itself, so Lightning must not add its sampler.
    """
    # Lightning 2.6 on torch 2.15 warns about torch's own pytree API on every fit: noise.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # Resuming reuses the checkpoint folder on purpose.
    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    if not interactive:
        # Lightning's INFO lines ("GPU available: ...") are noise in CI and DVC logs.
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    every = list(callbacks)
    if params.early_stopping_patience:
        every.append(EarlyStopping(monitor="val_loss", mode="min", patience=params.early_stopping_patience))
    if interactive:
        every.append(RichProgressBar())
    return L.Trainer(
        default_root_dir=work_dir,
        accelerator=params.accelerator,
        devices=params.devices,
        num_nodes=params.num_nodes,
        strategy=params.strategy,
        precision=speed.precision,  # type: ignore[arg-type]  # a Lightning precision string
        use_distributed_sampler=False,
        max_epochs=params.max_epochs,
        deterministic=True if speed.device == "cpu" else "warn",
        callbacks=every,
        logger=False,
        enable_progress_bar=interactive,
        enable_model_summary=interactive,
        num_sanity_val_steps=0,
    )
