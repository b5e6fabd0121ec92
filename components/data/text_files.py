"""Readers of labelled-text files, one per format: ``.tsv``, ``.csv``, ``.jsonl``, ``.parquet``.

Each returns the file's records in file order as :class:`Record` (where it starts, the text and the
label exactly as stored); the rules on their values are :mod:`components.data.sources.text`'s.
Batch prediction reads unlabelled files with them too (``label_column=None``), and plain ``.txt``
files, one text a line, with :func:`read_text_lines`.
A broken file raises :class:`~components.errors.DataValidationError` naming the file, the line and
the rule. Texts are never reinterpreted: TSV fields are split on tabs with no quote processing, CSV
follows standard quoting (a quoted field may hold tabs, commas and newlines). A UTF-8 byte-order
mark at the start of a file and ``\\r\\n`` line ends are accepted.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.errors import DataValidationError

Label = str | int | None


@dataclass(frozen=True)
class Record:
    """One labelled text as stored; ``None`` where the value is missing (JSON/Parquet null)."""

    where: str
    """``line N`` (1-based, the header is line 1) or, for Parquet, ``row N`` (1-based data row)."""
    text: str | None
    label: Label


def bad_record(file: Path, where: str, rule: str, detail: str = "") -> DataValidationError:
    """The error for a record breaking ``rule``: ``<file>, line 3: <rule> (<detail>)``."""
    return DataValidationError(f"{file}, {where}", rule, detail)


def checked_text(file: Path, record: Record) -> str:
    """``record``'s text, after the rules every text meets (ingest and batch prediction alike): not
    missing or blank, and valid Unicode."""
    text = record.text
    if text is None or not text.strip():
        raise bad_record(file, record.where, "empty text (empty or whitespace only)")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate from a JSON \ud800 escape
        raise bad_record(file, record.where, "text is not valid Unicode", exc.reason) from None
    return text


def _decoded(file: Path) -> str:
    """The file's text (strict UTF-8, a leading byte-order mark dropped)."""
    data = file.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise bad_record(
            file, f"line {line}", "not valid UTF-8", f"undecodable byte(s) at byte offset {exc.start}"
        ) from None
    return text.removeprefix("\ufeff")


def _lines(text: str) -> list[str]:
    """Lines split on ``\\n`` only (not on the other Unicode line breaks a text may hold), one
    trailing ``\\r`` each dropped; the empty piece after a final newline is not a line."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _wanted(text_column: str, label_column: str | None) -> list[tuple[str, str]]:
    """(column, params key) of the columns to read: the text's, and the label's unless ``None``."""
    wanted = [(text_column, "data.text_column")]
    return wanted + ([(label_column, "data.label_column")] if label_column is not None else [])


def _columns(
    file: Path, header: list[str], text_column: str, label_column: str | None
) -> tuple[int, int | None]:
    """Positions of the two columns in ``header`` (the label's ``None`` when not read); a missing or
    repeated one is refused."""
    positions: list[int] = []
    for name, key in _wanted(text_column, label_column):
        if header.count(name) != 1:
            rule = f"no column {name!r} ({key})" if name not in header else f"column {name!r} appears twice"
            raise DataValidationError(
                f"{file}, line 1", rule, f"the header has columns: {', '.join(map(repr, header))}"
            )
        positions.append(header.index(name))
    return positions[0], positions[1] if label_column is not None else None


def _delimited(
    file: Path, rows: list[tuple[int, list[str]]], columns: tuple[str, str | None]
) -> list[Record]:
    """Records of ``rows`` (start line, fields), the first being the header."""
    if not rows:
        raise DataValidationError(file, "empty file (a header row naming the columns is required)")
    header = rows[0][1]
    text_at, label_at = _columns(file, header, *columns)
    records = []
    for line, fields in rows[1:]:
        if len(fields) != len(header):
            raise bad_record(
                file,
                f"line {line}",
                "wrong field count",
                f"{len(fields)} field(s), the header has {len(header)}",
            )
        label = fields[label_at] if label_at is not None else None
        records.append(Record(f"line {line}", fields[text_at], label))
    return records


def read_text_lines(file: Path) -> list[Record]:
    """A plain text file, one text a line (strict UTF-8; ``\\r\\n`` accepted), no header, no label."""
    return [Record(f"line {n}", line, None) for n, line in enumerate(_lines(_decoded(file)), start=1)]


def read_tsv(file: Path, text_column: str, label_column: str | None) -> list[Record]:
    """Tab-separated, header first, no quoting: ``"`` and ``,`` are ordinary characters."""
    rows = [(n, line.split("\t")) for n, line in enumerate(_lines(_decoded(file)), start=1)]
    return _delimited(file, rows, (text_column, label_column))


def read_csv(file: Path, text_column: str, label_column: str | None) -> list[Record]:
    """Comma-separated with standard (RFC 4180) quoting, header first."""
    reader = csv.reader(io.StringIO(_decoded(file), newline=""), strict=True)
    rows: list[tuple[int, list[str]]] = []
    start = 1
    try:
        for fields in reader:
            rows.append((start, fields))
            start = reader.line_num + 1  # a quoted field may span lines
    except csv.Error as exc:
        raise bad_record(file, f"line {reader.line_num}", "not valid CSV", str(exc)) from None
    return _delimited(file, rows, (text_column, label_column))


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValueError(f"key(s) {', '.join(map(repr, repeated))} appear twice")
    return dict(pairs)


def read_jsonl(file: Path, text_column: str, label_column: str | None) -> list[Record]:
    """One JSON object per line; the text a string, the label an integer or a string."""
    records = []
    for n, line in enumerate(_lines(_decoded(file)), start=1):
        where = f"line {n}"
        try:
            value = json.loads(line, object_pairs_hook=_unique_keys)
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            raise bad_record(file, where, "not a JSON object", str(exc)) from None
        if not isinstance(value, dict):
            raise bad_record(file, where, "not a JSON object", f"got {type(value).__name__}")
        for name, key in _wanted(text_column, label_column):
            if name not in value:
                keys = ", ".join(map(repr, value)) or "none"
                raise bad_record(file, where, f"no column {name!r} ({key})", f"the object has keys: {keys}")
        text, label = value[text_column], value[label_column] if label_column is not None else None
        if text is not None and not isinstance(text, str):
            raise bad_record(file, where, "text must be a string", f"got {type(text).__name__}")
        if label is not None and (isinstance(label, bool) or not isinstance(label, int | str)):
            raise bad_record(file, where, "label must be an integer or a string", f"got {label!r}")
        records.append(Record(where, text, label))
    return records


def _parquet_values(file: Path, column: Any, name: str, integers: bool) -> list[Label]:
    """A Parquet column as Python values: strings decoded here (strict UTF-8, naming the row),
    integers as ``int``, nulls as ``None``; any other column type is refused."""
    import pyarrow as pa

    kind = column.type
    if integers and pa.types.is_integer(kind):
        return list(column.to_pylist())
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        allowed = "integers or strings" if integers else "strings"
        raise DataValidationError(file, f"column {name!r} must hold {allowed}", f"its type is {kind}")
    values: list[Label] = []
    for row, raw in enumerate(column.cast(pa.large_binary()).to_pylist(), start=1):
        try:
            values.append(None if raw is None else raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise bad_record(
                file, f"row {row}", "not valid UTF-8", f"column {name!r}: {exc.reason}"
            ) from None
    return values


def read_parquet(file: Path, text_column: str, label_column: str | None) -> list[Record]:
    """A Parquet table: a string text column, an integer or string label column; ``row N`` counts
    data rows from 1."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(file)
        names = list(parquet.schema_arrow.names)
        for name, key in _wanted(text_column, label_column):
            if names.count(name) != 1:
                rule = (
                    f"no column {name!r} ({key})" if name not in names else f"column {name!r} appears twice"
                )
                raise DataValidationError(file, rule, f"the file has columns: {', '.join(map(repr, names))}")
        table = parquet.read(columns=[name for name, _ in _wanted(text_column, label_column)])
    except (pa.ArrowException, OSError) as exc:
        raise DataValidationError(file, "not a readable Parquet file", str(exc)) from None
    texts = _parquet_values(file, table.column(text_column), text_column, integers=False)
    labels = (
        _parquet_values(file, table.column(label_column), label_column, integers=True)
        if label_column is not None
        else [None] * len(texts)
    )
    return [
        Record(f"row {row}", text if isinstance(text, str) else None, label)
        for row, (text, label) in enumerate(zip(texts, labels, strict=True), start=1)
    ]


READERS: dict[str, Callable[[Path, str, str | None], list[Record]]] = {
    ".tsv": read_tsv,
    ".csv": read_csv,
    ".jsonl": read_jsonl,
    ".parquet": read_parquet,
}
"""File extension (lower case) -> reader."""


def read_records(file: Path, text_column: str, label_column: str | None) -> list[Record]:
    """The records of ``file``, read by the reader of its extension (``label_column=None``: texts
    only, every label ``None``)."""
    reader = READERS.get(file.suffix.lower())
    if reader is None:
        raise DataValidationError(
            file,
            f"unsupported text file format {file.suffix or '(no extension)'!r}",
            f"use {', '.join(READERS)}",
        )
    return reader(file, text_column, label_column)
