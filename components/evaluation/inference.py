"""Batched prediction with per-batch timing (the latency and throughput figures of a report)."""

from __future__ import annotations

import contextlib
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class Predictions:
    classes: np.ndarray
    """(N,) int64 predicted class ids."""
    batch_seconds: list[float]
    """Wall time of each timed batch (forward + argmax + copy back), warm-up excluded."""
    batch_images: list[int]
    """Images in each timed batch, in the same order (a small split is timed over several passes,
    and each pass may end on a short batch)."""

    @property
    def images_per_second(self) -> float:
        total = sum(self.batch_seconds)
        return sum(self.batch_images) / total if total > 0 else float("nan")

    @property
    def latency_ms(self) -> dict[str, float]:
        """Median and 95th percentile of the per-batch latency, in milliseconds, over the batches of
        the full size: a pass's short last batch would pull the median of a small split down."""
        full = max(self.batch_images, default=0)
        times = sorted(s for s, n in zip(self.batch_seconds, self.batch_images, strict=True) if n == full)
        if not times:
            return {"median": float("nan"), "p95": float("nan")}
        p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
        return {"median": 1000 * statistics.median(times), "p95": 1000 * p95}


MIN_TIMED_BATCHES = 5
# How long a thread running Python may keep the GIL once the timed loop asks for it back, while
# batches are timed (CPython's default: 5 ms). See :func:`responsive_gil`.
TIMED_SWITCH_INTERVAL_S = 1e-5
_SWITCH_LOCK = threading.Lock()
_switch_holders = 0
_switch_saved = 0.0


@contextlib.contextmanager
def responsive_gil() -> Iterator[None]:
    """Make other threads of the process hand the GIL back within ``TIMED_SWITCH_INTERVAL_S``.

    torch releases the GIL inside every operation and takes it back afterwards. When another
    thread of the process runs Python meanwhile (the flow's other tasks: DVC bookkeeping, MLflow
    logging), each take-back waits up to CPython's switch interval, 5 ms, and a forward pass is
    dozens of operations: the digits mlp's 270-image batch then took 107 ms instead of 0.35 ms (a
    busy thread beside the timed loop, 2-core VM), and the flow reported 1,805 images/s where
    ``dvc repro`` reported 990,000. With 10 us it took 0.26 ms. The interval is process-wide, so it
    is lowered only while some caller is timing and restored when the last one leaves.
    """
    global _switch_holders, _switch_saved
    with _SWITCH_LOCK:
        if _switch_holders == 0:
            _switch_saved = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch_saved, TIMED_SWITCH_INTERVAL_S))
        _switch_holders += 1
    try:
        yield
    finally:
        with _SWITCH_LOCK:
            _switch_holders -= 1
            if _switch_holders == 0:
                sys.setswitchinterval(_switch_saved)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int) -> Predictions:
    """Predict classes of ``x`` (N, ...) already on the model's device, timing every batch.

    One untimed warm-up batch first (lazy initialisation, kernel selection), so the figures describe
    the steady state a serving process sees. A split of fewer than ``MIN_TIMED_BATCHES`` batches is
    timed over further passes (their predictions are the same and dropped): one timed call alone
    says more about the scheduler than about the model. Other threads of the process hand the GIL
    back promptly while it runs (:func:`responsive_gil`).
    """
    model.eval()
    device = x.device
    if len(x):
        model(x[:batch_size])
        _synchronize(device)
    chunks: list[torch.Tensor] = []
    seconds: list[float] = []
    images: list[int] = []
    with responsive_gil():
        while len(x) and (not chunks or len(seconds) < MIN_TIMED_BATCHES):
            first_pass = not chunks
            for start in range(0, len(x), batch_size):
                began = time.perf_counter()
                logits = model(x[start : start + batch_size])  # (B, K)
                classes_here = logits.argmax(dim=1).cpu()  # (B,); .cpu() waits for the device
                _synchronize(device)
                seconds.append(time.perf_counter() - began)
                images.append(len(classes_here))
                if first_pass:
                    chunks.append(classes_here)
    classes = torch.cat(chunks).numpy() if chunks else np.zeros(0, dtype=np.int64)
    return Predictions(classes.astype(np.int64), seconds, images)
