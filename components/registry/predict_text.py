"""Batch prediction with a registered text model: a file of texts in, one CSV row per text out.

The file is a ``.tsv``, ``.csv``, ``.jsonl`` or ``.parquet`` (its text column, ``data.text_column``,
read by the readers ingestion uses; a label column may be there and is ignored) or a ``.txt``, one
text a line. Every text must be a non-blank string, the rule ingestion applies: an empty line, or a
file that is not UTF-8, is refused naming the file and the line, before anything is predicted or
written. The registered model encodes the strings itself, with the tokenizer it was trained with.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from components.atomic import atomic_write_text
from components.data.text_files import READERS, checked_text, read_records, read_text_lines
from components.errors import DataSourceError, DataValidationError
from components.registry.package import TEXT_COLUMN

TEXT_SUFFIXES = (*READERS, ".txt")


@dataclass(frozen=True)
class TextInputs:
    """Raw strings to predict on and where each was read (``line 3``, or ``row 2`` of a Parquet)."""

    texts: list[str]
    ids: list[str]


def takes_texts(model: Any) -> bool:
    """Whether the loaded pyfunc ``model``'s signature takes a ``text`` column (not pixels)."""
    schema = model.metadata.get_input_schema()
    return schema is not None and not schema.is_tensor_spec() and schema.input_names() == [TEXT_COLUMN]


def read_texts(path: Path | str, text_column: str) -> TextInputs:
    """The texts of ``path`` (see the module docstring), checked one by one."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "no such file"
        raise DataSourceError(f"{path}: {what}; a text model predicts on one {', '.join(TEXT_SUFFIXES)} file")
    suffix = path.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        kinds = ", ".join(TEXT_SUFFIXES)
        given = suffix or "no extension"
        raise DataSourceError(f"{path}: a text model predicts on a {kinds} file, not {given}")
    records = read_text_lines(path) if suffix == ".txt" else read_records(path, text_column, None)
    if not records:
        raise DataValidationError(path, "holds no texts to predict on")
    texts = [checked_text(path, record) for record in records]
    return TextInputs(texts, [record.where for record in records])


def predict_texts(
    model: Any,
    source: Path | str,
    out_csv: Path | str,
    *,
    text_column: str,
    batch_size: int,
    on_batch: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Predict every text of ``source`` with the loaded text ``model``; write ``out_csv`` atomically:
    ``id`` (where the text was read), ``text``, then the model's columns (class id, name,
    probability, one probability per class)."""
    inputs = read_texts(source, text_column)
    frames = []
    total = len(inputs.texts)
    for start in range(0, total, batch_size):
        frames.append(model.predict(pd.DataFrame({TEXT_COLUMN: inputs.texts[start : start + batch_size]})))
        if on_batch is not None:
            on_batch(min(start + batch_size, total), total)
    result = pd.concat(frames, ignore_index=True)
    result.insert(0, "text", inputs.texts)
    result.insert(0, "id", inputs.ids)
    buffer = io.StringIO()
    result.to_csv(buffer, index=False, quoting=csv.QUOTE_MINIMAL, float_format="%.6g")
    atomic_write_text(out_csv, buffer.getvalue())
    return result
