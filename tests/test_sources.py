"""Every data source on tiny generated fixtures: what ``ingest`` writes to ``data/raw``.

Each test calls :func:`components.data.ingest.ingest` directly and checks both the manifest and
the arrays in the safetensors files against the data the test generated itself.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from components.config import DataParams
from components.data.idx import read_idx, write_idx
from components.data.ingest import ingest
from components.data.tensorfile import load_arrays
from components.errors import DataSourceError, DataValidationError
from components.hashing import sha256_file
from tests import datagen

TORCHVISION_SETS = [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST"), ("kmnist", "KMNIST")]
TORCHVISION_FILES = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
]


# --------------------------------------------------------------------------------------------
# helpers


def run_ingest(root: Path, out: str = "data/raw", **data: Any) -> tuple[dict[str, Any], Path]:
    """Ingest ``DataParams(**data)`` with ``root`` as project root; return (manifest, raw folder).

    Also checks what every source must satisfy: the returned manifest is the one on disk and
    every split entry describes its own safetensors file.
    """
    raw = root / out
    returned = ingest(DataParams(**data), raw, root=root)
    manifest = json.loads((raw / "manifest.json").read_text())
    assert manifest == returned
    assert manifest["stage"] == "ingest"
    assert manifest["source"] == data["source"]
    assert sorted(p.name for p in raw.iterdir()) == sorted(
        ["manifest.json", *(f"{name}.safetensors" for name in manifest["splits"])]
    )
    for name, entry in manifest["splits"].items():
        file = raw / entry["file"]
        assert entry["file"] == f"{name}.safetensors"
        assert entry["sha256"] == sha256_file(file)
        arrays = load_arrays(file)
        assert sorted(arrays) == ["images", "labels"]
        images, labels = arrays["images"], arrays["labels"]
        assert images.ndim == 4
        assert labels.dtype == np.int64
        assert entry["count"] == len(images) == len(labels)
        assert entry["image_shape"] == list(images.shape[1:])
        assert entry["dtype"] == str(images.dtype)
        assert entry["pixel_range"] == [float(images.min()), float(images.max())]
        assert entry["class_counts"] == np.bincount(labels, minlength=manifest["num_classes"]).tolist()
    assert len(manifest["class_names"]) == manifest["num_classes"]
    return manifest, raw


def split_arrays(raw: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) stored for ``split``."""
    arrays = load_arrays(raw / f"{split}.safetensors")
    return arrays["images"], arrays["labels"]


def assert_inputs(manifest: dict[str, Any], expected: dict[str, Path]) -> None:
    """The manifest lists exactly ``expected`` (name -> file) with each file's sha256."""
    assert manifest["inputs"] == {name: sha256_file(path) for name, path in expected.items()}


def png_tree(folder: Path) -> tuple[np.ndarray, np.ndarray, list[str], dict[str, Path]]:
    """Read a class-folder tree independently of the loader: (N x C x H x W, labels, classes, files).

    Order is the ImageFolder order (classes sorted, files sorted); hidden entries are skipped.
    """
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    images, labels, files = [], [], {}
    for index, name in enumerate(classes):
        for file in sorted((folder / name).iterdir()):
            if file.name.startswith("."):
                continue
            with Image.open(file) as image:
                pixels = np.asarray(image)
            images.append(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1))
            labels.append(index)
            files[file.relative_to(folder).as_posix()] = file
    return np.stack(images), np.asarray(labels), classes, files


def write_rgb_folder(folder: Path, per_class: int = 3, classes: tuple[str, ...] = ("a", "b", "c")) -> None:
    """PNG class folders of random colour images whose three channels differ."""
    rng = np.random.default_rng(11)
    for name in classes:
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)  # (H, W, C)
            Image.fromarray(pixels, mode="RGB").save(folder / name / f"{i:02d}.png")


# --------------------------------------------------------------------------------------------
# digits


def test_digits_is_one_pool_of_1797_8x8_images(tmp_path: Path) -> None:
    """``digits`` stores sklearn's 1,797 8x8 images as one uint8 pool of ten classes, unchanged."""
    from sklearn.datasets import load_digits

    manifest, raw = run_ingest(tmp_path, source="digits")
    bunch = load_digits()
    assert list(manifest["splits"]) == ["all"]
    entry = manifest["splits"]["all"]
    assert entry["count"] == 1797
    assert entry["image_shape"] == [1, 8, 8]
    assert entry["dtype"] == "uint8"
    assert entry["pixel_range"] == [0.0, 16.0]
    assert manifest["num_classes"] == 10
    assert manifest["class_names"] == [str(d) for d in range(10)]
    assert entry["class_counts"] == np.bincount(bunch.target).tolist()
    assert list(manifest["inputs"]) == ["sklearn/datasets/data/digits.csv.gz"]
    assert len(manifest["inputs"]["sklearn/datasets/data/digits.csv.gz"]) == 64
    images, labels = split_arrays(raw, "all")
    assert images.shape == (1797, 1, 8, 8)
    np.testing.assert_array_equal(images[:, 0], bunch.images)
    np.testing.assert_array_equal(labels, bunch.target)


# --------------------------------------------------------------------------------------------
# idx


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_idx_train_and_t10k_pairs_keep_their_split(tmp_path: Path, gz: bool) -> None:
    """A ``train`` + ``t10k`` IDX pair (plain or .gz) becomes the train and test splits."""
    x_train, y_train = datagen.make_images(30, 8, 3, seed=21)
    x_test, y_test = datagen.make_images(12, 8, 3, seed=22)
    files = [
        *datagen.write_idx_pair(tmp_path / "src", "train", x_train, y_train, gz=gz),
        *datagen.write_idx_pair(tmp_path / "src", "t10k", x_test, y_test, gz=gz),
    ]
    manifest, raw = run_ingest(tmp_path, source="idx", path="src")

    assert sorted(manifest["splits"]) == ["test", "train"]
    assert manifest["splits"]["train"]["count"] == 30
    assert manifest["splits"]["test"]["count"] == 12
    assert manifest["splits"]["train"]["image_shape"] == [1, 8, 8]
    assert manifest["splits"]["train"]["dtype"] == "uint8"
    assert manifest["num_classes"] == 3
    assert manifest["splits"]["train"]["class_counts"] == [10, 10, 10]
    assert manifest["splits"]["test"]["class_counts"] == [4, 4, 4]
    assert_inputs(manifest, {f.name: f for f in files})
    if gz:
        assert all(name.endswith(".gz") for name in manifest["inputs"])
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        images, labels = split_arrays(raw, split)
        assert images.shape == (len(x), 1, 8, 8)
        np.testing.assert_array_equal(images[:, 0], x)
        np.testing.assert_array_equal(labels, y)


def test_idx_single_pair_is_one_pool(tmp_path: Path) -> None:
    """One IDX pair (like the 10,000-image MNIST test set alone) becomes the split ``all``."""
    x, y = datagen.make_images(20, 8, 4, seed=23)
    files = datagen.write_idx_pair(tmp_path / "src", "t10k", x, y)
    manifest, raw = run_ingest(tmp_path, source="idx", path="src")
    assert list(manifest["splits"]) == ["all"]
    assert manifest["splits"]["all"]["count"] == 20
    assert manifest["splits"]["all"]["class_counts"] == [5, 5, 5, 5]
    assert_inputs(manifest, {f.name: f for f in files})
    images, labels = split_arrays(raw, "all")
    np.testing.assert_array_equal(images[:, 0], x)
    np.testing.assert_array_equal(labels, y)


def test_idx_declared_num_classes_counts_absent_classes(tmp_path: Path) -> None:
    """``data.num_classes`` wins over max label + 1: class_counts has a zero for unused classes."""
    x, y = datagen.make_images(12, 8, 3, seed=24)
    datagen.write_idx_pair(tmp_path / "src", "train", x, y)
    manifest, _ = run_ingest(tmp_path, source="idx", path="src", num_classes=5)
    assert manifest["num_classes"] == 5
    assert manifest["class_names"] == ["0", "1", "2", "3", "4"]
    assert manifest["splits"]["all"]["class_counts"] == [4, 4, 4, 0, 0]


@pytest.mark.parametrize("source", ["idx", "npz"])
def test_declared_num_classes_beyond_the_images_is_refused(tmp_path: Path, source: str) -> None:
    """``data.num_classes`` above the number of labelled images is refused before one class name
    per class is built (a class needs images; 10**12 names would not fit in memory)."""
    x, y = datagen.make_images(12, 8, 3, seed=24)
    if source == "idx":
        datagen.write_idx_pair(tmp_path / "src", "train", x, y)
        path = "src"
    else:
        path = str(datagen.write_npz(tmp_path / "d.npz", n=12))
    rule = r"data\.num_classes=1000000000000 exceeds the 12 labelled images"
    with pytest.raises(DataSourceError, match=rule):
        ingest(DataParams(source=source, path=path, num_classes=10**12), tmp_path / "raw", root=tmp_path)
    assert not (tmp_path / "raw").exists()


def test_idx_plain_file_wins_over_gz_twin(tmp_path: Path) -> None:
    """With ``x`` and ``x.gz`` side by side (torchvision's layout) the uncompressed file is read."""
    x, y = datagen.make_images(9, 8, 3, seed=25)
    plain = datagen.write_idx_pair(tmp_path / "src", "train", x, y)
    other_x, other_y = datagen.make_images(5, 8, 3, seed=26)
    datagen.write_idx_pair(tmp_path / "src", "train", other_x, other_y, gz=True)
    manifest, raw = run_ingest(tmp_path, source="idx", path="src")
    assert_inputs(manifest, {f.name: f for f in plain})
    images, _ = split_arrays(raw, "all")
    np.testing.assert_array_equal(images[:, 0], x)


def test_idx_images_without_labels_is_a_source_error(tmp_path: Path) -> None:
    """An images file without its labels file is refused, naming the file and the missing name."""
    x, y = datagen.make_images(9, 8, 3, seed=27)
    image_file, label_file = datagen.write_idx_pair(tmp_path / "src", "train", x, y)
    label_file.unlink()
    with pytest.raises(DataSourceError) as info:
        ingest(DataParams(source="idx", path="src"), tmp_path / "data" / "raw", root=tmp_path)
    message = str(info.value)
    assert str(image_file) in message
    assert "train-labels-idx1-ubyte" in message
    assert not (tmp_path / "data" / "raw").exists()


@pytest.mark.parametrize("layout", ["missing folder", "no idx files", "three pairs"])
def test_idx_folder_layout_errors(tmp_path: Path, layout: str) -> None:
    """A missing folder, a folder without IDX files, or an unrecognised set of pairs is refused."""
    src = tmp_path / "src"
    if layout == "no idx files":
        src.mkdir()
        (src / "readme.txt").write_text("nothing here")
    elif layout == "three pairs":
        for prefix in ("train", "t10k", "extra"):
            datagen.write_idx_pair(src, prefix, *datagen.make_images(6, 8, 3))
    with pytest.raises(DataSourceError) as info:
        ingest(DataParams(source="idx", path="src"), tmp_path / "raw", root=tmp_path)
    assert str(src) in str(info.value)
    if layout == "three pairs":
        assert "extra" in str(info.value)


# --------------------------------------------------------------------------------------------
# torchvision sets (local files only)


@pytest.mark.parametrize(("source", "class_name"), TORCHVISION_SETS)
def test_torchvision_set_reads_local_raw_folder(tmp_path: Path, source: str, class_name: str) -> None:
    """mnist / fashion_mnist / kmnist read ``<path>/<Class>/raw`` into train and test splits."""
    from torchvision import datasets

    raw_src = datagen.write_torchvision_raw(tmp_path / "tv", class_name, n_train=40, n_test=20)
    manifest, raw = run_ingest(tmp_path, source=source, path="tv")

    assert sorted(manifest["splits"]) == ["test", "train"]
    assert manifest["splits"]["train"]["count"] == 40
    assert manifest["splits"]["test"]["count"] == 20
    assert manifest["splits"]["train"]["image_shape"] == [1, 28, 28]
    assert manifest["splits"]["train"]["dtype"] == "uint8"
    assert manifest["num_classes"] == 10
    assert manifest["class_names"] == list(getattr(datasets, class_name).classes)
    assert manifest["splits"]["train"]["class_counts"] == [4] * 10
    assert manifest["splits"]["test"]["class_counts"] == [2] * 10
    assert_inputs(manifest, {f"{class_name}/raw/{name}": raw_src / name for name in TORCHVISION_FILES})
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = split_arrays(raw, split)
        np.testing.assert_array_equal(images[:, 0], read_idx(raw_src / f"{prefix}-images-idx3-ubyte"))
        np.testing.assert_array_equal(labels, read_idx(raw_src / f"{prefix}-labels-idx1-ubyte"))


@pytest.mark.parametrize(("source", "class_name"), TORCHVISION_SETS)
@pytest.mark.parametrize("missing", ["all", "t10k-labels-idx1-ubyte"])
def test_torchvision_missing_files_name_expected_files_and_folder(
    tmp_path: Path, source: str, class_name: str, missing: str
) -> None:
    """Without ``download`` a missing file is a DataSourceError listing the names and the folder."""
    raw_src = tmp_path / "tv" / class_name / "raw"
    if missing == "all":
        (tmp_path / "tv").mkdir()
    else:
        datagen.write_torchvision_raw(tmp_path / "tv", class_name)
        (raw_src / missing).unlink()
    with pytest.raises(DataSourceError) as info:
        ingest(DataParams(source=source, path="tv"), tmp_path / "raw", root=tmp_path)
    message = str(info.value)
    assert str(raw_src) in message
    for name in TORCHVISION_FILES:
        assert name in message
    if missing != "all":
        assert f"missing {missing} in" in message
    assert not (tmp_path / "raw").exists()


def test_torchvision_gz_only_copies_get_a_hint(tmp_path: Path) -> None:
    """When only ``.gz`` copies are present the error says to gunzip them or use ``idx``."""
    raw_src = datagen.write_torchvision_raw(tmp_path / "tv", "MNIST")
    for name in TORCHVISION_FILES:
        (raw_src / f"{name}.gz").write_bytes(gzip.compress((raw_src / name).read_bytes()))
        (raw_src / name).unlink()
    with pytest.raises(DataSourceError, match="gunzip"):
        ingest(DataParams(source="mnist", path="tv"), tmp_path / "raw", root=tmp_path)


# --------------------------------------------------------------------------------------------
# imagefolder


def test_imagefolder_greyscale_pool(tmp_path: Path) -> None:
    """A grey-scale class-folder tree is one pool of 1-channel uint8 images labelled by folder."""
    datagen.write_image_folder(tmp_path / "src", per_class=4, classes=("cat", "dog", "eel"))
    manifest, raw = run_ingest(tmp_path, source="imagefolder", path="src")
    expected_images, expected_labels, classes, files = png_tree(tmp_path / "src")

    assert list(manifest["splits"]) == ["all"]
    entry = manifest["splits"]["all"]
    assert entry["count"] == 12
    assert entry["image_shape"] == [1, 8, 8]
    assert entry["dtype"] == "uint8"
    assert entry["class_counts"] == [4, 4, 4]
    assert manifest["class_names"] == classes == ["cat", "dog", "eel"]
    assert_inputs(manifest, files)
    assert "cat/000.png" in manifest["inputs"]
    images, labels = split_arrays(raw, "all")
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(labels, expected_labels)


def test_imagefolder_rgb_pool_is_channels_first(tmp_path: Path) -> None:
    """Colour PNGs are stored as 3 x H x W with each channel in its own plane."""
    write_rgb_folder(tmp_path / "src")
    manifest, raw = run_ingest(tmp_path, source="imagefolder", path="src")
    expected_images, expected_labels, _, files = png_tree(tmp_path / "src")
    assert manifest["splits"]["all"]["image_shape"] == [3, 8, 8]
    assert manifest["splits"]["all"]["class_counts"] == [3, 3, 3]
    assert_inputs(manifest, files)
    images, labels = split_arrays(raw, "all")
    assert images.shape == (9, 3, 8, 8)
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(labels, expected_labels)


def test_imagefolder_one_colour_file_makes_everything_rgb(tmp_path: Path) -> None:
    """Grey files mixed with one RGB file are all stored as 3 channels (grey replicated)."""
    src = datagen.write_image_folder(tmp_path / "src", per_class=3)
    colour = np.random.default_rng(12).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    Image.fromarray(colour, mode="RGB").save(src / "dog" / "099.png")
    manifest, raw = run_ingest(tmp_path, source="imagefolder", path="src")
    images, _ = split_arrays(raw, "all")
    assert manifest["splits"]["all"]["image_shape"] == [3, 8, 8]
    with Image.open(src / "cat" / "000.png") as grey:
        grey_pixels = np.asarray(grey)
    for channel in range(3):
        np.testing.assert_array_equal(images[0, channel], grey_pixels)
    np.testing.assert_array_equal(images[-1], colour.transpose(2, 0, 1))


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_imagefolder_train_and_test_subfolders_keep_their_split(tmp_path: Path, mode: str) -> None:
    """``train/`` and ``test/`` trees with the same classes become the train and test splits."""
    src = tmp_path / "src"
    if mode == "L":
        datagen.write_image_folder(src / "train", per_class=4)
        datagen.write_image_folder(src / "test", per_class=2)
    else:
        write_rgb_folder(src / "train", per_class=4, classes=("cat", "dog"))
        write_rgb_folder(src / "test", per_class=2, classes=("cat", "dog"))
    manifest, raw = run_ingest(tmp_path, source="imagefolder", path="src")
    channels = 1 if mode == "L" else 3

    assert sorted(manifest["splits"]) == ["test", "train"]
    assert manifest["class_names"] == ["cat", "dog"]
    assert manifest["splits"]["train"]["class_counts"] == [4, 4]
    assert manifest["splits"]["test"]["class_counts"] == [2, 2]
    assert manifest["splits"]["test"]["image_shape"] == [channels, 8, 8]
    inputs: dict[str, Path] = {}
    for split in ("train", "test"):
        expected_images, expected_labels, _, files = png_tree(src / split)
        inputs |= {f"{split}/{name}": path for name, path in files.items()}
        images, labels = split_arrays(raw, split)
        np.testing.assert_array_equal(images, expected_images)
        np.testing.assert_array_equal(labels, expected_labels)
    assert_inputs(manifest, inputs)


def test_imagefolder_train_and_test_with_different_classes_is_refused(tmp_path: Path) -> None:
    """train/ and test/ must hold the same class folders, else labels would mean different things."""
    datagen.write_image_folder(tmp_path / "src" / "train", classes=("cat", "dog"))
    datagen.write_image_folder(tmp_path / "src" / "test", classes=("cat", "emu"))
    with pytest.raises(DataSourceError, match="emu"):
        ingest(DataParams(source="imagefolder", path="src"), tmp_path / "raw", root=tmp_path)


def test_imagefolder_ignores_hidden_files(tmp_path: Path) -> None:
    """``.DS_Store`` and other dot-files (not images) are skipped and not listed as inputs."""
    src = datagen.write_image_folder(tmp_path / "src", per_class=3)
    for folder in (src, src / "cat", src / "dog"):
        (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1 not an image")
    (src / "cat" / "._000.png").write_bytes(b"AppleDouble junk")
    manifest, _ = run_ingest(tmp_path, source="imagefolder", path="src")
    assert manifest["splits"]["all"]["count"] == 6
    assert manifest["class_names"] == ["cat", "dog"]
    assert sorted(manifest["inputs"]) == [f"{c}/{i:03d}.png" for c in ("cat", "dog") for i in range(3)]


def test_imagefolder_ignores_hidden_class_folders(tmp_path: Path) -> None:
    """A hidden folder (Jupyter's ``.ipynb_checkpoints``) is not a class, like hidden files."""
    src = datagen.write_image_folder(tmp_path / "src", per_class=3)
    shutil.copytree(src / "cat", src / ".ipynb_checkpoints")
    manifest, _ = run_ingest(tmp_path, source="imagefolder", path="src")
    assert manifest["class_names"] == ["cat", "dog"]
    assert manifest["splits"]["all"]["count"] == 6


def test_imagefolder_16bit_png_is_not_silently_clipped(tmp_path: Path) -> None:
    """A 16-bit grey PNG is either refused with a clear error or stored without losing values."""
    rng = np.random.default_rng(13)
    for name in ("a", "b"):
        (tmp_path / "src" / name).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 65536, size=(8, 8), dtype=np.uint16)
            Image.fromarray(pixels).save(tmp_path / "src" / name / f"{i}.png")
    try:
        _, raw = run_ingest(tmp_path, source="imagefolder", path="src")
        refusal = ""
    except DataValidationError as exc:  # refusing is an acceptable answer, if it names the file
        refusal = str(exc)
    if refusal:
        assert ".png" in refusal
        return
    images, _ = split_arrays(raw, "all")
    expected, _, _, _ = png_tree(tmp_path / "src")
    assert len(np.unique(images)) == len(np.unique(expected))


# --------------------------------------------------------------------------------------------
# npz


def test_npz_x_y_only_is_one_pool(tmp_path: Path) -> None:
    """An archive with only ``x``/``y`` (N x H x W) is the split ``all``, dtype kept."""
    file = datagen.write_npz(tmp_path / "src" / "data.npz", n=30, classes=3)
    manifest, raw = run_ingest(tmp_path, source="npz", path="src/data.npz")
    with np.load(file) as archive:
        x, y = archive["x"], archive["y"]
    assert list(manifest["splits"]) == ["all"]
    assert manifest["splits"]["all"]["count"] == 30
    assert manifest["splits"]["all"]["image_shape"] == [1, 8, 8]
    assert manifest["splits"]["all"]["dtype"] == "float32"
    assert manifest["splits"]["all"]["class_counts"] == [10, 10, 10]
    assert_inputs(manifest, {"data.npz": file})
    images, labels = split_arrays(raw, "all")
    np.testing.assert_array_equal(images[:, 0], x)
    np.testing.assert_array_equal(labels, y)


def test_npz_with_test_arrays_keeps_the_split(tmp_path: Path) -> None:
    """``x_test``/``y_test`` become the test split; a folder holding one archive is accepted."""
    file = datagen.write_npz(tmp_path / "src" / "set.npz", n=30, n_test=9, classes=3)
    manifest, raw = run_ingest(tmp_path, source="npz", path="src")
    with np.load(file) as archive:
        arrays = {key: archive[key] for key in archive.files}
    assert sorted(manifest["splits"]) == ["test", "train"]
    assert manifest["splits"]["train"]["count"] == 30
    assert manifest["splits"]["test"]["count"] == 9
    assert manifest["splits"]["test"]["class_counts"] == [3, 3, 3]
    assert_inputs(manifest, {"set.npz": file})
    for split, (x_key, y_key) in {"train": ("x", "y"), "test": ("x_test", "y_test")}.items():
        images, labels = split_arrays(raw, split)
        np.testing.assert_array_equal(images[:, 0], arrays[x_key])
        np.testing.assert_array_equal(labels, arrays[y_key])


@pytest.mark.parametrize(
    ("shape", "layout"),
    [
        ((12, 8, 8, 3), "NHWC"),
        ((12, 8, 8, 1), "NHWC"),
        ((12, 3, 8, 8), "NCHW"),
        ((12, 1, 8, 8), "NCHW"),
    ],
    ids=["channels-last-rgb", "channels-last-grey", "channels-first-rgb", "channels-first-grey"],
)
def test_npz_4d_input_is_stored_channels_first(tmp_path: Path, shape: tuple[int, ...], layout: str) -> None:
    """Channels-last N x H x W x C is transposed to N x C x H x W; channels-first is kept."""
    x = np.random.default_rng(14).integers(0, 256, size=shape, dtype=np.uint8)
    y = np.arange(12) % 2
    np.savez(tmp_path / "data.npz", x=x, y=y)
    manifest, raw = run_ingest(tmp_path, source="npz", path="data.npz")
    expected = x.transpose(0, 3, 1, 2) if layout == "NHWC" else x
    assert manifest["splits"]["all"]["image_shape"] == list(expected.shape[1:])
    assert manifest["splits"]["all"]["dtype"] == "uint8"
    images, labels = split_arrays(raw, "all")
    np.testing.assert_array_equal(images, expected)
    np.testing.assert_array_equal(labels, y)


def test_npz_folder_with_two_archives_is_ambiguous(tmp_path: Path) -> None:
    """A folder must hold exactly one .npz; two are refused with both names."""
    datagen.write_npz(tmp_path / "src" / "a.npz")
    datagen.write_npz(tmp_path / "src" / "b.npz")
    with pytest.raises(DataSourceError, match=r"found 2 \(a\.npz, b\.npz\)"):
        ingest(DataParams(source="npz", path="src"), tmp_path / "raw", root=tmp_path)


# --------------------------------------------------------------------------------------------
# determinism


def _make_source(root: Path, kind: str) -> dict[str, Any]:
    """Write a tiny source of ``kind`` under ``root``; return the DataParams fields for it."""
    if kind == "digits":
        return {"source": "digits"}
    if kind == "idx-gz":
        datagen.write_idx_dataset(root / "src", n_train=30, n_test=12, gz=True)
        return {"source": "idx", "path": "src"}
    if kind == "imagefolder":
        write_rgb_folder(root / "src")
        return {"source": "imagefolder", "path": "src"}
    if kind == "npz":
        x = np.random.default_rng(15).integers(0, 256, size=(10, 8, 8, 3), dtype=np.uint8)
        np.savez(root / "data.npz", x=x, y=np.arange(10) % 2)
        return {"source": "npz", "path": "data.npz"}
    datagen.write_torchvision_raw(root / "tv", "MNIST", n_train=20, n_test=10)
    return {"source": "mnist", "path": "tv"}


@pytest.mark.parametrize("kind", ["digits", "idx-gz", "imagefolder", "npz", "mnist"])
def test_ingest_is_deterministic(tmp_path: Path, kind: str) -> None:
    """Two runs on the same input into two folders give byte-identical files."""
    data = _make_source(tmp_path, kind)
    _, first = run_ingest(tmp_path, out="run1/raw", **data)
    _, second = run_ingest(tmp_path, out="run2/raw", **data)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_ingest_replaces_previous_output_completely(tmp_path: Path) -> None:
    """Re-ingesting a source with a different split layout leaves no stale split file behind."""
    datagen.write_idx_dataset(tmp_path / "src", n_train=12, n_test=6)
    _, raw = run_ingest(tmp_path, source="idx", path="src")
    assert sorted(p.name for p in raw.iterdir()) == ["manifest.json", "test.safetensors", "train.safetensors"]
    for file in (tmp_path / "src").glob("t10k-*"):
        file.unlink()
    manifest, raw = run_ingest(tmp_path, source="idx", path="src")
    assert list(manifest["splits"]) == ["all"]
    assert sorted(p.name for p in raw.iterdir()) == ["all.safetensors", "manifest.json"]
    assert not [p for p in raw.parent.iterdir() if p.name.startswith(".raw")]


@pytest.mark.parametrize("dtype", ["int16", "float32"])
def test_idx_big_endian_multibyte_types_round_trip(tmp_path: Path, dtype: str) -> None:
    """IDX int16 / float32 images (big-endian on disk) are stored native, values unchanged."""
    x = (np.arange(6 * 8 * 8).reshape(6, 8, 8) * 7 - 1000).astype(dtype)
    (tmp_path / "src").mkdir()
    write_idx(tmp_path / "src" / "train-images-idx3-ubyte", x)
    write_idx(tmp_path / "src" / "train-labels-idx1-ubyte", (np.arange(6) % 2).astype(np.uint8))
    manifest, raw = run_ingest(tmp_path, source="idx", path="src")
    assert manifest["splits"]["all"]["dtype"] == dtype
    assert manifest["splits"]["all"]["pixel_range"] == [-1000.0, float(x.max())]
    images, _ = split_arrays(raw, "all")
    assert images.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(images[:, 0], x)


def test_declared_num_classes_must_match_a_fixed_label_set(tmp_path: Path) -> None:
    """``data.num_classes`` that contradicts the source (digits has 10) is refused, not ignored."""
    with pytest.raises(DataSourceError, match=r"data\.num_classes=5, but data\.source=digits has 10 classes"):
        ingest(DataParams(source="digits", num_classes=5), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()
