"""Raw text splits (``data/raw`` of a ``text`` source): texts and labels in safetensors, no pickle.

One file per split, arrays::

    text_bytes    (B,)   uint8   every text's UTF-8 bytes, concatenated
    text_offsets  (N+1,) int64   text i is text_bytes[text_offsets[i]:text_offsets[i + 1]]
    labels        (N,)   int64   class ids 0..K-1

manifest.json adds ``"kind": "text"`` to the ingest manifest of images, with per split the
file, sha256, count and count per class, and the columns and label kind that were read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from components.atomic import atomic_write_json
from components.config import DataParams
from components.data.manifest import MANIFEST
from components.data.tensorfile import load_arrays, save_arrays
from components.errors import DataValidationError
from components.hashing import sha256_file

FORMAT_VERSION = 1
KIND = "text"
ARRAYS = ("text_bytes", "text_offsets", "labels")


@dataclass(frozen=True)
class TextSplit:
    """One split of a text source."""

    texts: list[str]
    labels: np.ndarray
    """(N,) int64 class ids."""
    file: Path
    """File the split was read from."""


@dataclass(frozen=True)
class TextSourceData:
    """Everything a text source yields: its splits (``train``/``val``/``test`` or ``all``), the
    class names (sorted names, or ``"0".."K-1"`` for integer labels) and the files read."""

    splits: dict[str, TextSplit]
    class_names: list[str]
    label_kind: Literal["integer", "name"]
    inputs: dict[str, Path] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def pack_texts(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``texts`` as (UTF-8 bytes (B,) uint8, offsets (N+1,) int64)."""
    encoded = [text.encode("utf-8") for text in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)  # (N+1,)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def unpack_texts(text_bytes: np.ndarray, offsets: np.ndarray, file: Path) -> list[str]:
    """Inverse of :func:`pack_texts`; offsets that do not slice the buffer, or bytes that are not
    UTF-8, are a :class:`DataValidationError` naming ``file``."""
    if (
        text_bytes.dtype != np.uint8
        or offsets.dtype != np.int64
        or offsets.ndim != 1
        or len(offsets) == 0
        or offsets[0] != 0
        or offsets[-1] != len(text_bytes)
        or np.any(np.diff(offsets) < 0)
    ):
        raise DataValidationError(file, "text_offsets must slice text_bytes (uint8) from 0 to its end")
    data = text_bytes.tobytes()
    try:
        return [
            data[a:b].decode("utf-8")
            for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)
        ]
    except UnicodeDecodeError as exc:
        raise DataValidationError(file, "text_bytes must be UTF-8", str(exc)) from None


def read_text_split(file: Path) -> tuple[list[str], np.ndarray]:
    """(texts, labels (N,) int64) of a raw text split file."""
    arrays = load_arrays(file, required=ARRAYS)
    texts = unpack_texts(arrays["text_bytes"], arrays["text_offsets"], file)
    labels = arrays["labels"]
    if labels.dtype != np.int64 or labels.shape != (len(texts),):
        raise DataValidationError(file, "labels must be one int64 class id per text", f"shape {labels.shape}")
    return texts, labels


def write_text_raw(params: DataParams, data: TextSourceData, folder: Path) -> dict[str, Any]:
    """Write every split and the manifest into ``folder`` (a fresh temporary folder)."""
    splits: dict[str, Any] = {}
    for name, split in data.splits.items():
        file = folder / f"{name}.safetensors"
        text_bytes, offsets = pack_texts(split.texts)
        save_arrays(file, {"text_bytes": text_bytes, "text_offsets": offsets, "labels": split.labels})
        splits[name] = {
            "file": file.name,
            "sha256": sha256_file(file),
            "count": len(split.texts),
            "class_counts": np.bincount(split.labels, minlength=data.num_classes).tolist(),
            "read_from": split.file.name,
        }
    manifest = {
        "stage": "ingest",
        "format": FORMAT_VERSION,
        "kind": KIND,
        "source": params.source,
        "num_classes": data.num_classes,
        "class_names": data.class_names,
        "label_kind": data.label_kind,
        "columns": {"text": params.text_column, "label": params.label_column},
        "inputs": {name: sha256_file(path) for name, path in sorted(data.inputs.items())},
        "splits": splits,
    }
    atomic_write_json(folder / MANIFEST, manifest)
    return manifest
