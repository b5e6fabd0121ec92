"""One LightningModule for every architecture: loss, metrics and optimiser live here, once."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

Stage = Literal["train", "val", "test"]
STAGES: tuple[Stage, ...] = ("train", "val", "test")


class BatchMean(Metric):
    """Mean of per-batch values weighted by batch size, accumulated on the device.

    The arithmetic is that of Lightning's own epoch mean (float32 sum of ``value * batch_size``, an
    integer count), so epoch losses read the same; states are summed across ranks under DDP.
    (torchmetrics' ``MeanMetric`` checks for NaN with a host sync on every update, or, with that
    check disabled, ignores the weights.)
    """

    full_state_update = False
    total: torch.Tensor
    count: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor, weight: int) -> None:
        self.total = self.total + value.float() * weight  # () float32
        self.count = self.count + weight  # () int64

    def compute(self) -> torch.Tensor:
        return self.total / self.count


class Classifier(L.LightningModule):
    """Wraps any of the ``components.models`` networks (input -> logits).

    Targets are one-hot rows (as preprocessing writes them); the loss is cross-entropy against
    them, which equals the usual integer-label loss for one-hot targets and also accepts soft ones.
    Metrics are torchmetrics objects updated on the device every step and reduced once per epoch
    (and across processes under DDP), so no step waits on the host: their argument checks are off
    (``validate_args=False``; they call ``torch.unique`` and branch on the result, a device-to-host
    sync per step, and the inputs here are argmax indices that cannot be out of range), and the loss
    mean is a metric of the same kind (:class:`BatchMean`). All are logged once per epoch.

    ``channels_last`` keeps the weights and every 4-D input in NHWC layout (for the CNN on GPUs).
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        learning_rate: float,
        weight_decay: float,
        *,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.model = model
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.channels_last = channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_metrics": MetricCollection(
                    {
                        "acc": MulticlassAccuracy(num_classes, validate_args=False),
                        "f1_macro": MulticlassF1Score(num_classes, average="macro", validate_args=False),
                    },
                    prefix=f"{stage}_",
                )
                for stage in STAGES
            }
        )
        self.losses = nn.ModuleDict({f"{stage}_loss": BatchMean() for stage in STAGES})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)  # (B, C, H, W), NHWC strides
        return self.model(x)  # (B, ...) -> (B, K) logits

    def model_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: Stage) -> torch.Tensor:
        """Loss of one batch; updates the stage's loss mean and metrics on the device (nothing logged)."""
        x, y = batch  # (B, ...), (B, K) one-hot
        logits = self(x)  # (B, K)
        loss = F.cross_entropy(logits, y)
        mean: BatchMean = self.losses[f"{stage}_loss"]  # type: ignore[assignment]
        mean.update(loss.detach(), len(x))
        metrics: MetricCollection = self.metrics[f"{stage}_metrics"]  # type: ignore[assignment]
        metrics.update(logits.argmax(dim=1), y.argmax(dim=1))  # (B,), (B,)
        return loss

    def log_epoch(self, stage: Stage) -> None:
        """Log ``<stage>_loss``, ``<stage>_acc`` and ``<stage>_f1_macro`` for the epoch.

        The values are torchmetrics objects: Lightning computes them (reduced across ranks) at the
        epoch's end and resets them. Logging once per epoch instead of every step keeps Lightning's
        per-call logging work (about as long as a small network's whole step on a CPU) out of the loop.
        """
        mean: BatchMean = self.losses[f"{stage}_loss"]  # type: ignore[assignment]
        self.log(f"{stage}_loss", mean, on_step=False, on_epoch=True, prog_bar=True)
        metrics: MetricCollection = self.metrics[f"{stage}_metrics"]  # type: ignore[assignment]
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train")

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.model_step(batch, "train")

    def on_train_batch_end(self, outputs: object, batch: object, batch_idx: int) -> None:
        # The last batch, not on_train_epoch_end: callbacks (the epoch history) run before the
        # module's on_train_epoch_end and must already see this epoch's training figures.
        if self.trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            self.log_epoch("train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.model_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self.log_epoch("val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.model_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self.log_epoch("test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return build_optimizer(self.parameters(), self.learning_rate, self.weight_decay, self.device)


def build_optimizer(
    parameters: Iterable[nn.Parameter], learning_rate: float, weight_decay: float, device: torch.device
) -> torch.optim.Optimizer:
    """Adam; on CUDA the fused kernel (one launch for all parameters instead of several per tensor).

    On the CPU it is PyTorch's default implementation, so CPU results stay bit-for-bit as before.
    The benchmark's bare loop builds its optimizer here too, so both sides run the same update.
    """
    fused = True if device.type == "cuda" else None
    return torch.optim.Adam(parameters, lr=learning_rate, weight_decay=weight_decay, fused=fused)
