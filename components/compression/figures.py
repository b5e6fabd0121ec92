"""Before/after figures of a compression on one test split: accuracy, macro-F1, stored size,
parameter counts and latency at batch 1 and 256 on the current threads setting."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from safetensors.torch import save
from torch import nn

from components.compression.codec import SEP
from components.evaluation.inference import predict
from components.evaluation.metrics import classification_metrics

LARGE_BATCH = 256
SINGLE_ROWS = 64  # batch-1 latency over this many test rows: enough for a median, cheap on a big split
SMALL_BATCH = 64  # the batch-dependence check predicts every row again in batches of this size


def stored_figures(tensors: dict[str, torch.Tensor]) -> dict[str, int]:
    """Serialized safetensors size in bytes, stored weight count and its non-zero part (scales,
    zero points and sparse positions are bookkeeping, not parameters)."""
    counted = [
        t
        for k, t in tensors.items()
        if not k.endswith((f"{SEP}scale", f"{SEP}zero_point", f"{SEP}positions"))
    ]
    return {
        "size_bytes": len(save(tensors)),
        "parameters": sum(t.numel() for t in counted),
        "nonzero_parameters": sum(int(torch.count_nonzero(t)) for t in counted),
    }


def model_figures(
    model: nn.Module, x: torch.Tensor, labels: np.ndarray, class_names: list[str]
) -> dict[str, Any]:
    """Accuracy and macro-F1 of ``model`` on ``x`` (N, ...) at batch 256, its latency per batch
    (median, p95, ms) and throughput at batch 1 and 256, and ``rows_changed_by_batch``: the rows
    whose class differs between batches of 256 and of 64, or alone (the first 64 rows), which is 0
    for a model that predicts each row on its own."""
    large = predict(model, x, LARGE_BATCH)
    single = predict(model, x[:SINGLE_ROWS], 1)
    summary, _ = classification_metrics(labels, large.classes, class_names)
    figures: dict[str, Any] = {"accuracy": summary["accuracy"], "f1_macro": summary["f1_macro"]}
    with torch.inference_mode():
        small = torch.cat([model(rows) for rows in x.split(SMALL_BATCH)]).argmax(dim=1).numpy()  # (N,)
    changed = np.asarray(large.classes) != small
    changed[: len(single.classes)] |= np.asarray(large.classes[: len(single.classes)]) != single.classes
    figures["rows_changed_by_batch"] = int(changed.sum())
    for size, result in ((1, single), (LARGE_BATCH, large)):
        latency = result.latency_ms
        figures |= {
            f"latency_ms_batch_{size}": latency["median"],
            f"latency_ms_batch_{size}_p95": latency["p95"],
            f"samples_per_second_batch_{size}": result.samples_per_second,
        }
    return figures
