"""Preprocess stage: deterministic stratified splits, train-only normalisation, one-hot labels.

Output folder::

    data/prepared/
      train.safetensors, val.safetensors, test.safetensors
          x             N x C x H x W float32, normalised with stats.json
          y             N x K float32 one-hot labels
          labels        N int64 class ids
          source_index  N int64 position in the raw split the sample came from
      stats.json        per-channel mean/std of the *train* split, image shape, class names
      manifest.json     params used, raw manifest hash, per split: file sha256, count, class counts

A source's own test split is kept as the test split (``test_fraction`` is then unused) and the
validation split is drawn from its train split; otherwise test and validation are drawn from the
one pool. Splits are stratified by class, use ``preprocess.seed``, and list samples in source order,
so the same params and input give byte-identical files.

The output is replaced only if every class has images in the train and the test split (validation
may miss a rare class, see :func:`check_class_coverage`) and the normalised pixels are finite.

Text (a raw manifest with ``"kind": "text"``) is split the same way and tokenised instead of
normalised: :mod:`components.data.preprocess_text`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.atomic import atomic_directory, atomic_write_json, atomic_write_text
from components.config import PreprocessParams
from components.data.contract import nonfinite_images
from components.data.manifest import MANIFEST, STATS, is_text, read_manifest
from components.data.normalize import Normalization
from components.data.tensorfile import load_arrays, save_arrays
from components.errors import DataValidationError
from components.hashing import sha256_file

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SplitPlan:
    """Where each output split's samples come from: a raw split and sorted indices into it."""

    origin: str
    indices: np.ndarray


def _stratified_holdout(
    labels: np.ndarray, size: int, seed: int, file: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``arange(len(labels))`` into (kept, held out) with ``size`` held out, per-class
    proportions preserved; both sorted."""
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    try:
        kept, held = train_test_split(
            indices, test_size=size, stratify=labels, random_state=seed, shuffle=True
        )
    except ValueError as exc:
        raise DataValidationError(
            file, "too few samples for a stratified split with these fractions", str(exc)
        ) from None
    return np.sort(kept), np.sort(held)


def plan_splits(
    raw_labels: dict[str, np.ndarray], params: PreprocessParams, files: dict[str, Path]
) -> dict[str, SplitPlan]:
    """Decide train/val/test membership from the raw splits' labels (pure, deterministic)."""
    if "test" in raw_labels:
        train_labels = raw_labels["train"]
        n_val = max(1, round(params.val_fraction * len(train_labels)))
        train, val = _stratified_holdout(train_labels, n_val, params.seed, files["train"])
        return {
            "train": SplitPlan("train", train),
            "val": SplitPlan("train", val),
            "test": SplitPlan("test", np.arange(len(raw_labels["test"]))),
        }
    labels = raw_labels["all"]
    n = len(labels)
    n_test = max(1, round(params.test_fraction * n))
    n_val = max(1, round(params.val_fraction * n))
    rest, test = _stratified_holdout(labels, n_test, params.seed, files["all"])
    train_in_rest, val_in_rest = _stratified_holdout(labels[rest], n_val, params.seed, files["all"])
    return {
        "train": SplitPlan("all", rest[train_in_rest]),
        "val": SplitPlan("all", rest[val_in_rest]),
        "test": SplitPlan("all", test),
    }


def check_class_coverage(
    labels: dict[str, np.ndarray], class_names: list[str], files: dict[str, Path]
) -> None:
    """Every class has images in the train split and in the test split.

    Train: a class without a training image cannot be learnt (labels that skip ids, such as {0, 5},
    or a ``data.num_classes`` above the classes present, make such classes). Test: evaluation
    averages precision, recall and F1 over every class, and a class without a test image scores 0
    there, so macro-F1 would be skewed by the data rather than the model. Validation may miss a
    class: it only steers early stopping and model selection through the validation loss (its
    counts per class are in the manifest). The stratified splits put a class in val and test when
    its share of the pool allows; this rule catches the rest, naming the split and the classes.
    """
    hints = {
        "train": "every class 0..K-1 needs training images: relabel so that ids have no gaps, or "
        "set data.num_classes to the number of classes present",
        "test": "macro-F1 over all classes would count it as 0: add images of it to the source's "
        "test split, or raise preprocess.test_fraction",
    }
    for split, hint in hints.items():
        counts = np.bincount(labels[split], minlength=len(class_names))  # (K,)
        missing = [class_names[c] for c in np.flatnonzero(counts == 0)]
        if missing:
            shown = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
            raise DataValidationError(
                files[split],
                f"every class needs images in the {split} split",
                f"class(es) {shown} have none in the {split} split; {hint}",
            )


def check_normalised(x: np.ndarray, file: Path, split: str) -> None:
    """The normalised ``x`` (N x C x H x W float32) of ``split`` is finite: pixels far from the
    training mean can overflow float32 arithmetic even when each pixel fits in float32."""
    if (where := nonfinite_images(x)) is not None:
        raise DataValidationError(
            file,
            "normalised pixel values must be finite in float32 (pixel range too wide)",
            f"{where} of the {split} split",
        )


def _write_split(
    file: Path, x: np.ndarray, one_hot: np.ndarray, labels: np.ndarray, index: np.ndarray
) -> dict[str, Any]:
    """Write one split's normalised images ``x`` (N, C, H, W), one-hot and integer labels and source
    rows to ``file``; return its manifest entry (``origin`` is the caller's to add)."""
    save_arrays(
        file,
        {
            "x": x,
            "y": one_hot[labels],  # (N, K) float32
            "labels": labels.astype(np.int64),  # (N,)
            "source_index": index.astype(np.int64),  # (N,)
        },
    )
    return {
        "file": file.name,
        "sha256": sha256_file(file),
        "count": len(index),
        "class_counts": np.bincount(labels, minlength=len(one_hot)).tolist(),
    }


def preprocess(params: PreprocessParams, raw_dir: Path | str, out_dir: Path | str) -> dict[str, Any]:
    """Turn ``raw_dir`` (the ingest output) into ``out_dir``; replaced only on success.

    Every rule (class coverage, usable statistics, finite normalised pixels) is checked before the
    output is replaced: a refusal leaves the previous version in place.

    Returns:
        The manifest written to ``out_dir/manifest.json``.
    """
    raw_dir = Path(raw_dir)
    raw_manifest = read_manifest(raw_dir, "ingest")
    if is_text(raw_manifest):
        from components.data.preprocess_text import preprocess_text  # it imports this module

        return preprocess_text(params, raw_dir, out_dir, raw_manifest)
    files = {name: raw_dir / entry["file"] for name, entry in raw_manifest["splits"].items()}
    raw = {name: load_arrays(file, required=("images", "labels")) for name, file in files.items()}
    num_classes = int(raw_manifest["num_classes"])
    class_names = list(raw_manifest["class_names"])

    plan = plan_splits({name: arrays["labels"] for name, arrays in raw.items()}, params, files)
    origin_files = {split: files[plan[split].origin] for split in SPLITS}
    labels = {split: raw[plan[split].origin]["labels"][plan[split].indices] for split in SPLITS}
    check_class_coverage(labels, class_names, origin_files)

    train_images = raw[plan["train"].origin]["images"][plan["train"].indices]
    stats = Normalization.fit(train_images, class_names, raw_manifest["source"])
    stats.check_float32(origin_files["train"])
    if min(stats.std) == 0.0:
        raise DataValidationError(
            origin_files["train"],
            "pixel values are constant across the training split (std 0): cannot normalise",
        )
    one_hot = np.eye(num_classes, dtype=np.float32)  # (K, K)
    with atomic_directory(out_dir) as tmp:  # a refusal below leaves the previous output in place
        entries: dict[str, Any] = {}
        for split in SPLITS:  # one split's arrays in memory at a time
            index = plan[split].indices
            with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported just below
                x = stats.apply(raw[plan[split].origin]["images"][index])  # (N, C, H, W) float32
            check_normalised(x, origin_files[split], split)
            entries[split] = _write_split(tmp / f"{split}.safetensors", x, one_hot, labels[split], index)
            entries[split]["origin"] = plan[split].origin
        atomic_write_text(tmp / STATS, stats.to_json())
        manifest = {
            "stage": "preprocess",
            "format": FORMAT_VERSION,
            "source": raw_manifest["source"],
            "num_classes": num_classes,
            "class_names": class_names,
            "image_shape": stats.image_shape,
            "params": params.model_dump(exclude={"text"}),  # images ignore preprocess.text
            "raw_manifest_sha256": sha256_file(raw_dir / MANIFEST),
            "stats_sha256": sha256_file(tmp / STATS),
            "splits": entries,
        }
        atomic_write_json(tmp / MANIFEST, manifest)
    return manifest
