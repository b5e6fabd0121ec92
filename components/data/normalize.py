"""Per-channel normalisation with statistics from the training split only.

The same :class:`Normalization` (saved as ``stats.json``) is applied by preprocessing and by every
consumer of raw pixels (evaluation on new data, the registered model), so inference sees exactly
the transform training saw: ``x = (pixels - mean[c]) / std[c]`` on the source's raw pixel values.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.atomic import dumps_json


@dataclass(frozen=True)
class Normalization:
    """What is needed to turn raw pixels into model inputs, and to read the outputs."""

    mean: list[float]
    """Per-channel mean of the training split's raw pixels."""
    std: list[float]
    """Per-channel standard deviation of the training split's raw pixels (never 0)."""
    image_shape: list[int]
    """C, H, W of one image."""
    class_names: list[str]
    """Class id -> name."""
    source: str
    """``data.source`` the statistics were computed on."""

    @classmethod
    def fit(cls, images: np.ndarray, class_names: list[str], source: str) -> Normalization:
        """Statistics of ``images`` (N x C x H x W) computed in float64 per channel."""
        pixels = images.astype(np.float64)
        return cls(
            mean=[float(v) for v in pixels.mean(axis=(0, 2, 3))],
            std=[float(v) for v in pixels.std(axis=(0, 2, 3))],
            image_shape=[int(d) for d in images.shape[1:]],
            class_names=list(class_names),
            source=source,
        )

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Normalised float32 copy of raw ``images`` (N x C x H x W)."""
        mean = np.asarray(self.mean, dtype=np.float32)[None, :, None, None]  # (1, C, 1, 1)
        std = np.asarray(self.std, dtype=np.float32)[None, :, None, None]  # (1, C, 1, 1)
        return ((images.astype(np.float32) - mean) / std).astype(np.float32)

    def to_json(self) -> str:
        return dumps_json({**asdict(self), "formula": "x = (pixels - mean[c]) / std[c]"})

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalization:
        return cls(**{k: v for k, v in data.items() if k != "formula"})

    @classmethod
    def load(cls, path: Path | str) -> Normalization:
        import json

        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
