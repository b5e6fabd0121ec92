"""A Lightning ``Trainer`` built from ``params.yaml`` ``train``."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, RichProgressBar

from components.config import TrainParams

LAST = "last"
BEST = "best"


def runs_on_cpu(accelerator: str) -> bool:
    """Whether ``accelerator`` resolves to the CPU on this machine (as Lightning's ``auto`` does)."""
    if accelerator == "auto":
        return not torch.cuda.is_available() and not torch.backends.mps.is_available()
    return accelerator == "cpu"


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
    work_dir: Path,
    callbacks: Sequence[Callback],
    interactive: bool,
) -> L.Trainer:
    """The Trainer: devices, precision, epochs, clipping, early stopping, checkpoints, progress.

    Deterministic algorithms are switched on where they are cheap (the CPU); on GPUs they are
    requested with warnings only, as some CUDA kernels have no deterministic variant.
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
        precision=params.precision,
        max_epochs=params.max_epochs,
        gradient_clip_val=params.gradient_clip_val or None,
        deterministic=True if runs_on_cpu(params.accelerator) else "warn",
        callbacks=every,
        logger=False,
        enable_progress_bar=interactive,
        enable_model_summary=interactive,
        num_sanity_val_steps=0,
    )
