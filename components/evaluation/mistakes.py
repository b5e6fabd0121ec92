"""The most confidently wrong test predictions: ``errors.csv`` of an evaluation.

Text data names each one by its raw sentence (column ``text``); image data, which has no text, by
its row in the test split (column ``index``, the same order as ``predictions.csv``), so the file
exists for every run and DVC can declare it as an output of ``evaluate@<arch>``.
"""

from __future__ import annotations

import csv
import io

import numpy as np

ERRORS_LIMIT = 20
ERRORS_COLUMNS = ("true_class", "predicted_class", "probability")


def most_confident_errors(
    labels: np.ndarray, classes: np.ndarray, confidence: np.ndarray, limit: int = ERRORS_LIMIT
) -> np.ndarray:
    """Indices of the wrong predictions, highest ``confidence`` first (ties by index), at most ``limit``.

    ``labels``, ``classes``: (N,) true and predicted class ids; ``confidence``: (N,) probability of
    each predicted class.
    """
    wrong = np.flatnonzero(labels != classes)  # (W,), ascending
    order = np.argsort(-confidence[wrong], kind="stable")  # stable: equal probabilities by index
    return wrong[order[:limit]]


def errors_csv(
    labels: np.ndarray,
    classes: np.ndarray,
    confidence: np.ndarray,
    class_names: list[str],
    texts: list[str] | None = None,
) -> str:
    """``errors.csv``: the ``ERRORS_LIMIT`` most confidently wrong predictions, standard CSV quoting.

    First column ``text`` (the raw string) when ``texts`` is given, else ``index`` (the test row).
    """
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")  # QUOTE_MINIMAL: commas, quotes, newlines quoted
    writer.writerow(["text" if texts is not None else "index", *ERRORS_COLUMNS])
    for i in most_confident_errors(labels, classes, confidence).tolist():
        name = texts[i] if texts is not None else i
        true, predicted = class_names[int(labels[i])], class_names[int(classes[i])]
        writer.writerow([name, true, predicted, f"{float(confidence[i]):.6f}"])
    return out.getvalue()
