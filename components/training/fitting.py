"""Fitting one training: the Trainer and its callbacks, the resume point, the fit, the best weights.

SIGTERM and Ctrl-C end a fit through :mod:`components.training.preemption` (``last.ckpt`` written
first, exit 143); an unusable resume checkpoint is set aside and said (:func:`resume_point`).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from rich.console import Console

from components.config import Architecture, Params
from components.errors import ParamsError, Preempted
from components.tracking import TrackedRun
from components.training.callbacks import EpochHistory, EpochLines, ReplicaDigests
from components.training.data import ClassificationData
from components.training.module import Classifier
from components.training.preemption import StopSignals
from components.training.speed import float32_matmul_precision, resolve_speed
from components.training.trainer import build_trainer, checkpoint_callbacks, resume_checkpoint

if TYPE_CHECKING:
    from components.training.train import Build

DISCARDED_TAG = "train.discarded_checkpoint"  # an unusable resume checkpoint set aside: file, why, where
DISCARDED_DIR = "discarded"  # <work_root>/train/discarded/: the unusable checkpoints, kept for inspection


@dataclass
class Fit:
    """The trainer of one training and the callbacks whose results the record reads."""

    trainer: L.Trainer
    history: EpochHistory
    replicas: ReplicaDigests
    best: ModelCheckpoint
    seconds: float = 0.0


def make_fit(
    params: Params, arch: Architecture, built: Build, callbacks: Sequence[Callback], interactive: bool
) -> Fit:
    """The Trainer with the project's callbacks: history, replica digests, resume and best checkpoints."""
    history, replicas = EpochHistory(), ReplicaDigests()
    stop = StopSignals(arch)  # SIGTERM and Ctrl-C stop the fit with last.ckpt written first
    every_n = params.train.checkpoint_every_n_steps
    resume_cb, best_cb = checkpoint_callbacks(built.work_dir / "checkpoints", every_n, stop)
    every: list[Callback] = [history, replicas, resume_cb, best_cb, *callbacks]
    if not interactive:
        every.append(EpochLines(arch, Console(stderr=True)))
    speed = resolve_speed(params.train, arch)
    trainer = build_trainer(params.train, speed, built.work_dir, every, interactive)
    return Fit(trainer, history, replicas, best_cb)


def run_fit(fit: Fit, built: Build, params: Params, arch: str, run: TrackedRun | None) -> None:
    """Fit from the resume point (if any) and time it; an interrupted fit raises."""
    resume_from = resume_point(built.work_dir / "checkpoints", built.module, run, arch)
    started = time.perf_counter()
    with float32_matmul_precision(resolve_speed(params.train, arch).matmul_precision):
        _fit(fit.trainer, built.module, built.data, resume_from, arch)
    fit.seconds = time.perf_counter() - started
    if fit.trainer.interrupted:
        raise KeyboardInterrupt(f"training {arch} was interrupted")


def checked_weights(
    fit: Fit, built: Build, params: Params, arch: str, out_dir: Path
) -> dict[str, torch.Tensor]:
    """The best epoch's weights; never NaN ones (evaluate would score them, register promote them)."""
    weights = _best_weights(fit.best.best_model_path, built.module)
    if all(bool(torch.isfinite(t).all()) for t in weights.values() if t.is_floating_point()):
        return weights
    # The checkpoints go too, or the same settings would resume from the diverged state.
    shutil.rmtree(built.work_dir, ignore_errors=True)
    raise ParamsError(
        f"train@{arch}: training diverged: the weights are not finite after "
        f"{fit.trainer.current_epoch} epochs (best val loss {fit.best.best_model_score}); lower "
        f"train.learning_rate ({params.train.learning_rate:g}) or clip the gradients "
        f"(train.gradient_clip_val: {params.train.gradient_clip_val:g}); {out_dir} is unchanged"
    )


def resume_point(checkpoint_dir: Path, module: Classifier, run: TrackedRun | None, arch: str) -> Path | None:
    """The checkpoint to resume from, if any. An unusable one (corrupt, not a checkpoint, another
    network) is moved aside by rank zero, which says so on stderr and in the MLflow run; training
    then resumes from the one before it or starts over, instead of failing the same way forever."""
    aside = checkpoint_dir.parent.parent / DISCARDED_DIR if run is not None else None
    chosen, discarded = resume_checkpoint(checkpoint_dir, module.state_dict(), aside)
    if discarded and run is not None:
        console = Console(stderr=True)
        for line in discarded:
            console.print(
                f"train@{arch}: discarded resume checkpoint {line}", highlight=False, soft_wrap=True
            )
        then = f"resuming from {chosen}" if chosen else "training from the start"
        run.set_tags({DISCARDED_TAG: f"{'; '.join(discarded)}; {then}"[:5000]})
    return chosen


def _fit(
    trainer: L.Trainer, module: Classifier, data: ClassificationData, resume_from: Path | None, arch: str
) -> None:
    """``trainer.fit``; Lightning's own ways of ending a fit early become exceptions saying what happened.

    A stop by signal or request normally ends the fit with the resume callback's exception (see
    :mod:`components.training.preemption`), which passes through.
    """
    try:
        trainer.fit(module, datamodule=data, ckpt_path=resume_from, weights_only=True)
    except SIGTERMException as exc:  # Lightning's (exit 0), for a SIGTERM before our handler was in place
        raise Preempted(
            f"train@{arch}: stopped by SIGTERM before the training loop; run again to resume"
        ) from exc
    except SystemExit as exc:
        if trainer.interrupted:  # Lightning's sys.exit(1) after a Ctrl-C
            raise KeyboardInterrupt(f"training {arch} was interrupted") from exc
        raise


def _best_weights(best_path: str, module: Classifier) -> dict[str, torch.Tensor]:
    """The network's weights from ``best.ckpt`` (loaded tensors-only), else the current ones."""
    if not best_path or not Path(best_path).is_file():
        return module.plain_state_dict()
    checkpoint = torch.load(best_path, map_location="cpu", weights_only=True)
    prefix = "model."
    state = {k.removeprefix(prefix): v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    return module.plain_weights(state)  # DP-SGD: Opacus's wrapper names stripped
