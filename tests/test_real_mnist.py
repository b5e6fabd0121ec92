"""Real-data check on the MNIST test set in ../shared/data/mnist-10k (skipped when absent)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from components.config import DataParams, PreprocessParams
from components.data.ingest import ingest
from components.data.preprocess import preprocess
from tests.conftest import REPO

MNIST_10K = REPO.parent / "shared" / "data" / "mnist-10k"

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not MNIST_10K.is_dir(), reason=f"{MNIST_10K} not present"),
]


def test_published_checksums_match() -> None:
    for line in (MNIST_10K / "md5sums").read_text().splitlines():
        digest, name = line.split()
        assert hashlib.md5((MNIST_10K / name).read_bytes()).hexdigest() == digest, name


def test_idx_source_prepares_the_10000_real_images(tmp_path: Path) -> None:
    raw = ingest(DataParams(source="idx", path=str(MNIST_10K)), tmp_path / "raw")
    assert raw["splits"]["all"]["count"] == 10_000
    assert raw["splits"]["all"]["image_shape"] == [1, 28, 28]
    assert raw["splits"]["all"]["pixel_range"] == [0.0, 255.0]
    # Published MNIST test-set class counts.
    assert raw["splits"]["all"]["class_counts"] == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]

    prepared = preprocess(PreprocessParams(), tmp_path / "raw", tmp_path / "prepared")
    counts = {s: e["count"] for s, e in prepared["splits"].items()}
    assert counts == {"train": 7000, "val": 1500, "test": 1500}
    per_class = np.asarray([prepared["splits"][s]["class_counts"] for s in ("train", "val", "test")]).sum(
        axis=0
    )
    assert per_class.tolist() == raw["splits"]["all"]["class_counts"]
