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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.atomic import atomic_directory, atomic_write_json, atomic_write_text
from components.config import PreprocessParams
from components.data.manifest import MANIFEST, read_manifest
from components.data.normalize import Normalization
from components.data.tensorfile import load_arrays, save_arrays
from components.errors import DataValidationError
from components.hashing import sha256_file

FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
STATS = "stats.json"


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


def preprocess(params: PreprocessParams, raw_dir: Path | str, out_dir: Path | str) -> dict[str, Any]:
    """Turn ``raw_dir`` (the ingest output) into ``out_dir``; replaced only on success.

    Returns:
        The manifest written to ``out_dir/manifest.json``.
    """
    raw_dir = Path(raw_dir)
    raw_manifest = read_manifest(raw_dir, "ingest")
    files = {name: raw_dir / entry["file"] for name, entry in raw_manifest["splits"].items()}
    raw = {name: load_arrays(file, required=("images", "labels")) for name, file in files.items()}
    num_classes = int(raw_manifest["num_classes"])
    class_names = list(raw_manifest["class_names"])

    plan = plan_splits({name: arrays["labels"] for name, arrays in raw.items()}, params, files)
    train_images = raw[plan["train"].origin]["images"][plan["train"].indices]
    stats = Normalization.fit(train_images, class_names, raw_manifest["source"])
    if min(stats.std) == 0.0:
        raise DataValidationError(
            files[plan["train"].origin],
            "pixel values are constant across the training split (std 0): cannot normalise",
        )

    one_hot = np.eye(num_classes, dtype=np.float32)
    with atomic_directory(out_dir) as tmp:
        entries: dict[str, Any] = {}
        for split in SPLITS:
            source = raw[plan[split].origin]
            index = plan[split].indices
            labels = source["labels"][index]
            file = tmp / f"{split}.safetensors"
            save_arrays(
                file,
                {
                    "x": stats.apply(source["images"][index]),  # (N, C, H, W) float32
                    "y": one_hot[labels],  # (N, K) float32
                    "labels": labels.astype(np.int64),  # (N,)
                    "source_index": index.astype(np.int64),  # (N,)
                },
            )
            entries[split] = {
                "file": file.name,
                "sha256": sha256_file(file),
                "origin": plan[split].origin,
                "count": len(index),
                "class_counts": np.bincount(labels, minlength=num_classes).tolist(),
            }
        atomic_write_text(tmp / STATS, stats.to_json())
        manifest = {
            "stage": "preprocess",
            "format": FORMAT_VERSION,
            "source": raw_manifest["source"],
            "num_classes": num_classes,
            "class_names": class_names,
            "image_shape": stats.image_shape,
            "params": params.model_dump(),
            "raw_manifest_sha256": sha256_file(raw_dir / MANIFEST),
            "stats_sha256": sha256_file(tmp / STATS),
            "splits": entries,
        }
        atomic_write_json(tmp / MANIFEST, manifest)
    return manifest
