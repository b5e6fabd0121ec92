"""Corrupt inputs: a clear error naming the file and the rule, and earlier outputs left intact.

A good project (an IDX source, ``ingest`` and ``preprocess`` run successfully) is built once per
module and copied for each test. Each test then breaks the source, re-runs the stage CLI as DVC
would, and checks the exit code, the message, and that ``data/`` is byte-identical to before.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from components.atomic import atomic_directory
from components.data.idx import write_idx
from components.hashing import sha256_file
from pipelines.ingest import main as ingest_main
from pipelines.preprocess import main as preprocess_main
from tests import datagen
from tests.conftest import Project

IDX_PARAMS = {"source": "idx", "path": "src"}
TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEMP_PREFIXES = (".raw", ".prepared")


# --------------------------------------------------------------------------------------------
# the good project


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file below ``folder``, keyed by relative path (temp folders included)."""
    return {
        path.relative_to(folder).as_posix(): sha256_file(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@dataclass
class GoodProject:
    """A project whose ingest and preprocess succeeded, with the hashes of what they wrote."""

    project: Project
    before: dict[str, str]

    @property
    def src(self) -> Path:
        return self.project.root / "src"

    @property
    def data(self) -> Path:
        return self.project.root / "data"


@pytest.fixture(scope="module")
def good_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the good project once: IDX source, then ingest and preprocess through the CLIs."""
    root = tmp_path_factory.mktemp("good")
    project = Project(root)
    project.write_params(data=IDX_PARAMS)
    datagen.write_idx_dataset(root / "src", n_train=60, n_test=30, classes=3)
    for stage in ("ingest", "preprocess"):
        result = project.run(stage)
        assert result.returncode == 0, result.stderr
    return root


@pytest.fixture
def good(good_template: Path, tmp_path: Path) -> GoodProject:
    """A fresh copy of the good project for one test."""
    root = tmp_path / "project"
    shutil.copytree(good_template, root)
    project = Project(root)
    project.write_params(data=IDX_PARAMS)
    before = snapshot(root / "data")
    assert {"raw/manifest.json", "raw/train.safetensors", "raw/test.safetensors"} <= set(before)
    assert {"prepared/manifest.json", "prepared/stats.json", "prepared/train.safetensors"} <= set(before)
    return GoodProject(project, before)


def assert_outputs_intact(good: GoodProject) -> None:
    """data/raw and data/prepared are byte-identical to before, and no temp folder is left."""
    assert snapshot(good.data) == good.before
    leftovers = [p.name for p in good.data.iterdir() if p.name.startswith(TEMP_PREFIXES)]
    assert leftovers == []


def run_in_process(project: Project, stage: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Call the stage CLI's ``main`` in this process: (exit code, stderr).

    Same body and error handling as ``python -m pipelines.<stage>``, without paying the ~12 s
    torchvision import of a fresh interpreter. Any exception other than the CLI's ``SystemExit``
    (a traceback in a real run) propagates and fails the test.
    """
    capsys.readouterr()
    try:
        if stage == "ingest":
            ingest_main(params=project.params_file, out=project.raw)
        else:
            preprocess_main(params=project.params_file, raw=project.raw, out=project.prepared)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def assert_refused(
    good: GoodProject,
    stage: str,
    file_name: str,
    phrases: list[str],
    capsys: pytest.CaptureFixture[str] | None = None,
) -> str:
    """Run ``stage`` (as a subprocess, or in-process when ``capsys`` is given); it must exit 2
    naming ``file_name`` and every phrase, with data/ untouched."""
    if capsys is None:
        result = good.project.run(stage)
        code, stderr = result.returncode, result.stderr
    else:
        code, stderr = run_in_process(good.project, stage, capsys)
    assert code == 2, stderr
    assert "Traceback" not in stderr
    assert f"{stage} failed:" in stderr
    assert file_name in stderr, stderr
    for phrase in phrases:
        assert phrase in stderr, stderr
    assert_outputs_intact(good)
    return stderr


# --------------------------------------------------------------------------------------------
# ways to break a source; each returns (file the message must name, phrases of the rule)

Corruption = Callable[[GoodProject], tuple[str, list[str]]]


def _edit_bytes(path: Path, edit: Callable[[bytearray], bytes | bytearray]) -> None:
    path.write_bytes(bytes(edit(bytearray(path.read_bytes()))))


def _set_byte(index: int, value: int) -> Callable[[bytearray], bytearray]:
    def edit(data: bytearray) -> bytearray:
        data[index] = value
        return data

    return edit


def _train_arrays() -> tuple[np.ndarray, np.ndarray]:
    return datagen.make_images(60, 8, 3, seed=1)


def bad_magic(good: GoodProject) -> tuple[str, list[str]]:
    _edit_bytes(good.src / TRAIN_IMAGES, _set_byte(0, 0x01))
    return TRAIN_IMAGES, ["magic number must start with two zero bytes"]


def unknown_element_type(good: GoodProject) -> tuple[str, list[str]]:
    _edit_bytes(good.src / TRAIN_IMAGES, _set_byte(2, 0x07))
    return TRAIN_IMAGES, ["unknown IDX element type 0x07"]


def images_with_two_dims(good: GoodProject) -> tuple[str, list[str]]:
    x, _ = _train_arrays()
    write_idx(good.src / TRAIN_IMAGES, x.reshape(60, 64))
    return TRAIN_IMAGES, ["declares 2 dimension(s), expected 3"]


def labels_with_two_dims(good: GoodProject) -> tuple[str, list[str]]:
    _, y = _train_arrays()
    write_idx(good.src / TRAIN_LABELS, y.reshape(60, 1))
    return TRAIN_LABELS, ["declares 2 dimension(s), expected 1"]


def truncated_data(good: GoodProject) -> tuple[str, list[str]]:
    _edit_bytes(good.src / TRAIN_IMAGES, lambda data: data[:-5])
    return TRAIN_IMAGES, ["truncated IDX data"]


def truncated_header(good: GoodProject) -> tuple[str, list[str]]:
    _edit_bytes(good.src / TRAIN_IMAGES, lambda data: data[:10])
    return TRAIN_IMAGES, ["truncated IDX header"]


def empty_file(good: GoodProject) -> tuple[str, list[str]]:
    (good.src / TRAIN_LABELS).write_bytes(b"")
    return TRAIN_LABELS, ["shorter than the 4-byte magic number"]


def trailing_bytes(good: GoodProject) -> tuple[str, list[str]]:
    _edit_bytes(good.src / TRAIN_IMAGES, lambda data: data + b"\x00\x00\x00")
    return TRAIN_IMAGES, ["longer than the header's dimensions declare"]


def _replace_with_gz(good: GoodProject, edit: Callable[[bytes], bytes]) -> str:
    """Swap the plain train images for a ``.gz`` file whose compressed bytes are ``edit``-ed."""
    plain = good.src / TRAIN_IMAGES
    gz = good.src / f"{TRAIN_IMAGES}.gz"
    gz.write_bytes(edit(gzip.compress(plain.read_bytes(), mtime=0)))
    plain.unlink()
    return gz.name


def gz_truncated(good: GoodProject) -> tuple[str, list[str]]:
    name = _replace_with_gz(good, lambda data: data[: len(data) // 2])
    return name, ["corrupt or truncated gzip stream"]


def gz_garbage_inside(good: GoodProject) -> tuple[str, list[str]]:
    def scramble(data: bytes) -> bytes:
        noise = np.random.default_rng(0).integers(0, 256, size=len(data) - 30, dtype=np.uint8).tobytes()
        return data[:10] + noise + data[-20:]

    name = _replace_with_gz(good, scramble)
    return name, ["corrupt or truncated gzip stream"]


def gz_not_gzip(good: GoodProject) -> tuple[str, list[str]]:
    name = _replace_with_gz(good, lambda _: b"this is not gzip data at all")
    return name, ["not gzip data (bad gzip magic)"]


def gz_truncated_content(good: GoodProject) -> tuple[str, list[str]]:
    plain = good.src / TRAIN_IMAGES
    gz = good.src / f"{TRAIN_IMAGES}.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes()[:-64]))
    plain.unlink()
    return gz.name, ["truncated IDX data"]


def count_mismatch(good: GoodProject) -> tuple[str, list[str]]:
    _, y = _train_arrays()
    write_idx(good.src / TRAIN_LABELS, y[:59])
    return TRAIN_LABELS, ["image/label count mismatch", "60 images", "59 labels"]


def labels_outside_range(good: GoodProject) -> tuple[str, list[str]]:
    good.project.write_params(data={**IDX_PARAMS, "num_classes": 3})
    _, y = _train_arrays()
    y = y.copy()
    y[5] = 7
    write_idx(good.src / TRAIN_LABELS, y)
    return TRAIN_LABELS, ["labels outside range 0..2", "label 7 at index 5"]


def negative_labels(good: GoodProject) -> tuple[str, list[str]]:
    _, y = _train_arrays()
    y = y.astype(np.int8)
    y[4] = -1
    write_idx(good.src / TRAIN_LABELS, y)
    return TRAIN_LABELS, ["labels outside range", "label -1 at index 4"]


def float_labels(good: GoodProject) -> tuple[str, list[str]]:
    _, y = _train_arrays()
    write_idx(good.src / TRAIN_LABELS, y.astype(np.float32))
    return TRAIN_LABELS, ["labels must be integers"]


def empty_train_split(good: GoodProject) -> tuple[str, list[str]]:
    datagen.write_idx_pair(good.src, "train", np.zeros((0, 8, 8), np.uint8), np.zeros(0, np.uint8))
    return TRAIN_IMAGES, ["empty data"]


def nan_in_float_images(good: GoodProject) -> tuple[str, list[str]]:
    x, _ = _train_arrays()
    x = x.astype(np.float32)
    x[7, 3, 3] = np.nan
    write_idx(good.src / TRAIN_IMAGES, x)
    return TRAIN_IMAGES, ["images contain NaN or infinite values", "first at index 7"]


def float64_beyond_float32(good: GoodProject) -> tuple[str, list[str]]:
    x, _ = _train_arrays()
    x = x.astype(np.float64)
    x[11, 2, 2] = 1e39  # finite in float64, inf in float32
    write_idx(good.src / TRAIN_IMAGES, x)
    return TRAIN_IMAGES, ["pixel values must fit in float32", "1 image(s), first at index 11"]


def huge_label(good: GoodProject) -> tuple[str, list[str]]:
    _, y = _train_arrays()
    y = y.astype(np.int32)
    y[8] = 2**31 - 1  # max + 1 classes would be 2^31 class names
    write_idx(good.src / TRAIN_LABELS, y)
    return TRAIN_LABELS, [
        "more classes than labelled images",
        "label 2147483647 at index 8",
        "data.num_classes",
    ]


def sizes_differ_between_splits(good: GoodProject) -> tuple[str, list[str]]:
    x, y = datagen.make_images(30, 10, 3, seed=2)
    datagen.write_idx_pair(good.src, "t10k", x, y)
    # Either image file may be named; the detail must give both shapes.
    return "-images-idx3-ubyte", ["inconsistent image sizes between splits", "[1, 8, 8]", "[1, 10, 10]"]


# Run as a real subprocess (`python -m pipelines.ingest`, as DVC does).
IDX_CASES: dict[str, Corruption] = {
    "bad-magic": bad_magic,
    "unknown-element-type": unknown_element_type,
    "images-2-dims": images_with_two_dims,
    "truncated-data": truncated_data,
    "trailing-bytes": trailing_bytes,
    "gz-truncated": gz_truncated,
    "gz-garbage-inside": gz_garbage_inside,
    "count-mismatch": count_mismatch,
    "labels-outside-range": labels_outside_range,
    "empty-train-split": empty_train_split,
    "sizes-differ-between-splits": sizes_differ_between_splits,
}
# Further variants of the same rules, through the same CLI entry point in-process (faster).
MORE_IDX_CASES: dict[str, Corruption] = {
    "labels-2-dims": labels_with_two_dims,
    "truncated-header": truncated_header,
    "empty-file": empty_file,
    "gz-not-gzip": gz_not_gzip,
    "gz-truncated-content": gz_truncated_content,
    "negative-labels": negative_labels,
    "float-labels": float_labels,
    "nan-in-float-images": nan_in_float_images,
    "float64-beyond-float32": float64_beyond_float32,
    "huge-label": huge_label,
}


# npz sources ---------------------------------------------------------------------------------


def _write_npz(good: GoodProject, **arrays: np.ndarray) -> str:
    """Point data.path at ``src_npz/data.npz`` holding exactly ``arrays``."""
    folder = good.project.root / "src_npz"
    folder.mkdir(exist_ok=True)
    np.savez(folder / "data.npz", **arrays)
    good.project.write_params(data={"source": "npz", "path": "src_npz/data.npz"})
    return "data.npz"


def _npz_arrays() -> dict[str, np.ndarray]:
    x, y = datagen.make_images(30, 8, 3, seed=6)
    xt, yt = datagen.make_images(12, 8, 3, seed=7)
    return {"x": x.astype(np.float32), "y": y.astype(np.int64), "x_test": xt.astype(np.float32), "y_test": yt}


def npz_nan(good: GoodProject) -> tuple[str, list[str]]:
    arrays = _npz_arrays()
    arrays["x"][4, 1, 1] = np.nan
    return _write_npz(good, **arrays), ["images contain NaN or infinite values", "first at index 4"]


def npz_inf_in_test(good: GoodProject) -> tuple[str, list[str]]:
    arrays = _npz_arrays()
    arrays["x_test"][2, 0, 0] = np.inf
    arrays["x_test"][9, 0, 0] = -np.inf
    return _write_npz(good, **arrays), ["images contain NaN or infinite values", "2 image(s)"]


def npz_object_array(good: GoodProject) -> tuple[str, list[str]]:
    arrays = _npz_arrays()
    arrays["y"] = np.array([1, "two", None] * 10, dtype=object)
    return _write_npz(good, **arrays), ["object arrays need pickle, which is refused"]


def npz_unexpected_key(good: GoodProject) -> tuple[str, list[str]]:
    return _write_npz(good, **_npz_arrays(), weights=np.zeros(3)), ["unexpected arrays ['weights']"]


def npz_missing_y(good: GoodProject) -> tuple[str, list[str]]:
    arrays = _npz_arrays()
    del arrays["y"]
    return _write_npz(good, **arrays), ["missing array 'y'"]


def npz_test_without_labels(good: GoodProject) -> tuple[str, list[str]]:
    arrays = _npz_arrays()
    del arrays["y_test"]
    return _write_npz(good, **arrays), ["x_test and y_test must be given together"]


def npz_not_an_archive(good: GoodProject) -> tuple[str, list[str]]:
    name = _write_npz(good, **_npz_arrays())
    (good.project.root / "src_npz" / name).write_bytes(b"PK\x03\x04 garbage, not a zip archive")
    return name, ["not a readable .npz archive"]


def npz_truncated_archive(good: GoodProject) -> tuple[str, list[str]]:
    name = _write_npz(good, **_npz_arrays())
    _edit_bytes(good.project.root / "src_npz" / name, lambda data: data[: len(data) // 2])
    return name, ["not a readable .npz archive"]


def npz_flat_images(good: GoodProject) -> tuple[str, list[str]]:
    arrays = _npz_arrays()
    arrays["x"] = arrays["x"].reshape(30, 64)
    return _write_npz(good, **arrays), ["array x must be N x H x W", "got shape [30, 64]"]


def npz_float_labels(good: GoodProject) -> tuple[str, list[str]]:
    arrays = _npz_arrays()
    arrays["y"] = arrays["y"].astype(np.float64)
    return _write_npz(good, **arrays), ["data.npz[y]: labels must be integers"]


def npz_float_labels_only(good: GoodProject) -> tuple[str, list[str]]:
    """Float labels and no test arrays: no integer label gives a class count, and the dtype rule
    must still be the one reported (not "at least 2 classes (got 0)")."""
    arrays = _npz_arrays()
    return _write_npz(good, x=arrays["x"], y=arrays["y"].astype(np.float64)), [
        "data.npz[y]: labels must be integers",
        "got float64",
    ]


def npz_one_hot_labels(good: GoodProject) -> tuple[str, list[str]]:
    arrays = _npz_arrays()
    one_hot = np.eye(10, dtype=np.int64)[arrays["y"]]  # (30, 10)
    return _write_npz(good, x=arrays["x"], y=one_hot), [
        "data.npz[y]: labels must be a 1-D array of class ids",
        "got shape [30, 10]",
    ]


def npz_float64_beyond_float32(good: GoodProject) -> tuple[str, list[str]]:
    """Every pixel finite in float64 but past float32's range: would be all-NaN after preprocess."""
    arrays = _npz_arrays()
    arrays["x"] = arrays["x"].astype(np.float64) * 1e39
    arrays["x"][0] = 1.0  # the first image fits: the detail must point at the next one
    return _write_npz(good, **arrays), [
        "data.npz[x]: pixel values must fit in float32",
        "29 image(s), first at index 1",
    ]


def npz_huge_label(good: GoodProject) -> tuple[str, list[str]]:
    arrays = _npz_arrays()
    arrays["y_test"] = arrays["y_test"].astype(np.int64)
    arrays["y_test"][0] = 2**62
    return _write_npz(good, **arrays), [
        "data.npz[y_test]: more classes than labelled images",
        f"label {2**62} at index 0",
        "set data.num_classes",
    ]


def npz_bool_images(good: GoodProject) -> tuple[str, list[str]]:
    arrays = _npz_arrays()
    arrays["x"] = arrays["x"] > 100
    return _write_npz(good, **arrays), ["images must be integer or floating-point numbers"]


def npz_sizes_differ(good: GoodProject) -> tuple[str, list[str]]:
    arrays = _npz_arrays()
    arrays["x_test"] = np.zeros((12, 10, 10), np.float32)
    return _write_npz(good, **arrays), ["inconsistent image sizes between splits"]


NPZ_CASES: dict[str, Corruption] = {
    "nan": npz_nan,
    "object-array": npz_object_array,
    "unexpected-key": npz_unexpected_key,
}
MORE_NPZ_CASES: dict[str, Corruption] = {
    "inf-in-test": npz_inf_in_test,
    "missing-y": npz_missing_y,
    "x-test-without-y-test": npz_test_without_labels,
    "not-an-archive": npz_not_an_archive,
    "truncated-archive": npz_truncated_archive,
    "flat-images": npz_flat_images,
    "float-labels": npz_float_labels,
    "bool-images": npz_bool_images,
    "sizes-differ": npz_sizes_differ,
    "float-labels-only": npz_float_labels_only,
    "one-hot-labels": npz_one_hot_labels,
    "float64-beyond-float32": npz_float64_beyond_float32,
    "huge-label": npz_huge_label,
}


# imagefolder sources -------------------------------------------------------------------------


def _image_folder(good: GoodProject) -> Path:
    """Point data.path at a good grey-scale class-folder tree ``src_img`` (cat/, dog/; 000..003)."""
    folder = datagen.write_image_folder(good.project.root / "src_img", per_class=4)
    good.project.write_params(data={"source": "imagefolder", "path": "src_img"})
    return folder


def _odd_size_png(good: GoodProject, relative: str) -> tuple[str, list[str]]:
    folder = _image_folder(good)
    Image.fromarray(np.full((10, 10), 77, np.uint8), mode="L").save(folder / relative)
    return relative, ["inconsistent image sizes: every image must have the same width x height", "10x10"]


def png_odd_size_later(good: GoodProject) -> tuple[str, list[str]]:
    return _odd_size_png(good, "dog/002.png")


def png_odd_size_first(good: GoodProject) -> tuple[str, list[str]]:
    return _odd_size_png(good, "cat/000.png")


def png_garbage(good: GoodProject) -> tuple[str, list[str]]:
    folder = _image_folder(good)
    (folder / "dog" / "001.png").write_bytes(b"definitely not a PNG")
    return "dog/001.png", ["file cannot be decoded as an image"]


def png_truncated(good: GoodProject) -> tuple[str, list[str]]:
    folder = _image_folder(good)
    _edit_bytes(folder / "cat" / "003.png", lambda data: data[: len(data) // 2])
    return "cat/003.png", ["file cannot be decoded as an image"]


def png_corrupt_pixel_data(good: GoodProject) -> tuple[str, list[str]]:
    folder = _image_folder(good)

    def flip(data: bytearray) -> bytearray:
        start = data.find(b"IDAT") + 6
        data[start] ^= 0xFF
        return data

    _edit_bytes(folder / "cat" / "002.png", flip)
    return "cat/002.png", ["file cannot be decoded as an image"]


def text_file_in_class_folder(good: GoodProject) -> tuple[str, list[str]]:
    folder = _image_folder(good)
    (folder / "dog" / "notes.txt").write_text("labelled by Bob\n")
    return "dog/notes.txt", ["file cannot be decoded as an image"]


IMAGEFOLDER_CASES: dict[str, Corruption] = {
    "odd-size-later": png_odd_size_later,
    "odd-size-first": png_odd_size_first,
    "garbage-png": png_garbage,
    "truncated-png": png_truncated,
    "corrupt-pixel-data": png_corrupt_pixel_data,
    "text-file": text_file_in_class_folder,
}


# every case above, through the ingest CLI ------------------------------------------------------


def _named(**groups: dict[str, Corruption]) -> dict[str, Corruption]:
    """Cases of several sources in one table, ids prefixed with the source (``idx-bad-magic``)."""
    return {f"{source}-{name}": case for source, cases in groups.items() for name, case in cases.items()}


SUBPROCESS_CASES = _named(idx=IDX_CASES, npz=NPZ_CASES)
IN_PROCESS_CASES = _named(idx=MORE_IDX_CASES, npz=MORE_NPZ_CASES, imagefolder=IMAGEFOLDER_CASES)


@pytest.mark.parametrize("corrupt", SUBPROCESS_CASES.values(), ids=SUBPROCESS_CASES.keys())
def test_corrupt_source_is_refused_and_outputs_kept(good: GoodProject, corrupt: Corruption) -> None:
    """A broken source file fails `python -m pipelines.ingest` (exit 2, no traceback) naming the file
    and rule; data/ is byte-identical and no temp folder is left."""
    file_name, phrases = corrupt(good)
    assert_refused(good, "ingest", file_name, phrases)


@pytest.mark.parametrize("corrupt", IN_PROCESS_CASES.values(), ids=IN_PROCESS_CASES.keys())
def test_more_corrupt_sources_are_refused_and_outputs_kept(
    good: GoodProject, corrupt: Corruption, capsys: pytest.CaptureFixture[str]
) -> None:
    """More broken files (IDX header/labels/.gz/NaN, npz arrays, odd or undecodable images) fail the
    ingest CLI's entry point the same way, in-process: a subprocess would spend ~12 s importing
    torchvision per image-folder case."""
    file_name, phrases = corrupt(good)
    assert_refused(good, "ingest", file_name, phrases, capsys)


# rules that once failed (regression tests) ----------------------------------------------------


def test_idx_header_with_overflowing_dimensions_is_refused(
    good: GoodProject, capsys: pytest.CaptureFixture[str]
) -> None:
    """A header whose dimensions multiply past 2^63 is still reported as truncated data."""
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2**31, 2**31, 4)
    (good.src / TRAIN_IMAGES).write_bytes(header)
    assert_refused(good, "ingest", TRAIN_IMAGES, ["truncated IDX data"], capsys)


def test_empty_single_pair_is_reported_as_empty(
    good: GoodProject, capsys: pytest.CaptureFixture[str]
) -> None:
    """A source whose only IDX pair holds 0 images is reported as empty data, naming the file."""
    for file in good.src.glob("t10k-*"):
        file.unlink()
    datagen.write_idx_pair(good.src, "train", np.zeros((0, 8, 8), np.uint8), np.zeros(0, np.uint8))
    assert_refused(good, "ingest", TRAIN_IMAGES, ["empty data"], capsys)


def test_npz_error_names_the_array(good: GoodProject, capsys: pytest.CaptureFixture[str]) -> None:
    """An npz error names the array inside the archive (``data.npz[x_test]``), not only the file."""
    arrays = _npz_arrays()
    arrays["x_test"][0, 0, 0] = np.nan
    _write_npz(good, **arrays)
    assert_refused(good, "ingest", "data.npz[x_test]", ["NaN"], capsys)


# preprocess refuses a tampered raw folder ----------------------------------------------------


def _tamper_split(good: GoodProject) -> tuple[str, list[str]]:
    _edit_bytes(good.data / "raw" / "train.safetensors", lambda data: data[:-1] + bytes([data[-1] ^ 1]))
    return "train.safetensors", ["sha256 differs", "the file changed after ingest wrote it"]


def _delete_split(good: GoodProject) -> tuple[str, list[str]]:
    (good.data / "raw" / "test.safetensors").unlink()
    return "test.safetensors", ["is missing"]


def _delete_manifest(good: GoodProject) -> tuple[str, list[str]]:
    (good.data / "raw" / "manifest.json").unlink()
    return "manifest.json", ["manifest not found", "run the ingest stage first"]


def _edit_raw_manifest(good: GoodProject, edit: Callable[[dict[str, Any]], None]) -> None:
    path = good.data / "raw" / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def _split_without_file(good: GoodProject) -> tuple[str, list[str]]:
    _edit_raw_manifest(good, lambda m: m["splits"]["train"].pop("file"))
    return "manifest.json", ["split 'train' must be an object with 'file'"]


def _splits_as_list(good: GoodProject) -> tuple[str, list[str]]:
    def to_list(manifest: dict[str, Any]) -> None:
        manifest["splits"] = list(manifest["splits"].values())

    _edit_raw_manifest(good, to_list)
    return "manifest.json", ["must hold 'splits' as a JSON object", "got list"]


def _no_num_classes(good: GoodProject) -> tuple[str, list[str]]:
    _edit_raw_manifest(good, lambda m: m.pop("num_classes"))
    return "manifest.json", ["must hold 'num_classes' as a JSON integer", "got nothing"]


@pytest.mark.parametrize(
    ("tamper", "in_process"),
    [
        (_tamper_split, False),
        (_delete_split, True),
        (_delete_manifest, True),
        (_split_without_file, True),
        (_splits_as_list, True),
        (_no_num_classes, True),
    ],
    ids=["modified", "deleted", "no-manifest", "split-without-file", "splits-as-list", "no-num-classes"],
)
def test_preprocess_refuses_raw_folder_changed_after_ingest(
    good: GoodProject, tamper: Corruption, in_process: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """preprocess checks the raw manifest's structure and sha256s: a changed, missing or unlisted
    split file, or a manifest without the keys preprocess reads, fails (exit 2, naming the file),
    and data/prepared stays byte-identical."""
    prepared_before = {k: v for k, v in good.before.items() if k.startswith("prepared/")}
    file_name, phrases = tamper(good)
    good.before = snapshot(good.data)  # the tampered raw folder must not be touched either
    assert {k: v for k, v in good.before.items() if k.startswith("prepared/")} == prepared_before
    assert_refused(good, "preprocess", file_name, phrases, capsys if in_process else None)


# preprocess refuses ingested data it cannot split or normalise soundly ----------------------------


def _labels_skip_ids(good: GoodProject) -> tuple[str, list[str]]:
    """IDX labels {0, 5}: ingest infers 6 classes, of which 1..4 have no image."""
    for prefix, seed in (("train", 1), ("t10k", 2)):
        x, y = datagen.make_images(30, 8, 2, seed=seed)
        datagen.write_idx_pair(good.src, prefix, x, (y * 5).astype(np.uint8))
    return "train.safetensors", [
        "every class needs images in the train split",
        "class(es) 1, 2, 3, 4 have none in the train split",
        "data.num_classes",
    ]


def _declared_classes_beyond_the_data(good: GoodProject) -> tuple[str, list[str]]:
    good.project.write_params(data={**IDX_PARAMS, "num_classes": 5})  # the data has classes 0..2
    return "train.safetensors", ["class(es) 3, 4 have none in the train split"]


def _train_file_lacks_a_class(good: GoodProject) -> tuple[str, list[str]]:
    x, y = datagen.make_images(60, 8, 2, seed=1)  # classes 0, 1; the t10k file also has 2
    datagen.write_idx_pair(good.src, "train", x, y)
    return "train.safetensors", ["every class needs images in the train split", "class(es) 2 have none"]


def _test_file_lacks_a_class(good: GoodProject) -> tuple[str, list[str]]:
    x, y = datagen.make_images(30, 8, 2, seed=2)  # classes 0, 1; the train file also has 2
    datagen.write_idx_pair(good.src, "t10k", x, y)
    return "test.safetensors", [
        "every class needs images in the test split",
        "class(es) 2 have none in the test split",
        "macro-F1",
    ]


def _normalisation_overflows_float32(good: GoodProject) -> tuple[str, list[str]]:
    """Every pixel fits in float32, but one pixel per image sits ~6e38 below the training mean:
    ``pixels - mean`` is -inf in float32."""
    for prefix, n in (("train", 60), ("t10k", 30)):
        _, y = datagen.make_images(n, 8, 3, seed=1)
        x = np.full((n, 8, 8), 3e38, np.float32)
        x[:, 0, 0] = -3e38
        x[:, 1, 1] = y  # not constant
        datagen.write_idx_pair(good.src, prefix, x, y)
    return "train.safetensors", ["normalised pixel values must be finite in float32", "train split"]


@pytest.mark.parametrize(
    "corrupt",
    [
        _labels_skip_ids,
        _declared_classes_beyond_the_data,
        _train_file_lacks_a_class,
        _test_file_lacks_a_class,
        _normalisation_overflows_float32,
    ],
    ids=["labels-skip-ids", "num-classes-beyond-data", "train-lacks-class", "test-lacks-class", "overflow"],
)
def test_preprocess_refuses_data_it_cannot_split_or_normalise(
    good: GoodProject, corrupt: Corruption, capsys: pytest.CaptureFixture[str]
) -> None:
    """Data that meets the ingest contract but would train or evaluate wrongly (classes without a
    train or test image, pixels that overflow float32 once normalised) passes ingest and fails
    preprocess (exit 2, naming the raw file, the split and the rule) before data/prepared is touched."""
    prepared_before = {k: v for k, v in good.before.items() if k.startswith("prepared/")}
    file_name, phrases = corrupt(good)
    code, stderr = run_in_process(good.project, "ingest", capsys)
    assert code == 0, stderr
    good.before = snapshot(good.data)
    assert {k: v for k, v in good.before.items() if k.startswith("prepared/")} == prepared_before
    assert_refused(good, "preprocess", file_name, phrases, capsys)


def test_good_project_reruns_cleanly(good: GoodProject) -> None:
    """Control: re-running ingest on the untouched source succeeds and rewrites identical bytes."""
    result = good.project.run("ingest")
    assert result.returncode == 0, result.stderr
    assert_outputs_intact(good)


# atomic_directory ------------------------------------------------------------------------------


class Crash(BaseException):
    """Stands in for the process dying (not an Exception, so nothing catches it by accident)."""


def _fill(folder: Path, tag: str) -> dict[str, str]:
    """Write a couple of files (one nested) tagged ``tag``; return their relative paths -> text."""
    files = {"a.txt": f"{tag}-a", "nested/b.txt": f"{tag}-b"}
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return files


def _contents(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt, Crash])
def test_atomic_directory_keeps_old_content_when_block_raises(
    tmp_path: Path, error: type[BaseException]
) -> None:
    """An exception inside the block leaves the old folder as it was and no temp sibling behind."""
    target = tmp_path / "out"
    target.mkdir()
    old = _fill(target, "old")

    def write_then_fail() -> None:
        with atomic_directory(target) as tmp:
            assert tmp.parent == tmp_path
            assert tmp.name.startswith(".out")
            _fill(tmp, "new")
            (tmp / "extra.txt").write_text("half-written")
            raise error()

    with pytest.raises(error):
        write_then_fail()
    assert _contents(target) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_directory_replaces_content_on_success(tmp_path: Path) -> None:
    """On success the target holds exactly the new files (no stale old file) and nothing else."""
    target = tmp_path / "out"
    target.mkdir()
    _fill(target, "old")
    (target / "stale.txt").write_text("only in old")
    with atomic_directory(target) as tmp:
        new = _fill(tmp, "new")
        assert _contents(target)["a.txt"] == "old-a"  # not visible until the block ends
    assert _contents(target) == new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def _dead_pid() -> int:
    """The pid of a process that has already exited."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_atomic_directory_recovers_from_manual_crash_between_renames(tmp_path: Path) -> None:
    """Old version renamed aside, target gone: the next call puts the old version back first."""
    target = tmp_path / "out"
    aside = tmp_path / f".out.old-{os.getpid()}-deadbeef"
    aside.mkdir()
    old = _fill(aside, "old")
    stale_tmp = tmp_path / f".out.tmp-{_dead_pid()}-cafebabe"  # its writer has exited
    stale_tmp.mkdir()
    (stale_tmp / "half.txt").write_text("half-written")

    with atomic_directory(target) as tmp:
        assert _contents(target) == old  # restored before the block writes anything
        assert not aside.exists()
        assert not stale_tmp.exists()
        new = _fill(tmp, "new")
    assert _contents(target) == new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_directory_recovers_from_real_crash_between_renames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dying right after the old version is renamed aside loses nothing: the next call restores it,
    even if that call fails too."""
    target = tmp_path / "out"
    target.mkdir()
    old = _fill(target, "old")
    real_rename = Path.rename

    def crash_on_swap_in(self: Path, destination: Path | str) -> Path:
        if ".tmp-" in self.name:
            raise Crash  # the process dies between `target -> old` and `tmp -> target`
        return real_rename(self, destination)

    monkeypatch.setattr(Path, "rename", crash_on_swap_in)
    with pytest.raises(Crash), atomic_directory(target) as tmp:
        _fill(tmp, "new")
    monkeypatch.undo()
    assert not target.exists()
    assert any(p.name.startswith(".out.old-") for p in tmp_path.iterdir())

    with pytest.raises(ValueError, match="second run fails"), atomic_directory(target):
        raise ValueError("second run fails")
    assert _contents(target) == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_atomic_directory_drops_old_copy_left_after_second_rename(tmp_path: Path) -> None:
    """Dying after the new version is in place but before the old copy is deleted keeps the new one."""
    target = tmp_path / "out"
    target.mkdir()
    new = _fill(target, "new")
    aside = tmp_path / ".out.old-1-0badf00d"
    aside.mkdir()
    _fill(aside, "old")
    with pytest.raises(RuntimeError), atomic_directory(target):
        raise RuntimeError
    assert _contents(target) == new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
