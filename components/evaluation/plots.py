"""Pictures and plot data of an evaluation: the confusion matrix as a PNG and as DVC plot rows."""

from __future__ import annotations

import csv
import io

import numpy as np


def confusion_png(matrix: np.ndarray, class_names: list[str], title: str) -> bytes:
    """A labelled heat map of ``matrix`` (rows true, columns predicted) as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed; set here, not at import time
    import matplotlib.pyplot as plt

    k = len(class_names)
    size = max(4.0, 0.45 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    try:
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(k), class_names, rotation=90 if k > 12 else 0)
        ax.set_yticks(range(k), class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
        if k <= 30:
            threshold = matrix.max() / 2 if matrix.size else 0
            for i in range(k):
                for j in range(k):
                    colour = "white" if matrix[i, j] > threshold else "black"
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color=colour, fontsize=8)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return buffer.getvalue()


def predictions_csv(labels: np.ndarray, predictions: np.ndarray, class_names: list[str]) -> str:
    """One ``actual,predicted`` row per test image: the input of DVC's ``confusion`` template."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["actual", "predicted"])
    for true, pred in zip(labels.tolist(), predictions.tolist(), strict=True):
        writer.writerow([class_names[true], class_names[pred]])
    return out.getvalue()
