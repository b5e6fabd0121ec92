"""One LightningModule for every architecture: loss, metrics and optimiser live here, once."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

Stage = Literal["train", "val", "test"]
STAGES: tuple[Stage, ...] = ("train", "val", "test")


class Classifier(L.LightningModule):
    """Wraps any of the ``components.models`` networks (input -> logits).

    Targets are one-hot rows (as preprocessing writes them); the loss is cross-entropy against
    them, which equals the usual integer-label loss for one-hot targets and also accepts soft ones.
    Metrics are torchmetrics objects updated on the device every step and reduced once per epoch
    (and across processes under DDP), so no step waits on the host: their argument checks are off
    (``validate_args=False``; they call ``torch.unique`` and branch on the result, a device-to-host
    sync per step, and the inputs here are argmax indices that cannot be out of range), and the loss
    is accumulated on the device and reduced across ranks at epoch end (``sync_dist=True``).

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)  # (B, C, H, W), NHWC strides
        return self.model(x)  # (B, ...) -> (B, K) logits

    def model_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: Stage) -> torch.Tensor:
        """Loss of one batch; logs ``<stage>_loss``, ``<stage>_acc`` and ``<stage>_f1_macro`` per epoch."""
        x, y = batch  # (B, ...), (B, K) one-hot
        logits = self(x)  # (B, K)
        loss = F.cross_entropy(logits, y)
        metrics: MetricCollection = self.metrics[f"{stage}_metrics"]  # type: ignore[assignment]
        metrics.update(logits.argmax(dim=1), y.argmax(dim=1))  # (B,), (B,)
        self.log(
            f"{stage}_loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(x),
            sync_dist=True,
        )
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train")
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.model_step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.model_step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.model_step(batch, "test")

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
