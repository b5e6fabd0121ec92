"""Preprocess invariants: train-only statistics, one-hot labels, stratified disjoint splits,
determinism, and a source's own test split kept as is."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from components.config import DataParams, PreprocessParams
from components.data.ingest import ingest
from components.data.normalize import Normalization
from components.data.prepared import load_prepared
from components.data.preprocess import preprocess
from components.data.tensorfile import load_arrays, save_arrays
from components.errors import DataValidationError
from components.hashing import sha256_file
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
    # The raw range, which batch prediction holds new images to (the digits' 0..16).
    assert stats["pixel_min"] == [train_pixels.min()] == [0]
    assert stats["pixel_max"] == [train_pixels.max()] == [16]
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


# rules on the data preprocess reads and writes ------------------------------------------------


def test_validation_split_may_miss_a_rare_class(tmp_path: Path) -> None:
    """A class too rare for its share of the validation split is allowed there (validation only
    steers early stopping through its loss), as long as train and test hold it."""
    x, y = datagen.make_images(60, 8, 2, seed=1)
    rare, _ = datagen.make_images(2, 8, 2, seed=3)
    x, y = np.concatenate([x, rare]), np.concatenate([y, [2, 2]]).astype(np.uint8)  # class 2: 2 images
    datagen.write_idx_pair(tmp_path / "src", "train", x, y)
    datagen.write_idx_pair(tmp_path / "src", "t10k", *datagen.make_images(30, 8, 3, seed=2))
    ingest(DataParams(source="idx", path="src"), tmp_path / "raw", root=tmp_path)
    manifest = preprocess(PreprocessParams(), tmp_path / "raw", tmp_path / "out")
    counts = {s: e["class_counts"] for s, e in manifest["splits"].items()}
    assert counts == {"train": [25, 26, 2], "val": [5, 4, 0], "test": [10, 10, 10]}


def test_statistics_past_float32_from_an_older_raw_folder_are_refused(tmp_path: Path) -> None:
    """A raw folder whose pixels overflow float32 (written before ingest had that rule, with valid
    hashes) is refused by the statistics check, naming the raw file, and nothing is written."""
    datagen.write_npz(tmp_path / "d.npz", n=60)
    raw = tmp_path / "raw"
    ingest(DataParams(source="npz", path="d.npz"), raw, root=tmp_path)
    arrays = load_arrays(raw / "all.safetensors")
    save_arrays(raw / "all.safetensors", {**arrays, "images": arrays["images"].astype(np.float64) * 1e39})
    manifest = json.loads((raw / "manifest.json").read_text())
    manifest["splits"]["all"]["sha256"] = sha256_file(raw / "all.safetensors")
    (raw / "manifest.json").write_text(json.dumps(manifest))
    rule = "normalisation statistics must be finite in float32"
    with pytest.raises(DataValidationError, match=rule) as info:
        preprocess(PreprocessParams(), raw, tmp_path / "out")
    assert info.value.file == str(raw / "all.safetensors")
    assert not (tmp_path / "out").exists()


def _edit_stats(folder: Path, **changes: Any) -> None:
    stats = json.loads((folder / "stats.json").read_text())
    (folder / "stats.json").write_text(json.dumps({**stats, **changes}))


STATS_EDITS: dict[str, Callable[[Path], None]] = {
    "mean-changed": lambda folder: _edit_stats(folder, mean=[3.0]),
    "nine-class-names": lambda folder: _edit_stats(folder, class_names=[str(d) for d in range(9)]),
    "other-image-shape": lambda folder: _edit_stats(folder, image_shape=[1, 28, 28]),
    "not-json": lambda folder: (folder / "stats.json").write_text("{not json"),
    "deleted": lambda folder: (folder / "stats.json").unlink(),
}


@pytest.mark.parametrize("edit", STATS_EDITS.values(), ids=STATS_EDITS.keys())
def test_prepared_stats_must_match_the_manifest(
    digits_prepared: Path, tmp_path: Path, edit: Callable[[Path], None]
) -> None:
    """stats.json is checked against the manifest's stats_sha256 where train, evaluate and register
    load the prepared data: an edited, unreadable or missing file is an error naming it."""
    folder = tmp_path / "prepared"
    shutil.copytree(digits_prepared, folder)
    edit(folder)
    with pytest.raises(DataValidationError, match=r"sha256 differs|is missing") as info:
        load_prepared(folder)
    assert info.value.file == str(folder / "stats.json")


@pytest.mark.parametrize(
    ("content", "rule"),
    [
        (None, "normalisation file not found"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "must hold the normalisation written by preprocess"),
        ('{"mean": [0.0]}', "must hold the normalisation written by preprocess"),
    ],
    ids=["missing", "not-json", "list", "missing-keys"],
)
def test_normalization_load_names_the_file(tmp_path: Path, content: str | None, rule: str) -> None:
    """Every way to break a stats.json is a DataValidationError naming it, not a traceback."""
    path = tmp_path / "stats.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataValidationError, match=rule) as info:
        Normalization.load(path)
    assert info.value.file == str(path)


def test_a_stats_file_written_before_the_pixel_range_was_recorded_still_loads(
    digits_prepared: Path, tmp_path: Path
) -> None:
    stats = json.loads((digits_prepared / "stats.json").read_text())
    del stats["pixel_min"], stats["pixel_max"]
    (tmp_path / "stats.json").write_text(json.dumps(stats))
    old = Normalization.load(tmp_path / "stats.json")
    assert (old.pixel_min, old.pixel_max) == (None, None)
    assert old.mean == stats["mean"]


def test_prepared_manifest_without_stats_hash_is_refused(digits_prepared: Path, tmp_path: Path) -> None:
    folder = tmp_path / "prepared"
    shutil.copytree(digits_prepared, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["stats_sha256"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataValidationError, match="must hold 'stats_sha256' as a JSON string") as info:
        load_prepared(folder)
    assert info.value.file == str(folder / "manifest.json")
