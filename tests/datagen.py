"""Tiny data sets written by the tests themselves: IDX pairs, PNG class folders, npz archives,
labelled-text files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.data.idx import write_idx


def make_images(n: int, size: int = 8, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 images (n, size, size) whose mean brightness encodes the class, and labels.

    Labels cycle through the classes so every class has ``n // classes`` or more samples.
    """
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    base = (labels * (200 // max(classes - 1, 1)))[:, None, None]
    noise = rng.integers(0, 40, size=(n, size, size))
    images = np.clip(base + noise, 0, 255).astype(np.uint8)
    return images, labels.astype(np.uint8)


def write_idx_pair(
    folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool = False
) -> tuple[Path, Path]:
    """Write ``<prefix>-images-idx3-ubyte`` and ``<prefix>-labels-idx1-ubyte`` (``.gz`` if asked)."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if gz else ""
    image_file = folder / f"{prefix}-images-idx3-ubyte{suffix}"
    label_file = folder / f"{prefix}-labels-idx1-ubyte{suffix}"
    write_idx(image_file, images)
    write_idx(label_file, labels)
    return image_file, label_file


def write_idx_dataset(
    folder: Path, n_train: int = 60, n_test: int = 30, classes: int = 3, size: int = 8, gz: bool = False
) -> Path:
    """An MNIST-style folder: a ``train`` and a ``t10k`` pair."""
    x, y = make_images(n_train, size, classes, seed=1)
    write_idx_pair(folder, "train", x, y, gz)
    x, y = make_images(n_test, size, classes, seed=2)
    write_idx_pair(folder, "t10k", x, y, gz)
    return folder


def write_torchvision_raw(root: Path, class_name: str = "MNIST", n_train: int = 40, n_test: int = 20) -> Path:
    """``root/<class_name>/raw`` with the four uncompressed files torchvision's class expects."""
    raw = root / class_name / "raw"
    x, y = make_images(n_train, 28, 10, seed=3)
    write_idx_pair(raw, "train", x, y)
    x, y = make_images(n_test, 28, 10, seed=4)
    write_idx_pair(raw, "t10k", x, y)
    return raw


def write_image_folder(
    folder: Path,
    per_class: int = 4,
    classes: tuple[str, ...] = ("cat", "dog"),
    size: int = 8,
    mode: str = "L",
) -> Path:
    """One sub-folder of PNGs per class."""
    from PIL import Image

    images, _ = make_images(per_class * len(classes), size, len(classes), seed=5)
    for c, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = images[c + i * len(classes)]
            image = Image.fromarray(pixels, mode="L")
            if mode != "L":
                image = image.convert(mode)
            image.save(folder / name / f"{i:03d}.png")
    return folder


def write_npz(
    path: Path, n: int = 60, n_test: int = 0, classes: int = 3, size: int = 8, **extra: np.ndarray
) -> Path:
    """An archive with ``x``/``y`` (and ``x_test``/``y_test`` when ``n_test``); ``extra`` overrides."""
    x, y = make_images(n, size, classes, seed=6)
    arrays: dict[str, np.ndarray] = {"x": x.astype(np.float32), "y": y.astype(np.int64)}
    if n_test:
        xt, yt = make_images(n_test, size, classes, seed=7)
        arrays |= {"x_test": xt.astype(np.float32), "y_test": yt.astype(np.int64)}
    arrays |= extra
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def write_text_file(
    path: Path, rows: list[tuple[str, str | int]], columns: tuple[str, str] = ("text", "label")
) -> Path:
    """``rows`` of (text, label) as a labelled-text file in the format of ``path``'s extension:
    ``.tsv`` (no quoting: texts must hold no tab or newline), ``.csv`` (standard quoting),
    ``.jsonl`` or ``.parquet``; header row / keys / column names ``columns``."""
    import csv
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".tsv":
        lines = ["\t".join(columns), *(f"{text}\t{label}" for text, label in rows)]
        path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    elif path.suffix == ".csv":
        with path.open("w", encoding="utf-8", newline="") as handle:
            csv.writer(handle, lineterminator="\n").writerows([columns, *rows])
    elif path.suffix == ".jsonl":
        objects = [json.dumps(dict(zip(columns, row, strict=True)), ensure_ascii=False) for row in rows]
        path.write_text("".join(line + "\n" for line in objects), encoding="utf-8")
    elif path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        texts, labels = zip(*rows, strict=True)
        pq.write_table(pa.table({columns[0]: list(texts), columns[1]: list(labels)}), path)
    else:
        raise ValueError(f"no writer for {path.suffix}")
    return path
