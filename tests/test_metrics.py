"""The train stage's epoch metrics agree with the evaluate stage's (scikit-learn) figures."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.evaluation.metrics import classification_metrics, confusion_matrix
from components.training.metrics import Accuracy, BatchMean, MacroF1, confusion_counts


def _labels(seed: int, n: int, num_classes: int, absent: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random true/predicted ids; class ``absent`` occurs in neither, class 0 is never predicted."""
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, num_classes, (n,), generator=generator)
    noise = torch.randint(0, num_classes, (n,), generator=generator)
    predicted = torch.where(torch.rand(n, generator=generator) < 0.7, target, noise)
    target[target == absent] = (absent + 1) % num_classes
    predicted[predicted == absent] = (absent + 1) % num_classes
    predicted[predicted == 0] = 1
    return target, predicted


@pytest.mark.parametrize("sync_free", [False, True])
def test_confusion_counts_equal_scikit_learns_confusion_matrix(sync_free: bool) -> None:
    target, predicted = _labels(seed=1, n=500, num_classes=7, absent=4)
    counts = confusion_counts(target, predicted, 7, sync_free=sync_free)
    expected = confusion_matrix(target.numpy(), predicted.numpy(), 7)
    assert counts.dtype == torch.int64
    np.testing.assert_array_equal(counts.view(7, 7).numpy(), expected)


def test_accuracy_and_macro_f1_accumulated_over_batches_equal_the_evaluate_stages() -> None:
    num_classes = 6
    target, predicted = _labels(seed=2, n=1000, num_classes=num_classes, absent=3)
    accuracy, f1 = Accuracy(num_classes), MacroF1(num_classes)
    for chunk in range(0, 1000, 128):  # uneven batches, as an epoch's last block
        accuracy.update(predicted[chunk : chunk + 128], target[chunk : chunk + 128])
        f1.update(predicted[chunk : chunk + 128], target[chunk : chunk + 128])
    names = [str(k) for k in range(num_classes)]
    expected, _ = classification_metrics(target.numpy(), predicted.numpy(), names)
    assert accuracy.compute().item() == pytest.approx(expected["accuracy"], abs=1e-6)
    assert f1.compute().item() == pytest.approx(expected["f1_macro"], abs=1e-6)
    assert 0.0 < f1.compute().item() < accuracy.compute().item() < 1.0  # the absent classes pull F1 down


def test_batch_mean_weights_each_update_by_its_rows() -> None:
    mean = BatchMean()
    mean.update(torch.tensor(3.0), 3)  # three rows of loss 1.0
    mean.update(torch.tensor(9.0), 1)  # one row of loss 9.0
    assert mean.compute().item() == pytest.approx(3.0)
