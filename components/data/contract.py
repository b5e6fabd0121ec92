"""The data contract every source must meet before anything is written.

A source yields one or more named splits of ``images`` (N x C x H x W, numeric) and ``labels``
(N, integer, 0..num_classes-1). The checks here are the rules quoted in error messages; none of
them drops a bad record: a bad file fails the stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from components.errors import DataSourceError, DataValidationError


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


FLOAT32_MAX = float(np.finfo(np.float32).max)
"""Largest pixel magnitude accepted: preprocessing normalises in float32."""


def check_split(split: RawSplit, num_classes: int) -> None:
    """Apply every per-split rule; raise :class:`DataValidationError` on the first broken one."""
    check_arrays(split)
    check_label_range(split, num_classes)


def check_arrays(split: RawSplit) -> None:
    """The rules that need no class count: shapes, dtypes, counts and pixel values.

    Run before the class count is looked at: labels of the wrong type or shape (one-hot rows,
    floats) give no class count, and would otherwise be reported as "too few classes".
    """
    images, labels = split.images, split.labels
    if images.ndim != 4:
        raise DataValidationError(
            split.image_file, "images must be N x C x H x W", f"got shape {list(images.shape)}"
        )
    _require_images(split)
    if labels.ndim != 1:
        raise DataValidationError(
            split.label_file,
            "labels must be a 1-D array of class ids (one-hot rows are not accepted)",
            f"got shape {list(labels.shape)}",
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
        _require_finite(split)
        _require_float32_range(split)
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataValidationError(split.label_file, "labels must be integers", f"got {labels.dtype}")


def check_label_range(split: RawSplit, num_classes: int) -> None:
    """Every label is a class id in ``0..num_classes-1`` (labels already checked by
    :func:`check_arrays`)."""
    labels = split.labels
    out_of_range = (labels < 0) | (labels >= num_classes)
    if out_of_range.any():
        first = int(np.argmax(out_of_range))
        raise DataValidationError(
            split.label_file,
            f"labels outside range 0..{num_classes - 1}",
            f"label {int(labels[first])} at index {first}; {int(out_of_range.sum())} label(s) out of range",
        )


def nonfinite_images(images: np.ndarray) -> str | None:
    """``"<count> image(s), first at index <i>"`` for the images (N x ...) holding a NaN or an
    infinity; ``None`` when every value is finite."""
    finite = np.isfinite(images).reshape(len(images), -1).all(axis=1)  # (N,)
    if finite.all():
        return None
    return f"{int((~finite).sum())} image(s), first at index {int(np.argmin(finite))}"


def _require_finite(split: RawSplit) -> None:
    if (where := nonfinite_images(split.images)) is not None:
        raise DataValidationError(split.image_file, "images contain NaN or infinite values", where)


def _require_float32_range(split: RawSplit) -> None:
    """Finite pixels of a wider float type must also be finite in float32, the type preprocessing
    normalises in: a value past ~3.4e38 becomes inf there and turns the whole prepared set into NaN
    through the mean. Integer pixels always fit (int64's range is far inside float32's)."""
    images = split.images
    if np.finfo(images.dtype).max <= FLOAT32_MAX:
        return
    flat = images.reshape(len(images), -1)  # (N, C*H*W)
    too_large = (flat.max(axis=1) > FLOAT32_MAX) | (flat.min(axis=1) < -FLOAT32_MAX)  # (N,)
    if too_large.any():
        first = int(np.argmax(too_large))
        worst = float(flat[first][np.argmax(np.abs(flat[first]))])
        raise DataValidationError(
            split.image_file,
            f"pixel values must fit in float32 (magnitude at most {FLOAT32_MAX:.4g})",
            f"{int(too_large.sum())} image(s), first at index {first} (value {worst:.4g})",
        )


def _require_images(split: RawSplit) -> None:
    if len(split.images) == 0:
        raise DataValidationError(split.image_file, "empty data: the split holds no images")


def check_source(data: SourceData) -> None:
    """Per-split rules, plus: all splits share one image shape (C x H x W).

    Order matters for the message a user gets: emptiness first (an empty source would otherwise be
    reported as having too few classes), then every split's shape, dtype and value rules (labels
    that are one-hot or floats give no class count, and would otherwise be reported as "at least 2
    classes, got 0"), then the class count, then the label range.
    """
    for split in data.splits.values():
        _require_images(split)
    for split in data.splits.values():
        check_arrays(split)
    if data.num_classes < 2:
        raise DataValidationError(
            next(iter(data.splits.values())).label_file,
            "a classifier needs at least 2 classes",
            f"got {data.num_classes}",
        )
    reference: tuple[str, tuple[int, ...]] | None = None
    for name, split in data.splits.items():
        check_label_range(split, data.num_classes)
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
    another type or shape are refused later by :func:`check_arrays`).

    Sources build one class name per class id, so the count is checked before anything is
    allocated: a class count above the number of labelled images means classes without a single
    image (refused by preprocessing anyway), and one stray label such as 2**62 would otherwise
    exhaust memory building ``range(2**62)`` names.
    """
    total = sum(len(s.labels) for s in splits.values())
    if declared is not None:
        if total and declared > total:
            raise DataSourceError(
                f"data.num_classes={declared} exceeds the {total} labelled images: every class "
                "needs images; set it to the number of classes or null"
            )
        return declared
    num_classes = 0
    for split in splits.values():
        labels = split.labels
        if not (labels.size and labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer)):
            continue
        index = int(np.argmax(labels))  # (first) position of the largest label
        largest = int(labels[index])
        if largest + 1 > total:
            raise DataValidationError(
                split.label_file,
                "more classes than labelled images: labels must be class ids 0..K-1 with K at "
                "most the number of images",
                f"label {largest} at index {index} would make {largest + 1} classes from {total} "
                "images; fix the label, or set data.num_classes to the number of classes so that "
                "every label outside the range is reported",
            )
        num_classes = max(num_classes, largest + 1)
    return num_classes
