"""A Lightning ``Trainer`` built from ``params.yaml`` ``train``."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, RichProgressBar

from components.config import TrainParams
from components.training.speed import SpeedSettings

LAST = "last"
BEST = "best"


def checkpoint_callbacks(folder: Path, every_n_steps: int) -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """``last.ckpt`` to resume from (each epoch, or every N steps) and ``best.ckpt`` by validation loss."""
    resume = ModelCheckpoint(
        dirpath=folder,
        filename=LAST,
        save_top_k=1,
        every_n_train_steps=every_n_steps or None,
        every_n_epochs=None if every_n_steps else 1,
        enable_version_counter=False,
        save_on_train_epoch_end=not every_n_steps,
    )
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
    """The Trainer: devices, nodes, strategy, precision, epochs, clipping, early stopping, checkpoints.

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
        gradient_clip_val=params.gradient_clip_val or None,
        deterministic=True if speed.device == "cpu" else "warn",
        callbacks=every,
        logger=False,
        enable_progress_bar=interactive,
        enable_model_summary=interactive,
        num_sanity_val_steps=0,
    )
