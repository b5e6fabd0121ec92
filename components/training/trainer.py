"""A Lightning ``Trainer`` built from ``params.yaml`` ``train``."""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint, EarlyStopping, ModelCheckpoint, RichProgressBar

from components.config import TrainParams
from components.errors import DataValidationError
from components.training.preemption import StopSignals
from components.training.speed import SpeedSettings

LAST = "last"
BEST = "best"
PREVIOUS_LAST = "last.prev.ckpt"  # the resume checkpoint before the latest one


class ResumeCheckpoint(Checkpoint):
    """``last.ckpt``, the state a crashed run resumes from: at each epoch's end and, with
    ``every_n_steps``, at the end of the first ``training_step`` call that reaches each multiple of
    N optimizer steps (a call runs ``train.steps_per_call`` steps, so step counts are not checked
    one by one, as Lightning's ``ModelCheckpoint(every_n_train_steps=...)`` would); one that reaches
    the multiple with the epoch's last step leaves it to the epoch-end checkpoint.

    Written to a temporary sibling and renamed over the old file, so a crash while writing leaves
    the previous checkpoint intact; the one it replaces is kept as ``last.prev.ckpt``, the one to
    resume from should ``last.ckpt`` turn out unreadable. A ``Checkpoint`` subclass: Lightning runs
    it after the other callbacks' epoch-end hooks, so their state (the epoch history) is in the file.

    With ``stop`` (see :mod:`components.training.preemption`): on SIGTERM, Ctrl-C or a caller's stop
    request it writes ``last.ckpt`` at the end of the current training step (at the epoch's end,
    after validation, for its last step) and ends the fit with the exception ``stop`` names.
    """

    def __init__(self, path: Path, every_n_steps: int, stop: StopSignals | None = None) -> None:
        self.path = path
        self.every_n_steps = every_n_steps
        self.stop = stop
        self._saved_step = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._saved_step = trainer.global_step
        if self.stop is not None:
            self.stop.install()  # after Lightning's own SIGTERM handler, which it replaces

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # An epoch's last step saves at the epoch's end, after validation: a checkpoint between the
        # two would resume past that validation, and the epoch would be missing from the record.
        last_of_epoch = batch_idx + 1 == trainer.num_training_batches
        if last_of_epoch:
            return
        stop = self.stop.requested(trainer) if self.stop is not None else 0
        n = self.every_n_steps
        if stop or (n and trainer.global_step // n > self._saved_step // n):
            self._save(trainer)
        if stop and self.stop is not None:
            raise self.stop.stopped(stop, trainer.global_step, self.path)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save(trainer)
        stop = self.stop.requested(trainer) if self.stop is not None else 0
        if stop and self.stop is not None:
            raise self.stop.stopped(stop, trainer.global_step, self.path)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stop is not None:
            self.stop.restore()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if self.stop is not None:
            self.stop.restore()

    def _save(self, trainer: L.Trainer) -> None:
        partial = self.path.with_name(f"{self.path.name}.partial")
        trainer.save_checkpoint(partial)  # every rank takes part; global rank zero writes
        if trainer.is_global_zero:
            if self.path.is_file():
                os.replace(self.path, self.path.with_name(PREVIOUS_LAST))
            os.replace(partial, self.path)
        self._saved_step = trainer.global_step


def checkpoint_callbacks(
    folder: Path, every_n_steps: int, stop: StopSignals | None = None
) -> tuple[ResumeCheckpoint, ModelCheckpoint]:
    """``last.ckpt`` to resume from (each epoch, every N steps, and on a stop) and ``best.ckpt`` by
    validation loss."""
    resume = ResumeCheckpoint(folder / f"{LAST}.ckpt", every_n_steps, stop)
    best = ModelCheckpoint(
        dirpath=folder,
        filename=BEST,
        monitor="val_loss",
        mode="min",
        save_top_k=1,
        enable_version_counter=False,
    )
    return resume, best


# What Lightning reads from a checkpoint to resume a fit (a weights-only file lacks most of them).
RESUME_KEYS = (
    "state_dict",
    "loops",
    "optimizer_states",
    "lr_schedulers",
    "epoch",
    "global_step",
    "pytorch-lightning_version",
)


def checkpoint_problem(path: Path, expected: Mapping[str, torch.Tensor]) -> str | None:
    """Why ``path`` cannot be resumed from by a module whose ``state_dict`` is ``expected``, or None.

    Loaded tensors-only on the CPU, as the resume itself loads it: a pickle that would run code is
    refused without running it.
    """
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file: truncated, random bytes, a pickle with code
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = next((line for line in lines if "Unsupported global" in line), lines[0] if lines else "")
        return f"not a tensors-only checkpoint ({type(exc).__name__}: {detail[:200]})"
    if not isinstance(saved, dict):
        return f"not a Lightning checkpoint (it holds a {type(saved).__name__})"
    missing = [key for key in RESUME_KEYS if key not in saved]
    if missing:
        return f"not a resumable Lightning checkpoint (no {', '.join(missing)})"
    state = saved["state_dict"]
    wrong = [
        name
        for name, tensor in expected.items()
        if not (isinstance(state, dict) and isinstance(state.get(name), torch.Tensor))
        or state[name].shape != tensor.shape
    ]
    if wrong:
        shown = f"{len(wrong)} of {len(expected)} missing or of another shape, e.g. {wrong[0]}"
        return f"its weights do not fit the network ({shown})"
    return None


def set_aside(path: Path, folder: Path) -> Path:
    """Move ``path`` into ``folder`` as ``<run folder>-<name>.bad-<UTC time>``: kept for inspection
    (the run's own folder is removed once it succeeds) and never resumed from."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = folder / f"{path.parent.parent.name}-{path.name}.bad-{stamp}-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    except OSError as exc:
        raise DataValidationError(
            path, "an unusable resume checkpoint that could not be moved aside", f"{exc}; delete it"
        ) from None
    return target


def resume_checkpoint(
    folder: Path, expected: Mapping[str, torch.Tensor], aside: Path | None
) -> tuple[Path | None, list[str]]:
    """The checkpoint to resume from: ``last.ckpt``, else the one before it, else None (from scratch).

    Each unusable one is moved into the folder ``aside`` if given (by global rank zero; the other
    ranks skip a bad file whether it is still there or already moved, so every rank picks the same
    one). Returns it and one line per discarded file: the file, why, and where it went.
    """
    discarded: list[str] = []
    for path in (folder / f"{LAST}.ckpt", folder / PREVIOUS_LAST):
        if not path.is_file():
            continue
        problem = checkpoint_problem(path, expected)
        if problem is None:
            return path, discarded
        if aside is not None:
            discarded.append(f"{path}: {problem}; moved to {set_aside(path, aside)}")
    return None, discarded


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
