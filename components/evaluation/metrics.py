"""Classification metrics from predicted and true class ids (scikit-learn does the arithmetic)."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import precision_recall_fscore_support


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts: row = true class, column = predicted class."""
    return sk_confusion_matrix(labels, predictions, labels=np.arange(num_classes)).astype(np.int64)


def classification_metrics(
    labels: np.ndarray, predictions: np.ndarray, class_names: list[str]
) -> tuple[dict[str, float], dict[str, Any]]:
    """Summary metrics (accuracy, macro precision/recall/F1) and the per-class report.

    A class that is never predicted has precision 0 (not NaN), so macro averages stay defined.
    """
    classes = np.arange(len(class_names))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=classes, zero_division=0
    )
    summary = {
        "accuracy": float(np.mean(labels == predictions)) if len(labels) else 0.0,
        "precision_macro": float(np.mean(precision)),
        "recall_macro": float(np.mean(recall)),
        "f1_macro": float(np.mean(f1)),
    }
    report = {
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(labels, predictions, len(class_names)).tolist(),
        "class_names": list(class_names),
        **summary,
    }
    return summary, report
