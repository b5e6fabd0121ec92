"""Preprocess invariants: train-only statistics, one-hot labels, stratified disjoint splits,
determinism, and a source's own test split kept as is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from components.config import DataParams, PreprocessParams
from components.data.ingest import ingest
from components.data.normalize import Normalization
from components.data.prepared import load_prepared
from components.data.preprocess import preprocess
from components.data.tensorfile import load_arrays
from tests import datagen


@pytest.fixture(scope="module")
def digits_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded digits, ingested once for the module."""
    raw = tmp_path_factory.mktemp("digits") / "raw"
    ingest(DataParams(), raw)
    return raw


@pytest.fixture(scope="module")
def digits_prepared(digits_raw: Path) -> Path:
    out = digits_raw.parent / "prepared"
    preprocess(PreprocessParams(), digits_raw, out)
    return out


def _raw(raw: Path, split: str = "all") -> dict[str, np.ndarray]:
    return load_arrays(raw / f"{split}.safetensors")


def _prepared(out: Path, split: str) -> dict[str, np.ndarray]:
    return load_arrays(out / f"{split}.safetensors")


def test_statistics_come_from_the_train_split_only(digits_raw: Path, digits_prepared: Path) -> None:
    raw = _raw(digits_raw)
    train_index = _prepared(digits_prepared, "train")["source_index"]
    stats = json.loads((digits_prepared / "stats.json").read_text())
    train_pixels = raw["images"][train_index].astype(np.float64)
    assert stats["mean"] == pytest.approx([train_pixels.mean()], rel=1e-12)
    assert stats["std"] == pytest.approx([train_pixels.std()], rel=1e-12)
    # The pool's statistics differ, so the check above would catch stats fitted on everything.
    assert raw["images"].astype(np.float64).mean() != pytest.approx(stats["mean"][0], rel=1e-9)


def test_inputs_are_normalised_with_the_saved_statistics(digits_raw: Path, digits_prepared: Path) -> None:
    raw = _raw(digits_raw)
    stats = Normalization.load(digits_prepared / "stats.json")
    for split in ("train", "val", "test"):
        arrays = _prepared(digits_prepared, split)
        x = arrays["x"]
        assert x.dtype == np.float32
        assert x.shape == (len(arrays["labels"]), 1, 8, 8)  # N x C x H x W
        np.testing.assert_array_equal(x, stats.apply(raw["images"][arrays["source_index"]]))
    train_x = _prepared(digits_prepared, "train")["x"]
    assert abs(float(train_x.mean())) < 1e-4
    assert float(train_x.std()) == pytest.approx(1.0, abs=1e-4)


def test_labels_are_one_hot_and_match_the_source(digits_raw: Path, digits_prepared: Path) -> None:
    raw = _raw(digits_raw)
    for split in ("train", "val", "test"):
        arrays = _prepared(digits_prepared, split)
        y = arrays["y"]
        assert y.shape == (len(arrays["labels"]), 10)
        np.testing.assert_array_equal(y.sum(axis=1), np.ones(len(y), dtype=np.float32))
        assert set(np.unique(y)) == {0.0, 1.0}
        np.testing.assert_array_equal(y.argmax(axis=1), arrays["labels"])
        np.testing.assert_array_equal(arrays["labels"], raw["labels"][arrays["source_index"]])


def test_splits_are_disjoint_and_cover_the_pool(digits_prepared: Path) -> None:
    indices = {
        s: set(_prepared(digits_prepared, s)["source_index"].tolist()) for s in ("train", "val", "test")
    }
    assert not indices["train"] & indices["val"]
    assert not indices["train"] & indices["test"]
    assert not indices["val"] & indices["test"]
    assert set().union(*indices.values()) == set(range(1797))


def test_splits_are_stratified(digits_raw: Path, digits_prepared: Path) -> None:
    """Each split holds every class in the pool's proportions (to within one sample)."""
    pool = np.bincount(_raw(digits_raw)["labels"], minlength=10)
    manifest = json.loads((digits_prepared / "manifest.json").read_text())
    sizes = {s: manifest["splits"][s]["count"] for s in ("train", "val", "test")}
    assert sizes == {"train": 1257, "val": 270, "test": 270}  # 15 % + 15 % of 1,797
    for split, size in sizes.items():
        counts = np.asarray(manifest["splits"][split]["class_counts"])
        expected = pool * size / pool.sum()
        assert np.all(np.abs(counts - expected) <= 1.0), (split, counts, expected)


def test_same_params_give_byte_identical_output(
    digits_raw: Path, digits_prepared: Path, tmp_path: Path
) -> None:
    again = tmp_path / "again"
    preprocess(PreprocessParams(), digits_raw, again)
    for file in sorted(digits_prepared.iterdir()):
        assert (again / file.name).read_bytes() == file.read_bytes(), file.name


def test_another_seed_gives_another_split(digits_raw: Path, digits_prepared: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    preprocess(PreprocessParams(seed=7), digits_raw, other)
    a = _prepared(digits_prepared, "test")["source_index"]
    b = _prepared(other, "test")["source_index"]
    assert len(a) == len(b)
    assert not np.array_equal(a, b)


def test_a_source_test_split_is_kept(tmp_path: Path) -> None:
    """With train + t10k files, test is the t10k set untouched and val comes from train."""
    datagen.write_idx_dataset(tmp_path / "src", n_train=60, n_test=30)
    ingest(DataParams(source="idx", path="src"), tmp_path / "raw", root=tmp_path)
    manifest = preprocess(
        PreprocessParams(val_fraction=0.25, test_fraction=0.5), tmp_path / "raw", tmp_path / "out"
    )
    assert {s: (e["origin"], e["count"]) for s, e in manifest["splits"].items()} == {
        "train": ("train", 45),
        "val": ("train", 15),
        "test": ("test", 30),
    }
    test = _prepared(tmp_path / "out", "test")
    np.testing.assert_array_equal(test["source_index"], np.arange(30))
    np.testing.assert_array_equal(test["labels"], _raw(tmp_path / "raw", "test")["labels"])


def test_prepared_data_loads_with_its_statistics(digits_prepared: Path) -> None:
    data = load_prepared(digits_prepared)
    assert set(data.splits) == {"train", "val", "test"}
    assert data.stats.image_shape == [1, 8, 8]
    assert data.stats.class_names == [str(d) for d in range(10)]
    assert data.manifest["num_classes"] == 10
