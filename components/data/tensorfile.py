"""Array files without pickle: one safetensors file per split.

safetensors stores raw little-endian buffers behind a JSON header, loads with zero copies into
NumPy or PyTorch, and cannot execute code; its bytes depend only on the arrays, so identical inputs
give byte-identical files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from components.atomic import current_umask
from components.errors import DataValidationError


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write named arrays (made contiguous) to ``path``."""
    save_file({name: np.ascontiguousarray(array) for name, array in arrays.items()}, str(path))
    path.chmod(0o666 & ~current_umask())  # safetensors creates 0600 files; match other outputs


def load_arrays(path: Path, required: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Read a file written by :func:`save_arrays`; missing or unreadable files name the file."""
    if not path.is_file():
        raise DataValidationError(path, "file not found (run the stage that writes it first)")
    try:
        arrays = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise DataValidationError(path, "not a readable safetensors file", str(exc)) from None
    missing = [name for name in required if name not in arrays]
    if missing:
        raise DataValidationError(path, f"missing arrays {missing}", f"found {sorted(arrays)}")
    return arrays
