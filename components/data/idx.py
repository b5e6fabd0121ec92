"""Reader for the IDX format used by MNIST and its relatives, plain or gzip-compressed.

Layout: two zero bytes, one element-type byte, one byte with the number of dimensions, one
big-endian uint32 per dimension, then the elements in row-major order. Every way a file can break
that layout raises :class:`~components.errors.DataValidationError` naming the file and the rule.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from components.errors import DataValidationError

GZIP_MAGIC = b"\x1f\x8b"

# IDX element-type code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, str] = {
    0x08: ">u1",
    0x09: ">i1",
    0x0B: ">i2",
    0x0C: ">i4",
    0x0D: ">f4",
    0x0E: ">f8",
}


def read_file_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it is gzip (detected by its magic bytes)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataValidationError(path, "file not found") from None
    if not raw.startswith(GZIP_MAGIC):
        if path.suffix == ".gz":
            raise DataValidationError(path, "named .gz but is not gzip data (bad gzip magic)")
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataValidationError(path, "corrupt or truncated gzip stream", str(exc)) from None


def read_idx(path: Path | str, expected_ndim: int | None = None) -> np.ndarray:
    """Parse an IDX file into a native-endian numpy array.

    Args:
        path: the file (``.gz`` or plain).
        expected_ndim: if given, the number of dimensions the file must declare
            (3 for an image file: count, rows, columns; 1 for a label file).
    """
    path = Path(path)
    data = read_file_bytes(path)
    if len(data) < 4:
        raise DataValidationError(path, "not an IDX file: shorter than the 4-byte magic number")
    zero1, zero2, type_code, ndim = data[0], data[1], data[2], data[3]
    magic = int.from_bytes(data[:4], "big")
    if zero1 != 0 or zero2 != 0:
        raise DataValidationError(
            path,
            "not an IDX file: the magic number must start with two zero bytes",
            f"got magic 0x{magic:08x}",
        )
    if type_code not in IDX_DTYPES:
        known = ", ".join(f"0x{code:02x}" for code in IDX_DTYPES)
        raise DataValidationError(
            path,
            f"unknown IDX element type 0x{type_code:02x} in magic number (known: {known})",
            f"got magic 0x{magic:08x}",
        )
    if expected_ndim is not None and ndim != expected_ndim:
        raise DataValidationError(
            path,
            f"IDX magic number declares {ndim} dimension(s), expected {expected_ndim}",
            f"got magic 0x{magic:08x}",
        )
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataValidationError(path, "truncated IDX header: dimension sizes are missing")
    dims = struct.unpack(f">{ndim}I", data[4:header_size])
    dtype = np.dtype(IDX_DTYPES[type_code])
    expected_bytes = math.prod(dims) * dtype.itemsize  # Python ints: huge headers cannot wrap
    actual_bytes = len(data) - header_size
    if actual_bytes < expected_bytes:
        raise DataValidationError(
            path,
            "truncated IDX data: fewer bytes than the header's dimensions require",
            f"dimensions {list(dims)} need {expected_bytes} bytes, file holds {actual_bytes}",
        )
    if actual_bytes > expected_bytes:
        raise DataValidationError(
            path,
            "IDX data is longer than the header's dimensions declare",
            f"dimensions {list(dims)} need {expected_bytes} bytes, file holds {actual_bytes}",
        )
    array = np.frombuffer(data, dtype=dtype, count=expected_bytes // dtype.itemsize, offset=header_size)
    return array.reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: Path | str, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file (gzip-compressed when ``path`` ends in ``.gz``).

    Used by tests and tools that need IDX fixtures; the inverse of :func:`read_idx`.
    """
    path = Path(path)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in IDX_DTYPES.items()}
    native = np.dtype(array.dtype).newbyteorder("=")
    if native not in codes:
        raise ValueError(f"dtype {array.dtype} has no IDX element type")
    header = bytes([0, 0, codes[native], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array).astype(IDX_DTYPES[codes[native]]).tobytes()
    if path.suffix == ".gz":
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)
