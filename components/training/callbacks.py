"""Lightning callbacks of the train stage: epoch history (to MLflow), quiet progress lines, and the
check that every DDP rank ends with the same weights."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from rich.console import Console

from components.training.artifacts import weights_digest

EPOCH_METRICS = ("train_loss", "train_acc", "train_f1_macro", "val_loss", "val_acc", "val_f1_macro")

EpochSink = Callable[[dict[str, float], int], None]


class EpochHistory(Callback):
    """Collects the epoch-level metrics once per epoch and hands them to ``sink`` (MLflow).

    Reading ``callback_metrics`` is the one host sync per epoch. The history is part of the
    checkpoint (``state_dict``), so a resumed run still reports every epoch.
    """

    def __init__(self, sink: EpochSink | None = None) -> None:
        self.sink = sink
        self.history: list[dict[str, float]] = []
        self.start_step = 0  # global step training (re)started at: > 0 after a resume
        # Given the epochs restored from a checkpoint on a resume: logs those the tracking run lacks.
        self.backfill: Callable[[list[dict[str, float]]], None] | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start_step = trainer.global_step
        if self.start_step and self.history and self.backfill is not None and trainer.is_global_zero:
            self.backfill(self.history)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        row = {key: float(metrics[key]) for key in EPOCH_METRICS if key in metrics}
        epoch = trainer.current_epoch
        self.history.append({"epoch": epoch, "step": trainer.global_step, **row})
        if self.sink is not None and trainer.is_global_zero:
            self.sink(row, epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))


class EpochLines(Callback):
    """One plain line per epoch, for logs that are not a terminal (CI, DVC, Prefect workers)."""

    def __init__(self, label: str, console: Console) -> None:
        self.label = label
        self.console = console

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        metrics = trainer.callback_metrics
        shown = "  ".join(f"{key} {float(metrics[key]):.4f}" for key in EPOCH_METRICS if key in metrics)
        self.console.print(
            f"{self.label}: epoch {trainer.current_epoch + 1}/{trainer.max_epochs}  {shown}",
            highlight=False,
            soft_wrap=True,
        )


class ReplicaDigests(Callback):
    """At the end of training, every rank hashes its network's weights and the hashes are gathered.

    DDP keeps replicas identical by construction (same start, all-reduced gradients); this is the
    evidence, recorded in ``train_info.json`` as ``replica_weights_sha256`` (one entry per rank, in
    rank order). One collective per run; a single process just records its own digest.
    """

    def __init__(self) -> None:
        self.digests: list[str] = []

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        plain = getattr(pl_module, "plain_state_dict", None)  # the Classifier: DP wrappers stripped
        network = pl_module.model
        assert isinstance(network, torch.nn.Module)
        mine = weights_digest(plain() if plain is not None else network.state_dict())
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, mine)
            self.digests = [str(digest) for digest in gathered]
        else:
            self.digests = [mine]
