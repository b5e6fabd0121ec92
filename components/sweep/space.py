"""The sweep's view of ``sweep.space``: the metric's direction, and the schema's helpers for space
keys (checked in :mod:`components.config`, which every stage loads)."""

from __future__ import annotations

from components.config import SweepMetric, current_value, with_values

# Direction of each validation metric.
MAXIMISE: dict[SweepMetric, bool] = {"val_acc": True, "val_f1_macro": True, "val_loss": False}

__all__ = ["MAXIMISE", "current_value", "with_values"]
