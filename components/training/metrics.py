"""The train stage's epoch metrics, accumulated on the device with no host sync: loss mean,
accuracy and macro-F1.

Accuracy and macro-F1 mean what the evaluate stage's figures mean
(:func:`components.evaluation.metrics.classification_metrics`): accuracy is the share of rows
classified correctly; macro-F1 is the mean over all classes of ``2 tp / (2 tp + fp + fn)``, 0 for a
class that was neither present nor predicted. Both are computed from one ``(K, K)`` confusion count
state, summed across ranks under DDP.

Why not torchmetrics' ``MulticlassAccuracy`` / ``MulticlassF1Score``: under
``torch.use_deterministic_algorithms`` (which the Trainer switches on for CPU runs) their counting
replaces ``torch.bincount`` with an ``(N, K*K)`` comparison table on every device: 1.0-1.4 ms per
block of 16 steps on a 2-core CPU, half a small network's optimizer step (0.16-0.2 ms now).
``torch.bincount`` is deterministic on the CPU, so it is used there; on accelerators it sizes its
output from the input's maximum (a device-to-host sync), so the comparison table is used there.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric


def confusion_counts(
    target: torch.Tensor, predicted: torch.Tensor, num_classes: int, *, sync_free: bool | None = None
) -> torch.Tensor:
    """``(K*K,)`` int64 counts of (true, predicted) class pairs, row-major: index ``true * K + predicted``.

    ``sync_free`` (default: on anything but the CPU) counts with a comparison table instead of
    ``torch.bincount``, which reads the input's maximum back to the host.
    """
    cells = num_classes * num_classes
    index = target.long() * num_classes + predicted.long()  # (N,)
    if sync_free is None:
        sync_free = index.device.type != "cpu"
    if not sync_free:
        return torch.bincount(index, minlength=cells)  # (K*K,)
    every_cell = torch.arange(cells, device=index.device)  # (K*K,)
    return (index[:, None] == every_cell).sum(dim=0)  # (N, K*K) -> (K*K,)


def accuracy_from_confusion(confusion: torch.Tensor) -> torch.Tensor:
    """Share of correct rows, from a ``(K, K)`` confusion matrix (0 when it is empty)."""
    total = confusion.sum()
    return confusion.diagonal().sum().float() / total.clamp(min=1).float()


def macro_f1_from_confusion(confusion: torch.Tensor) -> torch.Tensor:
    """Mean over classes of ``2 tp / (2 tp + fp + fn)`` (0 where that is 0 / 0), from ``(K, K)`` counts."""
    tp = confusion.diagonal().float()  # (K,)
    support = confusion.sum(dim=1).float()  # (K,) rows: true class = tp + fn
    predicted = confusion.sum(dim=0).float()  # (K,) columns: predicted class = tp + fp
    denominator = support + predicted  # (K,) = 2 tp + fp + fn
    f1 = torch.where(denominator > 0, 2 * tp / denominator.clamp(min=1), torch.zeros_like(tp))  # (K,)
    return f1.mean()


class ConfusionMetric(Metric):
    """``(K, K)`` confusion counts (row = true class, column = predicted), summed across ranks.

    Subclasses say which figure :meth:`compute` derives from them.
    """

    full_state_update = False
    is_differentiable = False
    counts: torch.Tensor

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        cells = torch.zeros(num_classes * num_classes, dtype=torch.long)  # (K*K,)
        self.add_state("counts", cells, dist_reduce_fx="sum")

    def update(self, predicted: torch.Tensor, target: torch.Tensor) -> None:
        """Add rows with predicted and true class ids, both ``(N,)``."""
        self.counts = self.counts + confusion_counts(target, predicted, self.num_classes)  # (K*K,)

    def confusion(self) -> torch.Tensor:
        return self.counts.view(self.num_classes, self.num_classes)  # (K, K)


class Accuracy(ConfusionMetric):
    """Share of rows classified correctly (micro accuracy, as the evaluate stage reports it)."""

    def compute(self) -> torch.Tensor:
        return accuracy_from_confusion(self.confusion())


class MacroF1(ConfusionMetric):
    """Unweighted mean of the per-class F1 scores (as the evaluate stage reports it)."""

    def compute(self) -> torch.Tensor:
        return macro_f1_from_confusion(self.confusion())


class BatchMean(Metric):
    """Mean of per-row values (a batch's mean loss counts once per row), accumulated on the device.

    Each update adds a float32 sum and an integer row count, as Lightning's own epoch mean does;
    states are summed across ranks under DDP.
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

    def update(self, value_sum: torch.Tensor, weight: int) -> None:
        """Add ``value_sum`` (a sum of per-row values, on the device) over ``weight`` rows."""
        self.total = self.total + value_sum.float()  # () float32
        self.count = self.count + weight  # () int64

    def compute(self) -> torch.Tensor:
        return self.total / self.count
