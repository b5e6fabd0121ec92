"""Per-channel normalisation with statistics from the training split only.

The same :class:`Normalization` (saved as ``stats.json``) is applied by preprocessing and by every
consumer of raw pixels (evaluation on new data, the registered model), so inference sees exactly
the transform training saw: ``x = (pixels - mean[c]) / std[c]`` on the source's raw pixel values.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.atomic import dumps_json
from components.errors import DataValidationError


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
    pixel_min: list[float] | None = None
    """Per-channel smallest raw pixel value of the training split (``None``: a ``stats.json``
    written before the range was recorded). Prediction refuses inputs far outside
    ``pixel_min..pixel_max`` (0..255 images for a model trained on the digits' 0..16)."""
    pixel_max: list[float] | None = None
    """Per-channel largest raw pixel value of the training split (``None`` as for ``pixel_min``)."""

    @property
    def input_shape(self) -> list[int]:
        """Shape of one model input (C, H, W), like ``TextStats.input_shape`` (L,) for text."""
        return self.image_shape

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
            pixel_min=[float(v) for v in pixels.min(axis=(0, 2, 3))],
            pixel_max=[float(v) for v in pixels.max(axis=(0, 2, 3))],
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
        """Inverse of :meth:`to_json`; ``TypeError`` when ``data`` is not such an object."""
        if not isinstance(data, dict):
            raise TypeError(f"expected a JSON object, got {type(data).__name__}")
        return cls(**{k: v for k, v in data.items() if k != "formula"})

    @classmethod
    def load(cls, path: Path | str) -> Normalization:
        """Read a ``stats.json``; a missing, unreadable or malformed file is a
        :class:`DataValidationError` naming it, not a traceback."""
        path = Path(path)
        if not path.is_file():
            raise DataValidationError(path, "normalisation file not found (run the preprocess stage)")
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataValidationError(path, "normalisation file is not valid JSON", str(exc)) from None
        except TypeError as exc:
            raise DataValidationError(
                path, "must hold the normalisation written by preprocess", str(exc)
            ) from None

    def check_float32(self, file: Path | str) -> None:
        """Every mean and std is finite in float32, the type :meth:`apply` computes in (an
        overflowing mean turns every normalised pixel into NaN); ``file`` is named in the error."""
        values = np.asarray([*self.mean, *self.std], dtype=np.float64)
        if not np.all(np.abs(values) <= np.finfo(np.float32).max):
            raise DataValidationError(
                file,
                "normalisation statistics must be finite in float32 (pixel values too large)",
                f"mean {self.mean}, std {self.std}",
            )
