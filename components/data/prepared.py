"""Reader of ``data/prepared`` for the stages downstream of preprocessing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.data.manifest import MANIFEST, STATS, is_text, read_manifest
from components.data.normalize import Normalization
from components.data.tensorfile import load_arrays
from components.data.text_raw import unpack_texts
from components.data.text_stats import TextStats
from components.errors import DataValidationError
from components.hashing import sha256_file


@dataclass(frozen=True)
class PreparedSplit:
    """One prepared split."""

    x: np.ndarray
    """Images: N x C x H x W float32, normalised. Text: (N, L) int64 token ids, right-padded with
    0 (``tokenizer.json`` in the same folder)."""
    y: np.ndarray
    """N x K float32 one-hot."""
    labels: np.ndarray
    """N int64 class ids."""
    texts: list[str] | None = None
    """Text: the raw strings the ids were encoded from; ``None`` for images."""


@dataclass(frozen=True)
class PreparedData:
    """Every split plus the statistics and the manifest (whose hash is the data version)."""

    splits: dict[str, PreparedSplit]
    stats: Normalization | TextStats
    """The image normalisation, or for text (``manifest["kind"] == "text"``) the vocabulary size,
    sequence length and class names."""
    manifest: dict[str, Any]


def load_prepared(folder: Path | str, only: Sequence[str] | None = None) -> PreparedData:
    """Load and hash-check ``folder`` (the preprocess output): every split file and ``stats.json``
    must match the sha256 in its manifest, so an edited normalisation or class list is refused
    (for text, ``tokenizer.json`` too). ``only``: load (and check) just these splits, so that
    training never opens the test split; None: every split."""
    folder = Path(folder)
    manifest = read_manifest(folder, "preprocess", splits=only)
    splits = {}
    for name, entry in manifest["splits"].items():
        if only is not None and name not in only:
            continue
        file = folder / entry["file"]
        arrays = load_arrays(file, required=("x", "y", "labels"))
        texts = (
            unpack_texts(arrays["text_bytes"], arrays["text_offsets"], file)
            if "text_bytes" in arrays
            else None
        )
        splits[name] = PreparedSplit(x=arrays["x"], y=arrays["y"], labels=arrays["labels"], texts=texts)
    stats = TextStats.load(folder / STATS) if is_text(manifest) else Normalization.load(folder / STATS)
    return PreparedData(splits=splits, stats=stats, manifest=manifest)


def data_version(folder: Path | str) -> str:
    """Version of the prepared data: the sha256 of its manifest (which holds every file's sha256)."""
    return sha256_file(Path(folder) / MANIFEST)


def require_split(prepared: PreparedData, name: str, folder: Path | str) -> PreparedSplit:
    """Split ``name``; a missing or empty one is an error naming ``folder``."""
    split = prepared.splits.get(name)
    if split is None or len(split.x) == 0:
        raise DataValidationError(folder, f"the {name} split is missing or empty")
    return split
