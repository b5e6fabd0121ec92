"""Ingest stage: read a source, check the data contract, write ``data/raw`` atomically.

Output folder of an image source (a ``text`` source's is described in
:mod:`components.data.text_raw`)::

    data/raw/
      <split>.safetensors   images (N x C x H x W, source dtype) and labels (N, int64)
      manifest.json         source, input sha256s, per split: file sha256, count, shape,
                            dtype, pixel range, count per class

Splits are ``train`` + ``test`` when the source has its own test split, else ``all``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from components.atomic import atomic_directory, atomic_write_json
from components.config import DataParams
from components.data.contract import RawSplit, SourceData, check_source
from components.data.manifest import MANIFEST
from components.data.sources import load_source
from components.data.tensorfile import save_arrays
from components.data.text_raw import TextSourceData, write_text_raw
from components.errors import DataSourceError
from components.hashing import sha256_file

FORMAT_VERSION = 1


def _split_entry(file: Path, split: RawSplit, num_classes: int) -> dict[str, Any]:
    images = split.images
    return {
        "file": file.name,
        "sha256": sha256_file(file),
        "count": len(images),
        "image_shape": [int(d) for d in images.shape[1:]],
        "dtype": str(images.dtype),
        "pixel_range": [float(images.min()), float(images.max())],
        "class_counts": np.bincount(split.labels, minlength=num_classes).tolist(),
    }


def build_manifest(params: DataParams, data: SourceData, folder: Path) -> dict[str, Any]:
    """The manifest for ``data`` already written to ``folder``."""
    return {
        "stage": "ingest",
        "format": FORMAT_VERSION,
        "source": params.source,
        "num_classes": data.num_classes,
        "class_names": data.class_names,
        "inputs": {name: sha256_file(path) for name, path in sorted(data.inputs.items())},
        "splits": {
            name: _split_entry(folder / f"{name}.safetensors", split, data.num_classes)
            for name, split in data.splits.items()
        },
    }


def ingest(params: DataParams, out_dir: Path | str, root: Path | str = ".") -> dict[str, Any]:
    """Read ``params.source``, validate it, and replace ``out_dir`` with the raw arrays.

    Args:
        params: the ``data`` section.
        out_dir: output folder (``data/raw``); replaced only when everything succeeded.
        root: folder that relative ``data.path`` values are resolved against.

    Returns:
        The manifest written to ``out_dir/manifest.json``.
    """
    data = load_source(params, Path(root))
    if params.num_classes is not None and params.num_classes != data.num_classes:
        raise DataSourceError(
            f"data.num_classes={params.num_classes}, but data.source={params.source} has "
            f"{data.num_classes} classes ({', '.join(data.class_names)}); set it to "
            f"{data.num_classes} or null"
        )
    if isinstance(data, TextSourceData):  # every record already checked by the text source
        with atomic_directory(out_dir) as tmp:
            return write_text_raw(params, data, tmp)
    check_source(data)
    with atomic_directory(out_dir) as tmp:
        for name, split in data.splits.items():
            labels = split.labels.astype(np.int64)  # checked: integers in 0..num_classes-1
            save_arrays(tmp / f"{name}.safetensors", {"images": split.images, "labels": labels})
        manifest = build_manifest(params, data, tmp)
        atomic_write_json(tmp / MANIFEST, manifest)
    return manifest
