"""``text``: labelled texts in ``.tsv``, ``.csv``, ``.jsonl`` or ``.parquet`` files (docs/text.md).

``data.path`` is one file (one pool, raw split ``all``) or a folder with ``train.*`` and ``test.*``
(kept as splits) and optionally ``dev.*`` or ``validation.*`` (the validation split ``val``);
other files in the folder are ignored. Columns ``data.text_column`` and ``data.label_column``.

Labels are either all integers (a JSON/Parquet integer, or ASCII digits with an optional leading
``-``): class ids 0..K-1, K = ``data.num_classes`` or the largest + 1; or all class names (none
reads as an integer): the classes are the names sorted, class id i the i-th name. A mix is
refused at its first label of the rarer kind (a typo such as ``1x`` among 0/1 labels would
otherwise make a class of its own). Every record is checked and the first bad one fails the stage
naming its file, line and rule; none is skipped.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import numpy as np

from components.config import DataParams
from components.data.sources._paths import source_path
from components.data.text_files import READERS, Label, Record, bad_record, checked_text, read_records
from components.data.text_raw import TextSourceData, TextSplit
from components.errors import DataSourceError, DataValidationError

SPLIT_STEMS = {"train": ("train",), "val": ("dev", "validation"), "test": ("test",)}
"""Raw split -> file stems that hold it in a folder."""
_INTEGER = re.compile(r"-?[0-9]+")


def _split_files(folder: Path) -> dict[str, Path]:
    """``{"train": ..., "test": ...}`` (+ ``"val"``) from ``folder``: one file per split."""
    found: dict[str, Path] = {}
    for split, stems in SPLIT_STEMS.items():
        files = sorted(f for stem in stems for f in folder.glob(f"{stem}.*") if not f.name.startswith("."))
        if len(files) > 1:
            raise DataSourceError(
                f"data.path={folder}: {len(files)} files for the {split} split "
                f"({', '.join(f.name for f in files)}); keep one"
            )
        if files:
            found[split] = files[0]
    if "train" not in found or "test" not in found:
        present = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        raise DataSourceError(
            f"data.path={folder}: a text folder needs train.* and test.* files (optional dev.* or "
            f"validation.*) in one of the formats {', '.join(READERS)}; found "
            f"{', '.join(present) or 'nothing'}"
        )
    return {split: found[split] for split in ("train", "val", "test") if split in found}


def _check_record(file: Path, record: Record) -> None:
    """The per-record rules: a non-blank text that encodes as UTF-8, and a label."""
    checked_text(file, record)
    label = record.label
    if label is None or label == "":
        raise bad_record(file, record.where, "missing label")
    if isinstance(label, str) and label != label.strip():
        raise bad_record(file, record.where, "label has leading or trailing whitespace", repr(label))


def _is_integer(label: Label) -> bool:
    return isinstance(label, int) or (isinstance(label, str) and _INTEGER.fullmatch(label) is not None)


def _as_int(label: Label) -> int:
    """An integer label's value; digit strings too long for ``int()`` (over 4300 digits) are out
    of every class range anyway, so they read as +-10**18."""
    if isinstance(label, int):
        return label
    text = str(label)
    return int(text) if len(text) <= 19 else (-1 if text.startswith("-") else 1) * 10**18


def _integer_ids(
    records: dict[Path, list[Record]], declared: int | None, total: int
) -> dict[Path, np.ndarray]:
    """Integer labels as class ids, each in 0..K-1 (``declared`` K, else at most ``total`` classes)."""
    ids: dict[Path, np.ndarray] = {}
    for file, rows in records.items():
        values = [_as_int(r.label) for r in rows]
        for record, value in zip(rows, values, strict=True):
            shown = str(record.label)[:40]
            if value < 0 or (declared is not None and value >= declared):
                top = f"{declared - 1} (data.num_classes={declared})" if declared else "K-1"
                raise bad_record(file, record.where, f"label {shown} is not a class id 0..{top}")
            if declared is None and value >= total:
                raise bad_record(
                    file,
                    record.where,
                    f"label {shown} would make more classes than the {total} labelled texts",
                    "labels must be class ids 0..K-1; set data.num_classes to have every label "
                    "out of range reported",
                )
        ids[file] = np.asarray(values, dtype=np.int64)
    return ids


def _refuse_mixed(records: dict[Path, list[Record]], integer_labels: bool) -> None:
    """Name the first label of the minority kind (non-integers when at least half are integers)."""
    for file, rows in records.items():
        for record in rows:
            if _is_integer(record.label) != integer_labels:
                rule = (
                    "label is not an integer, but other labels are (labels are all class ids 0..K-1 "
                    "or all class names)"
                    if integer_labels
                    else "label is an integer, but other labels are class names (labels are all "
                    "class ids 0..K-1 or all class names)"
                )
                raise bad_record(file, record.where, rule, repr(record.label)[:60])


def _resolve_labels(
    records: dict[Path, list[Record]], declared: int | None
) -> tuple[dict[Path, np.ndarray], list[str], Literal["integer", "name"]]:
    """(class ids per file, class names, label kind) by the rule in the module docstring."""
    labels = [r.label for rows in records.values() for r in rows]
    integers = sum(_is_integer(label) for label in labels)
    if 0 < integers < len(labels):
        _refuse_mixed(records, integer_labels=2 * integers >= len(labels))
    if integers:
        ids = _integer_ids(records, declared, total=len(labels))
        count = declared or max(int(a.max()) for a in ids.values()) + 1
        return ids, [str(c) for c in range(count)], "integer"
    names = sorted({str(label) for label in labels})
    position = {name: i for i, name in enumerate(names)}
    ids = {
        file: np.asarray([position[str(r.label)] for r in rows], dtype=np.int64)
        for file, rows in records.items()
    }
    return ids, names, "name"


def load_text(params: DataParams, root: Path) -> TextSourceData:
    """Read and check every file of ``data.path``; nothing is written here."""
    path = source_path(params, root)
    if path.is_dir():
        files = _split_files(path)
    elif path.is_file():
        files = {"all": path}
    else:
        raise DataSourceError(f"data.path={path}: no such file or folder (data.source=text)")
    records: dict[Path, list[Record]] = {}
    for file in files.values():
        rows = read_records(file, params.text_column, params.label_column)
        if not rows:
            raise DataValidationError(file, "empty data: the file holds no records after its header")
        for record in rows:
            _check_record(file, record)
        records[file] = rows
    ids, class_names, kind = _resolve_labels(records, params.num_classes)
    if len(class_names) < 2:
        raise DataValidationError(
            next(iter(files.values())), "a classifier needs at least 2 classes", f"got {class_names}"
        )
    splits = {
        split: TextSplit(texts=[r.text or "" for r in records[file]], labels=ids[file], file=file)
        for split, file in files.items()
    }
    return TextSourceData(splits, class_names, kind, inputs={file.name: file for file in files.values()})
