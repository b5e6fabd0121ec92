"""The data contract every source must meet before anything is written.

A source yields one or more named splits of ``images`` (N x C x H x W, numeric) and ``labels``
(N, integer, 0..num_classes-1). The checks here are the rules quoted in error messages; none of
them drops a bad record: a bad file fails the stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from components.errors import DataValidationError


@dataclass(frozen=True)
class RawSplit:
    """One split of a source, as read from its files."""

    images: np.ndarray
    """N x C x H x W, the source's own dtype and value range (uint8 0..255 for IDX/PNG)."""
    labels: np.ndarray
    """N class ids as the source stores them; :func:`check_split` requires integers."""
    image_file: Path
    """File (or folder) the images came from, for error messages."""
    label_file: Path
    """File (or folder) the labels came from, for error messages."""


@dataclass(frozen=True)
class SourceData:
    """Everything a source yields: its splits, class names, and the files it read."""

    splits: dict[str, RawSplit]
    """``{"train", "test"}`` when the source has its own test split, else ``{"all"}``."""
    class_names: list[str]
    inputs: dict[str, Path] = field(default_factory=dict)
    """Name recorded in the manifest -> file read, hashed into the manifest."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def check_split(split: RawSplit, num_classes: int) -> None:
    """Apply every per-split rule; raise :class:`DataValidationError` on the first broken one."""
    images, labels = split.images, split.labels
    if images.ndim != 4:
        raise DataValidationError(
            split.image_file, "images must be N x C x H x W", f"got shape {list(images.shape)}"
        )
    _require_images(split)
    if labels.ndim != 1:
        raise DataValidationError(
            split.label_file, "labels must be a 1-D array", f"got shape {list(labels.shape)}"
        )
    if len(images) != len(labels):
        raise DataValidationError(
            split.label_file,
            "image/label count mismatch",
            f"{len(images)} images in {split.image_file}, {len(labels)} labels",
        )
    if not (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)):
        raise DataValidationError(
            split.image_file, "images must be integer or floating-point numbers", f"got {images.dtype}"
        )
    if np.issubdtype(images.dtype, np.floating):
        finite = np.isfinite(images).reshape(len(images), -1).all(axis=1)
        if not finite.all():
            first = int(np.argmin(finite))
            raise DataValidationError(
                split.image_file,
                "images contain NaN or infinite values",
                f"{int((~finite).sum())} image(s), first at index {first}",
            )
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataValidationError(split.label_file, "labels must be integers", f"got {labels.dtype}")
    out_of_range = (labels < 0) | (labels >= num_classes)
    if out_of_range.any():
        first = int(np.argmax(out_of_range))
        raise DataValidationError(
            split.label_file,
            f"labels outside range 0..{num_classes - 1}",
            f"label {int(labels[first])} at index {first}; {int(out_of_range.sum())} label(s) out of range",
        )


def _require_images(split: RawSplit) -> None:
    if len(split.images) == 0:
        raise DataValidationError(split.image_file, "empty data: the split holds no images")


def check_source(data: SourceData) -> None:
    """Per-split rules, plus: all splits share one image shape (C x H x W).

    Emptiness is checked first: an empty source would otherwise be reported as having too few
    classes.
    """
    for split in data.splits.values():
        _require_images(split)
    if data.num_classes < 2:
        raise DataValidationError(
            next(iter(data.splits.values())).label_file,
            "a classifier needs at least 2 classes",
            f"got {data.num_classes}",
        )
    reference: tuple[str, tuple[int, ...]] | None = None
    for name, split in data.splits.items():
        check_split(split, data.num_classes)
        shape = tuple(split.images.shape[1:])
        if reference is None:
            reference = (name, shape)
        elif shape != reference[1]:
            raise DataValidationError(
                split.image_file,
                "inconsistent image sizes between splits",
                f"{name} images are {list(shape)}, {reference[0]} images are {list(reference[1])}",
            )


def infer_num_classes(splits: dict[str, RawSplit], declared: int | None) -> int:
    """``declared`` if given, else max label + 1 over the integer labels of all splits (labels of
    another type or shape are refused later by :func:`check_split`)."""
    if declared is not None:
        return declared
    maxima = [
        int(s.labels.max())
        for s in splits.values()
        if s.labels.size and s.labels.ndim == 1 and np.issubdtype(s.labels.dtype, np.integer)
    ]
    return max(maxima, default=-1) + 1
