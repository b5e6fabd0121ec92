"""Batched prediction with per-batch timing (the latency and throughput figures of a report)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Predictions:
    classes: np.ndarray
    """(N,) int64 predicted class ids."""
    confidence: np.ndarray
    """(N,) float32 softmax probability of each predicted class."""
    batch_seconds: list[float]
    """Wall time of each timed batch (forward + softmax + argmax + copy back), warm-up excluded."""
    batch_samples: list[int]
    """Samples (images or texts) in each timed batch, in the same order (a small split is timed
    over several passes, and each pass may end on a short batch)."""

    @property
    def samples_per_second(self) -> float:
        total = sum(self.batch_seconds)
        return sum(self.batch_samples) / total if total > 0 else float("nan")

    @property
    def latency_ms(self) -> dict[str, float]:
        """Median and 95th percentile of the per-batch latency, in milliseconds, over the batches of
        the full size: a pass's short last batch would pull the median of a small split down."""
        full = max(self.batch_samples, default=0)
        times = sorted(s for s, n in zip(self.batch_seconds, self.batch_samples, strict=True) if n == full)
        if not times:
            return {"median": float("nan"), "p95": float("nan")}
        p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
        return {"median": 1000 * statistics.median(times), "p95": 1000 * p95}


MIN_TIMED_BATCHES = 5


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> Predictions:
    """Predict classes of ``x`` (N, ...) already on the model's device, timing every batch.

    One untimed warm-up batch first (lazy initialisation, kernel selection), so the figures describe
    the steady state a serving process sees. A split of fewer than ``MIN_TIMED_BATCHES`` batches is
    timed over further passes (their predictions are the same and dropped): one timed call alone
    says more about the scheduler than about the model.
    """
    model.eval()
    device = x.device
    if len(x):
        model(x[:batch_size])
        _synchronize(device)
    chunks: list[tuple[torch.Tensor, torch.Tensor]] = []
    seconds: list[float] = []
    samples: list[int] = []
    while len(x) and (not chunks or len(seconds) < MIN_TIMED_BATCHES):
        first_pass = not chunks
        for start in range(0, len(x), batch_size):
            began = time.perf_counter()
            logits = model(x[start : start + batch_size])  # (B, K)
            top, classes_here = logits.float().softmax(dim=1).max(dim=1)  # (B,), (B,)
            top, classes_here = top.cpu(), classes_here.cpu()  # .cpu() waits for the device
            _synchronize(device)
            seconds.append(time.perf_counter() - began)
            samples.append(len(classes_here))
            if first_pass:
                chunks.append((classes_here, top))
    if not chunks:
        return Predictions(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32), seconds, samples)
    classes = torch.cat([c for c, _ in chunks]).numpy().astype(np.int64)
    confidence = torch.cat([p for _, p in chunks]).numpy().astype(np.float32)
    return Predictions(classes, confidence, seconds, samples)
